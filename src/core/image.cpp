#include "kspecdr/core/image.hpp"

#include <fmt/format.h>

#include "kspecdr/core/error.hpp"

namespace kspecdr {

std::vector<std::pair<MaskPixel, std::string>> mask_bit_names() {
  return {{kMaskBad, "BAD"},           {kMaskSaturated, "SATURATED"}, {kMaskCosmic, "COSMIC"},
          {kMaskUnilluminated, "UNILLUMINATED"}, {kMaskNoData, "NODATA"}, {kMaskRejected, "REJECTED"},
          {kMaskLowFlat, "LOWFLAT"},   {kMaskInterpolated, "INTERPOLATED"}};
}

Image::Image(Eigen::Index ny, Eigen::Index nx)
    : data(ImageArray::Zero(ny, nx)), variance(ImageArray::Zero(ny, nx)), mask(MaskArray::Zero(ny, nx)) {}

void Image::check_shapes(const std::string& what) const {
  if (variance.rows() != data.rows() || variance.cols() != data.cols() || mask.rows() != data.rows() ||
      mask.cols() != data.cols())
    throw DataError(fmt::format("{}: data {}x{}, variance {}x{} and mask {}x{} differ in shape", what,
                                data.rows(), data.cols(), variance.rows(), variance.cols(), mask.rows(),
                                mask.cols()));
}

}  // namespace kspecdr
