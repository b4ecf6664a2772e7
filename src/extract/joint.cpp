// Joint ("simultaneous", "deblended") extraction of closely packed apertures, column by column.
//
// In a fiber spectrograph the fibers' spatial profiles overlap: a pixel between two fibers holds light of
// both, and a fiber extracted alone counts its neighbours' wings as its own (a faint fiber beside a
// bright one comes out percents high). The fix used by fiber pipelines (2dFdr, the SDSS/BOSS row-by-row
// extraction, DESI's spectro-perfectionism in one dimension) is to model every pixel of a detector column
// as the sum of all apertures' profiles,
//
//     D(r) = Σ_a f_a P_a(r) + noise,         P_a = pixel-integrated Gaussian (trace centre, width), Σ_r P_a = 1,
//
// and fit all amplitudes f_a (electrons in the column through aperture a) at once by weighted linear
// least squares, χ² = Σ_r (D(r) − Σ_a f_a P_a(r))² / V(r):
//
//     A f = b,   A_ab = Σ_r P_a(r) P_b(r) / V(r),   b_a = Σ_r P_a(r) D(r) / V(r).
//
// Only neighbours overlap, so A is a band matrix (half-width k = how many following apertures reach into
// an aperture's window; 1 for the usual spacing) and is factored by a banded Cholesky in O(n k²). V is the
// *model* variance (read noise² + max(model, 0) + the masters' noise), never the data's own, iterated from
// an unweighted first fit; the model also finds outliers (unflagged cosmic rays), which are rejected and
// the fit redone. Masked pixels do not enter A or b.
//
// The estimator is linear in the data: f_a = Σ_r W_a(r) D(r) with W_a(r) = Σ_b (A⁻¹)_ab P_b(r) / V(r).
// Hence Var f_a = Σ_r W_a(r)² V(r) = (A⁻¹)_aa, and each source's share (star photons, read noise, master
// bias and flat) is Σ_r W_a(r)² V_source(r): the components add up to the total by construction. Where the
// profiles do not overlap, A is diagonal and f_a is exactly Horne's optimal extraction.
//
// Boxcar with deblending: the box sum of aperture a minus its neighbours' fitted light in the box, with
// the aperture's own masked pixels replaced by its model,
//
//     F_a = Σ_{r good} c_a(r) (D(r) − Σ_{b≠a} f_b P_b(r)) + f_a Σ_{r not good} c_a(r) P_a(r),
//
// (c_a = fractional box coverage). It is again linear in D: w_a(r) = c_a(r)·good(r) + Σ_b y_b P_b(r)/V(r)
// with y = A⁻¹ u, u_b = −Σ_{good} c_a P_b (b ≠ a), u_a = Σ_{not good} c_a P_a, so its variance and the
// split by source follow the same way. It estimates f_a times the box's share of the profile (1 − 6·10⁻⁵
// for the default ±4σ), the light of the aperture alone, as the boxcar does for an isolated star.
//
// Units: electrons (e-) for data, model and fluxes; e-² for variances; rows and columns in pixels.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "column.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/extract.hpp"

namespace kspecdr::extract {

namespace {

using detail::ColumnFail;
using detail::ColumnResult;
using detail::kNaN;
using detail::overlap;
constexpr double kInvSqrt2 = 0.70710678118654752440;

/// Row window of an aperture: ±max(box, optimal) half-width around the centre, like the per-aperture
/// extraction, so that a box wider than the profile window still finds its neighbours in the same group.
struct Window {
  long r0 = 0, r1 = -1;
};
Window window_of(double yc, double half) {
  return {static_cast<long>(std::ceil(yc - half - 0.5)), static_cast<long>(std::floor(yc + half + 0.5))};
}

/// One aperture in the current column.
struct Ap {
  std::size_t trace = 0;      ///< index in the TraceSet
  double yc = 0, sg = 0, half_box = 0;
  long r0 = 0, r1 = -1;       ///< window rows, not clipped to the detector
  long q0 = 0, q1 = -1;       ///< window rows on the detector
  std::size_t off = 0;        ///< offset of P(r0..r1) and c(r0..r1) in Work::prof / Work::box
  double ptot = 0;            ///< Σ P over the window (on and off the detector)
  double f = 0;               ///< amplitude (e-)
  int rejected = 0;            ///< pixels rejected (outliers and grown)
  int primary = 0;             ///< outliers rejected as the worst of a round (bounded by max_reject)
};

/// Scratch space of one column, sized once: nothing is allocated per pixel.
struct Work {
  // Per detector row (absolute index r).
  std::vector<double> d, rn2, bv, fr, model, vmodel, var, wbuf, owner_dist;
  std::vector<unsigned char> good, rej;
  std::vector<int> owner;
  // Per aperture of the column, in order of the centre y.
  std::vector<Ap> aps;
  std::vector<double> prof, box, edges;
  // Band matrix (lower, half-width k) and vectors of one group.
  std::vector<double> band, rhs, sol, unit;

  explicit Work(long ny) {
    const auto n = static_cast<std::size_t>(ny);
    for (auto* a : {&d, &rn2, &bv, &fr, &model, &vmodel, &var, &wbuf, &owner_dist}) a->assign(n, 0.0);
    good.assign(n, 0), rej.assign(n, 0), owner.assign(n, -1);
  }
  double p(const Ap& a, long r) const { return r < a.r0 || r > a.r1 ? 0.0 : prof[a.off + static_cast<std::size_t>(r - a.r0)]; }
  double c(const Ap& a, long r) const { return r < a.r0 || r > a.r1 ? 0.0 : box[a.off + static_cast<std::size_t>(r - a.r0)]; }
  bool usable(long r) const { return good[static_cast<std::size_t>(r)] && !rej[static_cast<std::size_t>(r)]; }
};

/// Banded Cholesky A = L Lᵀ in place. `b` holds the lower band row by row: b[i (k+1) + (i − j)] = A(i, j)
/// for j ∈ [i − k, i]. Returns false when A is not positive definite (to rounding).
bool band_cholesky(std::vector<double>& b, std::size_t n, std::size_t k) {
  const std::size_t w = k + 1;
  auto at = [&](std::size_t i, std::size_t j) -> double& { return b[i * w + (i - j)]; };
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j0 = i >= k ? i - k : 0;
    for (std::size_t j = j0; j <= i; ++j) {
      double s = at(i, j);
      for (std::size_t m = j0; m < j; ++m)
        if (j - m <= k) s -= at(i, m) * at(j, m);
      if (i == j) {
        if (!(s > 1e-12 * std::abs(at(i, i))) || !(s > 0)) return false;
        at(i, i) = std::sqrt(s);
      } else {
        at(i, j) = s / at(j, j);
      }
    }
  }
  return true;
}

/// Solves L Lᵀ x = v in place (v becomes x) with the factor from band_cholesky.
void band_solve(const std::vector<double>& b, std::size_t n, std::size_t k, std::vector<double>& v) {
  const std::size_t w = k + 1;
  auto at = [&](std::size_t i, std::size_t j) { return b[i * w + (i - j)]; };
  for (std::size_t i = 0; i < n; ++i) {
    double s = v[i];
    for (std::size_t j = i >= k ? i - k : 0; j < i; ++j) s -= at(i, j) * v[j];
    v[i] = s / at(i, i);
  }
  for (std::size_t i = n; i-- > 0;) {
    double s = v[i];
    for (std::size_t j = i + 1; j < std::min(n, i + k + 1); ++j) s -= at(j, i) * v[j];
    v[i] = s / at(i, i);
  }
}

/// Fits one group of mutually overlapping apertures aps[g0, g1) of one column.
class GroupFit {
 public:
  GroupFit(Work& w, const ExtractConfig& cfg, std::size_t g0, std::size_t g1)
      : w_(w), cfg_(cfg), g0_(g0), n_(g1 - g0) {
    lo_ = w.aps[g0].q0, hi_ = w.aps[g0].q1;
    for (std::size_t i = 0; i < n_; ++i) {
      lo_ = std::min(lo_, ap(i).q0), hi_ = std::max(hi_, ap(i).q1);
      // Half-width of the band: the farthest following aperture whose window reaches into this one's.
      for (std::size_t j = i + 1; j < n_; ++j)
        if (ap(j).q0 <= ap(i).q1) k_ = std::max(k_, j - i);
    }
  }

  /// Model variance (e-²) of row r for a model level m (e-): read noise² + photons + the masters' noise.
  double model_var(long r, double m) const {
    const auto i = static_cast<std::size_t>(r);
    const double s = std::max(m, 0.0);
    return std::max(w_.rn2[i] + s + w_.bv[i] + s * s * w_.fr[i], 1e-6);
  }

  /// Weighted least squares; sets every f and the model. `from_data`: the variance of each pixel from its
  /// own value instead of the model (the robust start only: a cosmic ray then weighs little and cannot
  /// pull a faint neighbour's amplitude up, but such weights bias fluxes low, so they never make a result).
  bool solve(bool from_data) {
    for (long r = lo_; r <= hi_; ++r) {
      const auto i = static_cast<std::size_t>(r);
      w_.vmodel[i] = from_data ? w_.d[i] : w_.model[i];
      w_.var[i] = model_var(r, w_.vmodel[i]);
    }
    if (!factor()) return false;
    w_.rhs.assign(n_, 0.0);
    for (std::size_t a = 0; a < n_; ++a) {
      const Ap& A = ap(a);
      double s = 0;
      for (long r = A.q0; r <= A.q1; ++r)
        if (w_.usable(r)) s += w_.p(A, r) * w_.d[static_cast<std::size_t>(r)] / w_.var[static_cast<std::size_t>(r)];
      w_.rhs[a] = s;
    }
    band_solve(w_.band, n_, k_, w_.rhs);
    for (std::size_t a = 0; a < n_; ++a) ap(a).f = w_.rhs[a];
    update_model();
    return true;
  }

  /// Rejects, per aperture, the worst pixel among those nearest to it when it lies beyond reject_sigma of
  /// the model; returns how many were rejected.
  int reject() {
    // Each row belongs to the aperture whose centre is nearest in units of its width.
    for (long r = lo_; r <= hi_; ++r) w_.owner[static_cast<std::size_t>(r)] = -1, w_.owner_dist[static_cast<std::size_t>(r)] = 1e300;
    for (std::size_t a = 0; a < n_; ++a) {
      const Ap& A = ap(a);
      for (long r = A.q0; r <= A.q1; ++r) {
        const double dist = std::abs(static_cast<double>(r) - A.yc) / A.sg;
        if (dist < w_.owner_dist[static_cast<std::size_t>(r)])
          w_.owner_dist[static_cast<std::size_t>(r)] = dist, w_.owner[static_cast<std::size_t>(r)] = static_cast<int>(a);
      }
    }
    int n_rej = 0;
    for (std::size_t a = 0; a < n_; ++a) {
      Ap& A = ap(a);
      if (A.primary >= cfg_.max_reject) continue;
      // Positive outliers first: a cosmic ray on a faint fiber's core pulls its amplitude up until the good
      // pixels beside it lie further *below* the model than the hit lies above it; rejecting by |z| alone
      // would then take the good pixels. Pixels below the model go only when none lies above.
      double worst_hi = cfg_.reject_sigma, worst_lo = cfg_.reject_sigma;
      long rhi = -1, rlo = -1;
      for (long r = A.q0; r <= A.q1; ++r) {
        const auto i = static_cast<std::size_t>(r);
        if (w_.owner[i] != static_cast<int>(a) || !w_.usable(r)) continue;
        const double z = (w_.d[i] - w_.model[i]) / std::sqrt(model_var(r, w_.model[i]));
        if (z > worst_hi) worst_hi = z, rhi = r;
        if (-z > worst_lo) worst_lo = -z, rlo = r;
      }
      const long rw = rhi >= 0 ? rhi : rlo;
      if (rw < 0) continue;
      w_.rej[static_cast<std::size_t>(rw)] = 1;
      ++A.rejected, ++A.primary;
      ++n_rej;
    }
    // The fainter pixels of a cosmic-ray track beside a rejected one: each may lie below reject_sigma, yet
    // together they pull the amplitude up by many σ. Grow the rejection to the rows next to rejected ones
    // that lie above the current model by reject_grow_sigma (for pure noise a 1 % event, and only next to
    // an outlier). Grown pixels do not count against max_reject, which bounds the outliers themselves.
    if (cfg_.reject_grow_sigma > 0)
      for (long r = lo_; r <= hi_; ++r) {
        const auto i = static_cast<std::size_t>(r);
        if (!w_.usable(r) || w_.owner[i] < 0) continue;
        const bool beside = (r > lo_ && w_.rej[i - 1]) || (r < hi_ && w_.rej[i + 1]);
        Ap& A = ap(static_cast<std::size_t>(w_.owner[i]));
        if (!beside) continue;
        if ((w_.d[i] - w_.model[i]) / std::sqrt(model_var(r, w_.model[i])) > cfg_.reject_grow_sigma) {
          w_.rej[i] = 1;
          ++A.rejected;
          ++n_rej;
        }
      }
    return n_rej;
  }

  /// Flux, variance by source and diagnostics of every aperture from the last solve's weights.
  void results(std::vector<ColumnResult>& out, long x, long nx) {
    const bool boxcar = cfg_.method == ExtractMethod::Boxcar;
    for (std::size_t a = 0; a < n_; ++a) {
      const Ap& A = ap(a);
      // Coefficients y of the weights w(r) = direct(r) + Σ_b y_b P_b(r) / V(r): y = A⁻¹ e_a for the
      // amplitude, y = A⁻¹ u for the neighbour-corrected box sum.
      w_.unit.assign(n_, 0.0);
      double lost = 0;
      for (long r = A.r0; r <= A.r1; ++r)
        if (!(r >= 0 && r < static_cast<long>(w_.d.size()) && w_.usable(r))) lost += w_.p(A, r);
      if (boxcar) {
        double lost_box = 0;
        for (long r = A.r0; r <= A.r1; ++r) {
          const double c = w_.c(A, r);
          if (c <= 0) continue;
          const bool use = r >= A.q0 && r <= A.q1 && w_.usable(r);
          if (!use) {
            lost_box += c * w_.p(A, r);
            continue;
          }
          for (std::size_t b = a >= k_ ? a - k_ : 0; b < std::min(n_, a + k_ + 1); ++b)
            if (b != a) w_.unit[b] -= c * w_.p(ap(b), r);
        }
        w_.unit[a] = lost_box;
      } else {
        w_.unit[a] = 1.0;
      }
      band_solve(w_.band, n_, k_, w_.unit);
      double ymax = 0;
      for (double v : w_.unit) ymax = std::max(ymax, std::abs(v));
      long wlo = A.q0, whi = A.q1;
      for (std::size_t b = 0; b < n_; ++b)
        if (std::abs(w_.unit[b]) > 1e-12 * ymax) wlo = std::min(wlo, ap(b).q0), whi = std::max(whi, ap(b).q1);
      for (long r = wlo; r <= whi; ++r) w_.wbuf[static_cast<std::size_t>(r)] = 0.0;
      if (boxcar)
        for (long r = A.q0; r <= A.q1; ++r)
          if (w_.usable(r)) w_.wbuf[static_cast<std::size_t>(r)] = w_.c(A, r);
      for (std::size_t b = 0; b < n_; ++b) {
        const double yb = w_.unit[b];
        if (!(std::abs(yb) > 1e-12 * ymax)) continue;
        const Ap& B = ap(b);
        for (long r = B.q0; r <= B.q1; ++r)
          if (w_.usable(r)) w_.wbuf[static_cast<std::size_t>(r)] += yb * w_.p(B, r) / w_.var[static_cast<std::size_t>(r)];
      }
      ColumnResult& c = out[A.trace * static_cast<std::size_t>(nx) + static_cast<std::size_t>(x)];
      c = ColumnResult{};
      for (long r = wlo; r <= whi; ++r) {
        const auto i = static_cast<std::size_t>(r);
        const double wi = w_.wbuf[i];
        if (wi == 0.0 || !w_.usable(r)) continue;
        const double s = std::max(w_.vmodel[i], 0.0);
        c.flux += wi * w_.d[i];
        c.var_star += wi * wi * s;
        c.var_read += wi * wi * w_.rn2[i];
        c.var_cal += wi * wi * (w_.bv[i] + s * s * w_.fr[i]);
      }
      // Diagnostics: light centroid in the box of the data minus the neighbours' model, the peak pixel,
      // the profile share lost to masked, rejected or off-detector pixels.
      double s1 = 0, st = 0, peak = -std::numeric_limits<double>::infinity();
      for (long r = A.q0; r <= A.q1; ++r) {
        const auto i = static_cast<std::size_t>(r);
        const double cv = w_.c(A, r);
        if (cv <= 0 || !w_.good[i]) continue;
        peak = std::max(peak, w_.d[i]);
        if (w_.rej[i]) continue;
        const double own = w_.d[i] - (w_.model[i] - A.f * w_.p(A, r));
        s1 += cv * own, st += cv * own * (static_cast<double>(r) - A.yc);
      }
      c.offset = s1 > 0 ? std::clamp(st / s1, -A.half_box, A.half_box) : kNaN;
      c.width = A.sg;
      c.peak = std::isfinite(peak) ? peak : kNaN;
      c.masked = A.ptot > 0 ? lost / A.ptot : 0.0;
      c.rejected = A.rejected;
    }
  }

 private:
  Ap& ap(std::size_t i) { return w_.aps[g0_ + i]; }

  void update_model() {
    for (long r = lo_; r <= hi_; ++r) w_.model[static_cast<std::size_t>(r)] = 0.0;
    for (std::size_t a = 0; a < n_; ++a) {
      const Ap& A = ap(a);
      for (long r = A.q0; r <= A.q1; ++r) w_.model[static_cast<std::size_t>(r)] += A.f * w_.p(A, r);
    }
  }

  /// Builds the normal matrix with the weights 1/var and factors it.
  bool factor() {
    const std::size_t bw = k_ + 1;
    w_.band.assign(n_ * bw, 0.0);
    for (std::size_t a = 0; a < n_; ++a) {
      const Ap& A = ap(a);
      for (long r = A.q0; r <= A.q1; ++r) {
        const double pa = w_.p(A, r);
        if (pa == 0.0 || !w_.usable(r)) continue;
        const double wa = pa / w_.var[static_cast<std::size_t>(r)];
        w_.band[a * bw] += wa * pa;
        // Lower band: A(b, a) for the following apertures b that reach row r.
        for (std::size_t b = a + 1; b < std::min(n_, a + k_ + 1); ++b) w_.band[b * bw + (b - a)] += wa * w_.p(ap(b), r);
      }
    }
    return band_cholesky(w_.band, n_, k_);
  }

  Work& w_;
  const ExtractConfig& cfg_;
  std::size_t g0_, n_, k_ = 0;
  long lo_ = 0, hi_ = -1;
};

}  // namespace

bool apertures_overlap(const TraceSet& traces, const ExtractConfig& cfg) {
  std::vector<std::pair<double, double>> yh;  // centre, half-width of the window
  // Every 8th column and the last: trace centres and widths are smooth in x.
  auto overlap_at = [&](long x) {
    const double xd = static_cast<double>(x);
    yh.clear();
    for (const Trace& t : traces.traces) {
      if (!t.usable()) continue;
      const double yc = t.y(xd), sg = t.sigma(xd);
      if (!(sg > 0) || !std::isfinite(yc)) continue;
      const double half_box = cfg.boxcar_halfwidth_px > 0 ? cfg.boxcar_halfwidth_px : cfg.boxcar_halfwidth_sigma * sg;
      yh.emplace_back(yc, std::max(half_box, cfg.optimal_halfwidth_sigma * sg));
    }
    std::sort(yh.begin(), yh.end());
    for (std::size_t i = 1; i < yh.size(); ++i)
      if (yh[i].first - yh[i - 1].first < yh[i].second + yh[i - 1].second) return true;
    return false;
  };
  for (long x = 0; x < traces.nx; x += 8)
    if (overlap_at(x)) return true;
  return traces.nx > 0 && overlap_at(traces.nx - 1);
}

namespace detail {

void extract_joint(const Image& im, const TraceSet& traces, const ExtractConfig& cfg,
                   std::vector<ColumnResult>& results, long x_begin, long x_end) {
  const long nx = im.nx(), ny = im.ny();
  if (x_end < 0) x_end = nx;
  x_begin = std::clamp(x_begin, 0L, nx);
  x_end = std::clamp(x_end, x_begin, nx);
  const std::size_t na = traces.size();
  results.assign(na * static_cast<std::size_t>(nx), ColumnResult{});
  for (auto& r : results) r.fail = ColumnFail::NoProfile;
  Work w(ny);
  const bool have_bv = cfg.calibration_noise.bias_var.size() > 0;
  const bool have_fr = cfg.calibration_noise.flat_relvar.size() > 0;
  std::vector<long> loaded(static_cast<std::size_t>(ny), -1);  // column whose row data are in the buffers

  for (long x = x_begin; x < x_end; ++x) {
    const double xd = static_cast<double>(x);
    w.aps.clear();
    w.prof.clear();
    w.box.clear();
    // ---- the apertures of this column: window, profile, box coverage, and whether enough of the profile
    // falls on good pixels to fit (else NODATA, as in the per-aperture extraction).
    for (std::size_t t = 0; t < na; ++t) {
      const Trace& tr = traces[t];
      if (!tr.usable()) continue;
      ColumnResult& res = results[t * static_cast<std::size_t>(nx) + static_cast<std::size_t>(x)];
      Ap a;
      a.trace = t;
      a.yc = tr.y(xd), a.sg = tr.sigma(xd);
      if (!(a.sg > 0) || !std::isfinite(a.yc)) {
        res.fail = ColumnFail::NoProfile;
        continue;
      }
      a.half_box = cfg.boxcar_halfwidth_px > 0 ? cfg.boxcar_halfwidth_px : cfg.boxcar_halfwidth_sigma * a.sg;
      const double half_opt = cfg.optimal_halfwidth_sigma * a.sg;
      const Window win = window_of(a.yc, std::max(a.half_box, half_opt));
      a.r0 = win.r0, a.r1 = win.r1;
      a.q0 = std::max(a.r0, 0L), a.q1 = std::min(a.r1, ny - 1);
      a.off = w.prof.size();
      // Pixel-integrated Gaussian from erf at the pixel edges (each edge computed once).
      const std::size_t nr = static_cast<std::size_t>(std::max(0L, a.r1 - a.r0 + 1));
      w.edges.resize(nr + 1);
      const double s = kInvSqrt2 / a.sg;
      for (std::size_t e = 0; e <= nr; ++e)
        w.edges[e] = std::erf((static_cast<double>(a.r0) - 0.5 + static_cast<double>(e) - a.yc) * s);
      double pon = 0, pgood = 0;
      for (std::size_t e = 0; e < nr; ++e) {
        const long r = a.r0 + static_cast<long>(e);
        const double t_r = static_cast<double>(r) - a.yc;
        const double p = std::abs(t_r) <= half_opt + 0.5 ? 0.5 * (w.edges[e + 1] - w.edges[e]) : 0.0;
        w.prof.push_back(p);
        w.box.push_back(overlap(static_cast<double>(r), a.yc - a.half_box, a.yc + a.half_box));
        a.ptot += p;
        if (r < 0 || r >= ny) continue;
        pon += p;
        const auto i = static_cast<std::size_t>(r);
        if (loaded[i] != x) {
          loaded[i] = x;
          const float dv = im.data(r, x);
          w.good[i] = (im.mask(r, x) & cfg.exclude_bits) == 0 && std::isfinite(dv);
          w.rej[i] = 0;
          w.d[i] = w.good[i] ? static_cast<double>(dv) : 0.0;
          w.rn2[i] = cfg.read_noise.variance(r, x);
          w.bv[i] = have_bv ? static_cast<double>(cfg.calibration_noise.bias_var(r, x)) : 0.0;
          w.fr[i] = have_fr ? static_cast<double>(cfg.calibration_noise.flat_relvar(r, x)) : 0.0;
          w.model[i] = 0.0;
        }
        if (w.good[i]) pgood += p;
      }
      if (a.q0 > a.q1 || !(a.ptot > 0)) {
        res.fail = a.q0 > a.q1 ? ColumnFail::OffDetector : ColumnFail::NoProfile;
        continue;
      }
      if (pgood < cfg.min_good_fraction * a.ptot) {
        // Left out of the fit: the few good pixels cannot tell its amplitude from its neighbours'.
        res.fail = pon < cfg.min_good_fraction * a.ptot ? ColumnFail::OffDetector : ColumnFail::Masked;
        continue;
      }
      res.fail = ColumnFail::None;
      w.aps.push_back(a);
    }
    std::sort(w.aps.begin(), w.aps.end(), [](const Ap& p, const Ap& q) { return p.yc < q.yc; });

    // ---- groups of apertures whose windows chain together; each is an independent least-squares problem.
    std::size_t g0 = 0;
    while (g0 < w.aps.size()) {
      std::size_t g1 = g0 + 1;
      long reach = w.aps[g0].q1;
      while (g1 < w.aps.size() && w.aps[g1].q0 <= reach) reach = std::max(reach, w.aps[g1].q1), ++g1;
      GroupFit fit(w, cfg, g0, g1);
      // A robust start (each pixel's variance from its own value), and outliers against it rejected
      // before any fit gives them full weight: with several free amplitudes a cosmic ray could otherwise
      // be absorbed by a faint fiber's amplitude and the good pixels around it rejected instead. Then the
      // model variance from the fitted amplitudes, iterated; then further rounds of rejection (a pixel per
      // aperture and round, at most max_reject per aperture), each refitted.
      bool ok = fit.solve(true);
      bool more = ok && cfg.max_reject > 0 && fit.reject() > 0;
      for (int it = 0; ok && it < std::max(1, cfg.variance_iterations); ++it) ok = fit.solve(false);
      // A round may only grow a track found before, so allow twice max_reject rounds.
      for (int round = 1; ok && more && round < 2 * cfg.max_reject; ++round) {
        if (fit.reject() == 0) break;
        for (int it = 0; ok && it < 2; ++it) ok = fit.solve(false);
      }
      // The final weights: the model variance at the final amplitudes, so flux and variance agree.
      if (ok) ok = fit.solve(false);
      if (ok) {
        fit.results(results, x, nx);
      } else {
        for (std::size_t i = g0; i < g1; ++i)
          results[w.aps[i].trace * static_cast<std::size_t>(nx) + static_cast<std::size_t>(x)].fail =
              ColumnFail::NoProfile;
      }
      g0 = g1;
    }
  }
}

}  // namespace detail
}  // namespace kspecdr::extract
