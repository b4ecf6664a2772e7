#include "kspecdr/fluxcal/resolution.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {

namespace {

constexpr double kFwhmPerSigma = 2.354820045030949;  // 2 √(2 ln 2)

double median_of(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Σ a_k u^k with u = (λ − c) / h as powers of λ: Σ_k a_k h^−k Σ_m C(k, m) λ^m (−c)^(k−m).
std::vector<double> to_lambda_powers(const std::vector<double>& a, double c, double h) {
  std::vector<double> out(a.size(), 0.0);
  for (std::size_t k = 0; k < a.size(); ++k) {
    double binom = 1.0;
    for (std::size_t m = 0; m <= k; ++m) {
      if (m > 0) binom = binom * static_cast<double>(k - m + 1) / static_cast<double>(m);
      out[m] += a[k] / std::pow(h, static_cast<double>(k)) * binom * std::pow(-c, static_cast<double>(k - m));
    }
  }
  return out;
}

}  // namespace

double ArcResolution::arc_fwhm_error(double lambda) const {
  const double l = std::clamp(lambda, arc_fwhm.lambda_lo, arc_fwhm.lambda_hi);
  const double u = (l - lambda_centre) / lambda_half_width;
  const std::size_t n = coeff_u.size();
  std::vector<double> b(n);
  for (std::size_t k = 0; k < n; ++k) b[k] = std::pow(u, static_cast<double>(k));
  double v = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) v += b[i] * covariance[i * n + j] * b[j];
  return std::sqrt(std::max(0.0, v));
}

std::string ArcResolution::summary() const {
  const double mid = lambda_centre;
  return fmt::format("FWHM {:.2f} A at {:.0f} A ({:.2f}-{:.2f} A over {:.0f}-{:.0f} A) from {} arc lines, {}",
                     resolution.fwhm(mid), mid, resolution.fwhm(resolution.lambda_lo),
                     resolution.fwhm(resolution.lambda_hi), resolution.lambda_lo, resolution.lambda_hi, n_used,
                     std::filesystem::path(source).filename().string());
}

ArcResolution resolution_from_arcs(const wavecal::ArcCalibration& arc, const std::string& source, int degree,
                                   double clip_sigma) {
  if (degree < 0 || degree > 4) throw ConfigError(fmt::format("resolution polynomial degree {} is not 0..4", degree));
  std::vector<double> lam, fwhm, pix;
  ArcResolution r;
  r.source = source;
  r.degree = degree;
  for (const auto& s : arc.solutions) {
    if (!s.ok()) continue;
    bool any = false;
    for (const auto& l : s.lines) {
      if (!l.used || !(l.sigma_px > 0) || !std::isfinite(l.sigma_px)) continue;
      const double d = std::abs(s.dispersion(l.x_px));
      if (!(d > 0) || !std::isfinite(d)) continue;
      lam.push_back(s.wavelength(l.x_px));
      fwhm.push_back(kFwhmPerSigma * l.sigma_px * d);
      pix.push_back(d);
      any = true;
    }
    r.n_apertures += any;
  }
  r.n_lines = static_cast<int>(lam.size());
  const auto np = static_cast<std::size_t>(degree + 1);
  if (lam.size() < np + 2)
    throw DataError(fmt::format("{} arc lines with a width in the arc solution: too few to measure the resolution "
                                "(a degree-{} polynomial in wavelength needs at least {})",
                                lam.size(), degree, np + 2),
                    ErrorContext{.file = source});
  const auto [lo_it, hi_it] = std::minmax_element(lam.begin(), lam.end());
  const double lo = *lo_it, hi = *hi_it;
  r.lambda_centre = 0.5 * (lo + hi);
  r.lambda_half_width = std::max(1.0, 0.5 * (hi - lo));
  const std::size_t n = lam.size();
  Eigen::MatrixXd A(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(np));
  for (std::size_t i = 0; i < n; ++i) {
    const double u = (lam[i] - r.lambda_centre) / r.lambda_half_width;
    for (std::size_t k = 0; k < np; ++k) A(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(k)) = std::pow(u, static_cast<double>(k));
  }
  // The same clipped set of lines for the arc FWHM and for the fit FWHM (arc ⊕ pixel terms).
  std::vector<unsigned char> use(n, 1);
  Eigen::VectorXd coef, coef_fit;
  auto solve = [&](const std::vector<double>& y) {
    Eigen::MatrixXd Au(0, static_cast<Eigen::Index>(np));
    std::vector<Eigen::Index> rows;
    for (std::size_t i = 0; i < n; ++i)
      if (use[i]) rows.push_back(static_cast<Eigen::Index>(i));
    Au.resize(static_cast<Eigen::Index>(rows.size()), static_cast<Eigen::Index>(np));
    Eigen::VectorXd yu(static_cast<Eigen::Index>(rows.size()));
    for (std::size_t k = 0; k < rows.size(); ++k) {
      Au.row(static_cast<Eigen::Index>(k)) = A.row(rows[k]);
      yu(static_cast<Eigen::Index>(k)) = y[static_cast<std::size_t>(rows[k])];
    }
    return Eigen::VectorXd(Au.colPivHouseholderQr().solve(yu));
  };
  for (int it = 0; it < 20; ++it) {
    coef = solve(fwhm);
    std::vector<double> res(n), used_res;
    for (std::size_t i = 0; i < n; ++i) {
      res[i] = fwhm[i] - A.row(static_cast<Eigen::Index>(i)).dot(coef);
      if (use[i]) used_res.push_back(std::abs(res[i]));
    }
    const double sigma = 1.4826 * median_of(used_res);
    bool changed = false;
    for (std::size_t i = 0; i < n; ++i) {
      const unsigned char now = sigma > 0 ? std::abs(res[i]) <= clip_sigma * sigma : 1;
      changed = changed || now != use[i];
      use[i] = now;
    }
    if (std::count(use.begin(), use.end(), 1) < static_cast<long>(np + 2))
      throw DataError(fmt::format("the clipping left fewer than {} of {} arc lines to measure the resolution", np + 2, n),
                      ErrorContext{.file = source});
    if (!changed) break;
  }
  // Residual variance and covariance of the coefficients.
  double ss = 0;
  Eigen::MatrixXd AtA = Eigen::MatrixXd::Zero(static_cast<Eigen::Index>(np), static_cast<Eigen::Index>(np));
  for (std::size_t i = 0; i < n; ++i) {
    if (!use[i]) continue;
    const auto row = A.row(static_cast<Eigen::Index>(i));
    const double e = fwhm[i] - row.dot(coef);
    ss += e * e;
    AtA += row.transpose() * row;
    ++r.n_used;
  }
  const double s2 = ss / static_cast<double>(r.n_used - static_cast<int>(np));
  r.rms_angstrom = std::sqrt(ss / static_cast<double>(r.n_used));
  const Eigen::MatrixXd cov = s2 * AtA.inverse();
  r.coeff_u.assign(coef.data(), coef.data() + coef.size());
  r.covariance.assign(np * np, 0.0);
  for (std::size_t i = 0; i < np; ++i)
    for (std::size_t j = 0; j < np; ++j)
      r.covariance[i * np + j] = cov(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j));
  std::vector<double> fit_fwhm(n);
  for (std::size_t i = 0; i < n; ++i)
    fit_fwhm[i] = std::sqrt(fwhm[i] * fwhm[i] + kFwhmPerSigma * kFwhmPerSigma * pix[i] * pix[i] / 6.0);
  coef_fit = solve(fit_fwhm);
  r.arc_fwhm.fwhm_poly_angstrom = to_lambda_powers(r.coeff_u, r.lambda_centre, r.lambda_half_width);
  r.resolution.fwhm_poly_angstrom = to_lambda_powers(std::vector<double>(coef_fit.data(), coef_fit.data() + coef_fit.size()),
                                                     r.lambda_centre, r.lambda_half_width);
  for (Resolution* res : {&r.arc_fwhm, &r.resolution}) {
    res->lambda_lo = lo;
    res->lambda_hi = hi;
  }
  for (double l : {lo, r.lambda_centre, hi})
    if (!(r.resolution.fwhm(l) > 0) || !(r.arc_fwhm.fwhm(l) > 0))
      throw DataError(fmt::format("the resolution fitted to the arc lines is not positive at {:.0f} A", l),
                      ErrorContext{.file = source});
  return r;
}

ArcResolution resolution_from_arc_file(const std::filesystem::path& arcsol, int degree, double clip_sigma) {
  if (!std::filesystem::is_regular_file(arcsol))
    throw DataError("arc-solution file not found (needed for the instrument resolution)",
                    ErrorContext{.file = arcsol.string()});
  return resolution_from_arcs(wavecal::read_arc_file(arcsol), arcsol.string(), degree, clip_sigma);
}

}  // namespace kspecdr::fluxcal
