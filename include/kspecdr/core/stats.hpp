#pragma once
// Small robust statistics shared by the stages.
#include <span>

namespace kspecdr {

/// Median of `v` (reorders it); the mean of the two middle values for an even count; NaN when empty.
double median_inplace(std::span<double> v);

}  // namespace kspecdr
