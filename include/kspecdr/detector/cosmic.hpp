#pragma once
// Single-frame cosmic-ray detection by Laplacian edge detection (L.A.Cosmic,
// van Dokkum 2001, PASP 113, 1420). Hits are flagged in the mask; the data are
// left as they are, because optimal extraction rejects masked pixels itself.
#include <cstddef>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/config.hpp"

namespace kspecdr::detector {

/// Widths of the point-spread function used by the sharpness bound: Gaussian sigma (px) of the
/// sharpest features of the frame along x (emission lines: dispersion) and y (fiber profiles,
/// star traces: across dispersion), measured by measure_psf_widths. A count of 0 means nothing
/// could be measured along that axis and the default width was used.
struct PsfWidths {
  double sigma_x = 0.0, sigma_y = 0.0;
  int features_x = 0, features_y = 0;  ///< isolated features the widths were measured from
};

struct CosmicResult {
  std::size_t npix = 0;  ///< pixels flagged kMaskCosmic
  int iterations = 0;    ///< passes run (stops early when a pass finds nothing new)
  PsfWidths psf;         ///< widths the sharpness bound used
};

/// Gaussian width (px) assumed along an axis where no isolated feature can be measured: narrow
/// enough for the sharpest illumination edge (a slit end, sigma ~0.6 px) to stay within the
/// bound.
inline constexpr double kDefaultPsfSigma = 0.8;

/// Measures the PSF widths along x and y from the frame itself: the frame is averaged over bands
/// of 16 rows (for x) or columns (for y) without unusable pixels, each band replaced by the median
/// of five adjacent bands (which removes cosmic rays), and every isolated, significant peak gets
/// the sigma of the pixel-integrated Gaussian that has its log-curvature at its centring. One
/// width per feature position; sharp outliers (hot columns) are dropped by a 5-MAD cut below the
/// median and the 10th percentile is kept: the bound must hold for the sharpest real features.
/// Fewer than 10 features along an axis give kDefaultPsfSigma with a count of 0.
PsfWidths measure_psf_widths(const ImageArray& data, const ImageArray& variance, const MaskArray& mask);

/// Detects cosmic rays in `data` (electrons) with noise from `variance` and sets kMaskCosmic in
/// `mask`. Pixels already flagged bad or no-data are never flagged and are replaced by a local
/// median internally so that their edges do not look like hits. Uses cfg.cosmic_*. Every hit
/// must be sharper than the PSF (widths from measure_psf_widths) along x, y or a diagonal.
CosmicResult detect_cosmics(const ImageArray& data, const ImageArray& variance, MaskArray& mask,
                            const DetectorConfig& cfg);

/// Separable approximation of a k x k median filter (k = 3, 5 or 7; median of k along x, then of
/// k along y; edges replicated): nearly the full median, at a fraction of its cost.
ImageArray separable_median(const ImageArray& in, int k);

}  // namespace kspecdr::detector
