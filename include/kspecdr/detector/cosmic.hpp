#pragma once
// Single-frame cosmic-ray detection by Laplacian edge detection (L.A.Cosmic,
// van Dokkum 2001, PASP 113, 1420). Hits are flagged in the mask; the data are
// left as they are, because optimal extraction rejects masked pixels itself.
#include <cstddef>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/config.hpp"

namespace kspecdr::detector {

/// The sharpness bound of the frame's point-spread function, per axis (x: dispersion, emission
/// lines; y: across dispersion, fiber profiles and star traces), measured by measure_psf_bound:
/// the largest ratio of a pixel to the mean of its two neighbours, and the largest log-curvature
/// ln p0 - (ln p-1 + ln p+1)/2, above the pedestal, over the pixels of the frame's isolated
/// features. A count of 0 means nothing could be measured along that axis and the bound of a
/// Gaussian of kDefaultPsfSigma was used.
struct PsfBound {
  double ratio_x = 0.0, ratio_y = 0.0;
  double curvature_x = 0.0, curvature_y = 0.0;
  int features_x = 0, features_y = 0;  ///< isolated features the bound was measured from
};

struct CosmicResult {
  std::size_t npix = 0;  ///< pixels flagged kMaskCosmic
  int iterations = 0;    ///< passes run (stops early when a pass finds nothing new)
  PsfBound psf;          ///< the sharpness bound used
};

/// Gaussian width (px) assumed along an axis where no isolated feature can be measured: narrow
/// enough for the sharpest illumination edge (a slit end, sigma ~0.6 px) to stay within the
/// bound.
inline constexpr double kDefaultPsfSigma = 0.8;

/// Measures the sharpness bound along x and y from the frame itself: the frame is averaged over
/// bands of 16 rows (for x) or columns (for y) without unusable pixels, each band replaced by the
/// median of five adjacent bands (which removes cosmic rays), and every isolated, significant
/// peak contributes the largest neighbour ratio and log-curvature over its pixels. Features are
/// grouped by position; single-pixel profiles (hot columns) and coincidences of cosmic rays are
/// dropped; the bound is that of the sharpest remaining feature. Fewer than 3 features along an
/// axis give the bound of a Gaussian of kDefaultPsfSigma with a count of 0.
PsfBound measure_psf_bound(const ImageArray& data, const ImageArray& variance, const MaskArray& mask);

/// Detects cosmic rays in `data` (electrons) with noise from `variance` and sets kMaskCosmic in
/// `mask`. Pixels already flagged bad or no-data are never flagged and are replaced by a local
/// median internally so that their edges do not look like hits. Uses cfg.cosmic_*. Every hit
/// must be sharper than the PSF (bound from measure_psf_bound) along x, y or a diagonal, or stand
/// out of the line-and-trace model where a line runs along its column.
CosmicResult detect_cosmics(const ImageArray& data, const ImageArray& variance, MaskArray& mask,
                            const DetectorConfig& cfg);

/// Separable approximation of a k x k median filter (k = 3, 5 or 7; median of k along x, then of
/// k along y; edges replicated): nearly the full median, at a fraction of its cost.
ImageArray separable_median(const ImageArray& in, int k);

}  // namespace kspecdr::detector
