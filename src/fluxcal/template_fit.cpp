#include "kspecdr/fluxcal/template_fit.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numbers>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kFwhmToSigma = 1.0 / 2.354820045030949;

double median_of(std::vector<double> v) {
  if (v.empty()) return kNaN;
  const auto mid = v.begin() + static_cast<long>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

/// Linear interpolation on increasing x; NaN outside.
double lerp_at(const std::vector<double>& x, const std::vector<double>& y, double u, std::size_t& hint) {
  if (u < x.front() || u > x.back()) return kNaN;
  if (hint >= x.size() - 1 || x[hint] > u) hint = 0;
  while (hint + 2 < x.size() && x[hint + 1] <= u) ++hint;
  const double t = (u - x[hint]) / (x[hint + 1] - x[hint]);
  return y[hint] + t * (y[hint + 1] - y[hint]);
}

/// The observed spectrum and one model compared at one radial velocity.
struct Comparison {
  std::vector<double> model, dn, mn, sn;
  std::vector<unsigned char> use;  ///< continuum pixels
  double chi2 = 0, score = 0;
  long n = 0;
};

std::vector<double> data_weights(const ObservedSpectrum& obs) {
  std::vector<double> w(obs.flux.size(), 0.0);
  for (std::size_t i = 0; i < w.size(); ++i)
    if (obs.good[i] && std::isfinite(obs.flux[i]) && obs.variance[i] > 0 && std::isfinite(obs.variance[i]))
      w[i] = 1.0 / obs.variance[i];
  return w;
}

/// Normalises data and model the same way; the continuum pixels come from the model unless `use` is given.
Comparison compare(const ObservedSpectrum& obs, const std::vector<double>& w, const PreparedModel& pm, double rv,
                   const FitConfig& cfg, const std::vector<unsigned char>* use = nullptr) {
  Comparison c;
  c.model = resample_model(pm, rv, obs.wavelength_angstrom);
  const std::size_t n = c.model.size();
  std::vector<unsigned char> good(n, 0);
  for (std::size_t i = 0; i < n; ++i) good[i] = w[i] > 0 && std::isfinite(c.model[i]) && c.model[i] > 0;
  c.use = use ? *use : continuum_pixels(obs.wavelength_angstrom, c.model, w, good, cfg);
  for (std::size_t i = 0; i < n; ++i) c.use[i] = c.use[i] && good[i];
  const auto cd = fit_continuum(obs.wavelength_angstrom, obs.flux, w, c.use, cfg.continuum_degree);
  const auto cm = fit_continuum(obs.wavelength_angstrom, c.model, w, c.use, cfg.continuum_degree);
  c.dn.assign(n, kNaN);
  c.mn.assign(n, kNaN);
  c.sn.assign(n, kNaN);
  for (std::size_t i = 0; i < n; ++i) {
    if (!good[i] || !(cd[i] > 0) || !(cm[i] > 0)) continue;
    c.dn[i] = obs.flux[i] / cd[i];
    c.mn[i] = c.model[i] / cm[i];
    c.sn[i] = std::sqrt(obs.variance[i]) / cd[i];
    const double r = (c.dn[i] - c.mn[i]) / c.sn[i];
    c.chi2 += r * r;
    const double a = std::abs(r);
    c.score += cfg.metric == "huber" ? (a <= cfg.huber_k ? r * r : 2.0 * cfg.huber_k * a - cfg.huber_k * cfg.huber_k)
                                     : r * r;
    ++c.n;
  }
  return c;
}

/// Cross-correlation of the normalised spectra on an even ln λ grid.
void cross_correlate(const ObservedSpectrum& obs, const Comparison& c, const FitConfig& cfg, RvMeasurement& out) {
  const auto& x = obs.wavelength_angstrom;
  double step = 1e9;
  for (std::size_t i = 1; i < x.size(); ++i) step = std::min(step, std::log(x[i] / x[i - 1]));
  const double l0 = std::log(x.front()), l1 = std::log(x.back());
  const auto n = static_cast<std::size_t>(std::floor((l1 - l0) / step)) + 1;
  std::vector<double> a(n, 0.0), b(n, 0.0);
  std::vector<double> dn1(x.size()), mn1(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    dn1[i] = std::isfinite(c.dn[i]) ? c.dn[i] - 1.0 : 0.0;
    mn1[i] = std::isfinite(c.mn[i]) ? c.mn[i] - 1.0 : 0.0;
  }
  std::size_t h1 = 0, h2 = 0;
  long ngood = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const double lam = std::exp(l0 + static_cast<double>(k) * step);
    const double va = lerp_at(x, dn1, lam, h1), vb = lerp_at(x, mn1, lam, h2);
    // A cosine taper over the outer 5 % keeps the ends from correlating.
    const double f = static_cast<double>(k) / static_cast<double>(n - 1);
    const double edge = std::min(f, 1.0 - f) / 0.05;
    const double taper = edge >= 1.0 ? 1.0 : 0.5 * (1.0 - std::cos(std::numbers::pi * edge));
    a[k] = std::isfinite(va) ? va * taper : 0.0;
    b[k] = std::isfinite(vb) ? vb * taper : 0.0;
    ngood += a[k] != 0.0;
  }
  const long kmax = static_cast<long>(std::ceil(std::log(1.0 + cfg.rv_max_km_s / kSpeedOfLightKmS) / step)) + 1;
  double saa = 0, sbb = 0;
  for (std::size_t k = 0; k < n; ++k) saa += a[k] * a[k], sbb += b[k] * b[k];
  const double norm = std::sqrt(saa * sbb);
  std::vector<double> ccf(static_cast<std::size_t>(2 * kmax + 1), 0.0);
  for (long lag = -kmax; lag <= kmax; ++lag) {
    double s = 0;
    for (long i = std::max(0L, lag); i < static_cast<long>(n) && i - lag < static_cast<long>(n); ++i)
      s += a[static_cast<std::size_t>(i)] * b[static_cast<std::size_t>(i - lag)];
    ccf[static_cast<std::size_t>(lag + kmax)] = norm > 0 ? s / norm : 0.0;
  }
  std::size_t best = 1;
  for (std::size_t i = 1; i + 1 < ccf.size(); ++i)
    if (ccf[i] > ccf[best]) best = i;
  const double cm = ccf[best - 1], c0 = ccf[best], cp = ccf[best + 1];
  const double curv = cm - 2.0 * c0 + cp;
  const double off = curv < 0 ? 0.5 * (cm - cp) / curv : 0.0;
  const double lag = static_cast<double>(static_cast<long>(best) - kmax) + off;
  out.ccf_rv_km_s = kSpeedOfLightKmS * (std::exp(lag * step) - 1.0);
  out.ccf_peak = c0;
  // Zucker (2003, MNRAS 342, 1291): σ² = −[N C''/C · C²/(1 − C²)]⁻¹ in lag units.
  const double var = (curv < 0 && c0 > 0 && c0 < 1) ? -1.0 / (static_cast<double>(ngood) * curv / c0 * c0 * c0 / (1.0 - c0 * c0))
                                                    : kNaN;
  out.ccf_err_km_s = kSpeedOfLightKmS * step * std::sqrt(var);
}

/// Refines the RV by the minimum of χ²(v) with a fixed set of continuum pixels; error from its curvature.
Comparison refine_rv(const ObservedSpectrum& obs, const std::vector<double>& w, const PreparedModel& pm,
                     const FitConfig& cfg, RvMeasurement& rv) {
  const auto& x = obs.wavelength_angstrom;
  const double pix_kms = kSpeedOfLightKmS * (x.back() - x.front()) / static_cast<double>(x.size() - 1) /
                         (0.5 * (x.back() + x.front()));
  double v = rv.ccf_rv_km_s;
  Comparison c0 = compare(obs, w, pm, v, cfg);
  const double h = 0.3 * pix_kms;
  double curv = 0;
  for (int it = 0; it < 3; ++it) {
    const Comparison cm = compare(obs, w, pm, v - h, cfg, &c0.use), cp = compare(obs, w, pm, v + h, cfg, &c0.use);
    curv = (cm.chi2 + cp.chi2 - 2.0 * c0.chi2) / (h * h);
    if (!(curv > 0)) break;
    double dv = 0.5 * h * (cm.chi2 - cp.chi2) / (cm.chi2 + cp.chi2 - 2.0 * c0.chi2);
    dv = std::clamp(dv, -2.0 * h, 2.0 * h);
    v += dv;
    c0 = compare(obs, w, pm, v, cfg, &c0.use);
    if (std::abs(dv) < 0.01 * h) break;
  }
  rv.rv_km_s = v;
  rv.chi2 = c0.chi2;
  rv.n_good = c0.n;
  const double dof = static_cast<double>(c0.n - cfg.continuum_degree - 2);
  const double inflate = dof > 0 ? std::max(1.0, std::sqrt(c0.chi2 / dof)) : 1.0;
  rv.rv_err_km_s = curv > 0 ? std::sqrt(2.0 / curv) * inflate : kNaN;
  return c0;
}

}  // namespace

double Resolution::fwhm(double lambda) const {
  lambda = std::clamp(lambda, lambda_lo, lambda_hi);
  double v = 0, p = 1;
  for (double c : fwhm_poly_angstrom) v += c * p, p *= lambda;
  return v;
}

std::vector<double> pixel_edges(const std::vector<double>& c) {
  const std::size_t n = c.size();
  std::vector<double> e(n + 1);
  for (std::size_t i = 1; i < n; ++i) e[i] = 0.5 * (c[i - 1] + c[i]);
  e[0] = c[0] - 0.5 * (c[1] - c[0]);
  e[n] = c[n - 1] + 0.5 * (c[n - 1] - c[n - 2]);
  return e;
}

PreparedModel prepare_model(const std::vector<double>& wl, const std::vector<double>& flux, const Resolution& res,
                            double model_r, double lambda_min, double lambda_max) {
  const double f_lo = res.fwhm(lambda_min), f_hi = res.fwhm(lambda_max);
  if (!(f_lo > 0) || !(f_hi > 0))
    throw ConfigError(fmt::format("instrument FWHM must be positive over {:.0f}..{:.0f} Å (got {} and {})", lambda_min,
                                  lambda_max, f_lo, f_hi));
  const double lo = lambda_min - 5.0 * f_lo, hi = lambda_max + 5.0 * f_hi;
  if (wl.front() > lo || wl.back() < hi)
    throw DataError(fmt::format("the model grid ({:.1f}..{:.1f} Å) does not cover {:.1f}..{:.1f} Å (data range, RV "
                                "search and 5 FWHM)",
                                wl.front(), wl.back(), lo, hi));
  // Even ln λ steps of 1/8 of the narrowest FWHM, or the model's own sampling where that is finer (linear
  // interpolation onto a coarser grid would broaden its sharp lines), but not finer than 1/40 FWHM.
  const double fw = std::min(f_lo / lambda_min, f_hi / lambda_max);
  double model_step = 1e9;
  for (std::size_t i = 1; i < wl.size(); ++i)
    if (wl[i] >= lo && wl[i - 1] <= hi) model_step = std::min(model_step, std::log(wl[i] / wl[i - 1]));
  const double step = std::max(fw / 40.0, std::min(fw / 8.0, model_step));
  const double x0 = std::log(lo), x1 = std::log(hi);
  const auto n = static_cast<std::size_t>(std::floor((x1 - x0) / step)) + 1;
  std::vector<double> x(n), in(n);
  std::size_t hint = 0;
  for (std::size_t k = 0; k < n; ++k) {
    x[k] = x0 + static_cast<double>(k) * step;
    in[k] = lerp_at(wl, flux, std::exp(x[k]), hint);
  }
  PreparedModel m;
  m.ln_lambda = x;
  m.flux.assign(n, kNaN);
  std::vector<double> kern;
  for (std::size_t k = 0; k < n; ++k) {
    const double lam = std::exp(x[k]);
    const double f = res.fwhm(lam), own = model_r > 0 ? lam / model_r : 0.0;
    const double s = std::sqrt(std::max(f * f - own * own, 1e-6 * f * f)) * kFwhmToSigma / lam / step;
    const long h = static_cast<long>(std::ceil(4.0 * s));
    if (static_cast<long>(k) - h < 0 || static_cast<long>(k) + h >= static_cast<long>(n)) continue;
    double sw = 0, sf = 0;
    for (long j = -h; j <= h; ++j) {
      const double kw = std::exp(-0.5 * (static_cast<double>(j) / s) * (static_cast<double>(j) / s));
      sw += kw;
      sf += kw * in[static_cast<std::size_t>(static_cast<long>(k) + j)];
    }
    m.flux[k] = sf / sw;
  }
  // Keep only the part with a full kernel.
  std::size_t a = 0, b = n;
  while (a < n && !std::isfinite(m.flux[a])) ++a;
  while (b > a && !std::isfinite(m.flux[b - 1])) --b;
  m.ln_lambda.assign(x.begin() + static_cast<long>(a), x.begin() + static_cast<long>(b));
  m.flux.assign(m.flux.begin() + static_cast<long>(a), m.flux.begin() + static_cast<long>(b));
  if (m.flux.size() < 3) throw DataError("model range too short for the instrument resolution");
  return m;
}

std::vector<double> resample_model(const PreparedModel& m, double rv, const std::vector<double>& centres) {
  const double shift = std::log1p(rv / kSpeedOfLightKmS);
  const std::size_t n = m.flux.size();
  std::vector<double> lam(n), cum(n, 0.0);
  for (std::size_t k = 0; k < n; ++k) lam[k] = std::exp(m.ln_lambda[k] + shift);
  for (std::size_t k = 1; k < n; ++k) cum[k] = cum[k - 1] + 0.5 * (m.flux[k] + m.flux[k - 1]) * (lam[k] - lam[k - 1]);
  const auto edges = pixel_edges(centres);
  std::vector<double> integral(edges.size(), kNaN);
  std::size_t k = 0;
  for (std::size_t e = 0; e < edges.size(); ++e) {
    const double u = edges[e];
    if (u < lam.front() || u > lam.back()) continue;
    while (k + 2 < n && lam[k + 1] <= u) ++k;
    const double t = u - lam[k];
    const double slope = (m.flux[k + 1] - m.flux[k]) / (lam[k + 1] - lam[k]);
    integral[e] = cum[k] + m.flux[k] * t + 0.5 * slope * t * t;
  }
  std::vector<double> out(centres.size(), kNaN);
  for (std::size_t j = 0; j < centres.size(); ++j)
    out[j] = (integral[j + 1] - integral[j]) / (edges[j + 1] - edges[j]);
  return out;
}

std::vector<double> fit_continuum(const std::vector<double>& x, const std::vector<double>& y,
                                  const std::vector<double>& weight, const std::vector<unsigned char>& use, int degree) {
  const std::size_t n = x.size();
  const double x0 = x.front(), x1 = x.back();
  const int nc = degree + 1;
  auto basis = [&](double xv, Eigen::VectorXd& p) {
    const double u = 2.0 * (xv - x0) / (x1 - x0) - 1.0;
    p(0) = 1.0;
    if (nc > 1) p(1) = u;
    for (int k = 1; k + 1 < nc; ++k) p(k + 1) = ((2.0 * k + 1.0) * u * p(k) - k * p(k - 1)) / (k + 1.0);
  };
  Eigen::MatrixXd ata = Eigen::MatrixXd::Zero(nc, nc);
  Eigen::VectorXd atb = Eigen::VectorXd::Zero(nc), p(nc);
  long used = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!use[i] || !(weight[i] > 0) || !std::isfinite(y[i])) continue;
    basis(x[i], p);
    ata.noalias() += weight[i] * p * p.transpose();
    atb.noalias() += weight[i] * y[i] * p;
    ++used;
  }
  std::vector<double> out(n, kNaN);
  if (used < nc) return out;
  const Eigen::VectorXd coef = ata.ldlt().solve(atb);
  for (std::size_t i = 0; i < n; ++i) {
    basis(x[i], p);
    out[i] = p.dot(coef);
  }
  return out;
}

std::vector<unsigned char> continuum_pixels(const std::vector<double>& x, const std::vector<double>& model,
                                            const std::vector<double>& weight, const std::vector<unsigned char>& good,
                                            const FitConfig& cfg) {
  const std::size_t n = x.size();
  std::vector<unsigned char> use(good);
  for (int it = 0; it < cfg.continuum_iterations; ++it) {
    const auto c = fit_continuum(x, model, weight, use, cfg.continuum_degree);
    std::vector<double> r;
    for (std::size_t i = 0; i < n; ++i)
      if (use[i] && c[i] > 0) r.push_back(model[i] / c[i] - 1.0);
    if (r.size() < static_cast<std::size_t>(3 * (cfg.continuum_degree + 1))) break;
    const double med = median_of(r);
    for (auto& v : r) v = std::abs(v - med);
    const double s = std::max(1.4826 * median_of(r), 2e-3);
    std::vector<unsigned char> next(n, 0);
    long kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!good[i] || !(c[i] > 0)) continue;
      const double ri = model[i] / c[i] - 1.0;
      next[i] = ri > -cfg.continuum_clip_low * s && ri < cfg.continuum_clip_high * s;
      kept += next[i];
    }
    if (kept < 3 * (cfg.continuum_degree + 1) || next == use) break;
    use = std::move(next);
  }
  return use;
}

void check_grid_covers(const TemplateGrid& grid, const ObservedSpectrum& obs, const FitConfig& cfg) {
  const double lo = obs.wavelength_angstrom.front(), hi = obs.wavelength_angstrom.back();
  const double z = cfg.rv_max_km_s / kSpeedOfLightKmS;
  const double need_lo = lo / (1.0 + z) - 5.0 * cfg.resolution.fwhm(lo);
  const double need_hi = hi / (1.0 - z) + 5.0 * cfg.resolution.fwhm(hi);
  if (grid.wavelength_angstrom.front() > need_lo || grid.wavelength_angstrom.back() < need_hi)
    throw DataError(fmt::format("the template grid ({:.1f}..{:.1f} Å) does not cover the spectrum ({:.1f}..{:.1f} Å): it "
                                "needs {:.1f}..{:.1f} Å with the RV search (±{:.0f} km/s) and 5 FWHM",
                                grid.wavelength_angstrom.front(), grid.wavelength_angstrom.back(), lo, hi, need_lo,
                                need_hi, cfg.rv_max_km_s),
                    ErrorContext{.aperture = obs.name});
}

namespace {

PreparedModel prepare_for(const ObservedSpectrum& obs, const std::vector<double>& wl, const std::vector<double>& flux,
                          double model_r, const FitConfig& cfg) {
  const double z = cfg.rv_max_km_s / kSpeedOfLightKmS;
  return prepare_model(wl, flux, cfg.resolution, model_r, obs.wavelength_angstrom.front() / (1.0 + z),
                       obs.wavelength_angstrom.back() / (1.0 - z));
}

/// The corners of the multilinear interpolation of the grid at p, (grid row, weight) with weights > 0; false when
/// p is outside the grid or a corner model is missing.
bool interpolation_corners(const TemplateGrid& grid, const std::array<std::vector<double>, 4>& axes,
                           const TemplateParams& p, std::vector<std::pair<long, double>>& out) {
  std::array<std::array<double, 2>, 4> val{};
  std::array<std::array<double, 2>, 4> wt{};
  for (std::size_t a = 0; a < 4; ++a) {
    const auto& ax = axes[a];
    const double v = param_value(p, static_cast<int>(a));
    auto hi = std::lower_bound(ax.begin(), ax.end(), v - 1e-9);
    if (hi == ax.end()) return false;
    if (std::abs(*hi - v) < 1e-9 || hi == ax.begin()) {
      if (std::abs(*hi - v) > 1e-9) return false;
      val[a] = {*hi, *hi};
      wt[a] = {1.0, 0.0};
      continue;
    }
    const double h = *hi, l = *(hi - 1);
    const double t = (v - l) / (h - l);
    val[a] = {l, h};
    wt[a] = {1.0 - t, t};
  }
  out.clear();
  for (int corner = 0; corner < 16; ++corner) {
    double w = 1.0;
    TemplateParams q;
    double* fields[4] = {&q.teff_k, &q.logg, &q.mh, &q.alpha};
    for (std::size_t a = 0; a < 4; ++a) {
      const int bit = (corner >> a) & 1;
      w *= wt[a][static_cast<std::size_t>(bit)];
      *fields[a] = val[a][static_cast<std::size_t>(bit)];
    }
    if (w == 0.0) continue;
    const long idx = grid.find(q);
    if (idx < 0) return false;
    out.emplace_back(idx, w);
  }
  return true;
}

/// The grid's models interpolated (multilinear in ln F, as `interpolate_model`, value for value) over the
/// wavelengths that the fit of one spectrum needs (`prepare_for`'s range); ln F of every model it visits is
/// kept, so that the many models of a minimisation cost one pass over the corners each.
class LogFluxInterpolator {
 public:
  LogFluxInterpolator(const TemplateGrid& grid, const ObservedSpectrum& obs, const FitConfig& cfg) : grid_(grid) {
    for (int a = 0; a < 4; ++a) axes_[static_cast<std::size_t>(a)] = grid.axis(a);
    const double z = cfg.rv_max_km_s / kSpeedOfLightKmS;
    const double lo = obs.wavelength_angstrom.front() / (1.0 + z), hi = obs.wavelength_angstrom.back() / (1.0 - z);
    const double need_lo = lo - 5.0 * cfg.resolution.fwhm(lo), need_hi = hi + 5.0 * cfg.resolution.fwhm(hi);
    const auto& wl = grid.wavelength_angstrom;
    const auto a = static_cast<std::size_t>(std::upper_bound(wl.begin(), wl.end(), need_lo) - wl.begin());
    const auto b = static_cast<std::size_t>(std::lower_bound(wl.begin(), wl.end(), need_hi) - wl.begin());
    j0_ = a >= 2 ? a - 2 : 0;
    j1_ = std::min(wl.size(), b + 2);
    wl_.assign(wl.begin() + static_cast<long>(j0_), wl.begin() + static_cast<long>(j1_));
  }
  const std::vector<double>& wavelength() const { return wl_; }
  const std::array<std::vector<double>, 4>& axes() const { return axes_; }
  bool flux_at(const TemplateParams& p, std::vector<double>& flux) {
    if (!interpolation_corners(grid_, axes_, p, corners_)) return false;
    const std::size_t n = wl_.size();
    std::vector<double> lnf(n, 0.0);
    for (const auto& [idx, w] : corners_) {
      const auto& row = ln_row(idx);
      for (std::size_t j = 0; j < n; ++j) lnf[j] += w * row[j];
    }
    flux.resize(n);
    for (std::size_t j = 0; j < n; ++j) flux[j] = std::exp(lnf[j]);
    return true;
  }

 private:
  const std::vector<double>& ln_row(long idx) {
    auto it = rows_.find(idx);
    if (it == rows_.end()) {
      const auto row = grid_.flux.row(idx);
      std::vector<double> v(j1_ - j0_);
      for (std::size_t j = j0_; j < j1_; ++j)
        v[j - j0_] = std::log(std::max(static_cast<double>(row(static_cast<Eigen::Index>(j))), 1e-300));
      it = rows_.emplace(idx, std::move(v)).first;
    }
    return it->second;
  }
  const TemplateGrid& grid_;
  std::array<std::vector<double>, 4> axes_;
  std::size_t j0_ = 0, j1_ = 0;
  std::vector<double> wl_;
  std::map<long, std::vector<double>> rows_;
  std::vector<std::pair<long, double>> corners_;
};

/// Grid coordinates: along each axis t = i + (v − x_i)/(x_{i+1} − x_i) between the grid values x_i, so that one
/// unit is one grid step however uneven the axis; lo/hi bound the minimisation (the candidates' range).
struct GridCoords {
  std::array<std::vector<double>, 4> axes;
  std::array<double, 4> lo{}, hi{};
  double coord(std::size_t a, double v) const {
    const auto& x = axes[a];
    if (x.size() < 2) return 0.0;
    const auto it = std::upper_bound(x.begin(), x.end(), v);
    const auto i = static_cast<std::size_t>(std::clamp<long>(it - x.begin() - 1, 0, static_cast<long>(x.size()) - 2));
    return static_cast<double>(i) + (v - x[i]) / (x[i + 1] - x[i]);
  }
  double value(std::size_t a, double t) const {
    const auto& x = axes[a];
    if (x.size() < 2) return x.front();
    const auto i = static_cast<std::size_t>(std::clamp<long>(static_cast<long>(std::floor(t)), 0, static_cast<long>(x.size()) - 2));
    const double v = x[i] + (t - static_cast<double>(i)) * (x[i + 1] - x[i]);
    // Values on the grid come out exactly (the interpolation then takes the grid model itself).
    for (std::size_t k = i; k <= i + 1; ++k)
      if (std::abs(v - x[k]) < 1e-9 * std::max(1.0, std::abs(x[k]))) return x[k];
    return v;
  }
  std::array<double, 4> coords(const TemplateParams& p) const {
    std::array<double, 4> t{};
    for (std::size_t a = 0; a < 4; ++a) t[a] = coord(a, param_value(p, static_cast<int>(a)));
    return t;
  }
  TemplateParams params(const std::array<double, 4>& t) const {
    return {value(0, t[0]), value(1, t[1]), value(2, t[2]), value(3, t[3])};
  }
  bool free(std::size_t a) const { return hi[a] > lo[a]; }
};

/// The spectrum against the interpolated model at grid coordinates t, with a fixed RV and fixed continuum pixels
/// (so that the score is a smooth function of the parameters).
struct Evaluator {
  const ObservedSpectrum& obs;
  const std::vector<double>& w;
  const FitConfig& cfg;
  LogFluxInterpolator& interp;
  const GridCoords& gc;
  double model_r = 0.0;
  double rv = 0.0;
  std::vector<unsigned char> use;
  bool operator()(const std::array<double, 4>& t, Comparison& c) const {
    std::vector<double> f;
    if (!interp.flux_at(gc.params(t), f)) return false;
    const PreparedModel pm = prepare_for(obs, interp.wavelength(), f, model_r, cfg);
    c = compare(obs, w, pm, rv, cfg, &use);
    return c.n > 0 && std::isfinite(c.score);
  }
};

/// Normalised residuals (d − m)/σ on `pix` (0 where the comparison has none).
Eigen::VectorXd residuals(const Comparison& c, const std::vector<std::size_t>& pix) {
  Eigen::VectorXd r(static_cast<Eigen::Index>(pix.size()));
  for (std::size_t q = 0; q < pix.size(); ++q) {
    const std::size_t i = pix[q];
    const double v = (c.dn[i] - c.mn[i]) / c.sn[i];
    r(static_cast<Eigen::Index>(q)) = std::isfinite(v) ? v : 0.0;
  }
  return r;
}

/// Correlation of the normalised noise of pixel i with pixel i + 1 (rho1[i]) and i + 2 (rho2[i]).
struct PixelCorrelation {
  std::vector<double> rho1, rho2;
};

/// aᵀ R b over the pixels `pix` (increasing), R the correlation matrix of `pc` (1 on the diagonal).
double correlated_dot(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const std::vector<std::size_t>& pix,
                      const PixelCorrelation& pc) {
  double s = a.dot(b);
  for (std::size_t q = 0; q < pix.size(); ++q)
    for (std::size_t u = q + 1; u < pix.size() && pix[u] - pix[q] <= 2; ++u) {
      const double rho = pix[u] - pix[q] == 1 ? pc.rho1[pix[q]] : pc.rho2[pix[q]];
      const auto iq = static_cast<Eigen::Index>(q), iu = static_cast<Eigen::Index>(u);
      s += rho * (a(iq) * b(iu) + a(iu) * b(iq));
    }
  return s;
}

/// The correlation of neighbouring pixels' noise: from the spectrum's covariance of neighbours when it has one,
/// otherwise from the lag-1 and lag-2 autocorrelation of the fit's normalised residuals `c` (negative estimates
/// taken as 0). Fills the summary `info` (medians over the fitted pixels).
PixelCorrelation pixel_correlation(const ObservedSpectrum& obs, const Comparison& c, NoiseCorrelation& info) {
  const std::size_t n = c.dn.size();
  PixelCorrelation pc;
  pc.rho1.assign(n, 0.0);
  pc.rho2.assign(n, 0.0);
  std::vector<double> r(n, kNaN);
  for (std::size_t i = 0; i < n; ++i) r[i] = (c.dn[i] - c.mn[i]) / c.sn[i];
  info = NoiseCorrelation{};
  if (obs.covariance_next.size() == n) {
    info.source = "covariance";
    std::vector<double> used;
    for (std::size_t i = 0; i + 1 < n; ++i) {
      const double v0 = obs.variance[i], v1 = obs.variance[i + 1], cv = obs.covariance_next[i];
      if (!(v0 > 0) || !(v1 > 0) || !std::isfinite(v0) || !std::isfinite(v1) || !std::isfinite(cv)) continue;
      pc.rho1[i] = std::clamp(cv / std::sqrt(v0 * v1), -1.0, 1.0);
      if (std::isfinite(r[i]) && std::isfinite(r[i + 1])) used.push_back(pc.rho1[i]);
    }
    info.rho1 = used.empty() ? 0.0 : median_of(used);
  } else {
    double s0 = 0, mean = 0;
    long n0 = 0;
    for (double v : r)
      if (std::isfinite(v)) mean += v, ++n0;
    if (n0 < 10) return pc;
    mean /= static_cast<double>(n0);
    for (double v : r)
      if (std::isfinite(v)) s0 += (v - mean) * (v - mean);
    std::array<double, 2> rho{};
    for (std::size_t k = 1; k <= 2; ++k) {
      double sk = 0;
      long nk = 0;
      for (std::size_t i = 0; i + k < n; ++i)
        if (std::isfinite(r[i]) && std::isfinite(r[i + k])) sk += (r[i] - mean) * (r[i + k] - mean), ++nk;
      rho[k - 1] = nk > 0 && s0 > 0 ? std::max(0.0, (sk / static_cast<double>(nk)) / (s0 / static_cast<double>(n0))) : 0.0;
    }
    info.source = "residuals";
    info.rho1 = rho[0];
    info.rho2 = rho[1];
    pc.rho1.assign(n, rho[0]);
    pc.rho2.assign(n, rho[1]);
  }
  info.tau = 1.0 + 2.0 * (info.rho1 + info.rho2);
  return pc;
}

/// The factor the correlation of neighbouring pixels puts on the variance of the RV from χ²(v): gᵀRg / gᵀg with g the
/// derivative of the normalised residuals by v at `v` (continuum pixels of `c` fixed).
double rv_variance_factor(const ObservedSpectrum& obs, const std::vector<double>& w, const PreparedModel& pm,
                          const FitConfig& cfg, const Comparison& c, double v, const PixelCorrelation& pc) {
  const auto& x = obs.wavelength_angstrom;
  const double pix_kms = kSpeedOfLightKmS * (x.back() - x.front()) / static_cast<double>(x.size() - 1) /
                         (0.5 * (x.back() + x.front()));
  const double h = 0.3 * pix_kms;
  std::vector<std::size_t> pix;
  for (std::size_t i = 0; i < c.dn.size(); ++i)
    if (std::isfinite(c.dn[i]) && std::isfinite(c.mn[i])) pix.push_back(i);
  if (pix.empty()) return 1.0;
  const Comparison cm = compare(obs, w, pm, v - h, cfg, &c.use), cp = compare(obs, w, pm, v + h, cfg, &c.use);
  const Eigen::VectorXd g = (residuals(cp, pix) - residuals(cm, pix)) / (2.0 * h);
  const double gg = g.dot(g);
  return gg > 0 ? std::max(0.0, correlated_dot(g, g, pix, pc)) / gg : 1.0;
}

/// Levenberg–Marquardt from t over the free coordinates, on the normalised residuals (for the Huber metric
/// reweighted at every step: weight 1 inside k σ, √(k/|r|) outside). A step is taken only when it lowers the
/// metric; the minimisation ends when a step gains less than 0.01 or none can be found. Returns the minimum.
std::array<double, 4> minimise(const Evaluator& ev, const GridCoords& gc, std::array<double, 4> t, const FitConfig& cfg) {
  Comparison c;
  if (!ev(t, c)) return t;
  std::vector<std::size_t> pix;
  for (std::size_t i = 0; i < c.dn.size(); ++i)
    if (std::isfinite(c.dn[i]) && std::isfinite(c.mn[i])) pix.push_back(i);
  std::vector<std::size_t> fr;
  for (std::size_t a = 0; a < 4; ++a)
    if (gc.free(a)) fr.push_back(a);
  if (fr.empty() || pix.empty()) return t;
  const auto m = static_cast<Eigen::Index>(pix.size()), k = static_cast<Eigen::Index>(fr.size());
  const bool huber = cfg.metric == "huber";
  constexpr double kStep = 0.05;  // grid steps, for the forward differences
  double lambda = 1e-3;
  for (int it = 0; it < 30; ++it) {
    Eigen::VectorXd r = residuals(c, pix), wt = Eigen::VectorXd::Ones(m);
    if (huber)
      for (Eigen::Index q = 0; q < m; ++q)
        if (std::abs(r(q)) > cfg.huber_k) wt(q) = std::sqrt(cfg.huber_k / std::abs(r(q)));
    r = r.cwiseProduct(wt);
    Eigen::MatrixXd J = Eigen::MatrixXd::Zero(m, k);
    for (Eigen::Index col = 0; col < k; ++col) {
      const std::size_t a = fr[static_cast<std::size_t>(col)];
      auto ta = t;
      const double step = t[a] + kStep <= gc.hi[a] ? kStep : -kStep;
      ta[a] += step;
      Comparison ca;
      if (!ev(ta, ca)) continue;
      J.col(col) = (residuals(ca, pix).cwiseProduct(wt) - r) / step;
    }
    const Eigen::MatrixXd A = J.transpose() * J;
    const Eigen::VectorXd g = J.transpose() * r;
    double gain = 0.0;
    while (lambda < 1e8) {
      Eigen::MatrixXd M = A;
      M.diagonal() += lambda * A.diagonal() + Eigen::VectorXd::Constant(k, 1e-12);
      Eigen::VectorXd delta = M.ldlt().solve(-g);
      const double big = delta.cwiseAbs().maxCoeff();
      if (!std::isfinite(big)) break;
      if (big > 1.0) delta /= big;  // at most one grid step at a time
      auto tn = t;
      for (Eigen::Index col = 0; col < k; ++col) {
        const std::size_t a = fr[static_cast<std::size_t>(col)];
        tn[a] = std::clamp(t[a] + delta(col), gc.lo[a], gc.hi[a]);
      }
      Comparison cn;
      if (tn != t && ev(tn, cn) && cn.score < c.score) {
        gain = c.score - cn.score;
        t = tn;
        c = std::move(cn);
        lambda = std::max(lambda / 3.0, 1e-7);
        break;
      }
      lambda *= 4.0;
    }
    if (!(gain >= 0.01)) break;
  }
  return t;
}

/// The covariance of the parameters (physical units) at grid coordinates t: the Jacobian of the normalised
/// residuals by central differences (one-sided at the ends of the grid), F = JᵀJ / red, and with the correlation R of
/// neighbouring pixels the sandwich C = F⁻¹ (JᵀRJ / red) F⁻¹ (= F⁻¹ for independent pixels). The fit cannot
/// leave the candidates' range, so no parameter's variance is taken larger than that of a uniform distribution
/// over it (range²/12; its row and column scaled down, the correlations kept); F is regularised by 10⁻⁶ of that
/// precision so that a parameter the spectrum does not constrain at all comes out at that bound.
std::array<std::array<double, 4>, 4> parameter_covariance(const Evaluator& ev, const GridCoords& gc,
                                                          const std::array<double, 4>& t, double red,
                                                          const PixelCorrelation& pc) {
  std::array<std::array<double, 4>, 4> cov{};
  Comparison c;
  if (!ev(t, c)) return cov;
  std::vector<std::size_t> pix;
  for (std::size_t i = 0; i < c.dn.size(); ++i)
    if (std::isfinite(c.dn[i]) && std::isfinite(c.mn[i])) pix.push_back(i);
  std::vector<std::size_t> fr;
  for (std::size_t a = 0; a < 4; ++a)
    if (gc.free(a)) fr.push_back(a);
  if (fr.empty() || pix.empty()) return cov;
  const auto k = static_cast<Eigen::Index>(fr.size());
  constexpr double kStep = 0.05;
  Eigen::MatrixXd J = Eigen::MatrixXd::Zero(static_cast<Eigen::Index>(pix.size()), k);
  Eigen::VectorXd prior(k);
  for (Eigen::Index col = 0; col < k; ++col) {
    const std::size_t a = fr[static_cast<std::size_t>(col)];
    const double range = gc.value(a, gc.hi[a]) - gc.value(a, gc.lo[a]);
    prior(col) = 12.0 / (range * range);
    const double top = static_cast<double>(gc.axes[a].size() - 1);
    auto t1 = t, t2 = t;
    t1[a] = std::max(0.0, t[a] - kStep);
    t2[a] = std::min(top, t[a] + kStep);
    Comparison c1, c2;
    if (!(t2[a] > t1[a]) || !ev(t1, c1) || !ev(t2, c2)) continue;
    const double dv = gc.value(a, t2[a]) - gc.value(a, t1[a]);
    J.col(col) = (residuals(c2, pix) - residuals(c1, pix)) / dv;
  }
  Eigen::MatrixXd F = J.transpose() * J / std::max(red, 1.0);
  F.diagonal() += 1e-6 * prior;
  Eigen::MatrixXd M = Eigen::MatrixXd::Zero(k, k);
  for (Eigen::Index i = 0; i < k; ++i)
    for (Eigen::Index j = 0; j <= i; ++j) M(i, j) = M(j, i) = correlated_dot(J.col(i), J.col(j), pix, pc);
  M /= std::max(red, 1.0);
  M.diagonal() += 1e-6 * prior;
  const Eigen::MatrixXd Fi = F.inverse();
  Eigen::MatrixXd C = Fi * M * Fi;
  for (Eigen::Index i = 0; i < k; ++i) {
    const double cap = 1.0 / prior(i);
    if (C(i, i) > cap) {
      const double f = std::sqrt(cap / C(i, i));
      C.row(i) *= f;
      C.col(i) *= f;
    }
  }
  for (Eigen::Index i = 0; i < k; ++i)
    for (Eigen::Index j = 0; j < k; ++j) cov[fr[static_cast<std::size_t>(i)]][fr[static_cast<std::size_t>(j)]] = C(i, j);
  return cov;
}

/// The scored grid models that score better than every scored neighbour (one grid step along one axis), best
/// first.
std::vector<const TemplateScore*> local_minima(const GridCoords& gc, const std::vector<TemplateScore>& scores) {
  std::map<std::array<long, 4>, double> at;
  auto key = [&](const TemplateParams& p) {
    const auto t = gc.coords(p);
    return std::array<long, 4>{std::lround(t[0]), std::lround(t[1]), std::lround(t[2]), std::lround(t[3])};
  };
  for (const auto& s : scores)
    if (s.index >= 0) at[key(s.params)] = s.score;
  std::vector<const TemplateScore*> out;
  for (const auto& s : scores) {
    if (s.index < 0) continue;
    const auto k0 = key(s.params);
    bool lowest = true;
    for (std::size_t a = 0; a < 4 && lowest; ++a)
      for (long d : {-1L, 1L}) {
        auto k1 = k0;
        k1[a] += d;
        const auto it = at.find(k1);
        if (it != at.end() && it->second < s.score) lowest = false;
      }
    if (lowest) out.push_back(&s);
  }
  std::sort(out.begin(), out.end(), [](const TemplateScore* a, const TemplateScore* b) {
    return a->score < b->score || (a->score == b->score && a->index < b->index);
  });
  return out;
}

}  // namespace

TemplateScore score_model(const ObservedSpectrum& obs, const std::vector<double>& wl, const std::vector<double>& flux,
                          double model_r, const FitConfig& cfg) {
  const auto w = data_weights(obs);
  const PreparedModel pm = prepare_for(obs, wl, flux, model_r, cfg);
  RvMeasurement rv;
  const Comparison c0 = compare(obs, w, pm, 0.0, cfg);
  cross_correlate(obs, c0, cfg, rv);
  const Comparison c = compare(obs, w, pm, rv.ccf_rv_km_s, cfg);
  TemplateScore s;
  s.rv_km_s = rv.ccf_rv_km_s;
  s.score = c.score;
  s.chi2 = c.chi2;
  s.n_good = c.n;
  return s;
}

bool interpolate_model(const TemplateGrid& grid, const TemplateParams& p, std::vector<double>& flux) {
  std::array<std::vector<double>, 4> axes;
  for (int a = 0; a < 4; ++a) axes[static_cast<std::size_t>(a)] = grid.axis(a);
  std::vector<std::pair<long, double>> corners;
  if (!interpolation_corners(grid, axes, p, corners)) return false;
  const std::size_t nw = grid.wavelength_angstrom.size();
  std::vector<double> lnf(nw, 0.0);
  for (const auto& [idx, w] : corners) {
    const auto row = grid.flux.row(idx);
    for (std::size_t j = 0; j < nw; ++j)
      lnf[j] += w * std::log(std::max(static_cast<double>(row(static_cast<Eigen::Index>(j))), 1e-300));
  }
  flux.resize(nw);
  for (std::size_t j = 0; j < nw; ++j) flux[j] = std::exp(lnf[j]);
  return true;
}

std::array<double, 2> teff_range_from_colours(const TemplateGrid& grid, const BandMagnitudes& mags,
                                              const FitConfig& cfg) {
  const auto teffs = grid.axis(0);
  std::array<double, 2> full = {teffs.front(), teffs.back()};
  struct Row {
    double teff, chi2;
  };
  std::vector<Row> rows;
  const auto in_box = [&](const TemplateParams& p) {
    for (int a = 0; a < 3; ++a) {
      const double v = param_value(p, a + 1);
      if (v < cfg.box[static_cast<std::size_t>(a)][0] - 1e-9 || v > cfg.box[static_cast<std::size_t>(a)][1] + 1e-9)
        return false;
    }
    return true;
  };
  for (std::size_t i = 0; i < grid.size(); ++i) {
    if (!in_box(grid.params[i])) continue;
    const auto f = grid.flux_of(i);
    double sw = 0, swd = 0;
    std::vector<double> d, w;
    for (std::size_t b = 0; b < mags.filters.size(); ++b) {
      if (!std::isfinite(mags.mag_ab[b]) || !(mags.err[b] > 0)) continue;
      double syn = kNaN;
      try {
        syn = synthetic_ab_mag(grid.wavelength_angstrom, f, mags.filters[b]);
      } catch (const DataError&) {
        continue;  // a band the models do not cover tells nothing about the colour
      }
      const double wb = 1.0 / (mags.err[b] * mags.err[b] + cfg.colour_floor_mag * cfg.colour_floor_mag);
      d.push_back(mags.mag_ab[b] - syn);
      w.push_back(wb);
      sw += wb;
      swd += wb * d.back();
    }
    if (d.size() < 2) return full;
    const double off = swd / sw;
    double chi2 = 0;
    for (std::size_t k = 0; k < d.size(); ++k) chi2 += w[k] * (d[k] - off) * (d[k] - off);
    rows.push_back({grid.params[i].teff_k, chi2});
  }
  if (rows.empty()) return full;
  double best = rows.front().chi2;
  for (const auto& r : rows) best = std::min(best, r.chi2);
  double lo = 1e30, hi = -1e30;
  for (const auto& r : rows)
    if (r.chi2 <= best + cfg.colour_delta_chi2) lo = std::min(lo, r.teff), hi = std::max(hi, r.teff);
  // One grid step of margin on each side.
  auto it = std::lower_bound(teffs.begin(), teffs.end(), lo - 1e-6);
  if (it != teffs.begin()) lo = *(it - 1);
  it = std::upper_bound(teffs.begin(), teffs.end(), hi + 1e-6);
  if (it != teffs.end()) hi = *it;
  return {lo, hi};
}

std::vector<std::size_t> select_candidates(const TemplateGrid& grid, std::array<double, 2> tr, const FitConfig& cfg) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < grid.size(); ++i) {
    const auto& p = grid.params[i];
    bool ok = p.teff_k >= tr[0] - 1e-6 && p.teff_k <= tr[1] + 1e-6;
    for (int a = 0; a < 3; ++a) {
      const double v = param_value(p, a + 1);
      ok = ok && v >= cfg.box[static_cast<std::size_t>(a)][0] - 1e-9 && v <= cfg.box[static_cast<std::size_t>(a)][1] + 1e-9;
    }
    if (ok) out.push_back(i);
  }
  return out;
}

FitResult finish_fit(const ObservedSpectrum& obs, const TemplateGrid& grid, std::vector<TemplateScore> scores,
                     const FitConfig& cfg) {
  if (scores.empty()) throw DataError("no template candidate was scored", ErrorContext{.aperture = obs.name});
  std::sort(scores.begin(), scores.end(), [](const TemplateScore& a, const TemplateScore& b) { return a.index < b.index; });
  const auto best_it = std::min_element(scores.begin(), scores.end(), [](const TemplateScore& a, const TemplateScore& b) {
    return a.score < b.score;
  });
  FitResult r;
  r.grid_index = best_it->index;
  r.params = grid.params[static_cast<std::size_t>(r.grid_index)];
  r.refined = r.params;
  std::vector<double> flux = grid.flux_of(static_cast<std::size_t>(r.grid_index));
  const FitMode grid_best{r.params, best_it->score, best_it->chi2, best_it->rv_km_s, best_it->n_good};
  const auto w = data_weights(obs);
  LogFluxInterpolator interp(grid, obs, cfg);
  GridCoords gc;
  gc.axes = interp.axes();
  gc.lo.fill(std::numeric_limits<double>::infinity());
  gc.hi.fill(-std::numeric_limits<double>::infinity());
  for (const auto& s : scores)
    for (std::size_t a = 0; a < 4; ++a) {
      const double t = gc.coord(a, param_value(s.params, static_cast<int>(a)));
      gc.lo[a] = std::min(gc.lo[a], t);
      gc.hi[a] = std::max(gc.hi[a], t);
    }
  std::vector<FitMode> found;  // the refinement's minima
  std::vector<std::array<double, 4>> found_t;
  if (cfg.interpolate) {
    // From each of the best local minima of the grid's scores: the minimum of the interpolated model's score, first
    // with the start's RV and continuum pixels, then with those of the model found (RV refined by χ²).
    const auto starts = local_minima(gc, scores);
    for (std::size_t k = 0; k < starts.size() && k < static_cast<std::size_t>(std::max(cfg.refine_starts, 0)); ++k) {
      const TemplateScore& st = *starts[k];
      Evaluator ev{obs, w, cfg, interp, gc, grid.resolving_power, st.rv_km_s, {}};
      std::vector<double> f;
      auto t = gc.coords(st.params);
      if (!interp.flux_at(st.params, f)) continue;
      ev.use = compare(obs, w, prepare_for(obs, interp.wavelength(), f, grid.resolving_power, cfg), ev.rv, cfg).use;
      t = minimise(ev, gc, t, cfg);
      if (!interp.flux_at(gc.params(t), f)) continue;
      RvMeasurement rv;
      rv.ccf_rv_km_s = ev.rv;
      const Comparison cr = refine_rv(obs, w, prepare_for(obs, interp.wavelength(), f, grid.resolving_power, cfg), cfg, rv);
      if (std::isfinite(rv.rv_km_s)) {
        ev.rv = rv.rv_km_s;
        ev.use = cr.use;
        t = minimise(ev, gc, t, cfg);
      }
      bool seen = false;
      for (const auto& u : found_t) {
        double d = 0;
        for (std::size_t a = 0; a < 4; ++a) d = std::max(d, std::abs(u[a] - t[a]));
        seen = seen || d < 0.02;
      }
      const TemplateParams p = gc.params(t);
      if (seen || !interp.flux_at(p, f)) continue;
      // Scored as the grid candidates are (its own continuum pixels, RV by cross-correlation), so that the minima
      // and the grid points compare.
      const TemplateScore s = score_model(obs, interp.wavelength(), f, grid.resolving_power, cfg);
      if (!std::isfinite(s.score)) continue;
      found.push_back({p, s.score, s.chi2, s.rv_km_s, s.n_good});
      found_t.push_back(t);
    }
  }
  std::vector<std::size_t> order(found.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return found[a].score < found[b].score; });
  std::array<double, 4> t_used = gc.coords(r.params);
  if (!order.empty()) {
    const FitMode& b = found[order.front()];
    r.refined = b.params;
    std::vector<double> fi;
    if (grid.find(b.params) < 0 && b.score < best_it->score && interpolate_model(grid, b.params, fi)) {
      TemplateScore si;
      si.params = b.params;
      si.rv_km_s = b.rv_km_s;
      si.score = b.score;
      si.chi2 = b.chi2;
      si.n_good = b.n_good;
      scores.push_back(si);
      r.params = b.params;
      r.interpolated = true;
      flux = std::move(fi);
      t_used = found_t[order.front()];
    }
  }
  r.modes.push_back(r.interpolated ? found[order.front()] : grid_best);
  for (std::size_t k = r.interpolated ? 1 : 0; k < order.size(); ++k) {
    const auto& t = found_t[order[k]];
    double d = 0;
    for (std::size_t a = 0; a < 4; ++a) d = std::max(d, std::abs(t_used[a] - t[a]));
    if (d >= 0.02) r.modes.push_back(found[order[k]]);
  }
  // The final model: RV refined by χ², everything on the observed pixels.
  const PreparedModel pm = prepare_for(obs, grid.wavelength_angstrom, flux, grid.resolving_power, cfg);
  const Comparison c0 = compare(obs, w, pm, 0.0, cfg);
  cross_correlate(obs, c0, cfg, r.rv);
  const Comparison c = refine_rv(obs, w, pm, cfg, r.rv);
  r.score = c.score;
  r.chi2 = c.chi2;
  r.dof = c.n - (cfg.continuum_degree + 1) - 1;
  // The χ² errors treat the pixels as independent; the correlation of neighbours widens them.
  const PixelCorrelation pc = pixel_correlation(obs, c, r.noise);
  r.noise.rv_factor = rv_variance_factor(obs, w, pm, cfg, c, r.rv.rv_km_s, pc);
  r.rv.rv_err_km_s *= std::sqrt(r.noise.rv_factor);
  r.rv.ccf_err_km_s *= std::sqrt(r.noise.rv_factor);
  // The parameters' covariance at the model used, with its RV and continuum pixels.
  {
    Evaluator ev{obs, w, cfg, interp, gc, grid.resolving_power, r.rv.rv_km_s, c.use};
    r.param_cov = parameter_covariance(ev, gc, t_used, r.dof > 0 ? r.chi2_dof() : 1.0, pc);
  }
  r.candidates = std::move(scores);
  r.model_wavelength = grid.wavelength_angstrom;
  r.model_flux = std::move(flux);
  r.model_on_data = c.model;
  r.normalised_data = c.dn;
  r.normalised_model = c.mn;
  r.normalised_sigma = c.sn;
  return r;
}

ModelUncertainty model_uncertainty(const ObservedSpectrum& obs, const TemplateGrid& grid, const FitResult& fit,
                                   const FitConfig& cfg) {
  const std::size_t n = obs.wavelength_angstrom.size();
  ModelUncertainty out;
  out.rel_var.assign(n, kNaN);
  if (fit.model_on_data.size() != n) return out;
  // Mismatch floor: Σ r²/(σ² + s²) = dof, solved for s² by bisection (the left side falls with s²).
  std::vector<double> r2, s2;
  for (std::size_t i = 0; i < fit.normalised_data.size() && i < n; ++i) {
    const double d = fit.normalised_data[i], m = fit.normalised_model[i], sg = fit.normalised_sigma[i];
    if (!std::isfinite(d) || !std::isfinite(m) || !(sg > 0)) continue;
    r2.push_back((d - m) * (d - m));
    s2.push_back(sg * sg);
  }
  const double dof = static_cast<double>(fit.dof);
  auto chi2_at = [&](double f) {
    double c = 0;
    for (std::size_t i = 0; i < r2.size(); ++i) c += r2[i] / (s2[i] + f);
    return c;
  };
  double floor2 = 0.0;
  if (dof > 0 && chi2_at(0.0) > dof) {
    double lo = 0.0, hi = 1e-6;
    while (chi2_at(hi) > dof && hi < 1.0) hi *= 4.0;
    for (int it = 0; it < 60; ++it) {
      const double mid = 0.5 * (lo + hi);
      (chi2_at(mid) > dof ? lo : hi) = mid;
    }
    floor2 = 0.5 * (lo + hi);
  }
  out.mismatch_rel = std::sqrt(floor2);
  // A grid model convolved, shifted by the fitted RV and resampled on the observed pixels; each one once.
  std::map<long, std::vector<double>> prepared;
  auto on_data = [&](long idx) -> const std::vector<double>& {
    auto it = prepared.find(idx);
    if (it == prepared.end()) {
      const PreparedModel pm = prepare_for(obs, grid.wavelength_angstrom, grid.flux_of(static_cast<std::size_t>(idx)),
                                           grid.resolving_power, cfg);
      it = prepared.emplace(idx, resample_model(pm, fit.rv.rv_km_s, obs.wavelength_angstrom)).first;
    }
    return it->second;
  };
  // Neighbours along each axis of the grid model nearest the one used (the best grid model when that is used).
  LogFluxInterpolator interp(grid, obs, cfg);
  GridCoords gc;
  gc.axes = interp.axes();
  std::vector<double> nb(n, 0.0);
  long near_index = fit.grid_index;
  if (fit.interpolated) {
    const auto t = gc.coords(fit.params);
    near_index = grid.find(gc.params({std::round(t[0]), std::round(t[1]), std::round(t[2]), std::round(t[3])}));
  }
  if (near_index >= 0) {
    const TemplateParams p0 = grid.params[static_cast<std::size_t>(near_index)];
    std::vector<double> m0;
    for (int a = 0; a < 4; ++a) {
      const auto& ax = gc.axes[static_cast<std::size_t>(a)];
      const double v0 = param_value(p0, a);
      const auto pos = std::lower_bound(ax.begin(), ax.end(), v0 - 1e-9) - ax.begin();
      if (pos == 0 || pos + 1 >= static_cast<long>(ax.size())) continue;
      long idx[2] = {-1, -1};
      for (int side = 0; side < 2; ++side) {
        TemplateParams q = p0;
        double* qf[4] = {&q.teff_k, &q.logg, &q.mh, &q.alpha};
        *qf[a] = ax[static_cast<std::size_t>(pos + (side ? 1 : -1))];
        idx[side] = grid.find(q);
      }
      if (idx[0] < 0 || idx[1] < 0) continue;
      const double xm = ax[static_cast<std::size_t>(pos - 1)], xp = ax[static_cast<std::size_t>(pos + 1)];
      const double pu = param_value(fit.interpolated ? fit.params : fit.refined, a);
      // Fractional position: in the cell [x_lo, x_hi] holding the interpolated value, or the offset (in steps of
      // the side it lies on) from the grid point.
      const double h = pu >= v0 ? xp - v0 : v0 - xm;
      const double u = h > 0 ? std::abs(pu - v0) / h : 0.0;
      if (!(u > 1e-9)) continue;
      if (m0.empty()) m0 = on_data(near_index);
      const auto& mm = on_data(idx[0]);
      const auto& mp = on_data(idx[1]);
      for (std::size_t j = 0; j < n; ++j) {
        if (!(m0[j] > 0) || !(mm[j] > 0) || !(mp[j] > 0)) {
          nb[j] = kNaN;
          continue;
        }
        const double l0 = std::log(m0[j]), lm = std::log(mm[j]), lp = std::log(mp[j]);
        // Divided differences on a possibly uneven axis, in units of the cell width h.
        const double d1 = (lp - lm) / (xp - xm) * h;
        const double d2 = 2.0 * ((lp - l0) / (xp - v0) - (l0 - lm) / (v0 - xm)) / (xp - xm) * h * h;
        const double e = fit.interpolated ? 0.5 * u * (1.0 - u) * std::abs(d2) : u * std::abs(d1);
        nb[j] += e * e;
      }
    }
  }
  // The interpolated model at p, convolved, shifted by the fitted RV, on the observed pixels (empty when p is
  // outside the grid).
  auto model_at = [&](const TemplateParams& p) -> std::vector<double> {
    std::vector<double> f;
    if (!interp.flux_at(p, f)) return {};
    return resample_model(prepare_for(obs, interp.wavelength(), f, grid.resolving_power, cfg), fit.rv.rv_km_s,
                          obs.wavelength_angstrom);
  };
  // A per-pixel vector less its mean over the pixels where it is finite (the broadband level is the scale's).
  auto less_mean = [](std::vector<double>& d) {
    double sum = 0;
    long cnt = 0;
    for (double v : d)
      if (std::isfinite(v)) sum += v, ++cnt;
    const double mean = cnt ? sum / static_cast<double>(cnt) : 0.0;
    for (double& v : d) v -= mean;
  };
  // Parameters: gᵀ C g with g = ∂ ln F/∂p by central differences of 0.05 grid steps (one-sided at the grid's ends).
  std::vector<double> pv(n, 0.0);
  {
    const auto t = gc.coords(fit.params);
    std::array<std::vector<double>, 4> g;
    for (std::size_t a = 0; a < 4; ++a) {
      if (!(fit.param_cov[a][a] > 0)) continue;
      const double top = static_cast<double>(gc.axes[a].size() - 1);
      auto t1 = t, t2 = t;
      t1[a] = std::max(0.0, t[a] - 0.05);
      t2[a] = std::min(top, t[a] + 0.05);
      if (!(t2[a] > t1[a])) continue;
      const auto m1 = model_at(gc.params(t1)), m2 = model_at(gc.params(t2));
      if (m1.size() != n || m2.size() != n) continue;
      const double dv = gc.value(a, t2[a]) - gc.value(a, t1[a]);
      g[a].assign(n, kNaN);
      for (std::size_t j = 0; j < n; ++j)
        if (m1[j] > 0 && m2[j] > 0) g[a][j] = (std::log(m2[j]) - std::log(m1[j])) / dv;
      less_mean(g[a]);
    }
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t a = 0; a < 4; ++a)
        for (std::size_t b = 0; b < 4; ++b)
          if (!g[a].empty() && !g[b].empty() && std::isfinite(g[a][j]) && std::isfinite(g[b][j]))
            pv[j] += g[a][j] * fit.param_cov[a][b] * g[b][j];
  }
  // Modes: the other minima, weighted by exp(−Δscore/2) (Δscore over max(1, χ²/dof)), normalised over all of them.
  std::vector<double> mv(n, 0.0);
  if (fit.modes.size() > 1) {
    const double red = std::max(1.0, fit.chi2_dof());
    std::vector<double> wk(fit.modes.size());
    double z = 0;
    for (std::size_t k = 0; k < wk.size(); ++k) {
      wk[k] = std::exp(-0.5 * (fit.modes[k].score - fit.modes.front().score) / red);
      z += wk[k];
    }
    for (std::size_t k = 1; k < wk.size(); ++k) {
      out.modes_weight += wk[k] / z;
      if (!(wk[k] / z > 1e-6)) continue;
      const auto mk = model_at(fit.modes[k].params);
      if (mk.size() != n) continue;
      std::vector<double> d(n, kNaN);
      for (std::size_t j = 0; j < n; ++j)
        if (mk[j] > 0 && fit.model_on_data[j] > 0) d[j] = std::log(mk[j]) - std::log(fit.model_on_data[j]);
      less_mean(d);
      for (std::size_t j = 0; j < n; ++j)
        if (std::isfinite(d[j])) mv[j] += wk[k] / z * d[j] * d[j];
    }
  }
  std::vector<double> nb_sigma, pv_sigma, mv_sigma;
  for (std::size_t j = 0; j < n; ++j) {
    const double m = fit.normalised_model.size() == n ? fit.normalised_model[j] : kNaN;
    if (!(fit.model_on_data[j] > 0) || !std::isfinite(nb[j])) continue;
    const double mis = std::isfinite(m) && m > 0 ? floor2 / (m * m) : floor2;
    out.rel_var[j] = mis + nb[j] + pv[j] + mv[j];
    nb_sigma.push_back(std::sqrt(nb[j]));
    pv_sigma.push_back(std::sqrt(pv[j]));
    mv_sigma.push_back(std::sqrt(mv[j]));
  }
  out.neighbours_rel = median_of(nb_sigma);
  out.parameters_rel = median_of(pv_sigma);
  out.modes_rel = median_of(mv_sigma);
  return out;
}

FitResult fit_template(const ObservedSpectrum& obs, const TemplateGrid& grid, const std::vector<std::size_t>& candidates,
                       const FitConfig& cfg) {
  if (obs.wavelength_angstrom.size() < 10 || obs.flux.size() != obs.wavelength_angstrom.size() ||
      obs.variance.size() != obs.flux.size() || obs.good.size() != obs.flux.size())
    throw DataError("observed spectrum: arrays of different lengths or fewer than 10 pixels",
                    ErrorContext{.aperture = obs.name});
  if (candidates.empty())
    throw DataError("no template in the grid falls in the Teff range and parameter box", ErrorContext{.aperture = obs.name});
  if (cfg.metric != "chi2" && cfg.metric != "huber")
    throw ConfigError("template fit metric must be chi2 or huber, not '" + cfg.metric + "'");
  check_grid_covers(grid, obs, cfg);
  long ngood = 0;
  for (std::size_t i = 0; i < obs.good.size(); ++i)
    ngood += obs.good[i] && std::isfinite(obs.flux[i]) && obs.variance[i] > 0;
  if (ngood < 5 * (cfg.continuum_degree + 1))
    throw DataError(fmt::format("only {} good pixels in the spectrum", ngood), ErrorContext{.aperture = obs.name});
  std::vector<TemplateScore> scores;
  for (std::size_t i : candidates) {
    TemplateScore s = score_model(obs, grid.wavelength_angstrom, grid.flux_of(i), grid.resolving_power, cfg);
    s.index = static_cast<long>(i);
    s.params = grid.params[i];
    scores.push_back(s);
  }
  return finish_fit(obs, grid, std::move(scores), cfg);
}

}  // namespace kspecdr::fluxcal
