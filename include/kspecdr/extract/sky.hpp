#pragma once
// How many photons come from the sky?
//   slit mode:  per aperture and column, a median or clipped polynomial in y over
//               windows beside the trace (other traces excluded), with the
//               covariance of the estimate so its error reaches the extracted flux;
//   fiber mode: relative fiber throughputs from the flat, and a master sky spectrum
//               from the sky fibers on a common wavelength grid, subtracted from
//               every fiber.
#include <limits>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/config.hpp"

namespace kspecdr::extract {

/// The sky of one aperture: per column a polynomial in u = (y − y_c(x)) / kSkyScalePx and the covariance
/// of its coefficients (a median is the order-0 case).
struct ApertureSky {
  static constexpr double kSkyScalePx = 10.0;  ///< keeps the normal equations well conditioned
  int ncoef = 0;
  std::vector<double> coef;       ///< nx × ncoef
  std::vector<double> cov;        ///< nx × ncoef × ncoef (e-² per pixel²)
  std::vector<unsigned char> ok;  ///< nx; 0 = too few window pixels in that column
  /// nx; share of the estimate's variance that comes from read noise (the rest is sky photons), so the
  /// extraction can put each part in its own variance component.
  std::vector<float> read_fraction;
  /// nx; share that comes from the master bias and flat (CalibrationNoise), for the calibration component.
  std::vector<float> cal_fraction;
  long n_empty = 0;               ///< columns with too few window pixels
  long n_rejected = 0;            ///< window pixels rejected by the clipped fit
  double median_npix = 0.0;       ///< median number of window pixels per column
  std::string message;            ///< why the aperture's sky is unusable ("" = usable)

  /// Sky per pixel (e-) at column x and offset t (px) from the trace centre; NaN where !ok.
  double value(long x, double t) const;
  /// Variance of that estimate (e-²).
  double variance(long x, double t) const;
};

struct SkyModel {
  SkyMethod method = SkyMethod::None;
  ImageArray sky;       ///< 2D sky model (e- per pixel) between the outer edges of each aperture's windows
  ImageArray variance;  ///< variance of the sky model (e-²)
  MaskArray windows;    ///< 1 = pixel used by a sky fit, 2 = in a window but excluded or rejected
  std::vector<ApertureSky> apertures;  ///< one per trace of the TraceSet
};

/// Slit mode: fits the sky of every usable trace. An aperture whose windows are empty everywhere gets a
/// message (also logged) and no usable columns; the others go on. The window pixels' model variance is
/// read noise² + sky + the calibration noise, which sets the fit weights and the estimate's covariance.
/// Throws DataError only for an image that does not match the traces (ConfigError for a noise map that
/// does not).
SkyModel fit_slit_sky(const Image& image, const TraceSet& traces, const SkyConfig& config, const ReadNoise& read_noise,
                      const CalibrationNoise& calibration_noise, const std::string& exposure = "");
/// The same without calibration noise.
inline SkyModel fit_slit_sky(const Image& image, const TraceSet& traces, const SkyConfig& config,
                             const ReadNoise& read_noise, const std::string& exposure = "") {
  return fit_slit_sky(image, traces, config, read_noise, CalibrationNoise{}, exposure);
}

/// The image minus the sky model, with the sky model's variance added (for plots and checks).
Image subtract_sky(const Image& image, const SkyModel& sky);

// ------------------------------------------------------------------ fiber mode

/// Relative fiber throughputs from extracted flat-field spectra (flat lamp through every fiber).
struct FiberThroughput {
  std::vector<double> throughput;  ///< per aperture, median over lit fibers = 1; NaN where unknown
  std::vector<double> error;       ///< its uncertainty
};

/// Per aperture, the median over pixels of flux / (median over the lit fibers of flux at that pixel).
/// Apertures that are dead or have no good pixels get NaN. Throws DataError when no fiber has light.
FiberThroughput fiber_throughput(const SpectrumSet& flat_spectra);

/// A sky spectrum on the common wavelength grid.
struct MasterSky {
  std::vector<double> flux;      ///< e- per pixel of the grid, for throughput 1
  std::vector<double> variance;  ///< e-²
  std::vector<MaskPixel> mask;   ///< NODATA where no sky fiber had a good pixel
  std::vector<int> n_used;       ///< sky fibers kept per pixel
};

/// Robust combination of the sky fibers: per grid pixel, the inverse-variance weighted mean of flux/t over
/// the sky fibers after iterative rejection against the median (clip_sigma in each fiber's own σ).
/// `spectra` must already be on one common wavelength grid (NAPER × NWAVE); `is_sky[a]` marks the sky fibers.
/// Throws DataError naming the count when fewer than `min_fibers` sky fibers are usable.
MasterSky combine_master_sky(const SpectrumSet& spectra, const std::vector<double>& throughput,
                             const std::vector<bool>& is_sky, double clip_sigma = 4.0, int min_fibers = 2);

/// Subtracts throughput × master sky from every aperture (sky fibers too, as a check of the residuals),
/// adds its variance to `variance` and `var_sky`, and stores it in `sky`. Pixels where the master sky is
/// NODATA become NODATA.
void subtract_master_sky(SpectrumSet& spectra, const MasterSky& sky, const std::vector<double>& throughput);

}  // namespace kspecdr::extract
