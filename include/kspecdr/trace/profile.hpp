#pragma once
// Measuring one spatial profile (a column or a bin of columns) and fitting a
// smooth curve with iterative clipping: the numerical pieces of the trace stage,
// public so that extract/ and tests can use the same pixel-integrated Gaussian.
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "kspecdr/core/trace.hpp"

namespace kspecdr::trace {

/// Fraction of a unit Gaussian N(mu, sigma) that falls in pixel `i` (covering [i − ½, i + ½]).
double pixel_gaussian(double i, double mu, double sigma);

/// Result of measuring one spatial profile.
struct ProfileFit {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  bool ok = false;
  double centre = kNaN, centre_err = kNaN;  ///< px
  double sigma = kNaN, sigma_err = kNaN;    ///< Gaussian σ (px), pixel integration removed
  double amplitude = kNaN;                  ///< total counts in the profile (e-)
  double background = kNaN;                 ///< per-pixel background (e-)
  double peak_snr = kNaN;                   ///< peak pixel / its noise
};

/// Measures a profile by flux-weighted moments in a window of ±half_window px around `guess`,
/// re-centred until it settles. The background is the mean of the outermost pixel at each side.
/// Pixels with variance ≤ 0 or non-finite values are ignored. `y0` is the row of values[0].
ProfileFit measure_moments(std::span<const double> values, std::span<const double> variances, double y0,
                           double guess, double half_window);

/// Fits a pixel-integrated Gaussian plus a constant to the pixels within ±half_window of `guess`,
/// weighted by the variances (Levenberg–Marquardt). Starts from the moments.
ProfileFit fit_gaussian(std::span<const double> values, std::span<const double> variances, double y0,
                        double guess, double half_window, double sigma_guess);

/// A weighted Legendre fit with iterative clipping.
struct ClippedFit {
  LegendreSeries series;
  std::vector<unsigned char> used;  ///< 1 = point kept
  double rms = std::numeric_limits<double>::quiet_NaN();  ///< rms residual of kept points
  int n_used = 0;
  bool ok = false;
};

/// Fits y(x) with a Legendre series of `order` on [xmin, xmax]; points with non-finite y or err ≤ 0
/// are skipped. Each round rejects points beyond clip_sigma × max(1, robust scatter of the normalised
/// residuals); the order is lowered when too few points remain.
ClippedFit fit_legendre_clipped(std::span<const double> x, std::span<const double> y, std::span<const double> err,
                                int order, double xmin, double xmax, double clip_sigma, int iterations);

}  // namespace kspecdr::trace
