#include "kspecdr/trace/trace.hpp"

#include "kspecdr/core/stats.hpp"
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kspecdr/core/error.hpp"
#include "kspecdr/trace/profile.hpp"

namespace kspecdr::trace {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();


/// A bin of columns collapsed to one spatial profile over a band of rows. The buffers are reused from
/// bin to bin, so following a trace allocates nothing per pixel.
struct BinProfile {
  std::vector<double> values, variances;
  long row0 = 0;

  /// Per row: mean of the good pixels in [x0, x1) times the number of columns (so values are e- per bin),
  /// and the variance of that estimate. Rows without a good pixel get variance 0 (ignored by the fits).
  void load(const Image& im, long x0, long x1, long r0, long r1) {
    row0 = r0;
    const long n = std::max(0L, r1 - r0);
    values.assign(static_cast<std::size_t>(n), 0.0);
    variances.assign(static_cast<std::size_t>(n), 0.0);
    const double ncol = static_cast<double>(x1 - x0);
    for (long r = r0; r < r1; ++r) {
      const float* d = im.data.data() + r * im.nx();
      const float* v = im.variance.data() + r * im.nx();
      const MaskPixel* m = im.mask.data() + r * im.nx();
      double s = 0, sv = 0;
      int ng = 0;
      for (long x = x0; x < x1; ++x) {
        if (m[x] != 0 || !std::isfinite(d[x]) || !(v[x] > 0)) continue;
        s += d[x];
        sv += v[x];
        ++ng;
      }
      const std::size_t i = static_cast<std::size_t>(r - r0);
      if (ng > 0) {
        values[i] = s / ng * ncol;
        variances[i] = sv / (static_cast<double>(ng) * ng) * ncol * ncol;
      }
    }
  }
};

double window_half(const TraceConfig& c, double sigma) {
  double h = std::max(c.window_sigma * sigma, c.min_window_half_px);
  if (c.max_window_half_px > 0) h = std::min(h, c.max_window_half_px);
  return h;
}

/// Measures one bin [x0, x1) around `guess`; `off_detector` is set when the window leaves the rows.
ProfileFit measure_bin(const Image& im, long x0, long x1, double guess, double sigma_guess, const TraceConfig& c,
                       BinProfile& buf, bool& off_detector) {
  const double half = window_half(c, sigma_guess);
  off_detector = guess - half < -0.5 || guess + half > static_cast<double>(im.ny()) - 0.5;
  if (off_detector) return {};
  const long r0 = std::max(0L, static_cast<long>(std::floor(guess - half - 2.0)));
  const long r1 = std::min(static_cast<long>(im.ny()), static_cast<long>(std::ceil(guess + half + 2.0)) + 1);
  buf.load(im, x0, x1, r0, r1);
  const double y0 = static_cast<double>(r0);
  if (c.measure == ProfileMeasure::Moments) return measure_moments(buf.values, buf.variances, y0, guess, half);
  return fit_gaussian(buf.values, buf.variances, y0, guess, half, sigma_guess);
}

long nbins_of(long nx, int bin_px) { return (nx + bin_px - 1) / bin_px; }

/// The fiber pitch from sorted peak positions: the median of the spacings near the lower quartile, so
/// that block gaps and dead fibers (wider spacings) do not count even when they are many.
double fiber_pitch(const std::vector<double>& ys, double fallback) {
  std::vector<double> d;
  for (std::size_t i = 1; i < ys.size(); ++i) d.push_back(ys[i] - ys[i - 1]);
  if (d.empty()) return fallback;
  std::sort(d.begin(), d.end());
  const double q = d[d.size() / 4];
  std::vector<double> near;
  for (double v : d)
    if (v >= 0.5 * q && v <= 1.5 * q) near.push_back(v);
  const double p = median_inplace(near);
  return p > 0 ? p : fallback;
}

}  // namespace

std::string to_string(ProfileMeasure m) { return m == ProfileMeasure::Moments ? "moments" : "gaussian"; }

ProfileMeasure profile_measure_from_string(const std::string& s) {
  if (s == "moments") return ProfileMeasure::Moments;
  if (s == "gaussian") return ProfileMeasure::Gaussian;
  throw ConfigError(fmt::format("trace measure '{}' is not one of: moments, gaussian", s),
                    ErrorContext{.keyword = "trace.measure"});
}

std::vector<double> collapse_rows(const Image& im, long x0, long x1) {
  x0 = std::clamp(x0, 0L, static_cast<long>(im.nx()));
  x1 = std::clamp(x1, x0, static_cast<long>(im.nx()));
  std::vector<double> out(static_cast<std::size_t>(im.ny()), 0.0), row;
  row.reserve(static_cast<std::size_t>(x1 - x0));
  for (long r = 0; r < im.ny(); ++r) {
    row.clear();
    const float* d = im.data.data() + r * im.nx();
    const MaskPixel* m = im.mask.data() + r * im.nx();
    for (long x = x0; x < x1; ++x)
      if (m[x] == 0 && std::isfinite(d[x])) row.push_back(d[x]);
    out[static_cast<std::size_t>(r)] = row.empty() ? 0.0 : median_inplace(row);
  }
  return out;
}

std::vector<Peak> find_peaks(const std::vector<double>& p, double min_height, double min_separation_px) {
  std::vector<double> tmp = p;
  const double base = median_inplace(tmp);
  std::vector<Peak> cand;
  for (std::size_t i = 1; i + 1 < p.size(); ++i) {
    if (!(p[i] > p[i - 1] && p[i] >= p[i + 1])) continue;
    const double h = p[i] - base;
    if (h < min_height) continue;
    // Parabola through the top three points for a sub-pixel position.
    const double den = p[i - 1] - 2.0 * p[i] + p[i + 1];
    const double dy = den < 0 ? std::clamp(0.5 * (p[i - 1] - p[i + 1]) / den, -0.5, 0.5) : 0.0;
    cand.push_back({static_cast<double>(i) + dy, h});
  }
  std::sort(cand.begin(), cand.end(), [](const Peak& a, const Peak& b) { return a.height > b.height; });
  std::vector<Peak> out;
  for (const auto& c : cand) {
    bool far = true;
    for (const auto& o : out) far = far && std::abs(o.y - c.y) >= min_separation_px;
    if (far) out.push_back(c);
  }
  return out;
}

std::vector<std::pair<double, double>> find_slit_references(const Image& im, const TraceConfig& c) {
  im.check_shapes("trace image");
  const long nx = im.nx();
  // The middle half of the dispersion axis: bright enough everywhere and away from vignetted ends.
  std::vector<double> prof = collapse_rows(im, nx / 4, nx - nx / 4);
  // Robust noise of the collapsed profile from its point-to-point differences.
  std::vector<double> diffs;
  for (std::size_t i = 1; i < prof.size(); ++i) diffs.push_back(std::abs(prof[i] - prof[i - 1]));
  const double noise = 1.4826 * median_inplace(diffs) / std::sqrt(2.0);
  auto peaks = find_peaks(prof, 5.0 * noise, c.min_separation_px);
  if (c.n_stars <= 0) {
    // Every star: peaks above 5 sigma that are also at least 2 % of the brightest, so that
    // faint structure at the slit ends or in the sky does not become a "star".
    double top = 0.0;
    for (const auto& p : peaks) top = std::max(top, p.height);
    std::vector<Peak> kept;
    for (const auto& p : peaks)
      if (p.height >= 0.02 * top) kept.push_back(p);
    if (kept.empty())
      throw DataError(fmt::format("no star on the collapsed frame stands 5 sigma ({:.3g} e-) above the noise; give "
                                  "the reference points (trace.reference) explicitly",
                                  5.0 * noise));
    std::vector<std::pair<double, double>> refs;
    for (const auto& p : kept) refs.emplace_back(0.5 * static_cast<double>(nx - 1), p.y);
    std::sort(refs.begin(), refs.end(), [](auto& a, auto& b) { return a.second < b.second; });
    return refs;
  }
  if (static_cast<int>(peaks.size()) < c.n_stars)
    throw DataError(fmt::format("asked for {} stars on the collapsed frame but found {} peaks above 5 sigma "
                                "({:.3g} e-); give the reference points (trace.references) explicitly",
                                c.n_stars, peaks.size(), 5.0 * noise));
  std::vector<std::pair<double, double>> refs;
  for (int i = 0; i < c.n_stars; ++i) refs.emplace_back(0.5 * static_cast<double>(nx - 1), peaks[i].y);
  std::sort(refs.begin(), refs.end(), [](auto& a, auto& b) { return a.second < b.second; });
  return refs;
}

Trace trace_aperture(const Image& im, double x_ref, double y_ref, const TraceConfig& c, ApertureInfo info) {
  im.check_shapes("trace image");
  Trace t;
  t.info = std::move(info);
  const long nx = im.nx();
  const int bpx = std::max(1, c.bin_px);
  const long nb = nbins_of(nx, bpx);
  t.bin_x.resize(static_cast<std::size_t>(nb));
  t.bin_centre.assign(static_cast<std::size_t>(nb), kNaN);
  t.bin_centre_err.assign(static_cast<std::size_t>(nb), kNaN);
  t.bin_sigma.assign(static_cast<std::size_t>(nb), kNaN);
  t.bin_sigma_err.assign(static_cast<std::size_t>(nb), kNaN);
  for (long b = 0; b < nb; ++b) {
    const long x0 = b * bpx, x1 = std::min(nx, x0 + bpx);
    t.bin_x[static_cast<std::size_t>(b)] = 0.5 * static_cast<double>(x0 + x1 - 1);
  }
  const double xmax = static_cast<double>(nx - 1);
  t.centre.xmin = t.sigma.xmin = 0.0;
  t.centre.xmax = t.sigma.xmax = xmax;

  BinProfile buf;
  long n_off = 0, n_weak = 0, n_jump = 0;
  const long bref = std::clamp(static_cast<long>(x_ref) / bpx, 0L, nb - 1);
  // The reference bin: measure twice so that the window adapts to the real width.
  double sig = c.initial_sigma_px, cen = y_ref;
  bool off = false;
  ProfileFit f;
  for (int pass = 0; pass < 2; ++pass) {
    f = measure_bin(im, bref * bpx, std::min(nx, bref * bpx + bpx), cen, sig, c, buf, off);
    if (!f.ok) break;
    cen = f.centre;
    sig = std::clamp(f.sigma, 0.3, 10.0 * c.initial_sigma_px);
  }
  if (!f.ok || !(f.peak_snr >= c.min_bin_snr) || std::abs(f.centre - y_ref) > c.max_jump_px + window_half(c, sig)) {
    t.status = TraceStatus::Failed;
    t.message = off ? fmt::format("the reference point ({:.1f}, {:.1f}) is too close to the detector edge", x_ref, y_ref)
                    : fmt::format("no profile with S/N >= {} at the reference point ({:.1f}, {:.1f})",
                                  c.min_bin_snr, x_ref, y_ref);
    return t;
  }
  auto store = [&](long b, const ProfileFit& p) {
    const auto i = static_cast<std::size_t>(b);
    t.bin_centre[i] = p.centre;
    t.bin_centre_err[i] = p.centre_err;
    t.bin_sigma[i] = p.sigma;
    t.bin_sigma_err[i] = p.sigma_err;
  };
  store(bref, f);

  // Walk away from the reference bin in both directions, predicting each bin from the last good ones
  // (a straight line through up to four of them), so curved traces are followed.
  for (int dir : {+1, -1}) {
    std::vector<std::pair<double, double>> recent = {{t.bin_x[static_cast<std::size_t>(bref)], f.centre}};
    double s_guess = f.sigma;
    for (long b = bref + dir; b >= 0 && b < nb; b += dir) {
      const double xb = t.bin_x[static_cast<std::size_t>(b)];
      double pred = recent.back().second;
      if (recent.size() >= 2) {
        double sx = 0, sy = 0, sxx = 0, sxy = 0;
        const double k = static_cast<double>(recent.size());
        for (auto& [rx, ry] : recent) sx += rx, sy += ry, sxx += rx * rx, sxy += rx * ry;
        const double den = k * sxx - sx * sx;
        if (den > 0) {
          const double slope = (k * sxy - sx * sy) / den;
          pred = (sy - slope * sx) / k + slope * xb;
        }
      }
      const long x0 = b * bpx, x1 = std::min(nx, x0 + bpx);
      const ProfileFit p = measure_bin(im, x0, x1, pred, s_guess, c, buf, off);
      if (off) {
        ++n_off;
        continue;
      }
      if (!p.ok || !(p.peak_snr >= c.min_bin_snr) || !(p.sigma > 0.3) || p.sigma > 5.0 * s_guess + 1.0) {
        ++n_weak;
        continue;
      }
      if (std::abs(p.centre - pred) > c.max_jump_px) {
        ++n_jump;
        continue;
      }
      store(b, p);
      recent.emplace_back(xb, p.centre);
      if (recent.size() > 4) recent.erase(recent.begin());
      s_guess = p.sigma;
    }
  }

  // A trace that bends more than the chosen order allows (e.g. at a vignetted end) shows up as a run
  // of neighbouring bins rejected on one side, not as scattered outliers: raise the order then.
  auto rejected_run = [&](const ClippedFit& fit, const std::vector<double>& y) {
    int run = 0, longest = 0, last_sign = 0;
    for (std::size_t i = 0; i < fit.used.size(); ++i) {
      if (!std::isfinite(y[i])) continue;
      if (fit.used[i]) {
        run = 0;
        continue;
      }
      const int sign = y[i] > fit.series(t.bin_x[i]) ? 1 : -1;
      run = (run > 0 && sign == last_sign) ? run + 1 : 1;
      last_sign = sign;
      longest = std::max(longest, run);
    }
    return longest;
  };
  ClippedFit fc = fit_legendre_clipped(t.bin_x, t.bin_centre, t.bin_centre_err, c.centre_order, 0.0, xmax,
                                       c.clip_sigma, c.clip_iterations);
  for (int order = c.centre_order + 1; order <= c.max_centre_order && fc.ok &&
                                       rejected_run(fc, t.bin_centre) >= c.misfit_run_bins;
       ++order)
    fc = fit_legendre_clipped(t.bin_x, t.bin_centre, t.bin_centre_err, order, 0.0, xmax, c.clip_sigma,
                              c.clip_iterations);
  const ClippedFit fs = fit_legendre_clipped(t.bin_x, t.bin_sigma, t.bin_sigma_err, c.sigma_order, 0.0, xmax,
                                             c.clip_sigma, c.clip_iterations);
  t.bin_used_centre = fc.used;
  t.bin_used_sigma = fs.used;
  const double good_frac = static_cast<double>(fc.n_used) / static_cast<double>(nb);
  if (!fc.ok || !fs.ok || good_frac < c.min_good_fraction) {
    t.status = TraceStatus::Failed;
    t.message = fmt::format(
        "only {} of {} bins measured ({} with the window off the detector, {} below S/N {}, {} jumps)",
        fc.n_used, nb, n_off, n_weak, c.min_bin_snr, n_jump);
  }
  if (fc.ok) {
    t.centre = fc.series, t.centre_rms_px = fc.rms;
    for (std::size_t i = 0; i < fc.used.size(); ++i)
      if (fc.used[i]) {
        if (!(t.bin_x[i] >= t.fit_xmin)) t.fit_xmin = t.bin_x[i];
        if (!(t.bin_x[i] <= t.fit_xmax)) t.fit_xmax = t.bin_x[i];
      }
  }
  if (fs.ok) t.sigma = fs.series, t.sigma_rms_px = fs.rms;
  if (n_off > 0 && t.status == TraceStatus::Ok)
    spdlog::debug("trace {}: {} bins with the window off the detector (kept: {} good bins)", t.info.name, n_off,
                  fc.n_used);
  return t;
}

TraceSet trace_slit(const Image& im, const TraceConfig& c, const std::vector<std::string>& names) {
  im.check_shapes("trace image");
  auto refs = c.references;
  // Found automatically, every candidate must also trace along the dispersion axis: a peak of the
  // collapsed frame that does not (slit-illumination structure, a hot row) is not a star.
  const bool validate = refs.empty() && c.n_stars <= 0;
  if (refs.empty()) refs = find_slit_references(im, c);
  TraceSet ts;
  ts.nx = im.nx();
  ts.ny = im.ny();
  std::size_t dropped = 0;
  for (std::size_t i = 0; i < refs.size(); ++i) {
    const std::size_t k = ts.traces.size();
    ApertureInfo info;
    info.name = k < names.size() ? names[k] : fmt::format("star{}", k + 1);
    Trace t = trace_aperture(im, refs[i].first, refs[i].second, c, std::move(info));
    if (!t.usable()) {
      if (validate) {
        spdlog::info("candidate at y = {:.1f} px is not a star: {}", refs[i].second, t.message);
        ++dropped;
        continue;
      }
      spdlog::warn("trace {}: {}", t.info.name, t.message);
    }
    ts.traces.push_back(std::move(t));
  }
  if (validate && ts.traces.empty())
    throw DataError(fmt::format("none of the {} candidate stars of the collapsed frame could be traced along the "
                                "dispersion axis; give the reference points (trace.reference) explicitly",
                                dropped));
  return ts;
}

std::vector<int> match_peaks_to_table(const std::vector<double>& peaks, const std::vector<bool>& lit,
                                      const TraceConfig& c) {
  const int m = static_cast<int>(peaks.size()), n = static_cast<int>(lit.size());
  std::vector<int> assign(static_cast<std::size_t>(n), -1);
  if (m == 0 || n == 0) return assign;
  const double pitch = fiber_pitch(peaks, 1.0);
  // Prefix sums of the cost of leaving table slots unmatched: lit fibers should show light, unused ones not.
  std::vector<double> skip(static_cast<std::size_t>(n) + 1, 0.0);
  for (int j = 0; j < n; ++j) skip[j + 1] = skip[j] + (lit[j] ? c.fiber_missing_cost : 0.0);
  auto skip_cost = [&](int j0, int j1) { return j1 > j0 ? skip[j1] - skip[j0] : 0.0; };  // slots [j0, j1)
  auto spacing_cost = [&](double gap, int dj) {
    const double r = gap / pitch;
    if (r < dj - 0.5) return 10.0 * (dj - r);  // closer than the table order allows
    if (r <= dj + 0.5) return std::abs(r - dj);
    return c.fiber_gap_cost + 0.1 * (r - dj - 0.5);  // a gap between blocks
  };
  const double match_unused_cost = c.fiber_spurious_cost;  // light where the table says unused
  constexpr int kMaxPeakStep = 4, kMaxSlotStep = 8;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(static_cast<std::size_t>(m) * n, inf);
  std::vector<int> from(static_cast<std::size_t>(m) * n, -1);
  auto at = [&](int i, int j) { return static_cast<std::size_t>(i) * n + j; };
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      const double own = lit[j] ? 0.0 : match_unused_cost;
      double best = c.fiber_spurious_cost * i + skip_cost(0, j) + own;  // start here
      int arg = -1;
      for (int ip = std::max(0, i - kMaxPeakStep); ip < i; ++ip)
        for (int jp = std::max(0, j - kMaxSlotStep); jp < j; ++jp) {
          const double prev = dp[at(ip, jp)];
          if (prev == inf) continue;
          const double cost = prev + c.fiber_spurious_cost * (i - ip - 1) + skip_cost(jp + 1, j) +
                              spacing_cost(peaks[i] - peaks[ip], j - jp) + own;
          if (cost < best) best = cost, arg = static_cast<int>(at(ip, jp));
        }
      dp[at(i, j)] = best;
      from[at(i, j)] = arg;
    }
  }
  double best = inf;
  int arg = -1;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      const double cost = dp[at(i, j)] + c.fiber_spurious_cost * (m - 1 - i) + skip_cost(j + 1, n);
      if (cost < best) best = cost, arg = static_cast<int>(at(i, j));
    }
  while (arg >= 0) {
    const int i = arg / n, j = arg % n;
    assign[static_cast<std::size_t>(j)] = i;
    arg = from[static_cast<std::size_t>(arg)];
  }
  return assign;
}

TraceSet trace_fibers(const Image& flat, const std::vector<ApertureInfo>& fibres, const TraceConfig& cin) {
  flat.check_shapes("master flat");
  if (fibres.empty()) throw DataError("the FIBRES table is empty: nothing to trace", ErrorContext{.hdu = "FIBRES"});
  TraceConfig c = cin;
  const long nx = flat.nx();
  const int bpx = std::max(1, c.bin_px);
  auto peaks_at = [&](double frac) {
    const long xc = std::clamp(static_cast<long>(frac * static_cast<double>(nx)), 0L, nx - 1);
    const long x0 = std::max(0L, xc - bpx / 2), x1 = std::min(nx, x0 + bpx);
    std::vector<double> prof = collapse_rows(flat, x0, x1);
    // Noise of the collapsed profile (a median of x1 − x0 values per row) from the typical variance:
    // a fiber must stand 5 sigma above it, so a frame without light finds nothing.
    std::vector<double> var;
    for (long r = 0; r < flat.ny(); r += 2)
      for (long x = x0; x < x1; x += 2)
        if (flat.variance(r, x) > 0) var.push_back(flat.variance(r, x));
    const double noise = 1.2533 * std::sqrt(std::max(median_inplace(var), 0.0) / static_cast<double>(x1 - x0));
    auto all = find_peaks(prof, 5.0 * noise, std::max(1.5, c.min_separation_px * 0.5));
    // Heights relative to the typical bright fiber, so that faint (low-throughput) fibers are kept and
    // wiggles between fibers are not.
    std::vector<double> h;
    for (std::size_t i = 0; i < all.size() && i < std::max<std::size_t>(1, fibres.size() / 2); ++i)
      h.push_back(all[i].height);
    const double ref = median_inplace(h);
    std::vector<double> ys;
    for (auto& p : all)
      if (p.height >= c.fiber_threshold * ref) ys.push_back(p.y);
    std::sort(ys.begin(), ys.end());
    return std::pair{xc, ys};
  };
  const double f0 = c.find_columns.empty() ? 0.5 : c.find_columns.front();
  auto [xc, ys] = peaks_at(f0);
  if (ys.empty())
    throw DataError(fmt::format("no fiber found on the master flat at column {} ({} expected from the FIBRES table)",
                                xc, fibres.size()),
                    ErrorContext{.hdu = "FIBRES"});
  for (std::size_t k = 1; k < c.find_columns.size(); ++k) {
    auto [xk, yk] = peaks_at(c.find_columns[k]);
    if (yk.size() != ys.size())
      spdlog::warn("fiber finding: {} peaks at column {} but {} at column {}", yk.size(), xk, ys.size(), xc);
  }
  std::vector<bool> lit(fibres.size());
  std::size_t n_lit = 0;
  for (std::size_t j = 0; j < fibres.size(); ++j) n_lit += (lit[j] = fibres[j].type != aperture_type::kUnused);
  const auto assign = match_peaks_to_table(ys, lit, c);

  const double pitch = fiber_pitch(ys, 4.0 * c.initial_sigma_px);
  if (c.max_window_half_px <= 0) c.max_window_half_px = 0.45 * pitch;

  TraceSet ts;
  ts.nx = nx;
  ts.ny = flat.ny();
  ts.traces.resize(fibres.size());
  std::size_t n_matched = 0, n_missing = 0;
  for (std::size_t j = 0; j < fibres.size(); ++j) {
    Trace& t = ts.traces[j];
    if (assign[j] >= 0) {
      ++n_matched;
      t = trace_aperture(flat, static_cast<double>(xc), ys[static_cast<std::size_t>(assign[j])], c, fibres[j]);
      if (!t.usable()) spdlog::warn("fiber {}: {}", fibres[j].name, t.message);
    } else {
      t.info = fibres[j];
      t.status = lit[j] ? TraceStatus::NotFound : TraceStatus::Dead;
      t.message = lit[j] ? fmt::format("fiber {} (table row {}) shows no light on the master flat", fibres[j].name, j + 1)
                         : "unused fiber (TYPE N)";
      if (lit[j]) {
        ++n_missing;
        spdlog::warn("{}", t.message);
      }
    }
  }
  // Unmatched fibers get a position between their matched neighbours (in table order), so that an
  // extraction there can say "no light" at the right place instead of failing.
  for (std::size_t j = 0; j < fibres.size(); ++j) {
    Trace& t = ts.traces[j];
    if (t.status == TraceStatus::Ok || t.status == TraceStatus::Failed) continue;
    long lo = static_cast<long>(j) - 1, hi = static_cast<long>(j) + 1;
    while (lo >= 0 && !ts.traces[static_cast<std::size_t>(lo)].usable()) --lo;
    while (hi < static_cast<long>(fibres.size()) && !ts.traces[static_cast<std::size_t>(hi)].usable()) ++hi;
    const bool has_lo = lo >= 0, has_hi = hi < static_cast<long>(fibres.size());
    if (!has_lo && !has_hi) continue;
    const Trace& a = ts.traces[static_cast<std::size_t>(has_lo ? lo : hi)];
    const Trace& b = ts.traces[static_cast<std::size_t>(has_hi ? hi : lo)];
    const double w = (has_lo && has_hi) ? static_cast<double>(static_cast<long>(j) - lo) / static_cast<double>(hi - lo) : 0.0;
    const double shift = (has_lo && has_hi) ? 0.0 : pitch * static_cast<double>(has_lo ? static_cast<long>(j) - lo : static_cast<long>(j) - hi);
    auto blend = [&](const LegendreSeries& sa, const LegendreSeries& sb, double add) {
      LegendreSeries s = sa;
      s.coeffs.resize(std::max(sa.coeffs.size(), sb.coeffs.size()), 0.0);
      for (std::size_t k = 0; k < s.coeffs.size(); ++k) {
        const double ca = k < sa.coeffs.size() ? sa.coeffs[k] : 0.0, cb = k < sb.coeffs.size() ? sb.coeffs[k] : 0.0;
        s.coeffs[k] = (1.0 - w) * ca + w * cb;
      }
      if (!s.coeffs.empty()) s.coeffs[0] += add;
      return s;
    };
    t.centre = blend(a.centre, b.centre, shift);
    t.sigma = blend(a.sigma, b.sigma, 0.0);
  }
  spdlog::info("fiber finding: {} peaks at column {}, {} of {} table fibers matched ({} lit expected, {} missing)",
               ys.size(), xc, n_matched, fibres.size(), n_lit, n_missing);
  return ts;
}

std::vector<TraceShift> measure_trace_shifts(const Image& im, const TraceSet& master, const TraceConfig& c) {
  im.check_shapes("exposure");
  if (im.nx() != master.nx || im.ny() != master.ny)
    throw DataError(fmt::format("exposure is {}x{} but the master traces were measured on {}x{}", im.ny(), im.nx(),
                                master.ny, master.nx));
  std::vector<TraceShift> out(master.size());
  const long nx = im.nx();
  const int bpx = std::max(1, c.bin_px);
  const long nb = nbins_of(nx, bpx);
  BinProfile buf;
  std::vector<double> dv, de, sv, se;
  // Weighted mean with iterative clipping; the error is scaled up when the scatter exceeds the errors.
  auto robust_mean = [&](const std::vector<double>& v, const std::vector<double>& e, double& mean, double& err) {
    std::vector<unsigned char> use(v.size(), 1);
    int nuse = 0;
    for (int it = 0; it < 10; ++it) {
      double sw = 0, swx = 0;
      for (std::size_t i = 0; i < v.size(); ++i)
        if (use[i]) sw += 1.0 / (e[i] * e[i]), swx += v[i] / (e[i] * e[i]);
      if (!(sw > 0)) return 0;
      mean = swx / sw;
      double chi2 = 0;
      nuse = 0;
      for (std::size_t i = 0; i < v.size(); ++i)
        if (use[i]) chi2 += (v[i] - mean) * (v[i] - mean) / (e[i] * e[i]), ++nuse;
      const double scale = nuse > 1 ? std::max(1.0, std::sqrt(chi2 / (nuse - 1))) : 1.0;
      err = scale / std::sqrt(sw);
      bool changed = false;
      for (std::size_t i = 0; i < v.size(); ++i)
        if (use[i] && std::abs(v[i] - mean) > c.shift_clip_sigma * scale * e[i]) use[i] = 0, changed = true;
      if (!changed) break;
    }
    return nuse;
  };
  for (std::size_t a = 0; a < master.size(); ++a) {
    const Trace& t = master[a];
    if (!t.usable()) continue;
    dv.clear(), de.clear(), sv.clear(), se.clear();
    for (long b = 0; b < nb; ++b) {
      const long x0 = b * bpx, x1 = std::min(nx, x0 + bpx);
      const double xb = 0.5 * static_cast<double>(x0 + x1 - 1);
      const double pred = t.y(xb), sg = t.sigma(xb);
      if (!(sg > 0)) continue;
      bool off = false;
      const ProfileFit p = measure_bin(im, x0, x1, pred, sg, c, buf, off);
      if (off || !p.ok || !(p.peak_snr >= c.min_bin_snr) || std::abs(p.centre - pred) > c.max_jump_px) continue;
      if (!(p.centre_err > 0) || !(p.sigma_err > 0)) continue;
      dv.push_back(p.centre - pred);
      de.push_back(p.centre_err);
      sv.push_back(p.sigma / sg);
      se.push_back(p.sigma_err / sg);
    }
    TraceShift& s = out[a];
    // As many bins as a trace itself needs, so that noise peaks on an empty frame do not pass for a shift.
    const auto min_bins = static_cast<std::size_t>(std::max(2.0, std::ceil(c.min_good_fraction * static_cast<double>(nb))));
    if (dv.size() < min_bins) continue;
    double m = 0, e = kNaN;
    const int n = robust_mean(dv, de, m, e);
    if (n < 2) continue;
    s.offset_px = m;
    s.offset_err_px = e;
    s.nbins = n;
    if (robust_mean(sv, se, m, e) >= 2) s.width_scale = m, s.width_scale_err = e;
    s.ok = true;
  }
  return out;
}

TraceSet apply_trace_shifts(const TraceSet& master, const std::vector<TraceShift>& shifts) {
  if (shifts.size() != master.size())
    throw DataError(fmt::format("{} trace shifts for {} traces", shifts.size(), master.size()));
  TraceSet out = master;
  for (std::size_t a = 0; a < out.size(); ++a) {
    if (!shifts[a].ok) continue;
    auto& t = out[a];
    if (!t.centre.coeffs.empty()) t.centre.coeffs[0] += shifts[a].offset_px;
    for (auto& k : t.sigma.coeffs) k *= shifts[a].width_scale;
  }
  return out;
}

}  // namespace kspecdr::trace
