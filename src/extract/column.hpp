#pragma once
// Private to src/extract: the result of extracting one aperture in one detector column, shared by the
// per-aperture extraction (extract.cpp) and the joint fit of all apertures (joint.cpp).
#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/config.hpp"

namespace kspecdr::extract::detail {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Length of the overlap of pixel [r − ½, r + ½] with [lo, hi].
inline double overlap(double r, double lo, double hi) {
  return std::clamp(std::min(r + 0.5, hi) - std::max(r - 0.5, lo), 0.0, 1.0);
}

/// Why a column could not be extracted.
enum class ColumnFail { None, OffDetector, Masked, NoSky, NoProfile };

/// One aperture in one column: the flux (e-) and its variance split by source (e-²), the local sky that
/// was subtracted, and the diagnostics of the column.
struct ColumnResult {
  double flux = 0, var_star = 0, var_sky = 0, var_read = 0, var_cal = 0, sky = 0;
  double offset = kNaN, width = kNaN, peak = kNaN, masked = 0;
  int rejected = 0;
  long row0 = 0;  ///< row of work-buffer entry 0 (per-aperture extraction only)
  std::size_t nrows = 0;
  ColumnFail fail = ColumnFail::None;
};

/// Number of values of a ColumnResult in pack().
inline constexpr std::size_t kColumnValues = 14;

/// Appends the values of `c` to `out` (kColumnValues doubles; the integers are exact in a double), so that
/// ranks can exchange column results bit for bit.
inline void pack(const ColumnResult& c, std::vector<double>& out) {
  out.insert(out.end(), {c.flux, c.var_star, c.var_sky, c.var_read, c.var_cal, c.sky, c.offset, c.width, c.peak,
                         c.masked, static_cast<double>(c.rejected), static_cast<double>(c.row0),
                         static_cast<double>(c.nrows), static_cast<double>(static_cast<int>(c.fail))});
}

/// Reads what pack() wrote at `v` into `c`; returns the position after it.
inline const double* unpack(const double* v, ColumnResult& c) {
  c.flux = v[0], c.var_star = v[1], c.var_sky = v[2], c.var_read = v[3], c.var_cal = v[4], c.sky = v[5];
  c.offset = v[6], c.width = v[7], c.peak = v[8], c.masked = v[9];
  c.rejected = static_cast<int>(v[10]);
  c.row0 = static_cast<long>(v[11]);
  c.nrows = static_cast<std::size_t>(v[12]);
  c.fail = static_cast<ColumnFail>(static_cast<int>(v[13]));
  return v + kColumnValues;
}

/// Joint extraction (extract/joint.cpp): every usable trace of `traces` in every column of `im`, fitted at
/// once. `results` is resized to traces.size() × nx, entry [a · nx + x]; entries of unusable traces are
/// left as NoProfile failures. `cfg.method` Boxcar gives the neighbour-corrected box sums, anything else
/// the fitted amplitudes. Only the columns [x_begin, x_end) are fitted (x_end < 0: to the last column), the
/// others are left as NoProfile failures: every column is a problem of its own, so a column's result does not
/// depend on the range it was fitted in.
void extract_joint(const Image& im, const TraceSet& traces, const ExtractConfig& cfg,
                   std::vector<ColumnResult>& results, long x_begin = 0, long x_end = -1);

}  // namespace kspecdr::extract::detail
