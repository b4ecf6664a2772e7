#pragma once
// Single-frame cosmic-ray detection by Laplacian edge detection (L.A.Cosmic,
// van Dokkum 2001, PASP 113, 1420). Hits are flagged in the mask; the data are
// left as they are, because optimal extraction rejects masked pixels itself.
#include <cstddef>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/config.hpp"

namespace kspecdr::detector {

struct CosmicResult {
  std::size_t npix = 0;  ///< pixels flagged kMaskCosmic
  int iterations = 0;    ///< passes run (stops early when a pass finds nothing new)
};

/// Detects cosmic rays in `data` (electrons) with noise from `variance` and sets kMaskCosmic in
/// `mask`. Pixels already flagged bad or no-data are never flagged and are replaced by a local
/// median internally so that their edges do not look like hits. Uses cfg.cosmic_*.
CosmicResult detect_cosmics(const ImageArray& data, const ImageArray& variance, MaskArray& mask,
                            const DetectorConfig& cfg);

/// Separable approximation of a k x k median filter (k = 3, 5 or 7; median of k along x, then of
/// k along y; edges replicated): nearly the full median, at a fraction of its cost.
ImageArray separable_median(const ImageArray& in, int k);

}  // namespace kspecdr::detector
