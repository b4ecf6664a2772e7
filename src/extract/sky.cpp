#include "kspecdr/extract/sky.hpp"

#include "kspecdr/core/stats.hpp"
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <utility>

#include "kspecdr/core/error.hpp"

namespace kspecdr::extract {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMaxCoef = 4;  // polynomial order ≤ 3: fixed-size buffers, no heap traffic per column
using SmallMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, 0, kMaxCoef, kMaxCoef>;
using SmallVec = Eigen::Matrix<double, Eigen::Dynamic, 1, 0, kMaxCoef, 1>;


/// Variance of the median of n Gaussian values of variance 1. The large-n limit is π/(2n); below it the
/// correction follows from simulated samples (even n average the two middle values and do better).
double median_variance_factor(std::size_t n) {
  const double nn = static_cast<double>(n);
  if (n <= 2) return 1.0 / nn;
  const double a = (n % 2 == 0) ? 1.4 - 1.6 / nn : 0.36 + 0.35 / nn;
  return 0.5 * std::numbers::pi / nn * (1.0 - a / nn);
}

inline void powers(double u, int n, double* out) {
  double p = 1.0;
  for (int k = 0; k < n; ++k) out[k] = p, p *= u;
}
}  // namespace

std::string to_string(SkyMethod m) {
  switch (m) {
    case SkyMethod::None: return "none";
    case SkyMethod::Median: return "median";
    case SkyMethod::ClippedPoly: return "poly";
  }
  return "unknown";
}

SkyMethod sky_method_from_string(const std::string& s) {
  if (s == "none") return SkyMethod::None;
  if (s == "median") return SkyMethod::Median;
  if (s == "poly" || s == "polynomial") return SkyMethod::ClippedPoly;
  throw ConfigError(fmt::format("sky method '{}' is not one of: none, median, poly", s),
                    ErrorContext{.keyword = "sky.method"});
}

void ReadNoise::check(Eigen::Index ny, Eigen::Index nx) const {
  if (map_e.size() && (map_e.rows() != ny || map_e.cols() != nx))
    throw ConfigError(fmt::format("read-noise map is {}x{} but the image is {}x{}", map_e.rows(), map_e.cols(), ny, nx));
  if (!map_e.size() && !(value_e >= 0))
    throw ConfigError(fmt::format("read noise {} e- is not a non-negative number", value_e));
}

void CalibrationNoise::check(Eigen::Index ny, Eigen::Index nx) const {
  for (const auto& [name, m] : {std::pair{"flat relative variance", &flat_relvar}, std::pair{"bias variance", &bias_var}}) {
    if (!m->size()) continue;
    if (m->rows() != ny || m->cols() != nx)
      throw ConfigError(fmt::format("{} map is {}x{} but the image is {}x{}", name, m->rows(), m->cols(), ny, nx));
    // One branch-free pass (v >= 0 is false for NaN; v <= max for +inf): this runs for every exposure.
    const float* v = m->data();
    bool ok = true;
    for (Eigen::Index i = 0; i < m->size(); ++i) ok &= (v[i] >= 0.0f) & (v[i] <= std::numeric_limits<float>::max());
    if (!ok)
      throw ConfigError(fmt::format("{} map holds negative or non-finite values", name));
  }
}

double ApertureSky::value(long x, double t) const {
  if (x < 0 || static_cast<std::size_t>(x) >= ok.size() || !ok[static_cast<std::size_t>(x)]) return kNaN;
  double b[kMaxCoef];
  powers(t / kSkyScalePx, ncoef, b);
  double s = 0;
  const double* c = coef.data() + static_cast<std::size_t>(x) * ncoef;
  for (int k = 0; k < ncoef; ++k) s += c[k] * b[k];
  return s;
}

double ApertureSky::variance(long x, double t) const {
  if (x < 0 || static_cast<std::size_t>(x) >= ok.size() || !ok[static_cast<std::size_t>(x)]) return kNaN;
  double b[kMaxCoef];
  powers(t / kSkyScalePx, ncoef, b);
  const double* c = cov.data() + static_cast<std::size_t>(x) * ncoef * ncoef;
  double s = 0;
  for (int k = 0; k < ncoef; ++k)
    for (int l = 0; l < ncoef; ++l) s += b[k] * c[k * ncoef + l] * b[l];
  return s;
}

SkyModel fit_slit_sky(const Image& im, const TraceSet& traces, const SkyConfig& cfg, const ReadNoise& rn,
                      const CalibrationNoise& cal, const std::string& exposure) {
  im.check_shapes("sky image");
  rn.check(im.ny(), im.nx());
  cal.check(im.ny(), im.nx());
  if (traces.nx != im.nx() || traces.ny != im.ny())
    throw DataError(fmt::format("image is {}x{} but the traces were measured on {}x{}", im.ny(), im.nx(), traces.ny,
                                traces.nx),
                    ErrorContext{.exposure = exposure});
  if (cfg.method == SkyMethod::ClippedPoly && (cfg.poly_order < 0 || cfg.poly_order >= kMaxCoef))
    throw ConfigError(fmt::format("sky polynomial order {} is outside 0..{}", cfg.poly_order, kMaxCoef - 1),
                      ErrorContext{.keyword = "sky.poly_order"});
  const long nx = im.nx(), ny = im.ny();
  SkyModel model;
  model.method = cfg.method;
  model.sky = ImageArray::Zero(ny, nx);
  model.variance = ImageArray::Zero(ny, nx);
  model.windows = MaskArray::Zero(ny, nx);
  model.apertures.resize(traces.size());
  if (cfg.method == SkyMethod::None) return model;

  const int ncoef = cfg.method == SkyMethod::Median ? 1 : cfg.poly_order + 1;
  // Window edges relative to the trace centre, as (from, to) pairs; the distance may scale with σ(x).
  std::vector<SkyRegion> regions;
  std::vector<double> us, ds, rn2s, vs, tmp;
  std::vector<unsigned char> keep;
  std::vector<long> rows;
  // Variance of window pixel i for a model sky level m: photons, read noise, master bias and flat noise.
  auto calvar = [&](std::size_t i, long x, double m) { return cal.variance(rows[i], x, m); };
  auto pixvar = [&](std::size_t i, long x, double m) { return std::max(m, 0.0) + rn2s[i] + calvar(i, x, m); };
  for (std::size_t a = 0; a < traces.size(); ++a) {
    const Trace& tr = traces[a];
    ApertureSky& as = model.apertures[a];
    as.ncoef = ncoef;
    as.coef.assign(static_cast<std::size_t>(nx) * ncoef, 0.0);
    as.cov.assign(static_cast<std::size_t>(nx) * ncoef * ncoef, 0.0);
    as.ok.assign(static_cast<std::size_t>(nx), 0);
    as.read_fraction.assign(static_cast<std::size_t>(nx), 0.0f);
    as.cal_fraction.assign(static_cast<std::size_t>(nx), 0.0f);
    if (!tr.usable()) {
      as.message = fmt::format("no sky: the trace is {} ({})", to_string(tr.status), tr.message);
      continue;
    }
    std::vector<double> npix_per_col;
    npix_per_col.reserve(static_cast<std::size_t>(nx));
    for (long x = 0; x < nx; ++x) {
      const double xd = static_cast<double>(x);
      const double yc = tr.y(xd), sg = tr.sigma(xd);
      regions.clear();
      if (!cfg.regions.empty()) {
        regions = cfg.regions;
      } else {
        const double d = cfg.distance_px > 0 ? cfg.distance_px : cfg.distance_sigma * std::max(sg, 0.0);
        regions.push_back({-d - cfg.width_px, -d});
        regions.push_back({d, d + cfg.width_px});
      }
      double tmin = 0, tmax = 0;
      for (auto& r : regions) tmin = std::min(tmin, r.from_px), tmax = std::max(tmax, r.to_px);
      us.clear(), ds.clear(), rn2s.clear(), rows.clear();
      const long r0 = std::max(0L, static_cast<long>(std::ceil(yc + tmin)));
      const long r1 = std::min(ny - 1, static_cast<long>(std::floor(yc + tmax)));
      for (long r = r0; r <= r1; ++r) {
        const double t = static_cast<double>(r) - yc;
        bool in = false;
        for (auto& reg : regions) in = in || (t >= reg.from_px && t < reg.to_px);
        if (!in) continue;
        bool excluded = (im.mask(r, x) & static_cast<MaskPixel>(~kMaskInterpolated)) != 0 || !std::isfinite(im.data(r, x));
        for (std::size_t b = 0; b < traces.size() && !excluded; ++b) {
          if (b == a || traces[b].centre.coeffs.empty()) continue;
          const double yb = traces[b].y(xd), sb = traces[b].sigma(xd);
          excluded = std::abs(static_cast<double>(r) - yb) < cfg.exclusion_sigma * std::max(sb, 0.5);
        }
        if (excluded) {
          model.windows(r, x) = 2;
          continue;
        }
        us.push_back(t / ApertureSky::kSkyScalePx);
        ds.push_back(im.data(r, x));
        rn2s.push_back(rn.variance(r, x));
        rows.push_back(r);
      }
      const std::size_t n = ds.size();
      npix_per_col.push_back(static_cast<double>(n));
      if (n < static_cast<std::size_t>(std::max(cfg.min_pixels, ncoef + 1))) {
        ++as.n_empty;
        continue;
      }
      tmp = ds;
      const double med = median_inplace(tmp);
      double* coef = as.coef.data() + static_cast<std::size_t>(x) * ncoef;
      double* cov = as.cov.data() + static_cast<std::size_t>(x) * ncoef * ncoef;
      keep.assign(n, 1);
      if (cfg.method == SkyMethod::Median) {
        // The sky photons follow the model level, not each pixel's noisy value.
        double vmean = 0;
        for (std::size_t i = 0; i < n; ++i) vmean += pixvar(i, x, med);
        vmean /= static_cast<double>(n);
        coef[0] = med;
        cov[0] = vmean * median_variance_factor(n);
      } else {
        vs.assign(n, 0.0);
        for (std::size_t i = 0; i < n; ++i) vs[i] = std::max(pixvar(i, x, med), 1e-6);
        SmallMat ata(ncoef, ncoef);
        SmallVec atb(ncoef), c(ncoef);
        double bas[kMaxCoef];
        for (int round = 0; round <= cfg.clip_iterations + 1; ++round) {
          ata.setZero();
          atb.setZero();
          int ng = 0;
          for (std::size_t i = 0; i < n; ++i) {
            if (!keep[i]) continue;
            powers(us[i], ncoef, bas);
            const double w = 1.0 / vs[i];
            for (int k = 0; k < ncoef; ++k) {
              atb(k) += w * bas[k] * ds[i];
              for (int l = 0; l < ncoef; ++l) ata(k, l) += w * bas[k] * bas[l];
            }
            ++ng;
          }
          if (ng < ncoef + 1) break;
          c = ata.ldlt().solve(atb);
          // Model variances for the next round's weights and the rejection test.
          double worst = 0;
          for (std::size_t i = 0; i < n; ++i) {
            powers(us[i], ncoef, bas);
            double m = 0;
            for (int k = 0; k < ncoef; ++k) m += c(k) * bas[k];
            vs[i] = std::max(pixvar(i, x, m), 1e-6);
            if (keep[i]) worst = std::max(worst, std::abs(ds[i] - m) / std::sqrt(vs[i]));
          }
          bool changed = false;
          if (round >= 1 && round <= cfg.clip_iterations && worst > cfg.clip_sigma) {
            for (std::size_t i = 0; i < n; ++i) {
              if (!keep[i]) continue;
              powers(us[i], ncoef, bas);
              double m = 0;
              for (int k = 0; k < ncoef; ++k) m += c(k) * bas[k];
              const double r = std::abs(ds[i] - m) / std::sqrt(vs[i]);
              if (r > cfg.clip_sigma && r >= 0.5 * worst) keep[i] = 0, changed = true, ++as.n_rejected;
            }
          }
          if (round >= 1 && !changed) break;
        }
        int ng = 0;
        for (auto k : keep) ng += k;
        if (ng < ncoef + 1) {
          ++as.n_empty;
          continue;
        }
        // Covariance with the final model weights.
        ata.setZero();
        for (std::size_t i = 0; i < n; ++i) {
          if (!keep[i]) continue;
          powers(us[i], ncoef, bas);
          for (int k = 0; k < ncoef; ++k)
            for (int l = 0; l < ncoef; ++l) ata(k, l) += bas[k] * bas[l] / vs[i];
        }
        const SmallMat ci = ata.inverse();
        for (int k = 0; k < ncoef; ++k) {
          coef[k] = c(k);
          for (int l = 0; l < ncoef; ++l) cov[k * ncoef + l] = ci(k, l);
        }
      }
      as.ok[static_cast<std::size_t>(x)] = 1;
      {
        double srn = 0, scal = 0, sv = 0;
        for (std::size_t i = 0; i < n; ++i) {
          if (!keep[i]) continue;
          const double m = as.value(x, us[i] * ApertureSky::kSkyScalePx);
          srn += rn2s[i];
          scal += calvar(i, x, m);
          sv += pixvar(i, x, m);
        }
        as.read_fraction[static_cast<std::size_t>(x)] = sv > 0 ? static_cast<float>(srn / sv) : 0.0f;
        as.cal_fraction[static_cast<std::size_t>(x)] = sv > 0 ? static_cast<float>(scal / sv) : 0.0f;
      }
      for (std::size_t i = 0; i < n; ++i) model.windows(rows[i], x) = keep[i] ? 1 : 2;
      // The 2D model over the whole zone the windows span.
      const long z0 = std::max(0L, static_cast<long>(std::ceil(yc + tmin)));
      const long z1 = std::min(ny - 1, static_cast<long>(std::floor(yc + tmax)));
      for (long r = z0; r <= z1; ++r) {
        const double t = static_cast<double>(r) - yc;
        model.sky(r, x) = static_cast<float>(as.value(x, t));
        model.variance(r, x) = static_cast<float>(as.variance(x, t));
      }
    }
    as.median_npix = median_inplace(npix_per_col);
    if (as.n_empty == nx) {
      const std::string where =
          !cfg.regions.empty()  ? fmt::format("{} explicit regions", cfg.regions.size())
          : cfg.distance_px > 0 ? fmt::format("windows {} px wide at {} px", cfg.width_px, cfg.distance_px)
                                : fmt::format("windows {} px wide at {} sigma", cfg.width_px, cfg.distance_sigma);
      DataError e(fmt::format("the sky windows are empty in every column (fewer than {} good pixels in {}, off the "
                              "detector, masked, or within {} sigma of another trace)",
                              cfg.min_pixels, where, cfg.exclusion_sigma),
                  ErrorContext{.exposure = exposure, .aperture = tr.info.name});
      as.message = e.what();
      spdlog::warn("{}", as.message);
    } else if (as.n_empty > 0) {
      spdlog::debug("aperture {}: sky windows empty in {} of {} columns", tr.info.name, as.n_empty, nx);
    }
  }
  return model;
}

Image subtract_sky(const Image& im, const SkyModel& sky) {
  Image out = im;
  if (sky.sky.rows() != im.ny() || sky.sky.cols() != im.nx()) return out;
  out.data -= sky.sky;
  out.variance += sky.variance;
  return out;
}

FiberThroughput fiber_throughput(const SpectrumSet& fl) {
  fl.check_shapes("flat spectra");
  const long na = fl.naper(), np = fl.npix();
  FiberThroughput out;
  out.throughput.assign(static_cast<std::size_t>(na), kNaN);
  out.error.assign(static_cast<std::size_t>(na), kNaN);
  auto good = [&](long a, long p) {
    return fl.mask(a, p) == 0 && std::isfinite(fl.flux(a, p)) && std::isfinite(fl.variance(a, p)) &&
           fl.apertures[static_cast<std::size_t>(a)].type != aperture_type::kUnused;
  };
  // The reference spectrum: per pixel, the median over the lit fibers of flux / throughput. The first
  // round uses throughput 1; the second divides by the first round's estimates, so that the median is
  // taken over values of one level and is not an order statistic of fibers with different throughputs
  // (which biases the estimates by a fraction of the per-pixel noise).
  std::vector<double> ref(static_cast<std::size_t>(np), kNaN), col, ratio;
  std::vector<double> tput(static_cast<std::size_t>(na), 1.0);
  for (int round = 0; round < 2; ++round) {
    for (long p = 0; p < np; ++p) {
      col.clear();
      for (long a = 0; a < na; ++a) {
        const double ta = tput[static_cast<std::size_t>(a)];
        if (good(a, p) && fl.flux(a, p) > 0 && std::isfinite(ta) && ta > 0) col.push_back(fl.flux(a, p) / ta);
      }
      ref[static_cast<std::size_t>(p)] = col.empty() ? kNaN : median_inplace(col);
    }
    for (long a = 0; a < na; ++a) {
      ratio.clear();
      for (long p = 0; p < np; ++p) {
        const double r = ref[static_cast<std::size_t>(p)];
        if (good(a, p) && r > 0) ratio.push_back(fl.flux(a, p) / r);
      }
      if (ratio.size() < 3) {
        tput[static_cast<std::size_t>(a)] = kNaN;
        continue;
      }
      const double med = median_inplace(ratio);
      for (auto& v : ratio) v = std::abs(v - med);
      const double mad = 1.4826 * median_inplace(ratio);
      tput[static_cast<std::size_t>(a)] = med;
      out.error[static_cast<std::size_t>(a)] = 1.2533 * mad / std::sqrt(static_cast<double>(ratio.size()));
    }
    // Fibers without light (e.g. broken, or under 5 % of the typical one) drop out of the reference.
    std::vector<double> tt;
    for (double v : tput)
      if (std::isfinite(v)) tt.push_back(v);
    const double typical = median_inplace(tt);
    for (auto& v : tput)
      if (!(v > 0.05 * typical)) v = kNaN;
  }
  out.throughput = tput;
  // Normalise so that the median lit fiber has throughput 1; fibers without light stay NaN.
  std::vector<double> lit;
  for (long a = 0; a < na; ++a) {
    const double t = out.throughput[static_cast<std::size_t>(a)];
    if (std::isfinite(t) && t > 0) lit.push_back(t);
    else out.throughput[static_cast<std::size_t>(a)] = kNaN;
  }
  if (lit.empty()) throw DataError("no fiber has light in the flat-field spectra: fiber throughputs are unknown");
  const double norm = median_inplace(lit);
  for (long a = 0; a < na; ++a) {
    out.throughput[static_cast<std::size_t>(a)] /= norm;
    out.error[static_cast<std::size_t>(a)] /= norm;
  }
  return out;
}

MasterSky combine_master_sky(const SpectrumSet& sp, const std::vector<double>& thr, const std::vector<bool>& is_sky,
                             double clip_sigma, int min_fibers) {
  sp.check_shapes("spectra");
  const long na = sp.naper(), np = sp.npix();
  if (thr.size() != static_cast<std::size_t>(na) || is_sky.size() != static_cast<std::size_t>(na))
    throw DataError(fmt::format("{} spectra but {} throughputs and {} sky flags", na, thr.size(), is_sky.size()));
  std::vector<long> fibers;
  for (long a = 0; a < na; ++a)
    if (is_sky[static_cast<std::size_t>(a)] && std::isfinite(thr[static_cast<std::size_t>(a)]) &&
        thr[static_cast<std::size_t>(a)] > 0)
      fibers.push_back(a);
  if (static_cast<int>(fibers.size()) < min_fibers)
    throw DataError(fmt::format("{} usable sky fibers (with a known throughput) but the master sky needs {}",
                                fibers.size(), min_fibers));
  MasterSky ms;
  ms.flux.assign(static_cast<std::size_t>(np), 0.0);
  ms.variance.assign(static_cast<std::size_t>(np), std::numeric_limits<double>::infinity());
  ms.mask.assign(static_cast<std::size_t>(np), kMaskNoData);
  ms.n_used.assign(static_cast<std::size_t>(np), 0);
  std::vector<double> v, e, tmp;
  std::vector<unsigned char> keep;
  for (long p = 0; p < np; ++p) {
    v.clear(), e.clear();
    for (long a : fibers) {
      const double t = thr[static_cast<std::size_t>(a)];
      const double f = sp.flux(a, p), var = sp.variance(a, p);
      if (sp.mask(a, p) != 0 || !std::isfinite(f) || !(var > 0) || !std::isfinite(var)) continue;
      v.push_back(f / t);
      e.push_back(std::sqrt(var) / t);
    }
    if (v.empty()) continue;
    keep.assign(v.size(), 1);
    // Reject against the median (robust to a star or cosmic in one sky fiber), then refine against the mean.
    tmp = v;
    double centre = median_inplace(tmp), mean = centre, var_mean = 0;
    for (int it = 0; it < 5; ++it) {
      bool changed = false;
      for (std::size_t i = 0; i < v.size(); ++i) {
        const bool k = std::abs(v[i] - centre) <= clip_sigma * e[i];
        changed = changed || (k != static_cast<bool>(keep[i]));
        keep[i] = k;
      }
      double sw = 0, swx = 0;
      for (std::size_t i = 0; i < v.size(); ++i)
        if (keep[i]) sw += 1.0 / (e[i] * e[i]), swx += v[i] / (e[i] * e[i]);
      if (!(sw > 0)) break;
      mean = swx / sw;
      var_mean = 1.0 / sw;
      if (!changed && it > 0) break;
      centre = mean;
    }
    int n = 0;
    for (auto k : keep) n += k;
    if (n == 0) continue;
    const auto i = static_cast<std::size_t>(p);
    ms.flux[i] = mean;
    ms.variance[i] = var_mean;
    ms.mask[i] = 0;
    ms.n_used[i] = n;
  }
  return ms;
}

void subtract_master_sky(SpectrumSet& sp, const MasterSky& ms, const std::vector<double>& thr) {
  sp.check_shapes("spectra");
  const long na = sp.naper(), np = sp.npix();
  if (ms.flux.size() != static_cast<std::size_t>(np) || thr.size() != static_cast<std::size_t>(na))
    throw DataError(fmt::format("master sky of {} pixels and {} throughputs for {} spectra of {} pixels",
                                ms.flux.size(), thr.size(), na, np));
  for (long a = 0; a < na; ++a) {
    const double t = thr[static_cast<std::size_t>(a)];
    for (long p = 0; p < np; ++p) {
      const auto i = static_cast<std::size_t>(p);
      if (sp.mask(a, p) & kMaskNoData) continue;
      if (ms.mask[i] != 0 || !(t > 0) || !std::isfinite(t)) {
        sp.set_no_data(a, p);
        continue;
      }
      const double s = t * ms.flux[i], vs = t * t * ms.variance[i];
      // Without a local sky the extraction counted the sky photons as the aperture's own light: move
      // their share of the photon variance from the star to the sky component.
      const double total = sp.flux(a, p);
      const double share = total > 0 ? std::clamp(s / total, 0.0, 1.0) : 0.0;
      const double moved = share * sp.var_star(a, p);
      sp.var_star(a, p) = static_cast<float>(sp.var_star(a, p) - moved);
      sp.var_sky(a, p) = static_cast<float>(sp.var_sky(a, p) + moved);
      sp.flux(a, p) = static_cast<float>(sp.flux(a, p) - s);
      sp.sky(a, p) = static_cast<float>(sp.sky(a, p) + s);
      sp.var_sky(a, p) = static_cast<float>(sp.var_sky(a, p) + vs);
      sp.variance(a, p) = static_cast<float>(sp.variance(a, p) + vs);
    }
  }
}

}  // namespace kspecdr::extract
