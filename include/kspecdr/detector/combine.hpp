#pragma once
// Per-pixel combination of a stack of equally shaped frames: the core of the
// master bias, flat and dark. Work is done on row bands so that a caller (the
// MPI layer) can split a frame into bands across ranks; nothing here calls MPI
// or starts threads.
#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/config.hpp"

namespace kspecdr::detector {

/// Number of frames that contributed to each combined pixel.
using CountArray = Eigen::Array<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct CombineOptions {
  CombineMethod method = CombineMethod::Median;
  double clip_sigma = 3.0;  ///< ClippedMean rejection threshold
};

struct CombinedBand {
  Eigen::Index row_begin = 0;  ///< first frame row of the band
  ImageArray value;            ///< (row_end - row_begin) x nx combined values; NaN where no frame had data
  CountArray used;             ///< frames kept per pixel (after rejection)
};

/// Combines rows [row_begin, row_end) of `frames` (all the same shape). Non-finite values are
/// left out, so a NaN marks a pixel that a frame does not contribute. Throws DataError when the
/// shapes differ, the stack is empty or the band lies outside the frames.
CombinedBand combine_rows(const std::vector<const ImageArray*>& frames, Eigen::Index row_begin,
                          Eigen::Index row_end, const CombineOptions& opt);

/// The whole frame (one band).
CombinedBand combine(const std::vector<const ImageArray*>& frames, const CombineOptions& opt);

/// Expected variance of one combined pixel relative to sigma^2 of one frame's pixel, for
/// `used` frames: factor(used)/used for the median, 1/used for the clipped mean.
double combined_variance_ratio(CombineMethod method, int used);

}  // namespace kspecdr::detector
