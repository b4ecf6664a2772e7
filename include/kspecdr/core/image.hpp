#pragma once
// The calibrated 2D image of the pipeline: data, variance and mask bit flags
// on row-major Eigen arrays (like FITS: row = y, column = x), with its unit
// and header. Inside the pipeline the dispersion axis runs along x.
#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/mask.hpp"

namespace kspecdr {

using ImageArray = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ImageArrayD = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MaskArray = Eigen::Array<MaskPixel, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Asks the kernel to back the memory of a large array with huge pages, before its first touch:
/// the first touch of a fresh 4096² float array costs 16384 page faults with 4 kB pages (about
/// 0.2 s on a virtual machine), 32 with 2 MB pages. Only a hint (Linux transparent huge pages in
/// "madvise" or "always" mode); a no-op elsewhere and for arrays under 4 MB. The values are not
/// touched.
void advise_huge_pages(void* data, std::size_t bytes);
template <typename Array>
void advise_huge_pages(Array& a) {
  advise_huge_pages(a.data(), sizeof(typename Array::Scalar) * static_cast<std::size_t>(a.size()));
}

struct Image {
  ImageArray data;      ///< pixel values in `unit`
  ImageArray variance;  ///< variance of `data`, in unit²
  MaskArray mask;       ///< MaskBit flags; 0 = good
  std::string unit = "electron";
  Header header;

  Image() = default;
  /// An image of ny rows and nx columns: data 0, variance 0, mask 0.
  Image(Eigen::Index ny, Eigen::Index nx);

  Eigen::Index ny() const { return data.rows(); }
  Eigen::Index nx() const { return data.cols(); }
  /// Throws DataError if data, variance and mask do not share one shape.
  void check_shapes(const std::string& what = "image") const;
};

}  // namespace kspecdr
