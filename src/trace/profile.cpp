#include "kspecdr/trace/profile.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numbers>

namespace kspecdr::trace {

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
inline double phi(double t) { return 0.39894228040143267794 * std::exp(-0.5 * t * t); }
inline double Phi(double t) { return 0.5 * std::erfc(-t * kInvSqrt2); }

/// Pixel range [i0, i1) within ±half of c, clipped to the array.
std::pair<long, long> window(std::size_t n, double y0, double c, double half) {
  long i0 = static_cast<long>(std::ceil(c - half - y0 - 0.5));
  long i1 = static_cast<long>(std::floor(c + half - y0 + 0.5)) + 1;
  i0 = std::max(i0, 0L);
  i1 = std::min(i1, static_cast<long>(n));
  return {i0, i1};
}

double median_of(std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  const auto mid = v.begin() + static_cast<long>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  double m = *mid;
  if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), mid));
  return m;
}
}  // namespace

double pixel_gaussian(double i, double mu, double sigma) {
  const double s = kInvSqrt2 / sigma;
  return 0.5 * (std::erf((i + 0.5 - mu) * s) - std::erf((i - 0.5 - mu) * s));
}

ProfileFit measure_moments(std::span<const double> values, std::span<const double> variances, double y0,
                           double guess, double half_window) {
  ProfileFit out;
  double c = guess;
  const std::size_t n = values.size();
  for (int iter = 0; iter < 8; ++iter) {
    auto [i0, i1] = window(n, y0, c, half_window);
    if (i1 - i0 < 3) return out;
    // Background from up to two good pixels just outside the window at each side (inside it when the
    // profile ends there): a sky level without the profile's own wings.
    double bsum = 0.0;
    int bn = 0, side = 0;
    for (long i = i0 - 1; i >= 0 && side < 2; --i)
      if (variances[i] > 0 && std::isfinite(values[i])) bsum += values[i], ++bn, ++side;
    for (long i = i0; i < i1 && side < 2; ++i)
      if (variances[i] > 0 && std::isfinite(values[i])) bsum += values[i], ++bn, ++side;
    side = 0;
    for (long i = i1; i < static_cast<long>(n) && side < 2; ++i)
      if (variances[i] > 0 && std::isfinite(values[i])) bsum += values[i], ++bn, ++side;
    for (long i = i1 - 1; i >= i0 && side < 2; --i)
      if (variances[i] > 0 && std::isfinite(values[i])) bsum += values[i], ++bn, ++side;
    const double bg = bn ? bsum / bn : 0.0;
    // Fractional weights at the window edges keep the moments continuous in c.
    double s0 = 0, s1 = 0, s2 = 0, peak = -1e300, peak_var = 1.0;
    for (long i = i0; i < i1; ++i) {
      if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
      const double y = y0 + static_cast<double>(i);
      const double lo = std::max(y - 0.5, c - half_window), hi = std::min(y + 0.5, c + half_window);
      const double w = std::clamp(hi - lo, 0.0, 1.0);
      const double f = (values[i] - bg) * w;
      s0 += f;
      s1 += f * y;
      if (values[i] - bg > peak) peak = values[i] - bg, peak_var = variances[i];
    }
    if (!(s0 > 0)) return out;
    const double cn = s1 / s0;
    for (long i = i0; i < i1; ++i) {
      if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
      const double y = y0 + static_cast<double>(i);
      const double lo = std::max(y - 0.5, c - half_window), hi = std::min(y + 0.5, c + half_window);
      const double w = std::clamp(hi - lo, 0.0, 1.0);
      s2 += (values[i] - bg) * w * (y - cn) * (y - cn);
    }
    const bool settled = std::abs(cn - c) < 1e-4;
    c = cn;
    if (settled || iter == 7) {
      const double m2 = s2 / s0;
      double var_c = 0, var_m2 = 0;
      for (long i = i0; i < i1; ++i) {
        if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
        const double d = y0 + static_cast<double>(i) - cn;
        var_c += d * d * variances[i];
        var_m2 += (d * d - m2) * (d * d - m2) * variances[i];
      }
      // Remove the pixel-integration term (1/12 px²), then undo the truncation of a Gaussian at ±k σ.
      double sig2 = m2 - 1.0 / 12.0;
      if (!(sig2 > 0)) return out;
      for (int k = 0; k < 3; ++k) {
        const double kk = half_window / std::sqrt(sig2);
        const double frac = 1.0 - 2.0 * kk * phi(kk) / (2.0 * Phi(kk) - 1.0);
        sig2 = (m2 - 1.0 / 12.0) / std::max(frac, 0.3);
      }
      out.ok = true;
      out.centre = cn;
      out.centre_err = std::sqrt(var_c) / s0;
      out.sigma = std::sqrt(sig2);
      out.sigma_err = std::sqrt(var_m2) / s0 / (2.0 * out.sigma);
      out.amplitude = s0;
      out.background = bg;
      out.peak_snr = peak / std::sqrt(peak_var);
      return out;
    }
  }
  return out;
}

ProfileFit fit_gaussian(std::span<const double> values, std::span<const double> variances, double y0,
                        double guess, double half_window, double sigma_guess) {
  ProfileFit start = measure_moments(values, variances, y0, guess, half_window);
  double mu = start.ok ? start.centre : guess;
  double sg = start.ok && start.sigma > 0.3 ? start.sigma : sigma_guess;
  auto [i0, i1] = window(values.size(), y0, mu, half_window);
  if (i1 - i0 < 5) return {};
  // Linear start for amplitude and background at fixed (mu, sigma).
  auto linear = [&](double m, double s, double& a, double& b) {
    Eigen::Matrix2d n = Eigen::Matrix2d::Zero();
    Eigen::Vector2d r = Eigen::Vector2d::Zero();
    for (long i = i0; i < i1; ++i) {
      if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
      const double g = pixel_gaussian(y0 + static_cast<double>(i), m, s), w = 1.0 / variances[i];
      n(0, 0) += g * g * w, n(0, 1) += g * w, n(1, 1) += w;
      r(0) += g * values[i] * w, r(1) += values[i] * w;
    }
    n(1, 0) = n(0, 1);
    Eigen::Vector2d p = n.ldlt().solve(r);
    a = p(0), b = p(1);
  };
  double amp = 0, bg = 0;
  linear(mu, sg, amp, bg);
  if (!(amp > 0)) return {};

  auto chi2_of = [&](double a, double m, double s, double b) {
    double chi2 = 0;
    for (long i = i0; i < i1; ++i) {
      if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
      const double r = values[i] - a * pixel_gaussian(y0 + static_cast<double>(i), m, s) - b;
      chi2 += r * r / variances[i];
    }
    return chi2;
  };
  double lambda = 1e-3;
  double chi2 = chi2_of(amp, mu, sg, bg);
  Eigen::Matrix4d jtj;
  Eigen::Vector4d jtr;
  for (int iter = 0; iter < 40; ++iter) {
    jtj.setZero();
    jtr.setZero();
    for (long i = i0; i < i1; ++i) {
      if (!(variances[i] > 0) || !std::isfinite(values[i])) continue;
      const double y = y0 + static_cast<double>(i);
      const double a = (y - 0.5 - mu) / sg, b = (y + 0.5 - mu) / sg;
      const double g = Phi(b) - Phi(a);
      const double pa = phi(a), pb = phi(b);
      Eigen::Vector4d d;
      d << g, amp * (pa - pb) / sg, amp * (a * pa - b * pb) / sg, 1.0;
      const double w = 1.0 / variances[i];
      const double r = values[i] - amp * g - bg;
      jtj.noalias() += w * d * d.transpose();
      jtr.noalias() += w * r * d;
    }
    bool improved = false;
    for (int tries = 0; tries < 10 && !improved; ++tries) {
      Eigen::Matrix4d m = jtj;
      m.diagonal() *= (1.0 + lambda);
      Eigen::Vector4d step = m.ldlt().solve(jtr);
      const double na = amp + step(0), nm = mu + step(1), ns = sg + step(2), nb = bg + step(3);
      if (!(ns > 0.05) || !std::isfinite(nm)) {
        lambda *= 10;
        continue;
      }
      const double nchi2 = chi2_of(na, nm, ns, nb);
      if (nchi2 <= chi2) {
        const bool done = std::abs(step(1)) < 1e-6 && std::abs(step(2)) < 1e-6;
        amp = na, mu = nm, sg = ns, bg = nb;
        chi2 = nchi2;
        lambda = std::max(lambda * 0.1, 1e-9);
        improved = true;
        if (done) iter = 1000;
      } else {
        lambda *= 10;
      }
    }
    if (!improved) break;
  }
  if (!(amp > 0) || std::abs(mu - guess) > half_window) return {};
  Eigen::Matrix4d cov = jtj.inverse();
  ProfileFit out;
  out.ok = std::isfinite(cov(1, 1)) && cov(1, 1) > 0;
  out.centre = mu;
  out.centre_err = std::sqrt(cov(1, 1));
  out.sigma = sg;
  out.sigma_err = std::sqrt(cov(2, 2));
  out.amplitude = amp;
  out.background = bg;
  const long ip = std::clamp(static_cast<long>(std::lround(mu - y0)), 0L, static_cast<long>(values.size()) - 1);
  out.peak_snr = variances[ip] > 0 ? (values[ip] - bg) / std::sqrt(variances[ip]) : 0.0;
  return out;
}

ClippedFit fit_legendre_clipped(std::span<const double> x, std::span<const double> y, std::span<const double> err,
                                int order, double xmin, double xmax, double clip_sigma, int iterations) {
  ClippedFit out;
  const std::size_t n = x.size();
  out.used.assign(n, 0);
  for (std::size_t i = 0; i < n; ++i) out.used[i] = std::isfinite(y[i]) && err[i] > 0 && std::isfinite(err[i]);
  out.series.xmin = xmin;
  out.series.xmax = xmax;
  std::vector<double> basis(static_cast<std::size_t>(std::max(order, 0)) + 1);
  std::vector<double> norm_res;
  for (int round = 0; round <= iterations; ++round) {
    int nused = 0;
    for (auto u : out.used) nused += u;
    // Never fit more coefficients than half the points allow.
    const int ord = std::min(order, std::max(0, nused / 2 - 1));
    if (nused < 1) return out;
    const int nc = ord + 1;
    Eigen::MatrixXd a(nused, nc);
    Eigen::VectorXd b(nused);
    int r = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!out.used[i]) continue;
      legendre_basis(out.series.to_unit(x[i]), basis.data(), ord);
      for (int k = 0; k < nc; ++k) a(r, k) = basis[static_cast<std::size_t>(k)] / err[i];
      b(r) = y[i] / err[i];
      ++r;
    }
    Eigen::VectorXd c = a.colPivHouseholderQr().solve(b);
    out.series.coeffs.assign(c.data(), c.data() + nc);
    // Normalised residuals; their robust scatter scales the threshold when the errors are underestimated.
    norm_res.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (out.used[i]) norm_res.push_back(std::abs((y[i] - out.series(x[i])) / err[i]));
    std::vector<double> tmp = norm_res;
    const double scatter = std::max(1.0, 1.4826 * median_of(tmp));
    bool changed = false;
    double ss = 0;
    int nk = 0;
    if (round < iterations) {
      // Reject the points beyond the threshold that are also within a factor 2 of the worst one, so a
      // single large outlier (which drags the fit) cannot take good points out with it.
      double worst = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (out.used[i]) worst = std::max(worst, std::abs((y[i] - out.series(x[i])) / err[i]));
      for (std::size_t i = 0; i < n; ++i) {
        if (!out.used[i]) continue;
        const double rn = std::abs((y[i] - out.series(x[i])) / err[i]);
        if (rn > clip_sigma * scatter && rn >= 0.5 * worst) out.used[i] = 0, changed = true;
      }
    }
    if (!changed) {
      for (std::size_t i = 0; i < n; ++i)
        if (out.used[i]) {
          const double d = y[i] - out.series(x[i]);
          ss += d * d;
          ++nk;
        }
      out.rms = nk ? std::sqrt(ss / nk) : std::numeric_limits<double>::quiet_NaN();
      out.n_used = nk;
      out.ok = nk > 0;
      return out;
    }
  }
  return out;
}

}  // namespace kspecdr::trace
