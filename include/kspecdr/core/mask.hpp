#pragma once
// Mask bit flags carried with every image and spectrum. A pixel is good when
// its mask is 0. The bit values are part of the file formats (docs/formats.md).
#include <cstdint>
#include <string>
#include <vector>

namespace kspecdr {

using MaskPixel = std::uint16_t;

enum MaskBit : MaskPixel {
  kMaskBad = 1u << 0,            ///< known bad pixel / column (bad-pixel map, non-finite raw value)
  kMaskSaturated = 1u << 1,      ///< raw value at or above the saturation level
  kMaskCosmic = 1u << 2,         ///< cosmic-ray hit (Laplacian edge detection)
  kMaskUnilluminated = 1u << 3,  ///< outside the flat's illuminated footprint (fiber/slit)
  kMaskNoData = 1u << 4,         ///< no data (off the detector, outside a resampled range)
  kMaskRejected = 1u << 5,       ///< rejected as an outlier by a fit (e.g. optimal extraction)
  kMaskLowFlat = 1u << 6,        ///< pixel flat value too low to be trusted
  kMaskInterpolated = 1u << 7,   ///< value filled by interpolation
};

/// The names of the bits, in bit order, written as MASKBn header keywords.
std::vector<std::pair<MaskPixel, std::string>> mask_bit_names();

}  // namespace kspecdr
