#include "kspecdr/wavecal/peaks.hpp"

#include <fmt/format.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"

namespace kspecdr::wavecal {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr MaskPixel kCoreBadBits = kMaskBad | kMaskCosmic | kMaskNoData | kMaskRejected;

bool good(const Spectrum1D& s, std::size_t i) {
  return (s.mask[i] & (kCoreBadBits | kMaskSaturated)) == 0 && std::isfinite(s.flux[i]) &&
         std::isfinite(s.variance[i]) && s.variance[i] > 0.0;
}

}  // namespace

// Evaluated on a coarse grid and interpolated: the quartile changes slowly and a full running
// quartile per pixel would dominate the cost of peak finding.
std::vector<double> running_background(const Spectrum1D& s, int window) {
  const long n = static_cast<long>(s.size());
  const long half = std::max(3, window / 2);
  const long step = std::max(1L, half / 2);
  std::vector<double> gx, gy;
  std::vector<double> buf;
  for (long c = 0; c < n + step; c += step) {
    const long cc = std::min(c, n - 1);
    buf.clear();
    for (long i = std::max(0L, cc - half); i <= std::min(n - 1, cc + half); ++i)
      if (good(s, static_cast<std::size_t>(i))) buf.push_back(s.flux[static_cast<std::size_t>(i)]);
    if (buf.size() < 5) continue;
    const auto q = buf.begin() + static_cast<long>(buf.size() / 4);
    std::nth_element(buf.begin(), q, buf.end());
    gx.push_back(static_cast<double>(cc));
    gy.push_back(*q);
    if (cc == n - 1) break;
  }
  std::vector<double> bg(static_cast<std::size_t>(n), 0.0);
  if (gx.empty()) return bg;
  std::size_t k = 0;
  for (long i = 0; i < n; ++i) {
    const double x = static_cast<double>(i);
    while (k + 1 < gx.size() && gx[k + 1] < x) ++k;
    if (x <= gx.front()) bg[static_cast<std::size_t>(i)] = gy.front();
    else if (k + 1 >= gx.size()) bg[static_cast<std::size_t>(i)] = gy.back();
    else {
      const double t = (x - gx[k]) / (gx[k + 1] - gx[k]);
      bg[static_cast<std::size_t>(i)] = gy[k] * (1.0 - t) + gy[k + 1] * t;
    }
  }
  return bg;
}

namespace {

double phi(double z) { return 0.3989422804014327 * std::exp(-0.5 * z * z); }
double big_phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

struct GaussFit {
  double b = 0, a = 0, mu = 0, sigma = 0;
  double mu_err = kInf, a_err = kInf;
  bool ok = false;
};

/// Weighted Levenberg–Marquardt fit of b + A·∫pixel N(µ, σ) on pixels [lo, hi]. Pixel integration
/// (differences of Φ) makes the centre unbiased at any sub-pixel phase, which a sampled Gaussian is not.
GaussFit fit_gaussian(const Spectrum1D& s, long lo, long hi, double mu0, double sigma0, double b0) {
  GaussFit f;
  std::vector<double> x, y, w;
  for (long i = lo; i <= hi; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (!good(s, u)) continue;
    x.push_back(static_cast<double>(i));
    y.push_back(s.flux[u]);
    w.push_back(1.0 / s.variance[u]);
  }
  if (x.size() < 5) return f;
  Eigen::Vector4d p(b0, 0.0, mu0, sigma0);
  {
    double sum = 0;
    for (std::size_t i = 0; i < x.size(); ++i) sum += y[i] - b0;
    p[1] = std::max(sum, 1e-3);
  }
  auto model = [&](const Eigen::Vector4d& q, double xi, Eigen::Vector4d* grad) {
    const double zp = (xi + 0.5 - q[2]) / q[3], zm = (xi - 0.5 - q[2]) / q[3];
    const double g = big_phi(zp) - big_phi(zm);
    if (grad) {
      (*grad)[0] = 1.0;
      (*grad)[1] = g;
      (*grad)[2] = q[1] * (phi(zm) - phi(zp)) / q[3];
      (*grad)[3] = q[1] * (phi(zm) * zm - phi(zp) * zp) / q[3];
    }
    return q[0] + q[1] * g;
  };
  auto chi2 = [&](const Eigen::Vector4d& q) {
    double c = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double r = y[i] - model(q, x[i], nullptr);
      c += w[i] * r * r;
    }
    return c;
  };
  double lambda = 1e-3;
  double c0 = chi2(p);
  Eigen::Matrix4d JTJ;
  for (int it = 0; it < 50; ++it) {
    JTJ.setZero();
    Eigen::Vector4d JTr = Eigen::Vector4d::Zero();
    Eigen::Vector4d g;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double r = y[i] - model(p, x[i], &g);
      JTJ.noalias() += w[i] * g * g.transpose();
      JTr += w[i] * r * g;
    }
    bool improved = false;
    for (int tries = 0; tries < 10 && !improved; ++tries) {
      Eigen::Matrix4d A = JTJ;
      for (int k = 0; k < 4; ++k) A(k, k) *= 1.0 + lambda;
      const Eigen::Vector4d dp = A.ldlt().solve(JTr);
      Eigen::Vector4d q = p + dp;
      if (!(q[3] > 0.2) || !dp.allFinite()) {
        lambda *= 10;
        continue;
      }
      const double c1 = chi2(q);
      if (c1 <= c0) {
        const bool small = std::abs(dp[2]) < 1e-6 && std::abs(dp[3]) < 1e-6 * q[3];
        p = q;
        const double dc = c0 - c1;
        c0 = c1;
        lambda = std::max(lambda / 10, 1e-9);
        improved = true;
        if (small || dc < 1e-10 * (1.0 + c1)) it = 1000;
      } else {
        lambda *= 10;
      }
    }
    if (!improved) break;
  }
  // Covariance from the pixel variances alone (not rescaled by χ²): the centroid error is what the
  // noise model predicts, so a bad fit shows up in the wavelength residuals, not in inflated errors.
  JTJ.setZero();
  Eigen::Vector4d g;
  for (std::size_t i = 0; i < x.size(); ++i) {
    model(p, x[i], &g);
    JTJ.noalias() += w[i] * g * g.transpose();
  }
  Eigen::FullPivLU<Eigen::Matrix4d> lu(JTJ);
  if (!lu.isInvertible()) return f;
  const Eigen::Matrix4d cov = lu.inverse();
  f.b = p[0];
  f.a = p[1];
  f.mu = p[2];
  f.sigma = p[3];
  f.mu_err = std::sqrt(std::max(cov(2, 2), 0.0));
  f.a_err = std::sqrt(std::max(cov(1, 1), 0.0));
  f.ok = p.allFinite() && f.a > 0 && std::isfinite(f.mu_err);
  return f;
}

struct Candidate {
  long i;
  double signal;
};

std::vector<Candidate> candidates(const Spectrum1D& s, const std::vector<double>& bg, double min_snr) {
  const long n = static_cast<long>(s.size());
  std::vector<Candidate> out;
  for (long i = 1; i + 1 < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    // Saturated pixels are allowed here: a saturated line must be found to be flagged.
    if ((s.mask[u] & kCoreBadBits) || !std::isfinite(s.flux[u])) continue;
    const double v = s.flux[u] - bg[u];
    const double vl = s.flux[u - 1] - bg[u - 1], vr = s.flux[u + 1] - bg[u + 1];
    if (!(v > vl && v >= vr)) continue;
    double sig = 0, var = 0;
    bool ok = true;
    for (long k = i - 1; k <= i + 1; ++k) {
      const auto uk = static_cast<std::size_t>(k);
      if ((s.mask[uk] & kCoreBadBits) || !std::isfinite(s.variance[uk])) {
        ok = false;
        break;
      }
      sig += s.flux[uk] - bg[uk];
      var += s.variance[uk];
    }
    if (!ok || var <= 0) continue;
    if (sig / std::sqrt(var) >= min_snr) out.push_back({i, sig});
  }
  return out;
}

ArcPeak measure(const Spectrum1D& s, const std::vector<double>& bg, long i, double sigma0, long left_limit,
                long right_limit) {
  const long n = static_cast<long>(s.size());
  const long half = std::max(3L, static_cast<long>(std::ceil(3.0 * sigma0)));
  long lo = std::max(left_limit, i - half), hi = std::min(right_limit, i + half);
  ArcPeak pk;
  if (i - half < 0 || i + half > n - 1) pk.flags |= kPeakEdge;
  lo = std::max(lo, 0L);
  hi = std::min(hi, n - 1);
  const GaussFit f = fit_gaussian(s, lo, hi, static_cast<double>(i), sigma0, bg[static_cast<std::size_t>(i)]);
  pk.x_px = f.ok ? f.mu : static_cast<double>(i);
  pk.x_err_px = f.ok ? f.mu_err : kInf;
  pk.flux = f.a;
  pk.sigma_px = f.sigma;
  pk.background = f.b;
  pk.snr = f.ok && f.a_err > 0 ? f.a / f.a_err : 0.0;
  if (!f.ok || std::abs(f.mu - static_cast<double>(i)) > 1.5 || f.sigma > 4.0 * sigma0 + 2.0) pk.flags |= kPeakFitFailed;
  // Core: the pixels that carry most of the line's weight in the centroid.
  const long c0 = std::max(0L, static_cast<long>(std::floor(pk.x_px - 2.0 * sigma0)));
  const long c1 = std::min(n - 1, static_cast<long>(std::ceil(pk.x_px + 2.0 * sigma0)));
  for (long k = c0; k <= c1; ++k) {
    const MaskPixel m = s.mask[static_cast<std::size_t>(k)];
    if (m & kMaskSaturated) pk.flags |= kPeakSaturated;
    if (m & kCoreBadBits) pk.flags |= kPeakMasked;
  }
  return pk;
}

}  // namespace

void Spectrum1D::check(const std::string& what) const {
  if (flux.empty()) throw DataError(what + ": empty spectrum");
  if (variance.size() != flux.size() || mask.size() != flux.size())
    throw DataError(fmt::format("{}: flux, variance and mask lengths differ ({}, {}, {})", what, flux.size(),
                                variance.size(), mask.size()));
}

Spectrum1D spectrum_row(const SpectrumSet& s, Eigen::Index aperture) {
  if (aperture < 0 || aperture >= s.naper())
    throw DataError(fmt::format("aperture {} outside 0..{}", aperture, s.naper() - 1));
  Spectrum1D r;
  const auto n = static_cast<std::size_t>(s.npix());
  r.flux.resize(n);
  r.variance.resize(n);
  r.mask.resize(n);
  for (Eigen::Index x = 0; x < s.npix(); ++x) {
    const auto u = static_cast<std::size_t>(x);
    r.flux[u] = s.flux(aperture, x);
    r.variance[u] = s.variance(aperture, x);
    r.mask[u] = s.mask(aperture, x);
  }
  return r;
}

Spectrum1D combine_spectra(const std::vector<Spectrum1D>& spectra) {
  if (spectra.empty()) throw DataError("no spectrum to combine");
  for (const auto& s : spectra) s.check("combine_spectra input");
  const std::size_t n = spectra.front().size();
  for (const auto& s : spectra)
    if (s.size() != n) throw DataError(fmt::format("combine_spectra: lengths differ ({} and {})", n, s.size()));
  Spectrum1D out;
  out.flux.assign(n, 0.0);
  out.variance.assign(n, kInf);
  out.mask.assign(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    double sw = 0, swf = 0;
    MaskPixel all = static_cast<MaskPixel>(~MaskPixel{0}), sat = 0;
    for (const auto& s : spectra) {
      sat |= static_cast<MaskPixel>(s.mask[i] & kMaskSaturated);
      all &= s.mask[i];
      if (s.mask[i] & ~kMaskSaturated) continue;
      if (!(s.variance[i] > 0.0) || !std::isfinite(s.variance[i]) || !std::isfinite(s.flux[i])) continue;
      sw += 1.0 / s.variance[i];
      swf += s.flux[i] / s.variance[i];
    }
    if (sw > 0) {
      out.flux[i] = swf / sw;
      out.variance[i] = 1.0 / sw;
      out.mask[i] = sat;
    } else {
      out.mask[i] = static_cast<MaskPixel>(all | sat | kMaskNoData);
    }
  }
  return out;
}

std::vector<ArcPeak> find_peaks(const Spectrum1D& s, const PeakConfig& cfg) {
  s.check("find_peaks");
  const long n = static_cast<long>(s.size());
  const std::vector<double> bg = running_background(s, cfg.background_window_px);
  std::vector<Candidate> cand = candidates(s, bg, cfg.min_snr);
  std::sort(cand.begin(), cand.end(), [](const Candidate& a, const Candidate& b) { return a.signal > b.signal; });
  if (static_cast<int>(cand.size()) > cfg.max_peaks) cand.resize(static_cast<std::size_t>(cfg.max_peaks));

  double sigma0 = cfg.sigma_guess_px;
  if (!(sigma0 > 0)) {
    // Width from the brightest unsaturated, isolated lines, fitted with a generous window.
    std::vector<double> widths;
    for (const auto& c : cand) {
      if (widths.size() >= 25) break;
      bool isolated = true;
      for (const auto& o : cand)
        if (o.i != c.i && std::abs(o.i - c.i) < 12) isolated = false;
      if (!isolated) continue;
      const ArcPeak p = measure(s, bg, c.i, 2.0, 0, n - 1);
      if (p.flags == 0 && p.sigma_px > 0.3 && p.sigma_px < 10.0) widths.push_back(p.sigma_px);
    }
    if (widths.empty()) sigma0 = 1.5;
    else {
      std::nth_element(widths.begin(), widths.begin() + static_cast<long>(widths.size() / 2), widths.end());
      sigma0 = widths[widths.size() / 2];
    }
  }

  std::sort(cand.begin(), cand.end(), [](const Candidate& a, const Candidate& b) { return a.i < b.i; });
  std::vector<ArcPeak> out;
  out.reserve(cand.size());
  const double blend_px = cfg.blend_separation_sigma * sigma0;
  for (std::size_t k = 0; k < cand.size(); ++k) {
    // The fit window stops half-way to a neighbouring line so that its wing does not pull the centre.
    const long left = k > 0 ? (cand[k - 1].i + cand[k].i + 1) / 2 : 0;
    const long right = k + 1 < cand.size() ? (cand[k].i + cand[k + 1].i) / 2 : n - 1;
    ArcPeak p = measure(s, bg, cand[k].i, sigma0, left, right);
    if ((k > 0 && static_cast<double>(cand[k].i - cand[k - 1].i) < blend_px) ||
        (k + 1 < cand.size() && static_cast<double>(cand[k + 1].i - cand[k].i) < blend_px))
      p.flags |= kPeakBlended;
    out.push_back(p);
  }
  const double med = median_sigma(out);
  if (std::isfinite(med))
    for (auto& p : out)
      if (p.sigma_px > cfg.blend_width_factor * med) p.flags |= kPeakBlended;
  return out;
}

double median_sigma(const std::vector<ArcPeak>& peaks) {
  std::vector<double> w;
  for (const auto& p : peaks)
    if (p.usable()) w.push_back(p.sigma_px);
  if (w.empty()) return kNaN;
  std::nth_element(w.begin(), w.begin() + static_cast<long>(w.size() / 2), w.end());
  return w[w.size() / 2];
}

}  // namespace kspecdr::wavecal
