#include "kspecdr/wavecal/flexure.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numbers>

#include "kspecdr/wavecal/fit_detail.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::wavecal {
namespace {

constexpr MaskPixel kBadBits = kMaskBad | kMaskCosmic | kMaskNoData | kMaskRejected | kMaskSaturated;

bool good(const Spectrum1D& s, std::size_t i) {
  return !(s.mask[i] & kBadBits) && std::isfinite(s.flux[i]) && std::isfinite(s.variance[i]) && s.variance[i] > 0;
}

/// Lanczos (a = 6) interpolation of the samples, with its derivative. Line profiles of σ ≳ 1 px are
/// nearly band-limited, so a windowed sinc shifts them without the phase-dependent bias of a cubic,
/// which reaches ~0.1 px for σ = 1.4 px.
double lanczos(const std::vector<double>& y, double x, double* dydx) {
  constexpr int a = 6;
  const long n = static_cast<long>(y.size());
  const long i0 = static_cast<long>(std::floor(x));
  auto kernel = [](double t, double* dk) {
    if (std::abs(t) < 1e-9) {
      *dk = 0.0;
      return 1.0;
    }
    if (std::abs(t) >= a) {
      *dk = 0.0;
      return 0.0;
    }
    const double pt = std::numbers::pi * t, pta = pt / a;
    const double s1 = std::sin(pt), s2 = std::sin(pta), c1 = std::cos(pt), c2 = std::cos(pta);
    const double k = a * s1 * s2 / (pt * pt);
    // d/dt of a sin(πt) sin(πt/a) / (πt)²
    *dk = a * (std::numbers::pi * c1 * s2 + std::numbers::pi / a * s1 * c2) / (pt * pt) - 2.0 * k / t;
    return k;
  };
  double v = 0, d = 0;
  for (long k = i0 - a + 1; k <= i0 + a; ++k) {
    const double yk = y[static_cast<std::size_t>(std::clamp(k, 0L, n - 1))];
    double dk = 0;
    v += yk * kernel(x - static_cast<double>(k), &dk);
    d += yk * dk;
  }
  if (dydx) *dydx = d;
  return v;
}

}  // namespace

FlexureResult flexure_from_sky_lines(const Spectrum1D& sky, const WavelengthSolution& sol, const LineList& list,
                                     const WavecalConfig& cfg) {
  FlexureResult r;
  r.method = "sky-lines";
  r.centre_px = 0.5 * static_cast<double>(sol.npix - 1);
  sky.check("sky spectrum");
  if (!sol.ok() || static_cast<long>(sky.size()) != sol.npix) {
    r.message = sol.ok() ? "sky spectrum and arc solution differ in length" : "no arc solution to correct";
    return r;
  }
  const LineList l = to_medium(list, sol.medium);
  const double xmax = static_cast<double>(sol.npix - 1);
  const double a = sol.wavelength(0.0), b = sol.wavelength(xmax);
  const double D = std::abs(b - a) / xmax;
  const auto lines = detail::anchor_lines(l, std::min(a, b), std::max(a, b), cfg.list_blend_px * D);
  const auto peaks = find_peaks(sky, cfg.peaks);
  // Offsets of every peak from every line's predicted position within the search range: the true shift
  // is the mode, chance pairs are spread evenly.
  std::vector<double> diffs;
  std::vector<std::pair<std::size_t, double>> pred;  // (peak, predicted x)
  for (const auto& ln : lines) {
    const double xp = sol.pixel(ln.wavelength_angstrom);
    if (xp < 0 || xp > xmax) continue;
    for (std::size_t k = 0; k < peaks.size(); ++k)
      if (peaks[k].usable() && std::abs(peaks[k].x_px - xp) <= cfg.flexure_max_shift_px) {
        diffs.push_back(peaks[k].x_px - xp);
        pred.emplace_back(k, xp);
      }
  }
  if (diffs.empty()) {
    r.message = "no sky line of the list found within the search range";
    return r;
  }
  const double bin = 0.5;
  double mode = 0, best = -1;
  for (double c = -cfg.flexure_max_shift_px; c <= cfg.flexure_max_shift_px; c += 0.1) {
    double votes = 0;
    for (double d : diffs) votes += std::abs(d - c) < bin ? 1.0 : 0.0;
    if (votes > best) {
      best = votes;
      mode = c;
    }
  }
  std::vector<double> fx, fy, fe;
  for (std::size_t q = 0; q < diffs.size(); ++q)
    if (std::abs(diffs[q] - mode) < 1.0) {
      const ArcPeak& p = peaks[pred[q].first];
      fx.push_back(pred[q].second);
      fy.push_back(diffs[q]);
      fe.push_back(std::hypot(p.x_err_px, cfg.centroid_floor_px));
    }
  if (fx.size() < 2) {
    r.message = fmt::format("only {} sky line(s) agree on a shift", fx.size());
    return r;
  }
  const int order = cfg.flexure_stretch && fx.size() >= 4 ? 1 : 0;
  // Legendre on [0, 2·centre] maps x_ref − centre onto u·centre: c1 / centre is the stretch.
  const auto f = detail::fit_legendre_clipped(fx, fy, fe, {}, order, 0.0, 2.0 * r.centre_px, cfg.clip_sigma,
                                              cfg.clip_iterations);
  if (!f.ok) {
    r.message = "the shift fit failed";
    return r;
  }
  const double inflate = std::max(1.0, std::sqrt(f.chi2_dof));  // scatter beyond the centroid errors
  r.shift_px = f.series.coeffs[0];
  r.shift_err_px = std::sqrt(f.cov[0]) * inflate;
  if (order == 1) {
    r.stretch = f.series.coeffs[1] / r.centre_px;
    r.stretch_err = std::sqrt(f.cov[3]) * inflate / r.centre_px;
  }
  double ss = 0;
  for (std::size_t q = 0; q < fx.size(); ++q)
    if (f.used[q]) {
      ++r.n_lines;
      ss += std::pow(fy[q] - f.series(fx[q]), 2);
    }
  r.rms_px = std::sqrt(ss / std::max(1, r.n_lines));
  r.ok = true;
  return r;
}

FlexureResult flexure_from_cross_correlation(const Spectrum1D& spectrum, const Spectrum1D& reference,
                                             const WavecalConfig& cfg) {
  FlexureResult r;
  r.method = "cross-correlation";
  spectrum.check("spectrum");
  reference.check("reference spectrum");
  const std::size_t n = spectrum.size();
  r.centre_px = 0.5 * static_cast<double>(n - 1);
  if (reference.size() != n) {
    r.message = "spectrum and reference differ in length";
    return r;
  }
  // Continuum removed from both: the shift must come from the lines, not from a sloping continuum.
  const auto bs = running_background(spectrum, cfg.peaks.background_window_px);
  const auto br = running_background(reference, cfg.peaks.background_window_px);
  std::vector<double> s(n), ref(n), vs(n), vr(n);
  std::vector<char> gs(n), gr(n);
  for (std::size_t i = 0; i < n; ++i) {
    gs[i] = good(spectrum, i);
    gr[i] = good(reference, i);
    s[i] = gs[i] ? spectrum.flux[i] - bs[i] : 0.0;
    ref[i] = gr[i] ? reference.flux[i] - br[i] : 0.0;
    vs[i] = spectrum.variance[i];
    vr[i] = reference.variance[i];
  }
  const long maxlag = static_cast<long>(std::ceil(cfg.flexure_max_shift_px));
  const long nl = static_cast<long>(n);
  double best = -std::numeric_limits<double>::infinity();
  long lag0 = 0;
  for (long lag = -maxlag; lag <= maxlag; ++lag) {
    double c = 0;
    for (long i = std::max(0L, lag); i < std::min(nl, nl + lag); ++i) c += s[static_cast<std::size_t>(i)] * ref[static_cast<std::size_t>(i - lag)];
    if (c > best) {
      best = c;
      lag0 = lag;
    }
  }
  // Sub-pixel peak of the cross-correlation C(δ) = Σ w s(x) ref(x − δ), ref interpolated: the root of
  // G(δ) = Σ w s(x) ref'(x − δ). C is linear in each spectrum, so their noises add no bias; a χ² fit
  // of s against the interpolated ref would prefer half-pixel shifts, where interpolation smooths the
  // reference's noise.
  std::vector<double> w(n, 0.0);
  for (std::size_t i = 0; i < n; ++i)
    if (gs[i] && gr[i]) w[i] = 1.0;  // uniform: noise weights would carry the line of one spectrum and bias δ
  auto G = [&](double d, double* var) {
    double g = 0, v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (w[i] == 0.0) continue;
      const double xr = static_cast<double>(i) - d;
      if (xr < 6 || xr > static_cast<double>(n) - 7) continue;
      double dr = 0;
      lanczos(ref, xr, &dr);
      g += w[i] * s[i] * dr;
      if (var) {
        double ds = 0;
        lanczos(s, static_cast<double>(i), &ds);
        v += w[i] * w[i] * (dr * dr * vs[i] + ds * ds * vr[i]);
      }
    }
    if (var) *var = v;
    return g;
  };
  double d = static_cast<double>(lag0);
  const double h = 1e-3;
  bool converged = false;
  for (int it = 0; it < 30; ++it) {
    const double g0 = G(d, nullptr);
    const double slope = (G(d + h, nullptr) - G(d - h, nullptr)) / (2 * h);
    if (!(slope < 0) && !(slope > 0)) break;
    const double step = std::clamp(-g0 / slope, -0.5, 0.5);
    d += step;
    if (std::abs(step) < 1e-6) {
      converged = true;
      break;
    }
  }
  double var = 0;
  G(d, &var);
  const double slope = (G(d + h, nullptr) - G(d - h, nullptr)) / (2 * h);
  if (!converged || !std::isfinite(d) || std::abs(d) > cfg.flexure_max_shift_px || !(std::abs(slope) > 0)) {
    r.message = "the cross-correlation found no consistent shift within the search range";
    return r;
  }
  r.shift_px = d;
  r.shift_err_px = std::sqrt(var) / std::abs(slope);
  r.ok = true;
  return r;
}

WavelengthSolution apply_flexure(const WavelengthSolution& arc, const FlexureResult& f) {
  WavelengthSolution s = arc;
  if (!f.ok) return s;
  // λ_new(x) = λ_arc(x_ref(x)) with x_ref linear in x: the same series on a moved domain.
  auto moved = [&](double x_ref) { return x_ref * (1.0 + f.stretch) + f.shift_px - f.stretch * f.centre_px; };
  s.lambda.xmin = moved(arc.lambda.xmin);
  s.lambda.xmax = moved(arc.lambda.xmax);
  return s;
}

}  // namespace kspecdr::wavecal
