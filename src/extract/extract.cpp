#include "kspecdr/extract/extract.hpp"

#include "kspecdr/core/stats.hpp"
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/trace/profile.hpp"
#include "column.hpp"

namespace kspecdr::extract {

namespace {
using detail::ColumnFail;
using detail::ColumnResult;
using detail::kNaN;
using detail::overlap;
constexpr int kMaxCoef = 4;

/// Per-column scratch space, sized once per aperture: the extraction allocates nothing per pixel.
struct ColumnWork {
  std::vector<double> d, s, rn2, bv, fr, p, cov, v, w, wopt, t, u;
  std::vector<unsigned char> good, rej, on;
  void resize(std::size_t n) {
    for (auto* a : {&d, &s, &rn2, &bv, &fr, &p, &cov, &v, &w, &wopt, &t, &u}) a->assign(n, 0.0);
    good.assign(n, 0), rej.assign(n, 0), on.assign(n, 0);
  }
};

}  // namespace

std::string to_string(ExtractMethod m) {
  switch (m) {
    case ExtractMethod::Boxcar: return "boxcar";
    case ExtractMethod::Joint: return "joint";
    default: return "optimal";
  }
}
ExtractMethod extract_method_from_string(const std::string& s) {
  if (s == "boxcar") return ExtractMethod::Boxcar;
  if (s == "optimal") return ExtractMethod::Optimal;
  if (s == "joint") return ExtractMethod::Joint;
  throw ConfigError(fmt::format("extraction method '{}' is not one of: boxcar, optimal, joint", s),
                    ErrorContext{.keyword = "extract.method"});
}
std::string to_string(Deblend d) {
  switch (d) {
    case Deblend::On: return "on";
    case Deblend::Off: return "off";
    default: return "auto";
  }
}
Deblend deblend_from_string(const std::string& s) {
  if (s == "auto") return Deblend::Auto;
  if (s == "on") return Deblend::On;
  if (s == "off") return Deblend::Off;
  throw ConfigError(fmt::format("deblend '{}' is not one of: auto, on, off", s),
                    ErrorContext{.keyword = "extract.deblend"});
}
std::string to_string(ProfileSource p) { return p == ProfileSource::Gaussian ? "gaussian" : "data"; }
ProfileSource profile_source_from_string(const std::string& s) {
  if (s == "gaussian") return ProfileSource::Gaussian;
  if (s == "data") return ProfileSource::Data;
  throw ConfigError(fmt::format("extraction profile '{}' is not one of: gaussian, data", s),
                    ErrorContext{.keyword = "extract.profile"});
}

namespace {

/// Extracts one column. `p_of(r)` gives the profile at row r; rows [r0, r0 + n) cover the aperture.
template <typename ProfileFn>
ColumnResult extract_column(const Image& im, long x, double yc, double sg, const ApertureSky* sky,
                            const ExtractConfig& cfg, ColumnWork& w, ProfileFn p_of) {
  ColumnResult out;
  const long ny = im.ny();
  const double half_box = cfg.boxcar_halfwidth_px > 0 ? cfg.boxcar_halfwidth_px : cfg.boxcar_halfwidth_sigma * sg;
  const double half_opt = cfg.optimal_halfwidth_sigma * sg;
  const double half = std::max(half_box, half_opt);
  const long r0 = static_cast<long>(std::ceil(yc - half - 0.5)), r1 = static_cast<long>(std::floor(yc + half + 0.5));
  const std::size_t n = static_cast<std::size_t>(std::max(0L, r1 - r0 + 1));
  if (w.d.size() < n) w.resize(n);
  out.row0 = r0;
  out.nrows = n;
  const bool have_sky = sky != nullptr && !sky->ok.empty();
  const bool have_bv = cfg.calibration_noise.bias_var.size() > 0;
  const bool have_fr = cfg.calibration_noise.flat_relvar.size() > 0;
  const int ncoef = have_sky ? sky->ncoef : 0;
  if (have_sky && !sky->ok[static_cast<std::size_t>(x)]) {
    out.fail = ColumnFail::NoSky;
    return out;
  }
  double ptot = 0, pgood = 0, peak = -std::numeric_limits<double>::infinity();
  int n_on = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const long r = r0 + static_cast<long>(i);
    const double t = static_cast<double>(r) - yc;
    w.t[i] = t;
    w.on[i] = r >= 0 && r < ny;
    w.rej[i] = 0;
    w.cov[i] = overlap(static_cast<double>(r), yc - half_box, yc + half_box);
    w.p[i] = std::abs(t) <= half_opt + 0.5 ? p_of(r, t) : 0.0;
    ptot += w.p[i];
    w.good[i] = 0;
    if (!w.on[i]) continue;
    ++n_on;
    const float dv = im.data(r, x);
    w.good[i] = (im.mask(r, x) & cfg.exclude_bits) == 0 && std::isfinite(dv);
    w.s[i] = have_sky ? sky->value(x, t) : 0.0;
    w.u[i] = t / ApertureSky::kSkyScalePx;
    w.d[i] = dv - w.s[i];
    w.rn2[i] = cfg.read_noise.variance(r, x);
    w.bv[i] = have_bv ? static_cast<double>(cfg.calibration_noise.bias_var(r, x)) : 0.0;
    w.fr[i] = have_fr ? static_cast<double>(cfg.calibration_noise.flat_relvar(r, x)) : 0.0;
    if (w.good[i]) {
      pgood += w.p[i];
      if (w.cov[i] > 0) peak = std::max(peak, static_cast<double>(dv));
    }
  }
  if (n_on == 0) {
    out.fail = ColumnFail::OffDetector;
    return out;
  }
  if (!(ptot > 0)) {
    out.fail = ColumnFail::NoProfile;
    return out;
  }
  out.masked = 1.0 - pgood / ptot;
  if (pgood < cfg.min_good_fraction * ptot) {
    // Say which: the aperture left the detector, or its pixels are masked.
    double pon = 0;
    for (std::size_t i = 0; i < n; ++i) pon += w.on[i] ? w.p[i] : 0.0;
    out.fail = pon < cfg.min_good_fraction * ptot ? ColumnFail::OffDetector : ColumnFail::Masked;
    return out;
  }

  // ---- profile fit: flux from the profile-weighted sum with the model variance (Horne 1986), iterated
  // because the variance depends on the flux; then the worst outlier is rejected and the fit redone.
  auto usable = [&](std::size_t i) { return w.good[i] && !w.rej[i]; };
  // Model variance of pixel i for flux f, by source: the master bias and flat noise of the IM (the flat's
  // grows with the square of the expected signal), read noise, sky and star photons.
  auto cal_var = [&](std::size_t i, double f) {
    const double signal = std::max(w.s[i] + f * w.p[i], 0.0);
    return w.bv[i] + signal * signal * w.fr[i];
  };
  auto model_var = [&](std::size_t i, double f) {
    return std::max(w.rn2[i] + std::max(w.s[i], 0.0) + std::max(f * w.p[i], 0.0) + cal_var(i, f), 1e-6);
  };
  double sd = 0, sp = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (usable(i) && w.p[i] > 0) sd += w.d[i], sp += w.p[i];
  double f = sp > 0 ? sd / sp : 0.0;
  double den = 0;
  auto fit = [&](int rounds) {
    for (int it = 0; it < rounds; ++it) {
      double num = 0;
      den = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (!usable(i)) continue;
        w.v[i] = model_var(i, f);
        num += w.p[i] * w.d[i] / w.v[i];
        den += w.p[i] * w.p[i] / w.v[i];
      }
      if (!(den > 0)) return false;
      f = num / den;
    }
    return true;
  };
  if (!fit(std::max(1, cfg.variance_iterations))) {
    out.fail = ColumnFail::NoProfile;
    return out;
  }
  for (int k = 0; k < cfg.max_reject; ++k) {
    double worst = cfg.reject_sigma;
    std::size_t iw = n;
    for (std::size_t i = 0; i < n; ++i) {
      if (!usable(i) || (w.p[i] <= 0 && w.cov[i] <= 0)) continue;
      const double v = model_var(i, f);
      const double z = std::abs(w.d[i] - f * w.p[i]) / std::sqrt(v);
      if (z > worst) worst = z, iw = i;
    }
    if (iw == n) break;
    w.rej[iw] = 1;
    ++out.rejected;
    if (!fit(2)) {
      out.fail = ColumnFail::Masked;
      return out;
    }
  }
  // Final variances at the final flux, so that the weights and the variance components agree.
  den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!usable(i)) continue;
    w.v[i] = model_var(i, f);
    den += w.p[i] * w.p[i] / w.v[i];
  }
  if (!(den > 0)) {
    out.fail = ColumnFail::NoProfile;
    return out;
  }
  for (std::size_t i = 0; i < n; ++i) w.wopt[i] = usable(i) ? w.p[i] / w.v[i] / den : 0.0;
  double lost_p = 0;
  for (std::size_t i = 0; i < n; ++i) lost_p += usable(i) ? 0.0 : w.p[i];
  out.masked = ptot > 0 ? lost_p / ptot : 0.0;

  // ---- weights of the chosen estimator; both are linear in the data, so every variance follows from them.
  if (cfg.method == ExtractMethod::Optimal) {
    for (std::size_t i = 0; i < n; ++i) w.w[i] = w.wopt[i];
  } else {
    // Boxcar: masked or rejected pixels inside the box are replaced by the profile model f·P, and f is
    // itself the optimal combination of the good pixels.
    double lost = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (!usable(i)) lost += w.cov[i] * w.p[i];
    for (std::size_t i = 0; i < n; ++i) w.w[i] = usable(i) ? w.cov[i] + lost * w.wopt[i] : 0.0;
  }
  double g[kMaxCoef] = {0, 0, 0, 0};
  double s1 = 0, st = 0, sdp = 0, sdt = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!usable(i) || w.w[i] == 0.0) continue;
    const double wi = w.w[i];
    out.flux += wi * w.d[i];
    out.sky += wi * w.s[i];
    out.var_star += wi * wi * std::max(f * w.p[i], 0.0);
    out.var_sky += wi * wi * std::max(w.s[i], 0.0);
    out.var_read += wi * wi * w.rn2[i];
    out.var_cal += wi * wi * cal_var(i, f);
    double pw = 1.0;
    for (int k = 0; k < ncoef; ++k) g[k] += wi * pw, pw *= w.u[i];
    // Light centroid and width from the box pixels, for the diagnostics.
    if (w.cov[i] > 0) {
      s1 += w.cov[i] * w.d[i];
      st += w.cov[i] * w.d[i] * w.t[i];
    }
    sdp += w.p[i];
    sdt += w.p[i] * w.t[i] * w.t[i];
  }
  if (have_sky) {
    // The sky estimate is common to all rows of the aperture: its error enters through the summed weights.
    const double* c = sky->cov.data() + static_cast<std::size_t>(x) * ncoef * ncoef;
    double q = 0;
    for (int k = 0; k < ncoef; ++k)
      for (int l = 0; l < ncoef; ++l) q += g[k] * c[k * ncoef + l] * g[l];
    q = std::max(q, 0.0);
    const double rf = sky->read_fraction[static_cast<std::size_t>(x)];
    const double cf = sky->cal_fraction.empty() ? 0.0 : sky->cal_fraction[static_cast<std::size_t>(x)];
    out.var_sky += std::max(1.0 - rf - cf, 0.0) * q;
    out.var_read += rf * q;
    out.var_cal += cf * q;
  }
  out.offset = s1 > 0 ? std::clamp(st / s1, -half_box, half_box) : kNaN;
  out.width = sdp > 0 ? std::sqrt(std::max(sdt / sdp - 1.0 / 12.0, 0.0)) : kNaN;
  out.peak = std::isfinite(peak) ? peak : kNaN;
  return out;
}

}  // namespace

DataProfile build_data_profile(const Image& im, const Trace& tr, const ApertureSky* sky, const ExtractConfig& cfg) {
  const long nx = im.nx(), ny = im.ny();
  DataProfile dp;
  dp.nx = nx;
  std::vector<double> yc(static_cast<std::size_t>(nx)), half(static_cast<std::size_t>(nx));
  double lo = 1e300, hi = -1e300;
  for (long x = 0; x < nx; ++x) {
    const auto i = static_cast<std::size_t>(x);
    yc[i] = tr.y(static_cast<double>(x));
    half[i] = cfg.optimal_halfwidth_sigma * std::max(tr.sigma(static_cast<double>(x)), 0.0);
    lo = std::min(lo, yc[i] - half[i]);
    hi = std::max(hi, yc[i] + half[i]);
  }
  dp.row0 = std::clamp(static_cast<long>(std::floor(lo)), 0L, ny);
  const long row1 = std::clamp(static_cast<long>(std::ceil(hi)) + 1, dp.row0, ny);
  dp.rows = row1 - dp.row0;
  const std::size_t npx = static_cast<std::size_t>(dp.rows * nx);
  dp.p.assign(npx, 0.0f);
  if (dp.rows <= 0) return dp;
  // Raw profile: sky-subtracted data over the column's flux. The flux comes from a Gaussian-profile fit with
  // outlier rejection (Horne's first pass), so a cosmic ray the mask missed neither spoils the normalising
  // sum nor enters the profile; each value is weighted by f²/V with the model variance V, so bright columns
  // count more and no weight follows a pixel's own noise.
  std::vector<double> raw(npx, 0.0), wt(npx, 0.0), fcol(static_cast<std::size_t>(nx), 0.0);
  auto idx = [&](long r, long x) { return static_cast<std::size_t>((r - dp.row0) * nx + x); };
  auto in_ap = [&](long r, long x) {
    return std::abs(static_cast<double>(r) - yc[static_cast<std::size_t>(x)]) <= half[static_cast<std::size_t>(x)];
  };
  ExtractConfig first = cfg;
  first.method = ExtractMethod::Optimal;
  ColumnWork work;
  for (long x = 0; x < nx; ++x) {
    const double y = yc[static_cast<std::size_t>(x)], sg = tr.sigma(static_cast<double>(x));
    if (!(sg > 0)) continue;
    const ColumnResult c = extract_column(im, x, y, sg, sky, first, work, [&](long r, double) {
      return trace::pixel_gaussian(static_cast<double>(r), y, sg);
    });
    if (c.fail != ColumnFail::None || !(c.flux > 0)) continue;
    fcol[static_cast<std::size_t>(x)] = c.flux;
    for (std::size_t i = 0; i < c.nrows; ++i) {
      const long r = c.row0 + static_cast<long>(i);
      if (r < dp.row0 || r >= row1 || !work.good[i] || work.rej[i] || !in_ap(r, x)) continue;
      raw[idx(r, x)] = work.d[i] / c.flux;
      wt[idx(r, x)] = c.flux * c.flux / work.v[i];
    }
  }
  // Local quadratic smoothing along x for every row (leave-one-out): unbiased for a profile that drifts smoothly across
  // the row (a curved trace), where a running mean would flatten its peak.
  const long hw = std::max(2, cfg.profile_smooth_px / 2);
  std::vector<double> smooth(npx, 0.0);
  auto smooth_pass = [&]() {
    for (long r = dp.row0; r < row1; ++r) {
      for (long x = 0; x < nx; ++x) {
        double s[5] = {0, 0, 0, 0, 0}, tt[3] = {0, 0, 0};
        const long x0 = std::max(0L, x - hw), x1 = std::min(nx - 1, x + hw);
        for (long xx = x0; xx <= x1; ++xx) {
          const double w = wt[idx(r, xx)];
          // Leave the column itself out: a profile that follows the column's own noise would weight its
          // upward fluctuations up and bias the flux high.
          if (w <= 0 || xx == x) continue;
          const double dx = static_cast<double>(xx - x) / static_cast<double>(hw);
          const double y = raw[idx(r, xx)];
          double pw = w;
          for (int k = 0; k < 5; ++k) {
            s[k] += pw;
            if (k < 3) tt[k] += pw * y;
            pw *= dx;
          }
        }
        double val = 0;
        if (s[0] > 0) {
          Eigen::Matrix3d a;
          a << s[0], s[1], s[2], s[1], s[2], s[3], s[2], s[3], s[4];
          Eigen::Vector3d b(tt[0], tt[1], tt[2]);
          const double det = a.determinant();
          if (std::abs(det) > 1e-12 * s[0] * s[0] * s[0]) {
            val = a.ldlt().solve(b)(0);
          } else {
            val = tt[0] / s[0];
          }
        }
        smooth[idx(r, x)] = val;
      }
    }
  };
  smooth_pass();
  // Outliers the first pass kept (e.g. at the aperture edge) would bend the profile: reject against the
  // first smooth pass, then redo.
  bool rejected = false;
  for (long r = dp.row0; r < row1; ++r)
    for (long x = 0; x < nx; ++x) {
      const auto i = idx(r, x);
      if (wt[i] <= 0) continue;
      if (std::abs(raw[i] - smooth[i]) * std::sqrt(wt[i]) > cfg.reject_sigma) wt[i] = 0, rejected = true;
    }
  if (rejected) smooth_pass();
  // Normalise with the signed sum, then clip negatives: clipping first and renormalising would lift the
  // noisy wings at the expense of the core and bias every flux high by the wings' mean positive excess.
  for (long x = 0; x < nx; ++x) {
    // Too few measured columns nearby (a masked stretch, a trace leaving the detector): the Gaussian of
    // the trace is a better profile than an extrapolated polynomial.
    int support = 0;
    const long rc = std::clamp(static_cast<long>(std::lround(yc[static_cast<std::size_t>(x)])), dp.row0, row1 - 1);
    for (long xx = std::max(0L, x - hw); xx <= std::min(nx - 1, x + hw); ++xx) support += wt[idx(rc, xx)] > 0;
    if (support < 8) {
      const double sg = tr.sigma(static_cast<double>(x));
      for (long r = dp.row0; r < row1; ++r)
        smooth[idx(r, x)] = in_ap(r, x) && sg > 0 ? trace::pixel_gaussian(static_cast<double>(r), yc[static_cast<std::size_t>(x)], sg) : 0.0;
    }
    double sum = 0;
    for (long r = dp.row0; r < row1; ++r) {
      const auto i = idx(r, x);
      const double v = in_ap(r, x) ? smooth[i] : 0.0;
      sum += v;
      smooth[i] = std::max(v, 0.0);
    }
    for (long r = dp.row0; r < row1; ++r) {
      const auto i = idx(r, x);
      dp.p[i] = sum > 0 ? static_cast<float>(smooth[i] / sum) : 0.0f;
    }
  }
  return dp;
}


SpectrumSet extract_spectra(const Image& im, const TraceSet& traces, const SkyModel* sky, const ExtractConfig& cfg,
                            const std::string& exposure, const mpi::Comm* group) {
  if (group && group->size() == 1) group = nullptr;
  im.check_shapes(exposure.empty() ? "image" : exposure);
  cfg.read_noise.check(im.ny(), im.nx());
  cfg.calibration_noise.check(im.ny(), im.nx());
  if (traces.nx != im.nx() || traces.ny != im.ny())
    throw DataError(fmt::format("image is {}x{} but the traces were measured on {}x{}", im.ny(), im.nx(), traces.ny,
                                traces.nx),
                    ErrorContext{.exposure = exposure});
  const bool use_sky = sky != nullptr && sky->method != SkyMethod::None;
  if (use_sky && sky->apertures.size() != traces.size())
    throw DataError(fmt::format("sky model has {} apertures but there are {} traces", sky->apertures.size(),
                                traces.size()),
                    ErrorContext{.exposure = exposure});
  const long nx = im.nx();
  const long na = static_cast<long>(traces.size());
  // Joint fit of all apertures per column when asked for, or (deblend auto) when there is no local sky
  // and the apertures' windows overlap: fibers packed closely.
  bool joint = cfg.method == ExtractMethod::Joint || cfg.deblend == Deblend::On;
  if (joint && use_sky)
    throw ConfigError("joint (deblended) extraction fits every aperture of a column without a local sky: use "
                      "sky method none (fiber mode) or extract.deblend = off",
                      ErrorContext{.keyword = "extract.deblend", .exposure = exposure});
  if (joint && cfg.profile != ProfileSource::Gaussian)
    throw ConfigError("joint (deblended) extraction models the apertures with the traces' Gaussian profiles: use "
                      "extract.profile = gaussian",
                      ErrorContext{.keyword = "extract.profile", .exposure = exposure});
  if (!joint && cfg.deblend == Deblend::Auto && !use_sky && apertures_overlap(traces, cfg)) {
    if (cfg.profile == ProfileSource::Gaussian)
      joint = true;
    else
      spdlog::warn("{}the apertures overlap but the data profile cannot be deblended: each is extracted alone and "
                   "picks up its neighbours' wings (use extract.profile = gaussian)",
                   exposure.empty() ? std::string() : exposure + ": ");
  }
  const ExtractMethod method =
      joint ? (cfg.method == ExtractMethod::Boxcar ? ExtractMethod::Boxcar : ExtractMethod::Joint) : cfg.method;
  std::vector<ColumnResult> joint_results;
  if (joint) {
    ExtractConfig jc = cfg;
    jc.method = method;
    if (group) {
      // A group shares the columns: each rank fits a band of them (every column is a problem of its own), and
      // every rank receives all the columns' results.
      const int me = group->rank();
      const long x0 = group->band_begin(nx, me), x1 = group->band_begin(nx, me + 1);
      std::vector<double> mine;
      mpi::all_or_throw(*group, [&] {
        detail::extract_joint(im, traces, jc, joint_results, x0, x1);
        mine.reserve(static_cast<std::size_t>(na * (x1 - x0)) * detail::kColumnValues);
        for (long a = 0; a < na; ++a)
          for (long x = x0; x < x1; ++x)
            detail::pack(joint_results[static_cast<std::size_t>(a * nx + x)], mine);
      });
      const std::vector<double> all = group->allgatherv(mine);
      const double* v = all.data();
      for (int r = 0; r < group->size(); ++r) {
        const long b0 = group->band_begin(nx, r), b1 = group->band_begin(nx, r + 1);
        for (long a = 0; a < na; ++a)
          for (long x = b0; x < b1; ++x) v = detail::unpack(v, joint_results[static_cast<std::size_t>(a * nx + x)]);
      }
    } else {
      detail::extract_joint(im, traces, jc, joint_results);
    }
  }
  SpectrumSet out(na, nx);
  // In a group, the apertures are dealt in bands to the ranks unless the joint fit already gave every rank every
  // column (then each rank assembles them all, a copy, and only the group's root speaks of them).
  const bool split_apertures = group && !joint;
  const bool speak = !group || split_apertures || group->is_root();
  const long a_begin = split_apertures ? group->band_begin(na, group->rank()) : 0;
  const long a_end = split_apertures ? group->band_begin(na, group->rank() + 1) : na;
  for (long a = 0; a < na; ++a) out.apertures[static_cast<std::size_t>(a)] = traces[static_cast<std::size_t>(a)].info;
  out.header.set("EXTMETH", to_string(method), "extraction method");
  out.header.set("DEBLEND", joint, "overlapping neighbours fitted jointly per column");
  out.header.set("EXTPROF", to_string(cfg.profile), "spatial profile of the optimal weights");
  out.header.set("SKYMETH", use_sky ? to_string(sky->method) : std::string("none"), "local sky method");
  ColumnWork work;
  std::vector<double> tmp_off, tmp_w, tmp_snr, tmp_sky;
  std::vector<std::pair<long, long>> nodata_columns;  // (NODATA columns, aperture) of apertures that have some
  auto extract_aperture = [&](long a) {
    const Trace& tr = traces[static_cast<std::size_t>(a)];
    const auto ai = static_cast<std::size_t>(a);
    ApertureDiagnostics& dg = out.diagnostics[ai];
    auto fail_all = [&](const std::string& why) {
      DataError e(why, ErrorContext{.exposure = exposure, .aperture = tr.info.name});
      for (long x = 0; x < nx; ++x) out.set_no_data(a, x);
      out.offset.row(a).setConstant(std::numeric_limits<float>::quiet_NaN());
      out.width.row(a).setConstant(std::numeric_limits<float>::quiet_NaN());
      out.peak.row(a).setConstant(std::numeric_limits<float>::quiet_NaN());
      out.masked_fraction.row(a).setConstant(1.0f);
      dg.status = e.what();
      dg.bad_columns = nx;
      if (!speak) return;
      if (tr.status == TraceStatus::Dead) spdlog::debug("{}", dg.status);
      else spdlog::warn("{}", dg.status);
    };
    if (!tr.usable()) {
      fail_all(fmt::format("not extracted: the trace is {}{}", to_string(tr.status),
                           tr.message.empty() ? "" : " (" + tr.message + ")"));
      return;
    }
    const ApertureSky* asky = use_sky ? &sky->apertures[ai] : nullptr;
    if (asky && !asky->message.empty()) {
      fail_all(fmt::format("not extracted: no usable sky ({})", asky->message));
      return;
    }
    DataProfile dprof;
    const bool data_profile = !joint && cfg.profile == ProfileSource::Data;
    if (data_profile) dprof = build_data_profile(im, tr, asky, cfg);
    long n_off = 0, n_masked = 0, n_nosky = 0, n_noprof = 0, n_rej = 0;
    double masked_sum = 0, peak_max = -std::numeric_limits<double>::infinity();
    tmp_off.clear(), tmp_w.clear(), tmp_snr.clear(), tmp_sky.clear();
    for (long x = 0; x < nx; ++x) {
      const double xd = static_cast<double>(x);
      const double yc = tr.y(xd), sg = tr.sigma(xd);
      ColumnResult c;
      if (joint) {
        c = joint_results[ai * static_cast<std::size_t>(nx) + static_cast<std::size_t>(x)];
      } else if (!(sg > 0) || !std::isfinite(yc)) {
        c.fail = ColumnFail::NoProfile;
      } else if (data_profile) {
        c = extract_column(im, x, yc, sg, asky, cfg, work, [&](long r, double) -> double {
          return r >= dprof.row0 && r < dprof.row0 + dprof.rows ? dprof.at(r, x) : 0.0;
        });
      } else {
        c = extract_column(im, x, yc, sg, asky, cfg, work,
                           [&](long r, double) { return trace::pixel_gaussian(static_cast<double>(r), yc, sg); });
      }
      if (c.fail != ColumnFail::None) {
        out.set_no_data(a, x);
        out.offset(a, x) = out.width(a, x) = out.peak(a, x) = std::numeric_limits<float>::quiet_NaN();
        out.masked_fraction(a, x) = 1.0f;
        switch (c.fail) {
          case ColumnFail::OffDetector: ++n_off; break;
          case ColumnFail::Masked: ++n_masked; break;
          case ColumnFail::NoSky: ++n_nosky; break;
          default: ++n_noprof; break;
        }
        continue;
      }
      out.flux(a, x) = static_cast<float>(c.flux);
      out.var_star(a, x) = static_cast<float>(c.var_star);
      out.var_sky(a, x) = static_cast<float>(c.var_sky);
      out.var_read(a, x) = static_cast<float>(c.var_read);
      out.var_cal(a, x) = static_cast<float>(c.var_cal);
      out.variance(a, x) = static_cast<float>(c.var_star + c.var_sky + c.var_read + c.var_cal);
      out.sky(a, x) = static_cast<float>(c.sky);
      out.offset(a, x) = static_cast<float>(c.offset);
      out.width(a, x) = static_cast<float>(data_profile ? c.width : sg);
      out.peak(a, x) = static_cast<float>(c.peak);
      out.masked_fraction(a, x) = static_cast<float>(c.masked);
      out.rejected(a, x) = static_cast<float>(c.rejected);
      n_rej += c.rejected;
      masked_sum += c.masked;
      if (std::isfinite(c.peak)) peak_max = std::max(peak_max, c.peak);
      if (std::isfinite(c.offset)) tmp_off.push_back(c.offset);
      tmp_w.push_back(data_profile ? c.width : sg);
      const double var = c.var_star + c.var_sky + c.var_read + c.var_cal;
      if (var > 0) tmp_snr.push_back(c.flux / std::sqrt(var));
      tmp_sky.push_back(c.sky);
    }
    const long n_good = nx - n_off - n_masked - n_nosky - n_noprof;
    dg.trace_offset_px = median_inplace(tmp_off);
    dg.width_px = median_inplace(tmp_w);
    dg.peak_e = std::isfinite(peak_max) ? peak_max : kNaN;
    dg.masked_fraction = n_good > 0 ? masked_sum / static_cast<double>(n_good) : 1.0;
    dg.rejected = n_rej;
    dg.snr_median = median_inplace(tmp_snr);
    dg.sky_median_e = median_inplace(tmp_sky);
    dg.bad_columns = nx - n_good;
    if (dg.bad_columns > 0) {
      DataError e(fmt::format("{} of {} columns NODATA ({} with the aperture off the detector, {} fully masked, "
                              "{} with empty sky windows, {} without a profile)",
                              dg.bad_columns, nx, n_off, n_masked, n_nosky, n_noprof),
                  ErrorContext{.exposure = exposure, .aperture = tr.info.name});
      dg.status = e.what();
      // Said once per exposure below: a filter's cut-off or a short detector gives every aperture NODATA columns.
      if (speak) spdlog::debug("{}", dg.status);
      nodata_columns.emplace_back(dg.bad_columns, a);
    }
  };
  // One warning for the apertures with NODATA columns, with the worst of them; each one's reason is in its
  // diagnostics (status).
  auto warn_nodata = [&] {
    if (!speak || nodata_columns.empty()) return;
    std::sort(nodata_columns.begin(), nodata_columns.end());
    const auto [worst, worst_a] = nodata_columns.back();
    const long median = nodata_columns[nodata_columns.size() / 2].first;
    spdlog::warn("{} of {} apertures{} have NODATA columns: median {}, most {} of {} ({}; every aperture's reason is in "
                 "its diagnostics status) [exposure {}]",
                 nodata_columns.size(), a_end - a_begin, split_apertures ? " extracted on this rank" : "", median,
                 worst, nx, out.diagnostics[static_cast<std::size_t>(worst_a)].status, exposure);
  };
  if (split_apertures) {
    mpi::all_or_throw(*group, [&] {
      for (long a = a_begin; a < a_end; ++a) extract_aperture(a);
    });
    share_aperture_bands(out, *group);
  } else {
    for (long a = a_begin; a < a_end; ++a) extract_aperture(a);
  }
  warn_nodata();
  return out;
}

void record_trace_shifts(SpectrumSet& sp, const std::vector<TraceShift>& shifts) {
  if (shifts.size() != sp.diagnostics.size())
    throw DataError(fmt::format("{} trace shifts for {} apertures", shifts.size(), sp.diagnostics.size()));
  for (std::size_t a = 0; a < shifts.size(); ++a) {
    if (!shifts[a].ok) continue;
    sp.diagnostics[a].shift_px = shifts[a].offset_px;
    sp.diagnostics[a].shift_err_px = shifts[a].offset_err_px;
    sp.diagnostics[a].width_scale = shifts[a].width_scale;
  }
}

}  // namespace kspecdr::extract
