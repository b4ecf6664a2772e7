// Sky and extraction on synthetic frames built here: Gaussian profiles integrated
// over pixels, curved traces with varying width, sky continuum and bright lines,
// Poisson and read noise (each switchable), cosmic rays. Tolerances follow from
// the number of samples: a mean of n unit pulls has σ = 1/√n, a variance
// estimated from n samples has relative σ = √(2/n).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/extract/sky.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/trace/profile.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::extract;

namespace {

struct StarSpec {
  double y0 = 30.0, tilt = 1.0, curv = 1.5;            // y_c = y0 + tilt·u + curv·u², u ∈ [-1, 1]
  double sigma0 = 1.8, sigma_slope = 0.08, sigma_curv = 0.05;
  double flux = 5000.0;                                // e- per column (continuum)
  double line_depth = 0.3;                             // absorption lines, so the spectrum is not flat
  double centre(double x, long nx) const {
    const double u = 2.0 * x / static_cast<double>(nx - 1) - 1.0;
    return y0 + tilt * u + curv * u * u;
  }
  double sigma(double x, long nx) const {
    const double u = 2.0 * x / static_cast<double>(nx - 1) - 1.0;
    return sigma0 * (1.0 + sigma_slope * u + sigma_curv * u * u);
  }
  double counts(double x) const {
    return flux * (1.0 - line_depth * std::exp(-0.5 * std::pow((std::fmod(x, 97.0) - 48.0) / 2.0, 2)));
  }
};

struct Noise {
  bool star = true, sky = true, read = true;
};

/// Expected electrons per pixel, split by source, and the truth per star and column.
struct Scene {
  long nx, ny;
  double read_noise = 4.0;
  ImageArrayD star_e, sky_e;
  std::vector<StarSpec> stars;
  std::vector<std::vector<double>> true_counts;

  Scene(long nx_, long ny_) : nx(nx_), ny(ny_), star_e(ImageArrayD::Zero(ny_, nx_)), sky_e(ImageArrayD::Zero(ny_, nx_)) {}

  Scene& add_star(const StarSpec& s) {
    stars.push_back(s);
    std::vector<double> truth(static_cast<std::size_t>(nx));
    for (long x = 0; x < nx; ++x) {
      const double xd = static_cast<double>(x), yc = s.centre(xd, nx), sg = s.sigma(xd, nx), f = s.counts(xd);
      truth[static_cast<std::size_t>(x)] = f;
      for (long r = std::max(0L, static_cast<long>(yc - 10 * sg)); r <= std::min(ny - 1, static_cast<long>(yc + 10 * sg)); ++r)
        star_e(r, x) += f * trace::pixel_gaussian(static_cast<double>(r), yc, sg);
    }
    true_counts.push_back(std::move(truth));
    return *this;
  }
  /// Sky continuum plus Gaussian lines (LSF σ 1.1 px) of `line_peak` e-/px, with a gradient along y.
  Scene& add_sky(double continuum, double line_peak, double gradient_per_px = 0.0) {
    for (long x = 0; x < nx; ++x) {
      double s = continuum;
      for (double xl = 37.0; xl < static_cast<double>(nx); xl += 151.0)
        s += line_peak * std::exp(-0.5 * std::pow((static_cast<double>(x) - xl) / 1.1, 2));
      for (long r = 0; r < ny; ++r)
        sky_e(r, x) += s * (1.0 + gradient_per_px * (static_cast<double>(r) - 0.5 * static_cast<double>(ny)));
    }
    return *this;
  }
  double sky_per_px(long r, long x) const { return sky_e(r, x); }

  /// One exposure: expected light plus the chosen noise sources; variance as the IM stage gives it
  /// (read noise² + the Poisson part from the data).
  Image realise(std::mt19937_64& rng, Noise n = {}) const {
    Image im(ny, nx);
    std::normal_distribution<double> g(0.0, 1.0);
    for (long r = 0; r < ny; ++r)
      for (long x = 0; x < nx; ++x) {
        const double s = star_e(r, x), k = sky_e(r, x);
        double v = s + k;
        if (n.star && s > 0) v += static_cast<double>(std::poisson_distribution<long>(s)(rng)) - s;
        if (n.sky && k > 0) v += static_cast<double>(std::poisson_distribution<long>(k)(rng)) - k;
        if (n.read) v += read_noise * g(rng);
        im.data(r, x) = static_cast<float>(v);
        im.variance(r, x) = static_cast<float>(read_noise * read_noise + std::max(v, 0.0));
      }
    return im;
  }

  /// Traces with the true centre and width (fitted exactly by the Legendre series: quadratics).
  TraceSet traces() const {
    TraceSet ts;
    ts.nx = nx, ts.ny = ny;
    for (std::size_t i = 0; i < stars.size(); ++i) {
      const StarSpec& s = stars[i];
      Trace t;
      t.info.name = "star" + std::to_string(i + 1);
      const double xm = static_cast<double>(nx - 1);
      t.centre.xmin = t.sigma.xmin = 0.0;
      t.centre.xmax = t.sigma.xmax = xm;
      // u² = (2 P2 + 1)/3 in Legendre terms.
      t.centre.coeffs = {s.y0 + s.curv / 3.0, s.tilt, 2.0 * s.curv / 3.0};
      t.sigma.coeffs = {s.sigma0 * (1.0 + s.sigma_curv / 3.0), s.sigma0 * s.sigma_slope, s.sigma0 * 2.0 * s.sigma_curv / 3.0};
      ts.traces.push_back(std::move(t));
    }
    return ts;
  }
};

/// One exposure through a noisy master bias and master flat, applied the way the detector stage applies
/// them: the detector sees the light times the true pixel sensitivity; the IM is (raw − master bias) /
/// master flat, with the IM variance (RN² + bias var + raw) / f² + IM² var_f / f². The masters differ
/// from the truth by their own noise (relative σ `flat_sigma`, absolute σ `bias_sigma` e-), drawn anew for
/// each call. `cal` receives the calibration noise the masters' variances describe.
Image realise_with_masters(const Scene& sc, std::mt19937_64& rng, Noise n, double flat_sigma, double bias_sigma,
                           CalibrationNoise& cal) {
  Image im(sc.ny, sc.nx);
  cal.flat_relvar.resize(sc.ny, sc.nx);
  cal.bias_var.resize(sc.ny, sc.nx);
  std::normal_distribution<double> g(0.0, 1.0);
  const double rn2 = sc.read_noise * sc.read_noise, vb = bias_sigma * bias_sigma;
  for (long r = 0; r < sc.ny; ++r)
    for (long x = 0; x < sc.nx; ++x) {
      const double f_true = 1.0 + 0.03 * g(rng);
      const double f = f_true * (1.0 + flat_sigma * g(rng));
      const double vf = flat_sigma * flat_sigma * f * f;
      const double s = f_true * sc.star_e(r, x), k = f_true * sc.sky_e(r, x);
      double raw = s + k;
      if (n.star && s > 0) raw += static_cast<double>(std::poisson_distribution<long>(s)(rng)) - s;
      if (n.sky && k > 0) raw += static_cast<double>(std::poisson_distribution<long>(k)(rng)) - k;
      if (n.read) raw += sc.read_noise * g(rng);
      const double bias_error = bias_sigma * g(rng);  // master bias − true bias
      const double d = (raw - bias_error) / f;
      im.data(r, x) = static_cast<float>(d);
      im.variance(r, x) = static_cast<float>((rn2 + vb + std::max(raw - bias_error, 0.0)) / (f * f) + d * d * vf / (f * f));
      cal.flat_relvar(r, x) = static_cast<float>(vf / (f * f));
      cal.bias_var(r, x) = static_cast<float>(vb / (f * f));
    }
  return im;
}

/// Adds cosmic-ray hits (2-4 pixel tracks of 500-5000 e-) and optionally flags them in the mask.
int add_cosmics(Image& im, std::mt19937_64& rng, int n, bool flag) {
  std::uniform_int_distribution<long> ux(0, im.nx() - 1), uy(0, im.ny() - 1);
  std::uniform_real_distribution<double> ua(500.0, 5000.0);
  for (int i = 0; i < n; ++i) {
    const long x = ux(rng), y = uy(rng);
    const double a = ua(rng);
    for (int k = 0; k < 3 && y + k < im.ny(); ++k) {
      im.data(y + k, x) += static_cast<float>(a / (1 + k));
      im.variance(y + k, x) += static_cast<float>(a / (1 + k));
      if (flag) im.mask(y + k, x) |= kMaskCosmic;
    }
  }
  return n;
}

struct Pulls {
  std::vector<double> v;
  void add(double flux, double truth, double var) { v.push_back((flux - truth) / std::sqrt(var)); }
  kspecdr::testing::PullStats stats() const { return kspecdr::testing::pull_stats(v); }
};

ExtractConfig base_config(ExtractMethod m, double rn) {
  ExtractConfig c;
  c.method = m;
  c.read_noise.value_e = rn;
  return c;
}

}  // namespace

// ---------------------------------------------------------------- pulls of the flux against the true counts

struct PullCase {
  const char* name;
  double sky_lines;
  bool cosmics;
  ProfileSource profile;
};

class ExtractionPulls : public ::testing::TestWithParam<PullCase> {};

TEST_P(ExtractionPulls, FluxMatchesTrueCountsWithinItsVariance) {
  const PullCase pc = GetParam();
  Scene sc(2048, 64);
  sc.add_star({}).add_sky(80.0, pc.sky_lines);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(42 + static_cast<unsigned>(pc.sky_lines) + (pc.cosmics ? 7u : 0u));
  Pulls box, opt;
  long rejected = 0, nodata = 0;
  for (int rep = 0; rep < 4; ++rep) {
    Image im = sc.realise(rng);
    // Half the hits flagged (the IM stage found them), half not (the extraction must reject them).
    if (pc.cosmics) {
      add_cosmics(im, rng, 150, true);
      add_cosmics(im, rng, 150, false);
    }
    SkyConfig skc;
    const ExtractConfig cb = base_config(ExtractMethod::Boxcar, sc.read_noise);
    const SkyModel sky = fit_slit_sky(im, ts, skc, cb.read_noise);
    const SpectrumSet sb = extract_spectra(im, ts, &sky, cb);
    ExtractConfig co = base_config(ExtractMethod::Optimal, sc.read_noise);
    co.profile = pc.profile;
    const SpectrumSet so = extract_spectra(im, ts, &sky, co);
    rejected += so.diagnostics[0].rejected;
    for (long x = 0; x < sc.nx; ++x) {
      // Only a flagged hit that covers most of the profile may take a column out.
      if (pc.cosmics && (so.mask(0, x) & kMaskNoData)) {
        ++nodata;
        continue;
      }
      ASSERT_EQ(sb.mask(0, x), 0) << "column " << x;
      ASSERT_EQ(so.mask(0, x), 0) << "column " << x;
      box.add(sb.flux(0, x), sc.true_counts[0][x], sb.variance(0, x));
      opt.add(so.flux(0, x), sc.true_counts[0][x], so.variance(0, x));
    }
  }
  // n = 8192 pulls: σ(mean) = 0.011, σ(width) = 0.008.
  for (auto [label, p] : {std::pair{"boxcar", box.stats()}, std::pair{"optimal", opt.stats()}}) {
    SCOPED_TRACE(label);
    RecordProperty(std::string(label) + "_pull_mean", std::to_string(p.mean));
    RecordProperty(std::string(label) + "_pull_width", std::to_string(p.stddev));
    std::printf("[%s %s] pull mean %+.4f width %.4f (n=%zu)\n", pc.name, label, p.mean, p.stddev, p.n);
    EXPECT_LT(std::abs(p.mean), 0.05);
    EXPECT_NEAR(p.stddev, 1.0, 0.05);
  }
  if (pc.cosmics) EXPECT_GT(rejected, 100) << "unflagged cosmic rays on the trace should be rejected";
  EXPECT_LE(nodata, 8);
}

INSTANTIATE_TEST_SUITE_P(Cases, ExtractionPulls,
                         ::testing::Values(PullCase{"continuum", 0.0, false, ProfileSource::Gaussian},
                                           PullCase{"skylines", 3000.0, false, ProfileSource::Gaussian},
                                           PullCase{"skylines_cosmics", 3000.0, true, ProfileSource::Gaussian},
                                           PullCase{"dataprofile", 3000.0, false, ProfileSource::Data},
                                           PullCase{"dataprofile_cosmics", 3000.0, true, ProfileSource::Data}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------- variance components

TEST(ExtractionVariance, ComponentsAddUpAndEachMatchesTheScatterItCauses) {
  Scene sc(1024, 64);
  StarSpec s;
  s.flux = 3000.0;
  sc.add_star(s).add_sky(150.0, 0.0);
  sc.read_noise = 6.0;
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(7);
  const int nrep = 12;  // 12288 samples per case: σ of a variance ratio = 1.3 %
  struct Acc {
    double scatter = 0, predicted = 0;
    long n = 0;
  };
  for (auto method : {ExtractMethod::Boxcar, ExtractMethod::Optimal}) {
    Acc star, sky, read;
    for (int which = 0; which < 3; ++which) {
      Noise nz{which == 0, which == 1, which == 2};
      Acc& acc = which == 0 ? star : which == 1 ? sky : read;
      for (int rep = 0; rep < nrep; ++rep) {
        const Image im = sc.realise(rng, nz);
        ExtractConfig c = base_config(method, sc.read_noise);
        const SkyModel skm = fit_slit_sky(im, ts, SkyConfig{}, c.read_noise);
        const SpectrumSet sp = extract_spectra(im, ts, &skm, c);
        for (long x = 0; x < sc.nx; ++x) {
          const double d = sp.flux(0, x) - sc.true_counts[0][x];
          const double comp = which == 0 ? sp.var_star(0, x) : which == 1 ? sp.var_sky(0, x) : sp.var_read(0, x);
          acc.scatter += d * d;
          acc.predicted += comp;
          ++acc.n;
          ASSERT_EQ(sp.var_cal(0, x), 0.0f) << "no calibration noise was given";
          const double sum =
              static_cast<double>(sp.var_star(0, x)) + sp.var_sky(0, x) + sp.var_read(0, x) + sp.var_cal(0, x);
          ASSERT_NEAR(sum, sp.variance(0, x), 1e-5 * sp.variance(0, x));
        }
      }
    }
    for (auto [label, a] : {std::pair{"star", star}, std::pair{"sky", sky}, std::pair{"read", read}}) {
      const double ratio = a.scatter / a.predicted;
      std::printf("[%s] %s: scatter / predicted variance = %.4f (n=%ld)\n", to_string(method).c_str(), label, ratio, a.n);
      EXPECT_NEAR(ratio, 1.0, 0.05) << to_string(method) << " " << label;
    }
  }
}

// ---------------------------------------------------------------- noise of the master bias and flat

TEST(ExtractionVariance, MasterFlatAndBiasNoiseEnterTheModelVarianceWhenGiven) {
  // A bright star (peak ~4400 e-/px) through a master flat with 1 % noise per pixel (a few flats' worth):
  // at the peak the flat adds (44 e-)² to the 4400 e-² of the photons, so without it the stated variance
  // is clearly short; with it the pulls are unit normal.
  Scene sc(2048, 64);
  StarSpec st;
  st.flux = 20000.0;
  sc.add_star(st).add_sky(80.0, 3000.0);
  const TraceSet ts = sc.traces();
  const double flat_sigma = 0.01, bias_sigma = 3.0;
  std::mt19937_64 rng(2024);
  for (auto method : {ExtractMethod::Boxcar, ExtractMethod::Optimal}) {
    Pulls with, without;
    for (int rep = 0; rep < 4; ++rep) {
      CalibrationNoise cal;
      const Image im = realise_with_masters(sc, rng, Noise{}, flat_sigma, bias_sigma, cal);
      ExtractConfig c = base_config(method, sc.read_noise);
      const SkyModel sky0 = fit_slit_sky(im, ts, SkyConfig{}, c.read_noise);
      const SpectrumSet s0 = extract_spectra(im, ts, &sky0, c);
      c.calibration_noise = cal;
      const SkyModel sky1 = fit_slit_sky(im, ts, SkyConfig{}, c.read_noise, c.calibration_noise);
      const SpectrumSet s1 = extract_spectra(im, ts, &sky1, c);
      for (long x = 0; x < sc.nx; ++x) {
        ASSERT_EQ(s0.mask(0, x), 0) << "column " << x;
        ASSERT_EQ(s1.mask(0, x), 0) << "column " << x;
        without.add(s0.flux(0, x), sc.true_counts[0][x], s0.variance(0, x));
        with.add(s1.flux(0, x), sc.true_counts[0][x], s1.variance(0, x));
        ASSERT_EQ(s0.var_cal(0, x), 0.0f);
        ASSERT_GT(s1.var_cal(0, x), 0.0f);
        const double sum =
            static_cast<double>(s1.var_star(0, x)) + s1.var_sky(0, x) + s1.var_read(0, x) + s1.var_cal(0, x);
        ASSERT_NEAR(sum, s1.variance(0, x), 1e-5 * s1.variance(0, x));
      }
    }
    // n = 8192 pulls: σ(mean) = 0.011, σ(width) = 0.008.
    const auto pw = with.stats(), po = without.stats();
    std::printf("[%s] master noise given: pull mean %+.4f width %.4f; left out: width %.4f (n=%zu)\n",
                to_string(method).c_str(), pw.mean, pw.stddev, po.stddev, pw.n);
    EXPECT_LT(std::abs(pw.mean), 0.05) << to_string(method);
    EXPECT_NEAR(pw.stddev, 1.0, 0.05) << to_string(method);
    EXPECT_GT(po.stddev, 1.08) << to_string(method) << ": the test frame must need the calibration noise";
  }
}

TEST(ExtractionVariance, CalibrationComponentMatchesTheScatterItCauses) {
  // Only the masters' noise (no photon or read noise in the frame): the scatter of the flux about the
  // truth is then what var_cal predicts, for the star's pixels and the sky estimate alike.
  Scene sc(1024, 64);
  StarSpec st;
  st.flux = 8000.0;
  sc.add_star(st).add_sky(400.0, 0.0);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(99);
  for (auto method : {ExtractMethod::Boxcar, ExtractMethod::Optimal}) {
    double scatter = 0, predicted = 0;
    long n = 0;
    for (int rep = 0; rep < 12; ++rep) {  // 12288 samples: σ of the ratio = 1.3 %
      CalibrationNoise cal;
      const Image im = realise_with_masters(sc, rng, Noise{false, false, false}, 0.02, 3.0, cal);
      ExtractConfig c = base_config(method, sc.read_noise);
      c.calibration_noise = cal;
      const SkyModel sky = fit_slit_sky(im, ts, SkyConfig{}, c.read_noise, c.calibration_noise);
      const SpectrumSet sp = extract_spectra(im, ts, &sky, c);
      for (long x = 0; x < sc.nx; ++x) {
        const double d = sp.flux(0, x) - sc.true_counts[0][x];
        scatter += d * d;
        predicted += sp.var_cal(0, x);
        ++n;
      }
    }
    const double ratio = scatter / predicted;
    std::printf("[%s] calibration: scatter / predicted variance = %.4f (n=%ld)\n", to_string(method).c_str(), ratio, n);
    EXPECT_NEAR(ratio, 1.0, 0.05) << to_string(method);
  }
}

// ---------------------------------------------------------------- optimal vs boxcar on a faint star

TEST(ExtractionGain, OptimalBeatsBoxcarByThePredictedFactor) {
  // Background-limited: 400 e-/px of sky under a 150 e-/column star of σ = 2 px.
  Scene sc(2048, 90);
  StarSpec s;
  s.y0 = 45.0, s.tilt = 0.0, s.curv = 0.0, s.sigma0 = 2.0, s.sigma_slope = 0.0, s.sigma_curv = 0.0;
  s.flux = 150.0, s.line_depth = 0.0;
  sc.read_noise = 5.0;
  sc.add_star(s).add_sky(400.0, 0.0);
  const TraceSet ts = sc.traces();
  SkyConfig skc;
  skc.width_px = 25.0;  // wide windows: the sky estimate adds little
  std::mt19937_64 rng(11);
  std::vector<double> fb, fo;
  double var_sky_est = 0;
  long nsky = 0;
  for (int rep = 0; rep < 8; ++rep) {
    const Image im = sc.realise(rng);
    const ExtractConfig cb = base_config(ExtractMethod::Boxcar, sc.read_noise);
    ExtractConfig co = base_config(ExtractMethod::Optimal, sc.read_noise);
    const SkyModel sky = fit_slit_sky(im, ts, skc, cb.read_noise);
    const SpectrumSet sb = extract_spectra(im, ts, &sky, cb), so = extract_spectra(im, ts, &sky, co);
    for (long x = 0; x < sc.nx; ++x) {
      fb.push_back(sb.flux(0, x));
      fo.push_back(so.flux(0, x));
      var_sky_est += sky.apertures[0].variance(x, 0.0);
      ++nsky;
    }
  }
  auto snr = [](const std::vector<double>& v) {
    const double m = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
    double ss = 0;
    for (double x : v) ss += (x - m) * (x - m);
    return m / std::sqrt(ss / static_cast<double>(v.size() - 1));
  };
  const double measured = snr(fo) / snr(fb);
  // Prediction from the profile P_i (pixel-integrated Gaussian) and the model variance
  // V_i = B + RN² + F·P_i. With weights w, flux = Σ w (D − S) has signal F Σ w P and variance
  // Σ w² V + (Σ w)² var(S). Boxcar: w = coverage c_i → S/N_box = F Σ c P / √(Σ c² V + (Σ c)² var S).
  // Optimal: w = (P/V) / Σ(P²/V) → S/N_opt = F / √(1/Σ(P²/V) + (Σ P/V / Σ P²/V)² var S).
  // Without the sky term, S/N_opt² = F² Σ P²/V and S/N_box² = F² (Σ c P)² / Σ c² V.
  const double B = 400.0, rn2 = sc.read_noise * sc.read_noise, F = s.flux, yc = s.y0, sg = s.sigma0;
  const double vs = var_sky_est / static_cast<double>(nsky);
  const double hb = 4.0 * sg;
  double spp = 0, sp = 0, scp = 0, sccv = 0, sc_ = 0;
  for (long r = 0; r < sc.ny; ++r) {
    const double P = trace::pixel_gaussian(static_cast<double>(r), yc, sg), V = B + rn2 + F * P;
    if (std::abs(r - yc) <= 5.0 * sg + 0.5) spp += P * P / V, sp += P / V;
    const double c = std::clamp(std::min(r + 0.5, yc + hb) - std::max(r - 0.5, yc - hb), 0.0, 1.0);
    scp += c * P, sccv += c * c * V, sc_ += c;
  }
  const double snr_opt = F / std::sqrt(1.0 / spp + std::pow(sp / spp, 2) * vs);
  const double snr_box = F * scp / std::sqrt(sccv + sc_ * sc_ * vs);
  const double predicted = snr_opt / snr_box;
  std::printf("optimal/boxcar S/N: measured %.4f predicted %.4f (S/N box %.2f, optimal %.2f)\n", measured, predicted,
              snr(fb), snr(fo));
  EXPECT_GE(measured, 1.2);
  EXPECT_NEAR(measured / predicted, 1.0, 0.05);
}

// ---------------------------------------------------------------- sky

TEST(SlitSky, ClippedPolynomialFollowsAGradientAndExcludesANeighbour) {
  Scene sc(512, 100);
  StarSpec a, b;
  a.y0 = 45.0, b.y0 = 62.0, b.flux = 20000.0;  // b sits in a's upper window
  sc.add_star(a).add_star(b).add_sky(200.0, 2000.0, 0.004);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(5);
  const Image im = sc.realise(rng);
  SkyConfig c;
  c.method = SkyMethod::ClippedPoly;
  c.poly_order = 1;
  c.width_px = 15.0;
  ReadNoise rn{sc.read_noise, {}};
  const SkyModel sky = fit_slit_sky(im, ts, c, rn);
  std::vector<double> pulls;
  long excluded = 0;
  for (long x = 0; x < sc.nx; ++x) {
    const double yc = ts[0].centre(static_cast<double>(x));
    const double truth = sc.sky_e(static_cast<long>(std::lround(yc)), x) +
                         (yc - std::lround(yc)) * 0.004 * sc.sky_e(0, x) / (1.0 - 0.004 * 50.0);
    pulls.push_back((sky.apertures[0].value(x, 0.0) - truth) / std::sqrt(sky.apertures[0].variance(x, 0.0)));
    const long yb = std::lround(ts[1].centre(static_cast<double>(x)));
    excluded += sky.windows(yb, x) == 2;
  }
  const auto p = kspecdr::testing::pull_stats(pulls);
  std::printf("sky at the trace centre: pull mean %+.3f width %.3f\n", p.mean, p.stddev);
  // 512 pulls: σ(mean) = 0.044, σ(width) = 0.031.
  EXPECT_LT(std::abs(p.mean), 0.18);
  EXPECT_NEAR(p.stddev, 1.0, 0.12);
  EXPECT_EQ(excluded, sc.nx) << "the neighbour's centre row must be excluded from the window in every column";
  EXPECT_EQ(sky.apertures[0].n_empty, 0);
}

TEST(SlitSky, MedianVarianceMatchesItsScatter) {
  Scene sc(1024, 80);
  sc.add_sky(100.0, 0.0);
  StarSpec s;
  s.y0 = 40.0;
  s.flux = 1.0;  // a trace to hang the windows on; its light is negligible
  sc.add_star(s);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(3);
  ReadNoise rn{sc.read_noise, {}};
  double ss = 0, pv = 0;
  for (int rep = 0; rep < 6; ++rep) {
    const Image im = sc.realise(rng);
    const SkyModel sky = fit_slit_sky(im, ts, SkyConfig{}, rn);
    for (long x = 0; x < sc.nx; ++x) {
      const double d = sky.apertures[0].value(x, 0.0) - 100.0;
      ss += d * d;
      pv += sky.apertures[0].variance(x, 0.0);
    }
  }
  // 6144 samples: σ of the ratio = 1.8 %.
  std::printf("median sky: scatter / predicted variance = %.4f\n", ss / pv);
  EXPECT_NEAR(ss / pv, 1.0, 0.07);
}

// ---------------------------------------------------------------- bad input

TEST(ExtractionBadInput, MaskedColumnsOffDetectorAndEmptySkyAreFlaggedOthersExtracted) {
  Scene sc(400, 80);
  StarSpec a, b, c;
  a.y0 = 25.0, a.tilt = 0.0, a.curv = 0.0;
  b.y0 = 50.0, b.tilt = 0.0, b.curv = 0.0;
  c.y0 = 72.0, c.tilt = 10.0, c.curv = 0.0;  // runs off the top edge for the last part of the columns
  sc.add_star(a).add_star(b).add_star(c).add_sky(50.0, 0.0);
  TraceSet ts = sc.traces();
  std::mt19937_64 rng(9);
  Image im = sc.realise(rng);
  // Star 1's aperture fully masked in columns 100-109.
  for (long x = 100; x < 110; ++x)
    for (long r = 18; r <= 32; ++r) im.mask(r, x) = kMaskBad;
  SkyConfig skc;
  skc.regions = {{-14.0, -8.0}, {8.0, 14.0}};
  const ReadNoise rn{sc.read_noise, {}};
  SkyModel sky = fit_slit_sky(im, ts, skc, rn, "exp042");
  ExtractConfig ec = base_config(ExtractMethod::Optimal, sc.read_noise);
  const SpectrumSet sp = extract_spectra(im, ts, &sky, ec, "exp042");
  for (long x = 0; x < sc.nx; ++x) {
    ASSERT_TRUE(std::isfinite(sp.flux(0, x)));
    if (x >= 100 && x < 110) {
      EXPECT_TRUE(sp.mask(0, x) & kMaskNoData);
      EXPECT_TRUE(std::isinf(sp.variance(0, x)));
      EXPECT_EQ(sp.flux(0, x), 0.0f);
    } else {
      EXPECT_EQ(sp.mask(0, x), 0);
    }
    EXPECT_EQ(sp.mask(1, x), 0) << "star 2 is clean everywhere";
  }
  EXPECT_EQ(sp.diagnostics[0].bad_columns, 10);
  EXPECT_NE(sp.diagnostics[0].status.find("fully masked"), std::string::npos) << sp.diagnostics[0].status;
  EXPECT_NE(sp.diagnostics[0].status.find("exp042"), std::string::npos);
  EXPECT_NE(sp.diagnostics[0].status.find("star1"), std::string::npos);
  // Star 3 leaves the detector: its last columns are NODATA, its first ones good.
  EXPECT_EQ(sp.mask(2, 0), 0);
  EXPECT_TRUE(sp.mask(2, sc.nx - 1) & kMaskNoData);
  EXPECT_GT(sp.diagnostics[2].bad_columns, 0);
  EXPECT_TRUE(sp.diagnostics[2].status.find("off the detector") != std::string::npos ||
              sp.diagnostics[2].status.find("empty sky") != std::string::npos)
      << sp.diagnostics[2].status;
  for (long x = 0; x < sc.nx; ++x)
    for (long a2 = 0; a2 < 3; ++a2) ASSERT_FALSE(std::isnan(sp.flux(a2, x)));

  // Sky windows all off the detector for star 1: a message naming aperture and exposure, star 2 still extracted.
  SkyConfig off;
  off.regions = {{-200.0, -150.0}};
  const SkyModel sky2 = fit_slit_sky(im, ts, off, rn, "exp042");
  EXPECT_NE(sky2.apertures[0].message.find("empty"), std::string::npos);
  const SpectrumSet sp2 = extract_spectra(im, ts, &sky2, ec, "exp042");
  EXPECT_EQ(sp2.diagnostics[0].bad_columns, sc.nx);
  EXPECT_NE(sp2.diagnostics[0].status.find("star1"), std::string::npos);
  EXPECT_NE(sp2.diagnostics[0].status.find("exp042"), std::string::npos);

  // An unusable trace is flagged, never extracted as zeros passed off as good.
  ts[1].status = TraceStatus::Failed;
  ts[1].message = "test";
  const SpectrumSet sp3 = extract_spectra(im, ts, nullptr, ec, "exp042");
  for (long x = 0; x < sc.nx; ++x) ASSERT_TRUE(sp3.mask(1, x) & kMaskNoData);
  EXPECT_NE(sp3.diagnostics[1].status.find("failed"), std::string::npos);
  EXPECT_EQ(sp3.mask(0, 0), 0);

  // Shape mismatches are errors of the call, not of an aperture.
  Image small(10, 10);
  EXPECT_THROW(extract_spectra(small, ts, nullptr, ec), DataError);
}

// ---------------------------------------------------------------- overlapping fibers: joint extraction

namespace {
/// Four fibers 5 px apart with σ ≈ 1.5 px (3.3σ: each one's ±5σ window holds its neighbours' cores), a
/// faint one (300 e-) between two bright ones. Amplitudes are the true electrons per column (the full
/// profile). The brightest peaks at ≈ 2100 e-/px, so the test's fainter cosmic-ray pixels (from ≈ 170 e-)
/// can still be told from the noise: a hit below any threshold biases every extraction alike.
Scene overlapping_fibers(long nx) {
  Scene sc(nx, 40);
  const double y0[] = {10.0, 15.0, 20.0, 25.0}, flux[] = {2000.0, 8000.0, 300.0, 5000.0};
  for (int i = 0; i < 4; ++i) {
    StarSpec f;
    f.y0 = y0[i], f.tilt = 0.4, f.curv = 0.3, f.sigma0 = 1.5, f.sigma_slope = 0.03, f.sigma_curv = 0.02;
    f.flux = flux[i];
    sc.add_star(f);
  }
  return sc;
}
}  // namespace

TEST(JointExtraction, OverlappingFibersHaveUnitPullsWhileAloneTheyAreBiased) {
  Scene sc = overlapping_fibers(2048);
  const TraceSet ts = sc.traces();
  ASSERT_TRUE(apertures_overlap(ts, base_config(ExtractMethod::Optimal, sc.read_noise)));
  std::mt19937_64 rng(1234);
  const std::size_t nf = sc.stars.size();
  std::vector<Pulls> joint(nf), box(nf), alone(nf);
  long rejected = 0, nodata = 0;
  for (int rep = 0; rep < 8; ++rep) {
    Image im = sc.realise(rng);
    // Half the hits flagged (the IM stage found them), half not (the fit must reject them): 0.7 % of the
    // pixels, as in the slit pull test (about 50 times a long exposure's rate).
    add_cosmics(im, rng, 100, true);
    add_cosmics(im, rng, 100, false);
    ExtractConfig cj = base_config(ExtractMethod::Joint, sc.read_noise);
    const SpectrumSet sj = extract_spectra(im, ts, nullptr, cj);
    ExtractConfig cb = base_config(ExtractMethod::Boxcar, sc.read_noise);  // deblend auto: overlapping
    const SpectrumSet sb = extract_spectra(im, ts, nullptr, cb);
    ExtractConfig co = base_config(ExtractMethod::Optimal, sc.read_noise);
    co.deblend = Deblend::Off;
    const SpectrumSet so = extract_spectra(im, ts, nullptr, co);
    EXPECT_EQ(sj.header.get_string("EXTMETH").value_or(""), "joint");
    EXPECT_EQ(sb.header.get_string("EXTMETH").value_or(""), "boxcar");
    EXPECT_TRUE(sb.header.get_bool("DEBLEND").value_or(false));
    EXPECT_FALSE(so.header.get_bool("DEBLEND").value_or(true));
    for (std::size_t a = 0; a < nf; ++a) {
      const auto ai = static_cast<Eigen::Index>(a);
      rejected += sj.diagnostics[a].rejected;
      for (long x = 0; x < sc.nx; ++x) {
        if ((sj.mask(ai, x) | sb.mask(ai, x) | so.mask(ai, x)) & kMaskNoData) {
          ++nodata;
          continue;
        }
        const double truth = sc.true_counts[a][static_cast<std::size_t>(x)];
        joint[a].add(sj.flux(ai, x), truth, sj.variance(ai, x));
        box[a].add(sb.flux(ai, x), truth, sb.variance(ai, x));
        alone[a].add(so.flux(ai, x), truth, so.variance(ai, x));
        for (const SpectrumSet* sp : {&sj, &sb}) {
          const double sum = static_cast<double>(sp->var_star(ai, x)) + sp->var_sky(ai, x) + sp->var_read(ai, x) +
                             sp->var_cal(ai, x);
          ASSERT_NEAR(sum, sp->variance(ai, x), 1e-5 * sp->variance(ai, x));
        }
      }
    }
  }
  // n ≈ 16384 pulls per fiber: σ(mean) = 0.008, σ(width) = 0.006.
  for (std::size_t a = 0; a < nf; ++a) {
    const auto j = joint[a].stats(), b = box[a].stats(), o = alone[a].stats();
    std::printf("[fiber %zu, %.0f e-] joint pull mean %+.4f width %.4f | deblended boxcar %+.4f %.4f | alone (optimal) "
                "%+.4f %.4f (n=%zu)\n",
                a + 1, sc.stars[a].flux, j.mean, j.stddev, b.mean, b.stddev, o.mean, o.stddev, j.n);
    RecordProperty("fiber" + std::to_string(a + 1) + "_joint_pull_mean", std::to_string(j.mean));
    RecordProperty("fiber" + std::to_string(a + 1) + "_joint_pull_width", std::to_string(j.stddev));
    EXPECT_GT(j.n, 16000u);
    EXPECT_LT(std::abs(j.mean), 0.05) << "joint, fiber " << a + 1;
    EXPECT_NEAR(j.stddev, 1.0, 0.05) << "joint, fiber " << a + 1;
    EXPECT_LT(std::abs(b.mean), 0.05) << "deblended boxcar, fiber " << a + 1;
    EXPECT_NEAR(b.stddev, 1.0, 0.05) << "deblended boxcar, fiber " << a + 1;
  }
  // Alone, the faint fiber between two bright ones takes their wings for its own light.
  EXPECT_GT(alone[2].stats().mean, 1.0) << "the independent optimal extraction should be biased by the overlap";
  EXPECT_GT(rejected, 400) << "unflagged cosmic rays on the fibers should be rejected";
  EXPECT_LE(nodata, 64);
}

TEST(JointExtraction, EqualsOptimalExtractionWhereProfilesDoNotOverlap) {
  Scene sc(512, 80);
  StarSpec a, b;
  a.y0 = 20.0, b.y0 = 55.0, b.flux = 800.0;
  sc.add_star(a).add_star(b);
  const TraceSet ts = sc.traces();
  ExtractConfig co = base_config(ExtractMethod::Optimal, sc.read_noise), cj = co;
  cj.method = ExtractMethod::Joint;
  ASSERT_FALSE(apertures_overlap(ts, co));
  std::mt19937_64 rng(5);
  const Image im = sc.realise(rng);
  const SpectrumSet so = extract_spectra(im, ts, nullptr, co), sj = extract_spectra(im, ts, nullptr, cj);
  EXPECT_EQ(so.header.get_string("EXTMETH").value_or(""), "optimal") << "deblend auto: no overlap, no joint fit";
  for (Eigen::Index ap = 0; ap < 2; ++ap)
    for (long x = 0; x < sc.nx; ++x) {
      ASSERT_NEAR(sj.flux(ap, x), so.flux(ap, x), 1e-4 * std::sqrt(so.variance(ap, x))) << ap << " " << x;
      ASSERT_NEAR(sj.variance(ap, x), so.variance(ap, x), 1e-4 * so.variance(ap, x)) << ap << " " << x;
    }
}

TEST(JointExtraction, NeedsNoLocalSkyAndTheGaussianProfile) {
  Scene sc = overlapping_fibers(64);
  sc.add_sky(50.0, 0.0);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(3);
  const Image im = sc.realise(rng);
  ExtractConfig c = base_config(ExtractMethod::Joint, sc.read_noise);
  const SkyModel sky = fit_slit_sky(im, ts, SkyConfig{}, c.read_noise);
  EXPECT_THROW(extract_spectra(im, ts, &sky, c), ConfigError);
  c.profile = ProfileSource::Data;
  EXPECT_THROW(extract_spectra(im, ts, nullptr, c), ConfigError);
  EXPECT_EQ(extract_method_from_string("joint"), ExtractMethod::Joint);
  EXPECT_EQ(deblend_from_string("off"), Deblend::Off);
  EXPECT_THROW(deblend_from_string("maybe"), ConfigError);
}

// ---------------------------------------------------------------- fiber mode: throughput and master sky

TEST(FiberSky, ThroughputAndMasterSkyFromAlignedSpectra) {
  const long na = 24, np = 1500;
  std::mt19937_64 rng(21);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.75, 1.1);
  std::vector<double> thr(na);
  for (auto& t : thr) t = u(rng);
  thr[5] = 0.0;  // dead fiber
  // Flat: lamp spectrum × throughput, high S/N.
  SpectrumSet flat(na, np);
  for (long a = 0; a < na; ++a) {
    flat.apertures[a].name = "f" + std::to_string(a);
    flat.apertures[a].type = a == 5 ? aperture_type::kUnused : aperture_type::kProgram;
    for (long p = 0; p < np; ++p) {
      const double lamp = 20000.0 * (1.0 + 0.5 * std::sin(p / 300.0));
      const double m = thr[a] * lamp;
      flat.flux(a, p) = static_cast<float>(m + std::sqrt(m + 25.0) * g(rng));
      flat.variance(a, p) = static_cast<float>(m + 25.0);
    }
  }
  const FiberThroughput ft = fiber_throughput(flat);
  EXPECT_TRUE(std::isnan(ft.throughput[5]));
  std::vector<double> lit;
  for (long a = 0; a < na; ++a)
    if (a != 5) lit.push_back(thr[a]);
  std::nth_element(lit.begin(), lit.begin() + lit.size() / 2, lit.end());
  const double norm = lit[lit.size() / 2];
  for (long a = 0; a < na; ++a)
    if (a != 5) EXPECT_NEAR(ft.throughput[a], thr[a] / norm, 5.0 * std::hypot(ft.error[a], ft.error[0])) << a;

  // Science: sky with lines through every fiber (× throughput); program fibers also carry a star.
  auto sky_true = [](long p) {
    double s = 60.0;
    for (long l = 40; l < 1500; l += 173) s += 3000.0 * std::exp(-0.5 * std::pow((p - l) / 1.3, 2));
    return s;
  };
  SpectrumSet sci(na, np);
  std::vector<bool> is_sky(na, false);
  for (long a : {1L, 4L, 9L, 13L, 17L, 22L}) is_sky[a] = true;
  std::vector<std::vector<double>> star(na, std::vector<double>(np, 0.0));
  const double rn2 = 30.0;
  for (long a = 0; a < na; ++a) {
    sci.apertures[a].type = is_sky[a] ? aperture_type::kSky : aperture_type::kProgram;
    for (long p = 0; p < np; ++p) {
      if (!is_sky[a]) star[a][p] = 800.0 + 200.0 * std::cos(p / 50.0);
      const double m = star[a][p] + thr[a] * sky_true(p);
      sci.flux(a, p) = static_cast<float>(m + std::sqrt(m + rn2) * g(rng));
      sci.var_star(a, p) = static_cast<float>(m);
      sci.var_read(a, p) = static_cast<float>(rn2);
      sci.variance(a, p) = static_cast<float>(m + rn2);
    }
  }
  // A star in one sky fiber over 200 pixels: the combination must reject it.
  for (long p = 600; p < 800; ++p) sci.flux(13, p) += 2000.0f;
  std::vector<double> t_used(na);
  for (long a = 0; a < na; ++a) t_used[a] = thr[a];  // true throughputs: this checks the combination itself
  const MasterSky ms = combine_master_sky(sci, t_used, is_sky);
  std::vector<double> pulls;
  for (long p = 0; p < np; ++p) {
    ASSERT_EQ(ms.mask[p], 0);
    pulls.push_back((ms.flux[p] - sky_true(p)) / std::sqrt(ms.variance[p]));
  }
  const auto ps = kspecdr::testing::pull_stats(pulls);
  std::printf("master sky pulls: mean %+.3f width %.3f\n", ps.mean, ps.stddev);
  EXPECT_LT(std::abs(ps.mean), 0.1);  // 1500 pulls: σ(mean) = 0.026
  EXPECT_NEAR(ps.stddev, 1.0, 0.08);  // σ(width) = 0.018 (plus the clipping's few percent)
  EXPECT_LT(ms.n_used[700], 6) << "the contaminated sky fiber must be rejected";

  subtract_master_sky(sci, ms, t_used);
  std::vector<double> sp;
  for (long a = 0; a < na; ++a) {
    if (is_sky[a] || a == 5) continue;
    for (long p = 0; p < np; ++p) {
      const double comp = sci.var_star(a, p) + sci.var_sky(a, p) + sci.var_read(a, p) + sci.var_cal(a, p);
      ASSERT_NEAR(comp, sci.variance(a, p), 1e-4 * sci.variance(a, p));
      sp.push_back((sci.flux(a, p) - star[a][p]) / std::sqrt(sci.variance(a, p)));
    }
  }
  const auto pp = kspecdr::testing::pull_stats(sp);
  std::printf("sky-subtracted program fibers: pull mean %+.3f width %.3f\n", pp.mean, pp.stddev);
  EXPECT_LT(std::abs(pp.mean), 0.05);
  EXPECT_NEAR(pp.stddev, 1.0, 0.05);
  EXPECT_TRUE(sci.mask(5, 0) & kMaskNoData) << "the dead fiber has no throughput";

  std::vector<bool> none(na, false);
  EXPECT_THROW(combine_master_sky(sci, t_used, none), DataError);
}

// ---------------------------------------------------------------- EX file

TEST(ExFile, RoundTripKeepsEveryArrayAndTable) {
  Scene sc(300, 60);
  StarSpec a;
  a.y0 = 20.0;
  StarSpec b;
  b.y0 = 40.0;
  sc.add_star(a).add_star(b).add_sky(40.0, 500.0);
  TraceSet ts = sc.traces();
  ts[0].info.type = aperture_type::kProgram;
  ts[0].info.ra_deg = 150.1;
  ts[0].info.dec_deg = -20.5;
  ts[0].info.mags = {{"MAG_G", 15.25}, {"MAG_R", 14.75}};
  ts[1].info.type = aperture_type::kStandard;
  std::mt19937_64 rng(1);
  Image im = sc.realise(rng);
  for (long x = 50; x < 52; ++x)
    for (long r = 0; r < 60; ++r) im.mask(r, x) = kMaskBad;
  const ReadNoise rn{sc.read_noise, {}};
  ExtractConfig ec;
  ec.read_noise = rn;
  ec.calibration_noise.flat_relvar = ImageArray::Constant(60, 300, 1e-4f);
  ec.calibration_noise.bias_var = ImageArray::Constant(60, 300, 2.0f);
  const SkyModel sky = fit_slit_sky(im, ts, SkyConfig{}, rn, ec.calibration_noise);
  SpectrumSet sp = extract_spectra(im, ts, &sky, ec, "exp1");
  record_trace_shifts(sp, {TraceShift{0.12, 0.01, 1.03, 0.002, 18, true}, TraceShift{}});
  kspecdr::testing::TempDir dir;
  const auto path = dir / "exp1.ex.fits";
  write_ex_file(path, sp, false);
  EXPECT_THROW(write_ex_file(path, sp, false), Error);
  const SpectrumSet back = read_ex_file(path);
  ASSERT_EQ(back.naper(), 2);
  ASSERT_EQ(back.npix(), 300);
  EXPECT_TRUE((back.flux == sp.flux).all());
  EXPECT_TRUE((back.var_star == sp.var_star).all());
  EXPECT_TRUE((back.var_sky == sp.var_sky).all());
  EXPECT_TRUE((back.var_read == sp.var_read).all());
  EXPECT_GT(sp.var_cal(0, 100), 0.0f);
  EXPECT_TRUE(std::isinf(back.var_cal(0, 50)));
  for (long x = 0; x < 300; ++x)
    if (std::isfinite(sp.var_cal(0, x))) ASSERT_EQ(back.var_cal(0, x), sp.var_cal(0, x));
  EXPECT_TRUE((back.sky == sp.sky).all());
  EXPECT_TRUE((back.mask == sp.mask).all());
  EXPECT_TRUE(std::isinf(back.variance(0, 50)));
  for (long x = 0; x < 300; ++x)
    if (std::isfinite(sp.variance(0, x))) ASSERT_EQ(back.variance(0, x), sp.variance(0, x));
  EXPECT_EQ(back.apertures[0].name, "star1");
  EXPECT_EQ(back.apertures[1].type, aperture_type::kStandard);
  EXPECT_DOUBLE_EQ(back.apertures[0].ra_deg, 150.1);
  ASSERT_EQ(back.apertures[0].mags.size(), 2u);
  EXPECT_EQ(back.apertures[0].mags[0].first, "MAG_G");
  EXPECT_DOUBLE_EQ(back.apertures[0].mags[0].second, 15.25);
  EXPECT_TRUE(std::isnan(back.apertures[1].mags[0].second));
  EXPECT_DOUBLE_EQ(back.diagnostics[0].shift_px, 0.12);
  EXPECT_DOUBLE_EQ(back.diagnostics[0].width_scale, 1.03);
  EXPECT_EQ(back.diagnostics[0].bad_columns, sp.diagnostics[0].bad_columns);
  EXPECT_EQ(back.diagnostics[0].status, sp.diagnostics[0].status);
  EXPECT_DOUBLE_EQ(back.diagnostics[1].snr_median, sp.diagnostics[1].snr_median);
  EXPECT_EQ(back.header.get_string("EXTMETH").value(), "optimal");
  // Every image HDU and table column of the format table is in the file.
  auto f = fits::Fits::open(path);
  for (const auto& item : ex_format()) {
    if (item.kind == FormatItem::Kind::Image && item.hdu != "PRIMARY") EXPECT_TRUE(f.has_hdu(item.hdu)) << item.hdu;
    if (item.kind == FormatItem::Kind::Column && item.name.find('*') == std::string::npos) {
      f.move_to(item.hdu);
      EXPECT_TRUE(f.read_table().has(item.name)) << item.hdu << "." << item.name;
    }
  }
}

// ---------------------------------------------------------------- speed

TEST(ExtractionSpeed, OneStarFrameIsFast) {
  Scene sc(4096, 80);
  sc.add_star({}).add_sky(100.0, 2000.0);
  const TraceSet ts = sc.traces();
  std::mt19937_64 rng(2);
  const Image im = sc.realise(rng);
  ExtractConfig ec = base_config(ExtractMethod::Optimal, sc.read_noise);
  const auto t0 = std::chrono::steady_clock::now();
  const SkyModel sky = fit_slit_sky(im, ts, SkyConfig{}, ec.read_noise);
  const SpectrumSet sp = extract_spectra(im, ts, &sky, ec);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("sky + optimal extraction of one star over 4096 columns: %.2f ms\n", ms);
  EXPECT_EQ(sp.diagnostics[0].bad_columns, 0);
  EXPECT_LT(ms, 500.0);
}
