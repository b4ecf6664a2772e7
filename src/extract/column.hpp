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

/// Joint extraction (extract/joint.cpp): every usable trace of `traces` in every column of `im`, fitted at
/// once. `results` is resized to traces.size() × nx, entry [a · nx + x]; entries of unusable traces are
/// left as NoProfile failures. `cfg.method` Boxcar gives the neighbour-corrected box sums, anything else
/// the fitted amplitudes.
void extract_joint(const Image& im, const TraceSet& traces, const ExtractConfig& cfg,
                   std::vector<ColumnResult>& results);

}  // namespace kspecdr::extract::detail
