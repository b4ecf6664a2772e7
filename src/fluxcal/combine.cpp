#include "kspecdr/fluxcal/combine.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/stats.hpp"

namespace kspecdr::fluxcal {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool usable(const StarCal& s, std::size_t j) {
  return s.good[j] && std::isfinite(s.cal[j]) && s.cal[j] > 0 && std::isfinite(s.variance[j]) && s.variance[j] > 0;
}

/// Per pixel, the median over the given stars (NaN where none).
std::vector<double> pixel_median(const std::vector<StarCal>& stars, const std::vector<std::size_t>& which,
                                 const std::vector<double>& factor) {
  const std::size_t n = stars.front().cal.size();
  std::vector<double> out(n, kNaN), v;
  for (std::size_t j = 0; j < n; ++j) {
    v.clear();
    for (std::size_t s : which)
      if (usable(stars[s], j)) v.push_back(stars[s].cal[j] / factor[s]);
    out[j] = median_inplace(v);
  }
  return out;
}

/// ln of the star's level against a reference curve: the median over λ of ln(cal / ref).
double log_level(const StarCal& s, const std::vector<double>& ref) {
  std::vector<double> r;
  for (std::size_t j = 0; j < ref.size(); ++j)
    if (usable(s, j) && ref[j] > 0) r.push_back(std::log(s.cal[j] / ref[j]));
  return median_inplace(r);
}

}  // namespace

std::vector<StarQC> quality_gates(const std::vector<StarCal>& stars, const CombineConfig& cfg) {
  const std::size_t n = stars.size();
  std::vector<StarQC> qc(n);
  std::vector<double> severity(n, 0.0);
  std::vector<std::string> why(n);
  std::vector<std::size_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<double> ones(n, 1.0);
  const auto ref = pixel_median(stars, all, ones);
  std::vector<double> levels;
  for (std::size_t s = 0; s < n; ++s) {
    auto& q = qc[s];
    q.name = stars[s].name;
    q.chi2_dof = stars[s].chi2_dof;
    q.snr = stars[s].snr;
    long good = 0;
    for (std::size_t j = 0; j < stars[s].cal.size(); ++j) good += usable(stars[s], j);
    q.good_fraction = stars[s].cal.empty() ? 0.0 : static_cast<double>(good) / static_cast<double>(stars[s].cal.size());
    q.log_level = log_level(stars[s], ref);
    if (std::isfinite(q.log_level)) levels.push_back(q.log_level);
    auto fail = [&](double sev, const std::string& text) {
      if (sev > severity[s]) severity[s] = sev;
      why[s] += (why[s].empty() ? "" : "; ") + text;
    };
    if (q.chi2_dof > cfg.max_chi2_dof)
      fail(q.chi2_dof / cfg.max_chi2_dof, fmt::format("template fit chi2/dof {:.2f} > {:.2f}", q.chi2_dof, cfg.max_chi2_dof));
    if (q.good_fraction < cfg.min_good_fraction)
      fail(cfg.min_good_fraction / std::max(q.good_fraction, 1e-6),
           fmt::format("good-pixel fraction {:.2f} < {:.2f}", q.good_fraction, cfg.min_good_fraction));
    if (q.snr < cfg.min_snr)
      fail(cfg.min_snr / std::max(q.snr, 1e-6), fmt::format("S/N {:.1f} < {:.1f}", q.snr, cfg.min_snr));
  }
  if (levels.size() >= 3) {
    const double med = median_inplace(levels);
    std::vector<double> dev;
    for (double l : levels) dev.push_back(std::abs(l - med));
    const double mad_sigma = 1.4826 * median_inplace(dev);
    for (std::size_t s = 0; s < n; ++s) {
      qc[s].log_level -= med;
      const double sigma = std::max({mad_sigma, cfg.scale_floor, stars[s].scale_rel_err});
      const double z = std::abs(qc[s].log_level) / sigma;
      if (z > cfg.scale_clip) {
        if (z / cfg.scale_clip > severity[s]) severity[s] = z / cfg.scale_clip;
        why[s] += (why[s].empty() ? "" : "; ") +
                  fmt::format("level {:+.1f}% from the median of the stars ({:.1f} robust sigma of {:.3f}, limit {:.1f})",
                              100.0 * std::expm1(qc[s].log_level), z, sigma, cfg.scale_clip);
      }
    }
  }
  // Reject the worst first, never more than half of the stars.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return severity[a] > severity[b]; });
  const std::size_t cap = n / 2;
  std::size_t rejected = 0;
  for (std::size_t s : order) {
    if (severity[s] <= 1.0) continue;
    if (rejected < cap) {
      qc[s].rejected = true;
      qc[s].reason = why[s];
      ++rejected;
    } else {
      qc[s].reason = "kept although " + why[s] + " (never more than half of the stars are rejected)";
    }
  }
  return qc;
}

std::vector<double> savitzky_golay(const std::vector<double>& y, const std::vector<unsigned char>& good, int window,
                                   int order) {
  const long n = static_cast<long>(y.size());
  std::vector<long> idx;
  for (long j = 0; j < n; ++j)
    if (good[static_cast<std::size_t>(j)] && std::isfinite(y[static_cast<std::size_t>(j)])) idx.push_back(j);
  std::vector<double> out(y);
  if (static_cast<long>(idx.size()) <= order + 1) return out;
  // Bridge masked pixels linearly so the window always holds a regular sample.
  std::vector<double> f(static_cast<std::size_t>(n));
  for (long j = 0, k = 0; j < n; ++j) {
    while (k + 1 < static_cast<long>(idx.size()) && idx[static_cast<std::size_t>(k + 1)] <= j) ++k;
    const long a = idx[static_cast<std::size_t>(k)];
    const long b = k + 1 < static_cast<long>(idx.size()) ? idx[static_cast<std::size_t>(k + 1)] : a;
    if (j <= idx.front()) f[static_cast<std::size_t>(j)] = y[static_cast<std::size_t>(idx.front())];
    else if (b == a || j >= idx.back()) f[static_cast<std::size_t>(j)] = y[static_cast<std::size_t>(std::min(a, idx.back()))];
    else f[static_cast<std::size_t>(j)] = y[static_cast<std::size_t>(a)] + (y[static_cast<std::size_t>(b)] - y[static_cast<std::size_t>(a)]) * static_cast<double>(j - a) / static_cast<double>(b - a);
  }
  const long h = std::max(1, window / 2);
  for (long j = 0; j < n; ++j) {
    if (!good[static_cast<std::size_t>(j)]) continue;
    // Near the ends the window slides inward and the polynomial is evaluated off centre.
    const long lo = std::clamp(j - h, 0L, std::max(0L, n - 1 - 2 * h)), hi = std::min(n - 1, lo + 2 * h);
    const int m = static_cast<int>(std::min<long>(order, hi - lo)) + 1;
    Eigen::MatrixXd A(hi - lo + 1, m);
    Eigen::VectorXd b(hi - lo + 1);
    for (long k = lo; k <= hi; ++k) {
      const double u = static_cast<double>(k - j) / static_cast<double>(h);
      double p = 1;
      for (int c = 0; c < m; ++c) A(k - lo, c) = p, p *= u;
      b(k - lo) = f[static_cast<std::size_t>(k)];
    }
    const Eigen::VectorXd coef = A.colPivHouseholderQr().solve(b);
    out[static_cast<std::size_t>(j)] = coef(0);
  }
  return out;
}

CombinedCal combine_calibrations(const std::vector<StarCal>& stars, const CombineConfig& cfg) {
  if (stars.empty()) throw DataError("no standard-star calibration to combine");
  if (cfg.method != "wmean" && cfg.method != "median")
    throw ConfigError("combination method must be wmean or median, not '" + cfg.method + "'");
  if (cfg.smooth != "none" && cfg.smooth != "savgol")
    throw ConfigError("smoothing must be none or savgol, not '" + cfg.smooth + "'");
  const std::size_t n = stars.front().cal.size();
  for (const auto& s : stars)
    if (s.cal.size() != n || s.variance.size() != n || s.good.size() != n)
      throw DataError(fmt::format("calibration of {} has {} pixels, the first star {}", s.name, s.cal.size(), n));
  CombinedCal out;
  out.qc = quality_gates(stars, cfg);
  std::vector<std::size_t> use;
  for (std::size_t s = 0; s < stars.size(); ++s)
    if (!out.qc[s].rejected) use.push_back(s);
  if (use.empty()) {
    std::string reasons;
    for (const auto& q : out.qc) reasons += fmt::format("\n  {}: {}", q.name, q.reason);
    throw DataError(fmt::format("every standard star was rejected:{}", reasons));
  }
  out.n_stars = static_cast<int>(use.size());
  std::vector<double> factor(stars.size(), 1.0);
  std::vector<std::vector<unsigned char>> kept(stars.size(), std::vector<unsigned char>(n, 0));
  for (std::size_t s : use)
    for (std::size_t j = 0; j < n; ++j) kept[s][j] = usable(stars[s], j);

  // With grey factors a star's fully correlated (level) variance is absorbed by its factor: weights and
  // clipping use the rest, and the level of the common curve (the geometric mean of the stars' levels, the
  // factors being normalised to a geometric mean of 1) carries (1/N²) Σ correlated_rel_var.
  const bool grey = cfg.per_star_scale && use.size() > 1;
  auto vind = [&](std::size_t s, std::size_t j) {
    const double v = stars[s].variance[j];
    if (!grey || !(stars[s].correlated_rel_var > 0)) return v;
    const double r = v - stars[s].correlated_rel_var * stars[s].cal[j] * stars[s].cal[j];
    return r > 0 ? r : v;
  };
  double grey_level = 0.0;
  if (grey) {
    for (std::size_t s : use) grey_level += std::max(0.0, stars[s].correlated_rel_var);
    grey_level /= static_cast<double>(use.size() * use.size());
  }
  auto combine_once = [&] {
    out.cal.assign(n, kNaN);
    out.variance.assign(n, kNaN);
    out.n_used.assign(n, 0);
    for (std::size_t j = 0; j < n; ++j) {
      std::vector<std::size_t> in;
      for (std::size_t s : use)
        if (usable(stars[s], j)) in.push_back(s);
      std::vector<unsigned char> on(in.size(), 1);
      double mean = kNaN, var = kNaN;
      if (cfg.method == "wmean" && in.size() >= 3) {
        // The first clipping is about the median, so that one wild value cannot drag the others out.
        std::vector<double> v0;
        for (std::size_t s : in) v0.push_back(stars[s].cal[j] / factor[s]);
        const double med = median_inplace(v0);
        for (std::size_t k = 0; k < in.size(); ++k) {
          const auto s = in[k];
          on[k] = std::abs(stars[s].cal[j] / factor[s] - med) / (std::sqrt(vind(s, j)) / factor[s]) <= cfg.clip_sigma;
        }
        if (std::count(on.begin(), on.end(), 1) == 0) std::fill(on.begin(), on.end(), 1);
      }
      for (int it = 0; it <= cfg.clip_iterations; ++it) {
        double sw = 0, swv = 0;
        std::vector<double> vals;
        for (std::size_t k = 0; k < in.size(); ++k) {
          if (!on[k]) continue;
          const auto s = in[k];
          const double v = stars[s].cal[j] / factor[s], w = factor[s] * factor[s] / vind(s, j);
          sw += w;
          swv += w * v;
          vals.push_back(v);
        }
        if (vals.empty()) break;
        if (cfg.method == "median") {
          mean = median_inplace(vals);
          var = (vals.size() > 2 ? 0.5 * 3.141592653589793 : 1.0) / sw;  // efficiency of the median for Gaussians
        } else {
          mean = swv / sw;
          var = 1.0 / sw;
        }
        // The level part: with grey factors it was taken out of the weights and comes back once, as the
        // error of the common level; without, it is already inside 1/Σw.
        if (grey) var += grey_level * mean * mean;
        if (cfg.method == "median" || in.size() < 3 || it == cfg.clip_iterations) break;
        bool changed = false;
        for (std::size_t k = 0; k < in.size(); ++k) {
          const auto s = in[k];
          const double z = std::abs(stars[s].cal[j] / factor[s] - mean) / (std::sqrt(vind(s, j)) / factor[s]);
          const unsigned char now = z <= cfg.clip_sigma;
          changed = changed || now != on[k];
          on[k] = now;
        }
        if (!changed) break;
      }
      for (std::size_t k = 0; k < in.size(); ++k) kept[in[k]][j] = on[k];
      if (std::isfinite(mean)) {
        out.cal[j] = mean;
        out.variance[j] = var;
        out.n_used[j] = static_cast<int>(std::count(on.begin(), on.end(), 1));
      }
    }
  };
  if (cfg.per_star_scale && use.size() > 1) {
    // A robust first guess of the grey factors (the median level against the per-pixel median), so that the
    // first clipping does not take the grey differences between stars for outliers.
    const auto ref = pixel_median(stars, use, factor);
    double sum_log = 0;
    for (std::size_t s : use) {
      const double l = log_level(stars[s], ref);
      factor[s] = std::isfinite(l) ? std::exp(l) : 1.0;
      sum_log += std::log(factor[s]);
    }
    const double g = std::exp(sum_log / static_cast<double>(use.size()));
    for (std::size_t s : use) factor[s] /= g;
  }
  combine_once();
  if (cfg.per_star_scale && use.size() > 1) {
    for (int it = 0; it < 4; ++it) {
      double sum_log = 0;
      for (std::size_t s : use) {
        double sw = 0, swr = 0;
        for (std::size_t j = 0; j < n; ++j)
          if (kept[s][j] && out.cal[j] > 0) {
            const double r = stars[s].cal[j] / out.cal[j];
            const double w = out.cal[j] * out.cal[j] / vind(s, j);
            sw += w, swr += w * r;
          }
        factor[s] = sw > 0 ? swr / sw : 1.0;
        sum_log += std::log(factor[s]);
      }
      const double g = std::exp(sum_log / static_cast<double>(use.size()));
      for (std::size_t s : use) factor[s] /= g;
      combine_once();
    }
  }
  for (std::size_t s = 0; s < stars.size(); ++s) out.qc[s].factor = factor[s];
  if (grey) {
    out.level_rel_var = grey_level;
  } else {
    // Without grey factors: the inverse-variance weighted mean of the stars' level variances, in the weights
    // of a typical pixel (every star's median weight).
    double sw = 0, swwc = 0;
    for (std::size_t s : use) {
      std::vector<double> w;
      for (std::size_t j = 0; j < n; ++j)
        if (usable(stars[s], j)) w.push_back(stars[s].cal[j] * stars[s].cal[j] / stars[s].variance[j]);
      const double wm = median_inplace(w);
      if (!std::isfinite(wm)) continue;
      sw += wm;
      swwc += wm * wm * std::max(0.0, stars[s].correlated_rel_var);
    }
    out.level_rel_var = sw > 0 ? swwc / (sw * sw) : 0.0;
  }
  out.good.assign(n, 0);
  for (std::size_t j = 0; j < n; ++j) out.good[j] = out.n_used[j] > 0 && std::isfinite(out.cal[j]);
  if (cfg.smooth == "savgol") out.cal = savitzky_golay(out.cal, out.good, cfg.savgol_window, cfg.savgol_order);
  // Scatter of the stars about the result.
  out.rms_frac.assign(n, kNaN);
  std::vector<double> rms_good;
  for (std::size_t j = 0; j < n; ++j) {
    if (!out.good[j]) continue;
    double ss = 0;
    int k = 0;
    for (std::size_t s : use)
      if (kept[s][j]) {
        const double d = stars[s].cal[j] / factor[s] / out.cal[j] - 1.0;
        ss += d * d;
        ++k;
      }
    if (k >= 2) {
      out.rms_frac[j] = std::sqrt(ss / k);
      rms_good.push_back(out.rms_frac[j]);
    }
  }
  out.rms_median = use.size() >= 2 && !rms_good.empty() ? median_inplace(rms_good) : kNaN;
  for (std::size_t j = 0; j < n; ++j)
    if (!out.good[j]) out.cal[j] = out.variance[j] = kNaN;
  return out;
}

}  // namespace kspecdr::fluxcal
