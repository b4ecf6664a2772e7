#pragma once
#include "kspecdr/core/stats.hpp"
// Robust statistics used by the detector stage: medians, clipped means whose
// standard deviation is corrected for the truncation of the clip, and clipped
// low-order polynomial fits.
#include <cstddef>
#include <span>
#include <vector>

namespace kspecdr::detector {

/// Median of `v` (reorders it). Even sizes average the two middle values. NaN if empty.
using kspecdr::median_inplace;  // core/stats.hpp

struct ClippedStats {
  double mean = 0.0;    ///< mean of the kept values
  double stddev = 0.0;  ///< standard deviation of the parent Gaussian (corrected for the clip)
  std::size_t n_used = 0;
};

/// Iterative kappa-sigma clipping about the median (first scale 1.4826*MAD), then the mean
/// and the truncation-corrected standard deviation of the kept values. Unlike a plain median
/// this stays unbiased on integer (DN) data. Non-finite values are ignored.
ClippedStats clipped_stats(std::vector<double> values, double kappa = 3.0, int max_iter = 10);

/// Ratio of the standard deviation of a Gaussian truncated at +-kappa sigma to that of the Gaussian.
double truncated_sigma_ratio(double kappa);

/// var(median of n Gaussian samples) / (sigma^2 / n): 1 for n <= 2, tending to pi/2. Computed
/// once per n by a fixed-seed simulation (1 % precision) and cached.
double median_variance_factor(int n);

/// Polynomial fit y(x) ~ sum_k c_k t^k with t = x mapped from [xmin, xmax] to [-1, 1], repeated
/// with points beyond kappa * (truncation-corrected rms) removed until nothing changes.
struct PolyFit {
  std::vector<double> coeffs;
  double xmin = 0.0, xmax = 1.0;
  double rms = 0.0;        ///< truncation-corrected rms of the kept residuals
  std::size_t n_used = 0;
  double operator()(double x) const;
};
PolyFit fit_poly_clipped(std::span<const double> x, std::span<const double> y, int order, double kappa = 3.0,
                         int max_iter = 10);

}  // namespace kspecdr::detector
