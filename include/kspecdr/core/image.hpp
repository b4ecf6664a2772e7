#pragma once
// The calibrated 2D image of the pipeline: data, variance and mask bit flags
// on row-major Eigen arrays (like FITS: row = y, column = x), with its unit
// and header. Inside the pipeline the dispersion axis runs along x.
#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/mask.hpp"

namespace kspecdr {

using ImageArray = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ImageArrayD = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MaskArray = Eigen::Array<MaskPixel, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

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
