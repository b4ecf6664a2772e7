#pragma once
// Emission lines in a 1D spectrum: detection, sub-pixel centres from a fit of
// a pixel-integrated Gaussian on a local background, centroid uncertainties
// from the pixel variances, and flags for lines that must not anchor a fit
// (saturated, blended, masked, at an edge).
#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "kspecdr/core/mask.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/wavecal/config.hpp"

namespace kspecdr::wavecal {

/// One spectrum on detector pixels: one EX row.
struct Spectrum1D {
  std::vector<double> flux;      ///< e- per pixel
  std::vector<double> variance;  ///< e-²; +inf where there is no data
  std::vector<MaskPixel> mask;   ///< MaskBit flags; 0 = good
  std::size_t size() const { return flux.size(); }
  /// Throws DataError when the three vectors differ in length or are empty.
  void check(const std::string& what = "spectrum") const;
};

/// Row `aperture` of an EX SpectrumSet.
Spectrum1D spectrum_row(const SpectrumSet& s, Eigen::Index aperture);

/// Inverse-variance mean of several spectra of one setup (e.g. the arcs of a night). A pixel
/// masked in one input is left out of the mean there; its bits are kept only when every input
/// is masked (then variance +inf), except SATURATED, which is always carried: a line saturated
/// in one frame has a distorted core in the mean too.
Spectrum1D combine_spectra(const std::vector<Spectrum1D>& spectra);

enum PeakFlag : unsigned {
  kPeakSaturated = 1u << 0,  ///< a pixel in the line core is SATURATED
  kPeakBlended = 1u << 1,    ///< another line within the blend distance, or too wide
  kPeakMasked = 1u << 2,     ///< a pixel in the core is masked for another reason
  kPeakEdge = 1u << 3,       ///< the fit window reaches the end of the spectrum
  kPeakFitFailed = 1u << 4,  ///< the Gaussian fit did not converge or moved off the peak
};

struct ArcPeak {
  double x_px = 0.0;        ///< line centre (px)
  double x_err_px = 0.0;    ///< 1σ uncertainty of the centre from the pixel variances (px)
  double flux = 0.0;        ///< integrated line flux (e-)
  double sigma_px = 0.0;    ///< Gaussian σ (px)
  double background = 0.0;  ///< local background under the line (e- per px)
  double snr = 0.0;         ///< flux / its uncertainty
  unsigned flags = 0;       ///< PeakFlag bits; 0 = usable as a fit anchor
  bool usable() const { return flags == 0; }
};

/// Detects and measures lines, returned in increasing x. Throws DataError for an empty or
/// inconsistent spectrum.
std::vector<ArcPeak> find_peaks(const Spectrum1D& s, const PeakConfig& cfg);

/// Running lower quartile of the good pixels in a window of `window_px`: the continuum under emission
/// lines, which cover a minority of any window.
std::vector<double> running_background(const Spectrum1D& s, int window_px);

/// Median σ (px) of the usable peaks; NaN when there are none.
double median_sigma(const std::vector<ArcPeak>& peaks);

}  // namespace kspecdr::wavecal
