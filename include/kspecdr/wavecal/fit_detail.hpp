#pragma once
// Internals of wavecal (namespace detail, not for other stages): the weighted, clipped Legendre fit shared by the
// identification, the fiber smoothing and the flexure measurement.
#include <vector>

#include "kspecdr/core/trace.hpp"

namespace kspecdr::wavecal::detail {

struct ClippedFit {
  LegendreSeries series;
  std::vector<char> used;   ///< 1 = kept by the clipping
  double chi2_dof = 0.0;    ///< of the kept points with the fit errors
  double scale = 1.0;       ///< robust rms of the normalised residuals of the kept points
  bool ok = false;
  /// Sandwich covariance of the coefficients for errors `true_err` (may differ from the weights).
  std::vector<double> cov;  ///< (order+1)², row-major
};

/// Fits y(x) = Σ c_k P_k(u(x)) on [xmin, xmax] with weights 1/err², rejecting points whose
/// |residual|/err exceeds clip_sigma × max(1, robust scale) and re-admitting those that come back
/// within it; `true_err` (same length, or empty = err) is the noise used for `cov`.
ClippedFit fit_legendre_clipped(const std::vector<double>& x, const std::vector<double>& y,
                                const std::vector<double>& err, const std::vector<double>& true_err, int order,
                                double xmin, double xmax, double clip_sigma, int iterations);

/// Variance of the fitted series at x from `fit.cov`.
double series_variance(const ClippedFit& fit, double x);

/// Median of a copy.
double median(std::vector<double> v);

/// The honest error of a fitted λ(x) (rms over `npix` pixels, px): the lines' residuals `resid_px` are
/// explained by their centroid errors `x_err_px` plus one common extra scatter σ (list errors, faint blends),
/// σ ≥ 0 chosen so that Σ r²/(x_err² + σ²) = n − (order + 1); the fit of `y` (Å) at `x` with the weights it
/// was made with (centroid errors with `floor_px` in quadrature) is then given those errors and its sandwich
/// covariance propagated to every pixel. `disp` is |dλ/dx| at each line.
double honest_error_px(const std::vector<double>& x, const std::vector<double>& y, const std::vector<double>& x_err_px,
                       const std::vector<double>& resid_px, const std::vector<double>& disp, int order, double xmin,
                       double xmax, double floor_px, long npix, const LegendreSeries& lambda);

}  // namespace kspecdr::wavecal::detail

#include "kspecdr/wavecal/linelist.hpp"
#include "kspecdr/wavecal/peaks.hpp"

namespace kspecdr::wavecal::detail {

/// The list lines in [lo, hi] Å that can anchor a fit at this resolution: not called a blend by the list,
/// and no other list line closer than `min_sep` Å (such a pair is one peak on the detector).
std::vector<ArcLine> anchor_lines(const LineList& list, double lo, double hi, double min_sep);

/// Nearest value of sorted `w` to `lam`; the distance to the second nearest goes to `second_dist`.
double nearest_line(const std::vector<double>& w, double lam, double* second_dist);

/// Pairs (peak index, line index) of usable peaks whose predicted wavelength model(x) lies within
/// tol_px·|dλ/dx| of exactly one line; each line goes to its closest peak.
std::vector<std::pair<std::size_t, std::size_t>> match_lines(const std::vector<ArcPeak>& peaks,
                                                              const LegendreSeries& model,
                                                              const std::vector<double>& w, double tol_px);

}  // namespace kspecdr::wavecal::detail
