#include "kspecdr/detector/stats.hpp"

#include <Eigen/Dense>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numbers>
#include <random>

#include "kspecdr/core/error.hpp"

namespace kspecdr::detector {


double truncated_sigma_ratio(double kappa) {
  if (!(kappa > 0) || !std::isfinite(kappa)) return 1.0;
  const double phi = std::exp(-0.5 * kappa * kappa) / std::sqrt(2.0 * std::numbers::pi);
  const double mass = std::erf(kappa / std::numbers::sqrt2);
  return std::sqrt(std::max(1e-6, 1.0 - 2.0 * kappa * phi / mass));
}

ClippedStats clipped_stats(std::vector<double> values, double kappa, int max_iter) {
  std::erase_if(values, [](double x) { return !std::isfinite(x); });
  ClippedStats out;
  if (values.empty()) {
    out.mean = out.stddev = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  std::vector<double> tmp = values;
  double centre = median_inplace(tmp);
  for (auto& t : tmp) t = std::abs(t - centre);
  double scale = 1.4826 * median_inplace(tmp);
  const double ratio = truncated_sigma_ratio(kappa);
  std::size_t last_n = 0;
  double mean = centre, sd = scale;
  for (int it = 0; it < max_iter; ++it) {
    double s = 0, ss = 0;
    std::size_t n = 0;
    for (double x : values) {
      if (scale > 0 && std::abs(x - centre) > kappa * scale) continue;
      s += x;
      ++n;
    }
    if (n == 0) break;
    mean = s / static_cast<double>(n);
    for (double x : values) {
      if (scale > 0 && std::abs(x - centre) > kappa * scale) continue;
      ss += (x - mean) * (x - mean);
    }
    sd = n > 1 ? std::sqrt(ss / static_cast<double>(n - 1)) : 0.0;
    // An all-equal (MAD = 0) sample keeps every value; the clip corrects nothing then.
    if (scale > 0) sd /= ratio;
    out.n_used = n;
    if (n == last_n) break;
    last_n = n;
    centre = mean;
    scale = sd;
  }
  out.mean = mean;
  out.stddev = sd;
  return out;
}

double median_variance_factor(int n) {
  if (n <= 2) return 1.0;
  static std::mutex mu;
  static std::map<int, double> cache;
  std::lock_guard lock(mu);
  if (auto it = cache.find(n); it != cache.end()) return it->second;
  std::mt19937_64 rng(12345u + static_cast<unsigned>(n));
  std::normal_distribution<double> g;
  const int trials = 40000;
  std::vector<double> buf(static_cast<std::size_t>(n));
  double s2 = 0;
  for (int t = 0; t < trials; ++t) {
    for (auto& b : buf) b = g(rng);
    double m = median_inplace(buf);
    s2 += m * m;
  }
  double f = s2 / trials * n;
  cache[n] = f;
  return f;
}

double PolyFit::operator()(double x) const {
  const double t = xmax > xmin ? 2.0 * (x - xmin) / (xmax - xmin) - 1.0 : 0.0;
  double v = 0.0;
  for (std::size_t k = coeffs.size(); k-- > 0;) v = v * t + coeffs[k];
  return v;
}

PolyFit fit_poly_clipped(std::span<const double> x, std::span<const double> y, int order, double kappa,
                         int max_iter) {
  if (x.size() != y.size()) throw DataError("fit_poly_clipped: x and y differ in length");
  PolyFit fit;
  if (x.empty()) throw DataError("fit_poly_clipped: no points to fit");
  fit.xmin = *std::min_element(x.begin(), x.end());
  fit.xmax = *std::max_element(x.begin(), x.end());
  const int ncoef = std::max(1, order + 1);
  std::vector<char> keep(x.size(), 1);
  for (std::size_t i = 0; i < x.size(); ++i) keep[i] = std::isfinite(y[i]) ? 1 : 0;
  const double ratio = truncated_sigma_ratio(kappa);
  for (int it = 0; it < max_iter; ++it) {
    std::size_t n = static_cast<std::size_t>(std::count(keep.begin(), keep.end(), 1));
    if (n < static_cast<std::size_t>(ncoef))
      throw NumericalError(fmt::format("polynomial fit of order {} has only {} points left", order, n));
    Eigen::MatrixXd a(static_cast<Eigen::Index>(n), ncoef);
    Eigen::VectorXd b(static_cast<Eigen::Index>(n));
    Eigen::Index r = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!keep[i]) continue;
      const double t = fit.xmax > fit.xmin ? 2.0 * (x[i] - fit.xmin) / (fit.xmax - fit.xmin) - 1.0 : 0.0;
      double p = 1.0;
      for (int k = 0; k < ncoef; ++k, p *= t) a(r, k) = p;
      b(r++) = y[i];
    }
    Eigen::VectorXd c = a.colPivHouseholderQr().solve(b);
    fit.coeffs.assign(c.data(), c.data() + ncoef);
    double ss = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (keep[i]) ss += std::pow(y[i] - fit(x[i]), 2);
    const double dof = static_cast<double>(std::max<std::size_t>(1, n - static_cast<std::size_t>(ncoef)));
    fit.rms = std::sqrt(ss / dof);
    fit.n_used = n;
    // The first pass has outliers in it; later passes see a clipped sample.
    const double scale = it == 0 ? fit.rms : fit.rms / ratio;
    bool changed = false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(y[i])) continue;
      char k = std::abs(y[i] - fit(x[i])) <= kappa * scale ? 1 : 0;
      if (k != keep[i]) changed = true;
      keep[i] = k;
    }
    if (it > 0) fit.rms /= ratio;
    if (!changed) break;
  }
  return fit;
}

}  // namespace kspecdr::detector
