#include "kspecdr/core/image.hpp"

#include <fmt/format.h>

#include "kspecdr/core/error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace kspecdr {

void advise_huge_pages(void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  if (!data || bytes < 2 * huge) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t a = (begin + huge - 1) & ~(huge - 1), e = (begin + bytes) & ~(huge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // a hint: failure is harmless
#else
  (void)data;
  (void)bytes;
#endif
}

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
