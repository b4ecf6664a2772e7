#pragma once
// The trace stage: where is each aperture's light on the detector?
//   slit mode:  reference points (given, or the brightest peaks of the collapsed
//               mean science frame) → follow each star along x → smooth fits;
//   fiber mode: peaks across y on the master flat, matched in order to the
//               FIBRES table (dead fibers and block gaps allowed) → follow → fits;
//   each exposure: the offset and width change of every trace against the master.
#include <string>
#include <utility>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/trace/config.hpp"

namespace kspecdr::trace {

/// The image collapsed along x over columns [x0, x1): per row the median of the good pixels (e-).
std::vector<double> collapse_rows(const Image& image, long x0, long x1);

/// Local maxima of `profile` (rows), with a sub-pixel position from a parabola through the top three
/// points, sorted by decreasing height above the median of the profile.
struct Peak {
  double y = 0.0;       ///< px
  double height = 0.0;  ///< above the median of the profile (e-)
};
std::vector<Peak> find_peaks(const std::vector<double>& profile, double min_height, double min_separation_px);

/// Slit mode: the N brightest stars on the collapsed frame (`config.n_stars`), as reference points
/// (x at the centre column, y), in increasing y. Throws DataError when fewer peaks are found.
std::vector<std::pair<double, double>> find_slit_references(const Image& image, const TraceConfig& config);

/// Follows one aperture from (x_ref, y_ref) along x in bins of config.bin_px columns, measures centre and
/// width per bin (config.measure), and fits both with clipped Legendre series. On failure the trace comes
/// back with status Failed and a message (no exception), so the other apertures go on.
Trace trace_aperture(const Image& image, double x_ref, double y_ref, const TraceConfig& config,
                     ApertureInfo info = {});

/// Slit mode: one trace per reference point, in the order of config.references (or, found automatically,
/// in increasing y). Names are "star1", "star2" … unless `names` gives them.
TraceSet trace_slit(const Image& science_mean, const TraceConfig& config, const std::vector<std::string>& names = {});

/// Fiber mode: finds the fibers on the master flat and matches them in order (increasing y) to the FIBRES
/// table rows `fibres` (bottom first). Unused ('N') fibers that show no light get status Dead; lit fibers
/// that are missing get NotFound; both get a centre interpolated from their neighbours. Throws DataError
/// when no fiber at all is found.
TraceSet trace_fibers(const Image& master_flat, const std::vector<ApertureInfo>& fibres, const TraceConfig& config);

/// Order match of detected peak positions (sorted) to table slots: returns for each table row the index of
/// its peak or −1. `lit[j]` says whether table row j should show light. Exposed for tests.
std::vector<int> match_peaks_to_table(const std::vector<double>& peaks, const std::vector<bool>& lit,
                                      const TraceConfig& config);

/// Per exposure: measures each usable trace of `master` on `image` (bins predicted by the master) and
/// returns its offset and width scale. Traces that cannot be measured come back with ok = false.
std::vector<TraceShift> measure_trace_shifts(const Image& image, const TraceSet& master, const TraceConfig& config);

/// The master traces moved by the measured offsets and widths scaled (those with ok = false unchanged).
TraceSet apply_trace_shifts(const TraceSet& master, const std::vector<TraceShift>& shifts);

}  // namespace kspecdr::trace
