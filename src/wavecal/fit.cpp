#include "kspecdr/wavecal/fit_detail.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

namespace kspecdr::wavecal::detail {

double median(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  const auto mid = v.begin() + static_cast<long>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2) return *mid;
  const double hi = *mid;
  const double lo = *std::max_element(v.begin(), mid);
  return 0.5 * (lo + hi);
}

namespace {

bool solve(const std::vector<double>& x, const std::vector<double>& y, const std::vector<double>& err,
           const std::vector<char>& use, int order, LegendreSeries& s, Eigen::MatrixXd* normal_inv) {
  const int m = order + 1;
  Eigen::MatrixXd ata = Eigen::MatrixXd::Zero(m, m);
  Eigen::VectorXd atb = Eigen::VectorXd::Zero(m);
  std::vector<double> p(static_cast<std::size_t>(m));
  int n = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!use[i]) continue;
    ++n;
    legendre_basis(s.to_unit(x[i]), p.data(), order);
    const double w = 1.0 / (err[i] * err[i]);
    for (int a = 0; a < m; ++a) {
      atb[a] += w * p[static_cast<std::size_t>(a)] * y[i];
      for (int b = 0; b < m; ++b) ata(a, b) += w * p[static_cast<std::size_t>(a)] * p[static_cast<std::size_t>(b)];
    }
  }
  if (n < m) return false;
  Eigen::LDLT<Eigen::MatrixXd> ldlt(ata);
  if (ldlt.info() != Eigen::Success) return false;
  const Eigen::VectorXd c = ldlt.solve(atb);
  if (!c.allFinite()) return false;
  s.coeffs.assign(c.data(), c.data() + m);
  if (normal_inv) *normal_inv = ldlt.solve(Eigen::MatrixXd::Identity(m, m));
  return true;
}

}  // namespace

ClippedFit fit_legendre_clipped(const std::vector<double>& x, const std::vector<double>& y,
                                const std::vector<double>& err, const std::vector<double>& true_err, int order,
                                double xmin, double xmax, double clip_sigma, int iterations) {
  ClippedFit f;
  f.series.xmin = xmin;
  f.series.xmax = xmax;
  const std::size_t n = x.size();
  f.used.assign(n, 1);
  if (order < 0 || n < static_cast<std::size_t>(order + 1)) return f;
  for (int it = 0; it <= iterations; ++it) {
    if (!solve(x, y, err, f.used, order, f.series, nullptr)) return f;
    std::vector<double> z;
    for (std::size_t i = 0; i < n; ++i)
      if (f.used[i]) z.push_back(std::abs(y[i] - f.series(x[i])) / err[i]);
    // 1.4826 × MAD of |z| about 0: the scale a Gaussian with σ = `scale` would give.
    f.scale = std::max(1.0, 1.4826 * median(z));
    std::vector<char> next(n);
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
      next[i] = std::abs(y[i] - f.series(x[i])) / err[i] <= clip_sigma * f.scale;
      kept += next[i] ? 1 : 0;
    }
    if (kept < static_cast<std::size_t>(order + 1) || next == f.used) break;
    f.used = next;
  }
  Eigen::MatrixXd ninv;
  if (!solve(x, y, err, f.used, order, f.series, &ninv)) return f;
  const int m = order + 1;
  // Sandwich: (AᵀWA)⁻¹ AᵀW Σ W A (AᵀWA)⁻¹ with Σ the true noise.
  Eigen::MatrixXd mid = Eigen::MatrixXd::Zero(m, m);
  std::vector<double> p(static_cast<std::size_t>(m));
  double chi2 = 0;
  int nu = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!f.used[i]) continue;
    ++nu;
    const double r = (y[i] - f.series(x[i])) / err[i];
    chi2 += r * r;
    legendre_basis(f.series.to_unit(x[i]), p.data(), order);
    const double w = 1.0 / (err[i] * err[i]);
    const double te = true_err.empty() ? err[i] : true_err[i];
    const double ww = w * w * te * te;
    for (int a = 0; a < m; ++a)
      for (int b = 0; b < m; ++b) mid(a, b) += ww * p[static_cast<std::size_t>(a)] * p[static_cast<std::size_t>(b)];
  }
  const Eigen::MatrixXd cov = ninv * mid * ninv;
  f.cov.assign(cov.data(), cov.data() + m * m);
  f.chi2_dof = nu > m ? chi2 / (nu - m) : 0.0;
  f.ok = true;
  return f;
}

double series_variance(const ClippedFit& fit, double x) {
  const int m = static_cast<int>(fit.series.coeffs.size());
  if (m == 0 || fit.cov.size() != static_cast<std::size_t>(m * m)) return std::numeric_limits<double>::quiet_NaN();
  std::vector<double> p(static_cast<std::size_t>(m));
  legendre_basis(fit.series.to_unit(x), p.data(), m - 1);
  double v = 0;
  for (int a = 0; a < m; ++a)
    for (int b = 0; b < m; ++b)
      v += p[static_cast<std::size_t>(a)] * fit.cov[static_cast<std::size_t>(a * m + b)] * p[static_cast<std::size_t>(b)];
  return v;
}

}  // namespace kspecdr::wavecal::detail

namespace kspecdr::wavecal::detail {

std::vector<ArcLine> anchor_lines(const LineList& list, double lo, double hi, double min_sep) {
  std::vector<ArcLine> out;
  const auto& L = list.lines;
  for (std::size_t i = 0; i < L.size(); ++i) {
    const double w = L[i].wavelength_angstrom;
    if (w < lo || w > hi || L[i].blend) continue;
    const bool close_left = i > 0 && w - L[i - 1].wavelength_angstrom < min_sep;
    const bool close_right = i + 1 < L.size() && L[i + 1].wavelength_angstrom - w < min_sep;
    if (!close_left && !close_right) out.push_back(L[i]);
  }
  return out;
}

double nearest_line(const std::vector<double>& w, double lam, double* second_dist) {
  double best = std::numeric_limits<double>::quiet_NaN();
  double d1 = std::numeric_limits<double>::infinity(), d2 = d1;
  const auto it = std::lower_bound(w.begin(), w.end(), lam);
  const long k = it - w.begin();
  for (long j = k - 2; j <= k + 1; ++j) {
    if (j < 0 || j >= static_cast<long>(w.size())) continue;
    const double d = std::abs(w[static_cast<std::size_t>(j)] - lam);
    if (d < d1) {
      d2 = d1;
      d1 = d;
      best = w[static_cast<std::size_t>(j)];
    } else if (d < d2) {
      d2 = d;
    }
  }
  if (second_dist) *second_dist = d2;
  return best;
}

std::vector<std::pair<std::size_t, std::size_t>> match_lines(const std::vector<ArcPeak>& peaks,
                                                              const LegendreSeries& model,
                                                              const std::vector<double>& w, double tol_px) {
  std::vector<long> line_of(peaks.size(), -1);
  std::vector<double> dist(peaks.size(), 0.0);
  std::vector<long> owner(w.size(), -1);
  for (std::size_t i = 0; i < peaks.size(); ++i) {
    const ArcPeak& p = peaks[i];
    if (!p.usable() || !std::isfinite(p.x_err_px)) continue;
    const double lam = model(p.x_px);
    const double disp = std::abs(model.derivative(p.x_px));
    if (!(disp > 0)) continue;
    double d2 = 0;
    const double best = nearest_line(w, lam, &d2);
    const double d1 = std::abs(best - lam);
    if (!(d1 <= tol_px * disp) || d2 <= tol_px * disp) continue;
    const auto li = static_cast<std::size_t>(std::lower_bound(w.begin(), w.end(), best) - w.begin());
    const double dpx = d1 / disp;
    if (owner[li] >= 0) {
      if (dpx >= dist[static_cast<std::size_t>(owner[li])]) continue;
      line_of[static_cast<std::size_t>(owner[li])] = -1;
    }
    owner[li] = static_cast<long>(i);
    line_of[i] = static_cast<long>(li);
    dist[i] = dpx;
  }
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (std::size_t i = 0; i < peaks.size(); ++i)
    if (line_of[i] >= 0) out.emplace_back(i, static_cast<std::size_t>(line_of[i]));
  return out;
}

double honest_error_px(const std::vector<double>& x, const std::vector<double>& y, const std::vector<double>& x_err_px,
                       const std::vector<double>& resid_px, const std::vector<double>& disp, int order, double xmin,
                       double xmax, double floor_px, long npix, const LegendreSeries& lambda) {
  const std::size_t n = x.size();
  const int m = order + 1;
  if (n <= static_cast<std::size_t>(m)) return std::numeric_limits<double>::quiet_NaN();
  auto chi2 = [&](double s2) {
    double c = 0;
    for (std::size_t i = 0; i < n; ++i) c += resid_px[i] * resid_px[i] / (x_err_px[i] * x_err_px[i] + s2);
    return c;
  };
  const double dof = static_cast<double>(n) - m;
  double s2 = 0.0;
  if (chi2(0.0) > dof) {  // bisection on σ² (χ² falls monotonically with it)
    double lo = 0.0, hi = 1.0;
    while (chi2(hi) > dof && hi < 1e4) hi *= 4.0;
    for (int it = 0; it < 80; ++it) {
      const double mid = 0.5 * (lo + hi);
      (chi2(mid) > dof ? lo : hi) = mid;
    }
    s2 = hi;
  }
  std::vector<double> w_err(n), t_err(n);
  for (std::size_t i = 0; i < n; ++i) {
    w_err[i] = std::hypot(x_err_px[i], floor_px) * disp[i];
    t_err[i] = std::sqrt(x_err_px[i] * x_err_px[i] + s2) * disp[i];
  }
  const ClippedFit f = fit_legendre_clipped(x, y, w_err, t_err, order, xmin, xmax, 1e30, 0);
  if (!f.ok) return std::numeric_limits<double>::quiet_NaN();
  double sv = 0;
  int nv = 0;
  for (long px = 0; px < npix; px += std::max(1L, npix / 256)) {
    const double xd = static_cast<double>(px);
    sv += series_variance(f, xd) / std::pow(lambda.derivative(xd), 2);
    ++nv;
  }
  return std::sqrt(sv / std::max(1, nv));
}

}  // namespace kspecdr::wavecal::detail
