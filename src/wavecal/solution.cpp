#include "kspecdr/wavecal/solution.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <map>
#include <random>

#include "kspecdr/wavecal/fit_detail.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::wavecal {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

using detail::anchor_lines;

struct Triplet {
  double ratio;  ///< (middle − first) / (last − first)
  double span;   ///< last − first (px or Å)
  int a, b, c;   ///< indices, increasing
};

std::vector<Triplet> triplets(const std::vector<double>& v, int k_neigh, double min_span) {
  std::vector<Triplet> t;
  const int n = static_cast<int>(v.size());
  for (int a = 0; a < n; ++a)
    for (int b = a + 1; b <= std::min(a + k_neigh, n - 1); ++b)
      for (int c = b + 1; c <= std::min(b + k_neigh, n - 1); ++c) {
        const double span = v[static_cast<std::size_t>(c)] - v[static_cast<std::size_t>(a)];
        if (span < min_span) continue;
        t.push_back({(v[static_cast<std::size_t>(b)] - v[static_cast<std::size_t>(a)]) / span, span, a, b, c});
      }
  std::sort(t.begin(), t.end(), [](const Triplet& p, const Triplet& q) { return p.ratio < q.ratio; });
  return t;
}

/// One peak ↔ line correspondence proposed by a triplet match, with the linear model it implies.
struct Vote {
  double shift_px;  ///< (λ(x_c) − λ_c,hint) / |D_hint|
  double scale;     ///< |dλ/dx| / |D_hint|
  int sign;         ///< +1: λ increases with x
  int peak[3];
  int line[3];
};

struct Candidate {
  WavelengthSolution sol;
  bool valid = false;
  std::string why;
};

int order_for(int n_lines, int max_order) { return std::clamp((n_lines - 2) / 2, 1, std::max(1, max_order)); }

/// Iterative matching and fitting from an approximate solution that is trusted on [trusted_lo, trusted_hi]
/// (see refine()). The matched region grows outward pass by pass, so that the model is never
/// extrapolated far before lines there anchor it: in a dense list (CuAr) an extrapolated model finds
/// a wrong but self-consistent sequence of lines at the far end.
WavelengthSolution match_and_fit(const std::vector<ArcPeak>& peaks, long npix, const std::vector<ArcLine>& lines,
                                 Medium medium, const LegendreSeries& initial, int max_order, double start_tol,
                                 double trusted_lo, double trusted_hi, const WavecalConfig& cfg) {
  WavelengthSolution s;
  s.npix = npix;
  s.medium = medium;
  s.lambda = initial;
  std::vector<double> w;
  for (const auto& l : lines) w.push_back(l.wavelength_angstrom);
  for (const auto& p : peaks)
    if (p.usable() && std::isfinite(p.x_err_px)) ++s.n_peaks;
  if (w.empty() || s.n_peaks == 0) {
    s.message = "no usable peak or list line";
    return s;
  }
  const double xmax = static_cast<double>(npix - 1);
  const double grow = 0.1 * xmax;
  double rlo = trusted_lo, rhi = trusted_hi;
  double tol = std::max(start_tol, cfg.match_tolerance_px);
  double final_tol = cfg.match_tolerance_px;
  int settled = 0;
  bool adapted = false;
  detail::ClippedFit fit;
  for (int pass = 0; pass < 100; ++pass) {
    const bool full_window = rlo - grow <= 0.0 && rhi + grow >= xmax;
    auto pairs = detail::match_lines(peaks, s.lambda, w, tol);
    std::erase_if(pairs, [&](const auto& pr) {
      const double x = peaks[pr.first].x_px;
      return x < rlo - grow || x > rhi + grow;
    });
    std::vector<double> fx, fy, fe, fte;
    for (const auto& [pi, li] : pairs) {
      const ArcPeak& p = peaks[pi];
      const double disp = std::abs(s.lambda.derivative(p.x_px));
      fx.push_back(p.x_px);
      fy.push_back(w[li]);
      fe.push_back(std::hypot(p.x_err_px, cfg.centroid_floor_px) * disp);
      fte.push_back(p.x_err_px * disp);
    }
    // The order follows both the number of lines and the fraction of the detector they cover.
    const double coverage = fx.empty() ? 0.0
                                       : (*std::max_element(fx.begin(), fx.end()) -
                                          *std::min_element(fx.begin(), fx.end())) / xmax;
    const int cover_order = coverage < 0.35 ? 2 : coverage < 0.6 ? 3 : max_order;
    const int ord = std::min({max_order, cover_order, order_for(static_cast<int>(fx.size()), max_order)});
    if (static_cast<int>(fx.size()) < ord + 2) {
      s.message = fmt::format("only {} lines matched within {:.2f} px", fx.size(), tol);
      return s;
    }
    fit = detail::fit_legendre_clipped(fx, fy, fe, fte, ord, 0.0, xmax, cfg.clip_sigma, cfg.clip_iterations);
    if (!fit.ok) {
      s.message = "the Legendre fit is singular";
      return s;
    }
    s.lambda = fit.series;
    s.lines.clear();
    double ulo = xmax, uhi = 0.0;
    for (std::size_t k = 0; k < pairs.size(); ++k) {
      const ArcPeak& p = peaks[pairs[k].first];
      LineMatch m;
      m.x_px = p.x_px;
      m.x_err_px = p.x_err_px;
      m.wavelength_angstrom = fy[k];
      m.snr = p.snr;
      m.flux = p.flux;
      m.sigma_px = p.sigma_px;
      m.used = fit.used[k] != 0;
      m.id = lines[pairs[k].second].id;
      if (m.used) {
        ulo = std::min(ulo, m.x_px);
        uhi = std::max(uhi, m.x_px);
      }
      s.lines.push_back(m);
    }
    rlo = std::min(rlo, ulo);
    rhi = std::max(rhi, uhi);
    if (tol > cfg.match_tolerance_px * 1.01) {
      tol = std::max(cfg.match_tolerance_px, 0.6 * tol);
      continue;
    }
    if (!full_window) continue;  // keep growing at the final tolerance
    if (++settled < 2) continue;
    if (!adapted) {
      // Settled: the window shrinks to what the residuals need (dense lists admit chance matches at 1 px).
      adapted = true;
      settled = 0;
      std::vector<double> r;
      for (const auto& m : s.lines)
        if (m.used) r.push_back(std::abs(m.wavelength_angstrom - s.lambda(m.x_px)) / std::abs(s.lambda.derivative(m.x_px)));
      final_tol = std::clamp(cfg.match_tolerance_sigma * 1.4826 * detail::median(r), cfg.min_match_tolerance_px,
                             cfg.match_tolerance_px);
      tol = final_tol;
      continue;
    }
    break;
  }
  // Statistics of the final fit.
  double ss_px = 0, ss_a = 0, ss_exp = 0;
  s.n_used = s.n_rejected = 0;
  for (auto& m : s.lines) {
    m.fit_angstrom = s.lambda(m.x_px);
    const double disp = std::abs(s.lambda.derivative(m.x_px));
    m.residual_px = (m.wavelength_angstrom - m.fit_angstrom) / disp;
    if (m.used) {
      ++s.n_used;
      ss_px += m.residual_px * m.residual_px;
      ss_a += (m.wavelength_angstrom - m.fit_angstrom) * (m.wavelength_angstrom - m.fit_angstrom);
      ss_exp += m.x_err_px * m.x_err_px;
    } else {
      ++s.n_rejected;
    }
  }
  s.n_matched = s.n_used + s.n_rejected;
  const int m = static_cast<int>(s.lambda.coeffs.size());
  // The rms of n residuals about a fit of m parameters is short of the noise by √((n − m)/n).
  const double dof_factor = s.n_used > m ? static_cast<double>(s.n_used - m) / s.n_used : 1.0;
  s.rms_px = std::sqrt(ss_px / std::max(1, s.n_used));
  s.rms_angstrom = std::sqrt(ss_a / std::max(1, s.n_used));
  s.expected_rms_px = std::sqrt(ss_exp / std::max(1, s.n_used) * dof_factor);
  s.chi2_dof = fit.chi2_dof;
  // The fit's error from the centroid errors alone: the validation's measure of how far the solution is
  // extrapolated beyond its lines.
  double sv = 0;
  s.max_predicted_error_px = 0.0;
  int nv = 0;
  for (long x = 0; x < npix; x += std::max(1L, npix / 256)) {
    const double xd = static_cast<double>(x);
    const double v = detail::series_variance(fit, xd) / std::pow(s.lambda.derivative(xd), 2);
    sv += v;
    s.max_predicted_error_px = std::max(s.max_predicted_error_px, std::sqrt(v));
    ++nv;
  }
  s.predicted_error_px = std::sqrt(sv / std::max(1, nv));
  // The error the solution honestly has: the lines scatter more than their centroid errors say (list
  // errors, faint blends), and that scatter propagates too.
  {
    std::vector<double> lx, ly, le, lr, ld;
    for (const auto& ln : s.lines)
      if (ln.used && ln.x_err_px > 0) {
        lx.push_back(ln.x_px);
        ly.push_back(ln.wavelength_angstrom);
        le.push_back(ln.x_err_px);
        lr.push_back(ln.residual_px);
        ld.push_back(std::abs(s.lambda.derivative(ln.x_px)));
      }
    const double h = detail::honest_error_px(lx, ly, le, lr, ld, s.lambda.order(), s.lambda.xmin, s.lambda.xmax,
                                             cfg.centroid_floor_px, npix, s.lambda);
    if (std::isfinite(h)) s.predicted_error_px = std::max(s.predicted_error_px, h);
  }
  // Chance coincidences: each usable peak lands within ±tol of some line with probability
  // 2·tol·|D|·(lines per Å) — the baseline a real identification must beat by far.
  const double lam0 = s.lambda(0.0), lam1 = s.lambda(xmax);
  const double lo = std::min(lam0, lam1), hi = std::max(lam0, lam1);
  const auto nin = std::count_if(w.begin(), w.end(), [&](double v) { return v >= lo && v <= hi; });
  const double density_per_px = static_cast<double>(nin) / static_cast<double>(npix);
  const double expected = std::max(1e-3, s.n_peaks * 2.0 * final_tol * density_per_px);
  s.match_significance = s.n_used / expected;
  s.match_tolerance_px = final_tol;
  s.status = SolutionStatus::Ok;
  s.message.clear();

  return s;
}

/// Best quadratic λ(x) through the correspondences, by sampling triples (RANSAC): wrong votes from chance
/// triplet matches are common, right ones agree with each other.
bool ransac_quadratic(const std::vector<double>& x, const std::vector<double>& lam, const std::vector<double>& weight,
                      long npix, const DispersionHint& hint, double xc, const WavecalConfig& cfg,
                      LegendreSeries& out, double& inlier_lo, double& inlier_hi) {
  const std::size_t n = x.size();
  if (n < 3) return false;
  const double D = std::abs(hint.dispersion_angstrom_per_px);
  const double xmax = static_cast<double>(npix - 1);
  std::mt19937 rng(20240607u);  // fixed: the result must not depend on the run
  std::uniform_int_distribution<std::size_t> pick(0, n - 1);
  const double inlier_px = 1.5;  // a quadratic follows a real λ(x) to better than this over the detector
  double best_score = -1;
  LegendreSeries best;
  best.xmin = 0;
  best.xmax = xmax;
  const int trials = static_cast<int>(std::min<std::size_t>(1000, n * n * n));
  for (int t = 0; t < trials; ++t) {
    std::size_t i = pick(rng), j = pick(rng), k = pick(rng);
    if (i == j || j == k || i == k) continue;
    if (std::abs(x[i] - x[j]) < 20 || std::abs(x[j] - x[k]) < 20 || std::abs(x[i] - x[k]) < 20) continue;
    LegendreSeries s;
    s.xmin = 0;
    s.xmax = xmax;
    Eigen::Matrix3d A;
    Eigen::Vector3d b;
    const std::size_t id[3] = {i, j, k};
    for (int r = 0; r < 3; ++r) {
      double p[3];
      legendre_basis(s.to_unit(x[id[r]]), p, 2);
      A.row(r) << p[0], p[1], p[2];
      b[r] = lam[id[r]];
    }
    const Eigen::Vector3d c = A.fullPivLu().solve(b);
    if (!c.allFinite()) continue;
    s.coeffs = {c[0], c[1], c[2]};
    // A quadratic whose slope changes sign on the detector, or whose dispersion is far from the hint, is no
    // spectrograph's.
    const double d0 = s.derivative(0), d1 = s.derivative(xmax), dc = s.derivative(xc);
    if (d0 * d1 <= 0 || std::abs(dc) < D * (1 - cfg.dispersion_tolerance - 0.05) ||
        std::abs(dc) > D * (1 + cfg.dispersion_tolerance + 0.05))
      continue;
    if (std::max(std::abs(d0), std::abs(d1)) > 1.3 * std::min(std::abs(d0), std::abs(d1))) continue;
    double score = 0;
    for (std::size_t q = 0; q < n; ++q)
      if (std::abs(lam[q] - s(x[q])) < inlier_px * std::abs(dc)) score += weight[q];
    if (score > best_score) {
      best_score = score;
      best = s;
    }
  }
  if (best_score < 0) return false;
  // Least squares on the inliers of the best sample.
  std::vector<double> fx, fy, fe;
  const double dc = std::abs(best.derivative(xc));
  for (std::size_t q = 0; q < n; ++q)
    if (std::abs(lam[q] - best(x[q])) < inlier_px * dc) {
      fx.push_back(x[q]);
      fy.push_back(lam[q]);
      fe.push_back(dc);
    }
  const int ord = fx.size() >= 6 ? 2 : 1;
  const auto f = detail::fit_legendre_clipped(fx, fy, fe, {}, ord, 0.0, xmax, 3.0, 5);
  if (!f.ok) return false;
  out = f.series;
  inlier_lo = *std::min_element(fx.begin(), fx.end());
  inlier_hi = *std::max_element(fx.begin(), fx.end());
  if (out.coeffs.size() < 3) out.coeffs.resize(3, 0.0);
  return true;
}

/// Lines of `b` used in its fit that `a` does not use with the same identification: a different
/// identification disagrees on most lines, the same one differs at most in a few faint or edge lines.
int distinct_lines(const WavelengthSolution& a, const WavelengthSolution& b) {
  int n = 0;
  for (const auto& mb : b.lines) {
    if (!mb.used) continue;
    const bool shared = std::any_of(a.lines.begin(), a.lines.end(), [&](const LineMatch& ma) {
      return ma.used && std::abs(ma.x_px - mb.x_px) < 1e-6 && ma.wavelength_angstrom == mb.wavelength_angstrom;
    });
    n += shared ? 0 : 1;
  }
  return n;
}

}  // namespace

std::string to_string(SolutionStatus s) {
  switch (s) {
    case SolutionStatus::Ok: return "ok";
    case SolutionStatus::Smoothed: return "smoothed";
    case SolutionStatus::Failed: return "failed";
  }
  return "unknown";
}

std::vector<double> WavelengthSolution::wavelengths() const {
  std::vector<double> v(static_cast<std::size_t>(std::max(0L, npix)));
  for (long x = 0; x < npix; ++x) v[static_cast<std::size_t>(x)] = lambda(static_cast<double>(x));
  return v;
}

double WavelengthSolution::pixel(double angstrom) const {
  const double xmax = static_cast<double>(npix - 1);
  const double l0 = lambda(0.0), l1 = lambda(xmax);
  double x = xmax * (angstrom - l0) / (l1 - l0);
  for (int i = 0; i < 50; ++i) {
    const double d = lambda.derivative(x);
    if (d == 0.0) break;
    const double dx = (lambda(x) - angstrom) / d;
    x -= dx;
    if (std::abs(dx) < 1e-10) break;
  }
  return x;
}

DispersionHint hint_from_profile(const InstrumentProfile& profile, long npix) {
  if (!(profile.wave_center_angstrom > 0) || profile.dispersion_angstrom_per_px == 0.0 ||
      !std::isfinite(profile.dispersion_angstrom_per_px))
    throw ConfigError(fmt::format("instrument profile '{}' has no usable [wavelength] center_angstrom / "
                                  "dispersion_angstrom_per_px hints",
                                  profile.name),
                      ErrorContext{.file = profile.source.string(), .keyword = "wavelength"});
  DispersionHint h;
  h.center_angstrom = profile.wave_center_angstrom;
  h.dispersion_angstrom_per_px = profile.dispersion_angstrom_per_px;
  h.center_px = 0.5 * static_cast<double>(npix - 1);
  return h;
}

WavelengthSolution refine(const std::vector<ArcPeak>& peaks, long npix, const LineList& list,
                          const LegendreSeries& initial, int order, double start_tolerance_px,
                          const WavecalConfig& cfg) {
  const LineList l = to_medium(list, cfg.output_medium);
  const double xmax = static_cast<double>(npix - 1);
  const double a = initial(0.0), b = initial(xmax);
  const double D = std::abs(b - a) / std::max(1.0, xmax);
  const double margin = (start_tolerance_px + 5.0) * D;
  const auto lines = anchor_lines(l, std::min(a, b) - margin, std::max(a, b) + margin, cfg.list_blend_px * D);
  return match_and_fit(peaks, npix, lines, l.medium, initial, order, start_tolerance_px, 0.0, xmax, cfg);
}

/// An outer fifth of the detector whose lines disagree with the solution fitted without them.
struct EdgeCheck {
  int end = -1;              ///< 0 low-x, 1 high-x, -1 none
  std::size_t n_lines = 0;
  double excess = 0.0;       ///< median deviation / allowed deviation
  LegendreSeries core;       ///< the fit without that end's lines
  double core_lo = 0.0, core_hi = 0.0;
};

EdgeCheck check_edges(const WavelengthSolution& s, const WavecalConfig& cfg) {
  EdgeCheck out;
  const double xmax = static_cast<double>(s.npix - 1);
  for (int end = 0; end < 2; ++end) {
    std::vector<double> cx, cy, ce, ex, ey;
    for (const auto& m : s.lines) {
      if (!m.used) continue;
      const bool outer = end == 0 ? m.x_px < 0.2 * xmax : m.x_px > 0.8 * xmax;
      const double disp = std::abs(s.dispersion(m.x_px));
      if (outer) {
        ex.push_back(m.x_px);
        ey.push_back(m.wavelength_angstrom);
      } else {
        cx.push_back(m.x_px);
        cy.push_back(m.wavelength_angstrom);
        ce.push_back(std::hypot(m.x_err_px, cfg.centroid_floor_px) * disp);
      }
    }
    if (ex.empty() || cx.size() < 6) continue;
    const int ord =
        std::min({3, static_cast<int>(s.lambda.coeffs.size()) - 1, order_for(static_cast<int>(cx.size()), 3)});
    const auto f = detail::fit_legendre_clipped(cx, cy, ce, {}, ord, 0.0, xmax, cfg.clip_sigma, cfg.clip_iterations);
    if (!f.ok) continue;
    std::vector<double> excess;
    for (std::size_t k = 0; k < ex.size(); ++k) {
      const double disp = std::abs(s.dispersion(ex[k]));
      const double dev = std::abs(ey[k] - f.series(ex[k])) / disp;
      const double allowed = std::max(cfg.edge_consistency_px,
                                      5.0 * std::sqrt(detail::series_variance(f, ex[k])) * f.scale / disp);
      excess.push_back(dev / allowed);
    }
    const double e = detail::median(excess);
    if (e > 1.0 && e > out.excess) {
      out.end = end;
      out.n_lines = ex.size();
      out.excess = e;
      out.core = f.series;
      out.core_lo = *std::min_element(cx.begin(), cx.end());
      out.core_hi = *std::max_element(cx.begin(), cx.end());
    }
  }
  return out;
}

void validate(const WavelengthSolution& s, const DispersionHint& hint, const WavecalConfig& cfg) {
  if (s.status == SolutionStatus::Failed)
    throw NumericalError("no wavelength solution: " + (s.message.empty() ? "the fit failed" : s.message));
  if (s.n_used < cfg.min_lines)
    throw NumericalError(fmt::format("no wavelength solution: only {} lines in the fit (at least {} needed)",
                                     s.n_used, cfg.min_lines));
  if (!(s.match_significance >= cfg.min_match_significance))
    throw NumericalError(fmt::format(
        "no wavelength solution: {} matched lines are only {:.1f} times what chance coincidences give "
        "(at least {:.1f} needed)",
        s.n_used, s.match_significance, cfg.min_match_significance));
  const double disp_c = std::abs(s.dispersion(0.5 * static_cast<double>(s.npix - 1)));
  const double rms_limit = std::max({cfg.max_rms_factor * s.expected_rms_px, cfg.max_rms_floor_px,
                                     cfg.list_precision_angstrom / disp_c});
  if (!(s.rms_px <= rms_limit))
    throw NumericalError(fmt::format(
        "no wavelength solution: rms {:.3f} px exceeds {:.3f} px (the centroid errors predict {:.3f} px)", s.rms_px,
        rms_limit, s.expected_rms_px));
  const double xmax = static_cast<double>(s.npix - 1);
  const double D = std::abs(hint.dispersion_angstrom_per_px);
  const double d0 = s.dispersion(0.0);
  for (long x = 0; x < s.npix; x += std::max(1L, s.npix / 128)) {
    const double d = s.dispersion(static_cast<double>(x));
    if (d * d0 <= 0 || std::abs(d) < 0.5 * D || std::abs(d) > 2.0 * D)
      throw NumericalError(fmt::format(
          "no wavelength solution: dλ/dx = {:.4g} Å/px at x = {} is not monotonic or far from the hint {:.4g}", d,
          x, hint.dispersion_angstrom_per_px));
  }
  const double dc = std::abs(s.dispersion(0.5 * xmax));
  if (std::abs(dc / D - 1.0) > cfg.dispersion_tolerance + 0.03)
    throw NumericalError(fmt::format("no wavelength solution: central dispersion {:.4g} Å/px is outside ±{:.0f} % of "
                                     "the hint {:.4g}",
                                     dc, 100 * (cfg.dispersion_tolerance + 0.03), D));
  double xlo = xmax, xhi = 0;
  for (const auto& m : s.lines)
    if (m.used) {
      xlo = std::min(xlo, m.x_px);
      xhi = std::max(xhi, m.x_px);
    }
  if (xhi - xlo < 0.4 * xmax)
    throw NumericalError(fmt::format(
        "no wavelength solution: the fitted lines cover only x = {:.0f}…{:.0f} px of 0…{:.0f}", xlo, xhi, xmax));
  if (!(s.max_predicted_error_px <= cfg.max_predicted_error_px))
    throw NumericalError(fmt::format(
        "no wavelength solution: extrapolated beyond its lines the fit is uncertain by {:.2f} px (limit {:.2f} px)",
        s.max_predicted_error_px, cfg.max_predicted_error_px));
  if (const EdgeCheck e = check_edges(s, cfg); e.end >= 0)
    throw NumericalError(fmt::format(
        "no wavelength solution: the {} lines at the {} end disagree with the solution of the other lines "
        "(by {:.1f} × the allowed deviation): a wrong sequence of lines there",
        e.n_lines, e.end == 0 ? "low-x" : "high-x", e.excess));
}

WavelengthSolution identify(const std::vector<ArcPeak>& peaks, long npix, const LineList& list,
                            const DispersionHint& hint, const WavecalConfig& cfg) {
  if (npix < 16) throw DataError(fmt::format("spectrum of {} pixels is too short to calibrate", npix));
  if (!(hint.center_angstrom > 0) || !(std::abs(hint.dispersion_angstrom_per_px) > 0))
    throw ConfigError("wavelength hints must give a positive central wavelength and a non-zero dispersion");
  const LineList l = to_medium(list, cfg.output_medium);
  const double xmax = static_cast<double>(npix - 1);
  const double xc = std::isfinite(hint.center_px) ? hint.center_px : 0.5 * xmax;
  const double D = std::abs(hint.dispersion_angstrom_per_px);
  const int hint_sign = hint.dispersion_angstrom_per_px > 0 ? 1 : -1;
  const double reach = D * (1 + cfg.dispersion_tolerance) * (std::max(xc, xmax - xc) + cfg.shift_tolerance_px + 10);
  const auto lines = anchor_lines(l, hint.center_angstrom - reach, hint.center_angstrom + reach,
                                  cfg.list_blend_px * D * (1 + cfg.dispersion_tolerance));
  if (lines.size() < 3)
    throw DataError(fmt::format("line list {} has {} isolated lines in {:.0f}–{:.0f} Å: nothing to identify",
                                l.source, lines.size(), hint.center_angstrom - reach, hint.center_angstrom + reach));

  // Peaks for pattern matching: the brightest usable ones, in increasing x.
  std::vector<ArcPeak> pat;
  for (const auto& p : peaks)
    if (p.usable() && std::isfinite(p.x_err_px)) pat.push_back(p);
  const int n_usable = static_cast<int>(pat.size());
  if (n_usable < 3)
    throw DataError(fmt::format("only {} usable arc lines found (of {} peaks): nothing to identify", n_usable,
                                peaks.size()));
  std::sort(pat.begin(), pat.end(), [](const ArcPeak& a, const ArcPeak& b) { return a.flux > b.flux; });
  if (static_cast<int>(pat.size()) > cfg.pattern_peaks) pat.resize(static_cast<std::size_t>(cfg.pattern_peaks));
  std::sort(pat.begin(), pat.end(), [](const ArcPeak& a, const ArcPeak& b) { return a.x_px < b.x_px; });
  std::vector<double> px, lw;
  for (const auto& p : pat) px.push_back(p.x_px);
  for (const auto& ln : lines) lw.push_back(ln.wavelength_angstrom);

  // Triplet ratios are unchanged by shift and scale; a peak triplet that matches a line triplet's ratio
  // (forward, or mirrored for λ decreasing with x) and whose span gives a plausible dispersion votes for
  // the linear model through it. Lines skip more neighbours than peaks: faint list lines often go unseen.
  const auto pt = triplets(px, cfg.triplet_neighbours, 8.0);
  const auto lt = triplets(lw, 2 * cfg.triplet_neighbours, 8.0 * D * (1 - cfg.dispersion_tolerance));
  const double dtol = cfg.dispersion_tolerance + 0.03;
  std::vector<Vote> votes;
  for (const auto& t : pt) {
    // Ratio tolerance from the three centroid errors and the list precision, plus the change of the
    // dispersion along the span that a smooth λ(x) allows (5 % over the detector).
    const double pos_tol = cfg.triplet_tolerance_px + cfg.list_precision_angstrom / D +
                           3.0 * std::sqrt(std::pow(pat[static_cast<std::size_t>(t.a)].x_err_px, 2) +
                                           std::pow(pat[static_cast<std::size_t>(t.b)].x_err_px, 2) +
                                           std::pow(pat[static_cast<std::size_t>(t.c)].x_err_px, 2));
    const double rtol = 2.0 * pos_tol / t.span + 0.0125 * t.span / xmax;
    for (int sign : {+1, -1}) {
      if (sign != hint_sign && !cfg.allow_reversed) continue;
      const double want = sign > 0 ? t.ratio : 1.0 - t.ratio;
      auto it = std::lower_bound(lt.begin(), lt.end(), want - rtol,
                                 [](const Triplet& q, double r) { return q.ratio < r; });
      for (; it != lt.end() && it->ratio <= want + rtol; ++it) {
        const double scale = it->span / t.span / D;
        if (std::abs(scale - 1.0) > dtol) continue;
        Vote v;
        v.sign = sign;
        v.scale = scale;
        v.peak[0] = t.a;
        v.peak[1] = t.b;
        v.peak[2] = t.c;
        if (sign > 0) {
          v.line[0] = it->a;
          v.line[1] = it->b;
          v.line[2] = it->c;
        } else {
          v.line[0] = it->c;
          v.line[1] = it->b;
          v.line[2] = it->a;
        }
        const double lam_first = lw[static_cast<std::size_t>(v.line[0])];
        const double lam_c = lam_first + sign * scale * D * (xc - px[static_cast<std::size_t>(t.a)]);
        v.shift_px = (lam_c - hint.center_angstrom) / D;
        if (std::abs(v.shift_px) > cfg.shift_tolerance_px + 0.05 * xmax) continue;
        votes.push_back(v);
      }
    }
  }
  if (votes.empty())
    throw NumericalError(fmt::format("no wavelength solution: no pattern of {} peaks matches list {} within the "
                                     "search range (dispersion ±{:.0f} %, centre ±{:.0f} px)",
                                     pat.size(), l.source, 100 * cfg.dispersion_tolerance, cfg.shift_tolerance_px));

  // Vote histogram in (sign, shift, scale); cells smoothed over neighbours because a local triplet
  // extrapolated to the centre carries the solution's curvature.
  const double bin_shift = 4.0, bin_scale = 0.005;
  const int ns = static_cast<int>(std::ceil((cfg.shift_tolerance_px + 0.05 * xmax) / bin_shift)) + 1;
  const int nq = static_cast<int>(std::ceil(dtol / bin_scale)) + 1;
  const int W = 2 * ns + 1, H = 2 * nq + 1;
  std::vector<double> hist(static_cast<std::size_t>(2 * W * H), 0.0);
  auto cell = [&](const Vote& v, int& is, int& iq) {
    is = std::clamp(static_cast<int>(std::lround(v.shift_px / bin_shift)) + ns, 0, W - 1);
    iq = std::clamp(static_cast<int>(std::lround((v.scale - 1.0) / bin_scale)) + nq, 0, H - 1);
  };
  for (const auto& v : votes) {
    int is, iq;
    cell(v, is, iq);
    hist[static_cast<std::size_t>(((v.sign > 0 ? 0 : 1) * W + is) * H + iq)] += 1.0;
  }
  const int rs = 3, rq = 2;  // neighbourhood half-widths in bins (±12 px, ±1 %)
  struct Peak {
    double score;
    int sg, is, iq;
  };
  std::vector<Peak> cells;
  for (int sg = 0; sg < 2; ++sg)
    for (int is = 0; is < W; ++is)
      for (int iq = 0; iq < H; ++iq) {
        if (hist[static_cast<std::size_t>((sg * W + is) * H + iq)] == 0) continue;
        double sum = 0;
        for (int a = std::max(0, is - rs); a <= std::min(W - 1, is + rs); ++a)
          for (int b = std::max(0, iq - rq); b <= std::min(H - 1, iq + rq); ++b)
            sum += hist[static_cast<std::size_t>((sg * W + a) * H + b)];
        cells.push_back({sum, sg, is, iq});
      }
  std::sort(cells.begin(), cells.end(), [](const Peak& a, const Peak& b) { return a.score > b.score; });
  std::vector<Peak> chosen;
  for (const auto& c : cells) {
    if (static_cast<int>(chosen.size()) >= cfg.candidates) break;
    bool near = false;
    for (const auto& o : chosen)
      if (o.sg == c.sg && std::abs(o.is - c.is) <= rs && std::abs(o.iq - c.iq) <= rq) near = true;
    if (!near) chosen.push_back(c);
  }

  std::vector<Candidate> results;
  for (const auto& c : chosen) {
    // Correspondences voted by the triplets of this neighbourhood, one line per peak (the most voted).
    std::map<std::pair<int, int>, double> tally;
    for (const auto& v : votes) {
      if ((v.sign > 0 ? 0 : 1) != c.sg) continue;
      int is, iq;
      cell(v, is, iq);
      if (std::abs(is - c.is) > rs + 1 || std::abs(iq - c.iq) > rq + 1) continue;
      for (int k = 0; k < 3; ++k) tally[{v.peak[k], v.line[k]}] += 1.0;
    }
    std::map<int, std::pair<int, double>> best_line;
    for (const auto& [key, n] : tally) {
      auto it = best_line.find(key.first);
      if (it == best_line.end() || n > it->second.second) best_line[key.first] = {key.second, n};
    }
    std::vector<double> cx, cl, cw;
    for (const auto& [p, ln] : best_line) {
      cx.push_back(px[static_cast<std::size_t>(p)]);
      cl.push_back(lw[static_cast<std::size_t>(ln.first)]);
      cw.push_back(ln.second);
    }
    Candidate cand;
    LegendreSeries start;
    double trusted_lo = 0, trusted_hi = 0;
    if (!ransac_quadratic(cx, cl, cw, npix, hint, xc, cfg, start, trusted_lo, trusted_hi)) {
      cand.why = "no consistent model from the pattern votes";
      results.push_back(cand);
      continue;
    }
    cand.sol = match_and_fit(peaks, npix, lines, l.medium, start, cfg.order, 2.0, trusted_lo, trusted_hi, cfg);
    // A wrong run of lines at one end: start again from the fit of the other lines, which predicts that
    // end better than the bent solution, and let the matching grow into it once more.
    for (int repair = 0; repair < 2 && cand.sol.ok(); ++repair) {
      const EdgeCheck e = check_edges(cand.sol, cfg);
      if (e.end < 0) break;
      cand.sol = match_and_fit(peaks, npix, lines, l.medium, e.core, cfg.order, cfg.match_tolerance_px, e.core_lo,
                               e.core_hi, cfg);
    }
    cand.sol.reversed = (cand.sol.lambda.derivative(xc) > 0 ? 1 : -1) != hint_sign;
    try {
      validate(cand.sol, hint, cfg);
      cand.valid = true;
    } catch (const NumericalError& e) {
      cand.why = e.message();
    }
    results.push_back(cand);
  }

  // The best valid candidate; another, different one nearly as good means the answer is ambiguous.
  const Candidate* best = nullptr;
  for (const auto& r : results)
    if (r.valid && (!best || r.sol.n_used > best->sol.n_used ||
                    (r.sol.n_used == best->sol.n_used && r.sol.rms_px < best->sol.rms_px)))
      best = &r;
  if (!best) {
    std::string why;
    for (const auto& r : results)
      if (!r.why.empty()) {
        why = r.why;
        break;
      }
    throw NumericalError(fmt::format("no wavelength solution from {} candidates; the best: {}", results.size(),
                                     why.empty() ? "none" : why));
  }
  for (const auto& r : results) {
    if (&r == best || !r.valid) continue;
    const int distinct = distinct_lines(best->sol, r.sol);
    if (2 * distinct > r.sol.n_used && r.sol.n_used >= cfg.ambiguity_fraction * best->sol.n_used)
      throw NumericalError(fmt::format(
          "no wavelength solution: ambiguous — two different solutions fit {} and {} lines", best->sol.n_used,
          r.sol.n_used));
  }
  WavelengthSolution out = best->sol;
  out.n_peaks = n_usable;
  return out;
}

WavelengthSolution calibrate_arc(const Spectrum1D& arc, const LineList& list, const DispersionHint& hint,
                                 const WavecalConfig& cfg) {
  arc.check("arc spectrum");
  const auto peaks = find_peaks(arc, cfg.peaks);
  return identify(peaks, static_cast<long>(arc.size()), list, hint, cfg);
}

namespace {
/// Appends and reads back plain values and length-prefixed strings.
struct Packer {
  std::string out;
  template <typename T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put(const std::string& v) {
    put(static_cast<std::uint64_t>(v.size()));
    out.append(v);
  }
};
struct Unpacker {
  const std::string& in;
  std::size_t pos = 0;
  template <typename T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    if (pos + sizeof(T) > in.size()) throw Error("wavelength solution bytes cut short");
    T v;
    std::memcpy(&v, in.data() + pos, sizeof v);
    pos += sizeof v;
    return v;
  }
  bool done() const { return pos >= in.size(); }
  std::string get_string() {
    const auto n = static_cast<std::size_t>(get<std::uint64_t>());
    if (pos + n > in.size()) throw Error("wavelength solution bytes cut short");
    std::string v = in.substr(pos, n);
    pos += n;
    return v;
  }
};
}  // namespace

std::string pack(const WavelengthSolution& s) {
  Packer p;
  p.put(s.lambda.xmin);
  p.put(s.lambda.xmax);
  p.put(static_cast<std::uint64_t>(s.lambda.coeffs.size()));
  for (double c : s.lambda.coeffs) p.put(c);
  p.put(s.npix);
  p.put(s.medium);
  p.put(s.status);
  p.put(s.message);
  for (double v : {s.rms_px, s.rms_angstrom, s.expected_rms_px, s.predicted_error_px, s.max_predicted_error_px,
                   s.chi2_dof, s.match_tolerance_px, s.match_significance})
    p.put(v);
  for (int v : {s.n_peaks, s.n_matched, s.n_used, s.n_rejected}) p.put(v);
  p.put(s.reversed);
  p.put(static_cast<std::uint64_t>(s.lines.size()));
  for (const auto& l : s.lines) {
    for (double v : {l.x_px, l.x_err_px, l.wavelength_angstrom, l.fit_angstrom, l.residual_px, l.snr, l.flux,
                     l.sigma_px})
      p.put(v);
    p.put(l.used);
    p.put(l.id);
  }
  return std::move(p.out);
}

void solve_shared(std::vector<WavelengthSolution>& solutions, const mpi::Comm* comm,
                  const std::function<void(std::size_t)>& solve) {
  if (!comm || comm->size() == 1) {
    for (std::size_t i = 0; i < solutions.size(); ++i) solve(i);
    return;
  }
  Packer mine;  // (index, solution) of every aperture this rank solved
  // A `solve` that throws fails its aperture; this rank keeps taking apertures so that the queue and the exchange
  // below complete on every rank, and then every rank throws the error of the earliest failed aperture.
  long long failed_at = -1;
  std::exception_ptr failure;
  {
    mpi::WorkQueue queue(*comm, static_cast<long long>(solutions.size()));
    for (long long i; (i = queue.next()) >= 0;) {
      const auto k = static_cast<std::size_t>(i);
      try {
        solve(k);
      } catch (...) {
        if (!failure || i < failed_at) failed_at = i, failure = std::current_exception();
        continue;
      }
      mine.put(static_cast<std::uint64_t>(k));
      mine.put(pack(solutions[k]));
    }
  }  // collective: the queue's window is freed by every rank
  mpi::throw_earliest(*comm, failed_at, failure);
  for (const auto& bytes : comm->allgather(mine.out)) {
    Unpacker u{bytes};
    while (!u.done()) {
      const auto k = static_cast<std::size_t>(u.get<std::uint64_t>());
      if (k >= solutions.size()) throw Error(fmt::format("solve_shared: aperture {} of {} received", k, solutions.size()));
      solutions[k] = unpack_solution(u.get_string());
    }
  }
}

WavelengthSolution unpack_solution(const std::string& bytes) {
  Unpacker u{bytes};
  WavelengthSolution s;
  s.lambda.xmin = u.get<double>();
  s.lambda.xmax = u.get<double>();
  s.lambda.coeffs.resize(static_cast<std::size_t>(u.get<std::uint64_t>()));
  for (double& c : s.lambda.coeffs) c = u.get<double>();
  s.npix = u.get<long>();
  s.medium = u.get<Medium>();
  s.status = u.get<SolutionStatus>();
  s.message = u.get_string();
  for (double* v : {&s.rms_px, &s.rms_angstrom, &s.expected_rms_px, &s.predicted_error_px, &s.max_predicted_error_px,
                    &s.chi2_dof, &s.match_tolerance_px, &s.match_significance})
    *v = u.get<double>();
  for (int* v : {&s.n_peaks, &s.n_matched, &s.n_used, &s.n_rejected}) *v = u.get<int>();
  s.reversed = u.get<bool>();
  s.lines.resize(static_cast<std::size_t>(u.get<std::uint64_t>()));
  for (auto& l : s.lines) {
    for (double* v : {&l.x_px, &l.x_err_px, &l.wavelength_angstrom, &l.fit_angstrom, &l.residual_px, &l.snr, &l.flux,
                      &l.sigma_px})
      *v = u.get<double>();
    l.used = u.get<bool>();
    l.id = u.get_string();
  }
  if (u.pos != bytes.size()) throw Error("wavelength solution bytes longer than the solution");
  return s;
}

}  // namespace kspecdr::wavecal
