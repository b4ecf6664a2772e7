#pragma once
// How many photons come from the star? Boxcar and optimal (Horne 1986)
// extraction along each trace, column by column, with the variance built from
// the model (sky + profile × flux + read noise² + master bias and flat noise)
// rather than from the noisy data, and split by source so the components add up
// to the total.
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/config.hpp"
#include "kspecdr/extract/sky.hpp"

namespace kspecdr::mpi {
class Comm;
}

namespace kspecdr::extract {

/// Extracts every trace of `traces` from `image` (e-), subtracting `sky` when it is given (slit mode;
/// nullptr = no local sky). With deblending (ExtractMethod::Joint, Deblend::On, or Deblend::Auto when
/// `sky` is nullptr and the apertures overlap) all apertures of a column are fitted at once (see
/// extract/joint.cpp); the header's EXTMETH and DEBLEND say what was done. Joint extraction with a local
/// sky or a data profile is a ConfigError. Per-aperture problems — an unusable trace, a trace off the detector, a fully
/// masked aperture, an empty sky window — never stop the others: the affected pixels are NODATA with
/// infinite variance, and the aperture's diagnostics status carries the DataError message (aperture and
/// exposure named). Throws DataError only when the image, traces and sky do not fit together.
///
/// With `group` (collective over it; every rank passes the same image, traces, sky and config) the ranks share
/// the work and every rank returns the whole result, the same values as one rank alone: the joint fit's columns
/// are dealt in bands (Comm::band_begin) and exchanged, otherwise the apertures are dealt in bands and their
/// rows exchanged (share_aperture_bands). An error on any rank is thrown on every rank (mpi::all_or_throw).
SpectrumSet extract_spectra(const Image& image, const TraceSet& traces, const SkyModel* sky,
                            const ExtractConfig& config, const std::string& exposure = "",
                            const mpi::Comm* group = nullptr);

/// Collective over `group`: rank r has filled the rows [group.band_begin(naper, r), group.band_begin(naper, r + 1))
/// of every per-aperture array of `spectra` (flux, variance and its parts, sky, mask, the per-pixel diagnostics)
/// and of its `diagnostics`; afterwards every rank holds every row, bit for bit. The apertures, header and extra
/// images are not exchanged (every rank must already hold the same).
void share_aperture_bands(SpectrumSet& spectra, const mpi::Comm& group);

/// Whether two usable traces' extraction windows (±max(boxcar, optimal) half-width) overlap in some column,
/// i.e. whether each aperture alone would count its neighbours' light: the test of Deblend::Auto.
bool apertures_overlap(const TraceSet& traces, const ExtractConfig& config);

/// Copies per-exposure trace shifts (trace::measure_trace_shifts) into the diagnostics.
void record_trace_shifts(SpectrumSet& spectra, const std::vector<TraceShift>& shifts);

/// The data profile of optimal extraction for one trace: for each column x and each row of the band
/// [row0, row0 + rows), the normalised, non-negative profile (0 outside the aperture). Exposed for tests
/// and plots.
struct DataProfile {
  long row0 = 0, rows = 0, nx = 0;
  std::vector<float> p;  ///< rows × nx, row-major
  float at(long row, long x) const { return p[static_cast<std::size_t>((row - row0) * nx + x)]; }
};
DataProfile build_data_profile(const Image& image, const Trace& trace, const ApertureSky* sky,
                               const ExtractConfig& config);

}  // namespace kspecdr::extract
