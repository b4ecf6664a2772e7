// The template fit on synthetic spectra: flux-conserving resampling, log-λ convolution, RV pulls over
// noise realisations, parameter recovery of a star between grid points, and clear errors.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <random>

#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/catalog.hpp"
#include "kspecdr/fluxcal/combine.hpp"
#include "kspecdr/fluxcal/template_fit.hpp"
#include "kspecdr/sim/spectra.hpp"
#include "kspecdr/sim/template_grid.hpp"
#include "kspecdr/wavecal/resample.hpp"
#include "support/testing.hpp"

using namespace kspecdr;

namespace {

constexpr double kLsfSigma = 2.2;  // Å: FWHM 5.18 Å, like the simulated fiber spectrograph

const fluxcal::TemplateGrid& grid() {
  static const fluxcal::TemplateGrid g = [] {
    sim::SynthGridSpec s;
    s.teff_k = {5500, 5750, 6000, 6250, 6500, 6750, 7000};
    s.logg = {4.0, 4.5};
    s.mh = {-0.5, 0.0};
    s.alpha = {0.0, 0.4};
    s.lambda_min = 4500;
    s.lambda_max = 7600;
    s.step_angstrom = 0.5;
    return sim::make_synthetic_template_grid(s);
  }();
  return g;
}

/// What a spectrograph records from the star: lines broadened by the LSF, integrated over 2 Å pixels,
/// times a smooth throughput, with Poisson + read noise. `peak` electrons at the brightest pixel.
fluxcal::ObservedSpectrum observe(const sim::StarTemplate& star, double peak, std::mt19937_64& rng, bool noise = true) {
  fluxcal::ObservedSpectrum o;
  o.name = "test";
  std::vector<double> clean;
  for (int j = 0; j < 1000; ++j) {
    const double c = 5000.0 + 2.0 * j;
    double s = 0;
    for (int k = 0; k < 8; ++k) {
      const double l = c - 1.0 + (k + 0.5) * 0.25;
      s += star.photon_flux(l, kLsfSigma) * sim::system_throughput(l, 1.0);
    }
    o.wavelength_angstrom.push_back(c);
    clean.push_back(s / 8.0);
  }
  const double top = *std::max_element(clean.begin(), clean.end());
  std::normal_distribution<double> g(0, 1);
  for (double v : clean) {
    const double e = v / top * peak;
    const double var = e + 25.0;
    o.flux.push_back(noise ? e + std::sqrt(var) * g(rng) : e);
    o.variance.push_back(var);
    o.good.push_back(1);
  }
  return o;
}

/// The same star recorded on 2 Å detector pixels centred at 4999 + 2i Å (Poisson + read noise per detector pixel)
/// and resampled flux-conservingly, as the RED stage does, onto 2 Å pixels centred at 5000 + 2j Å: every output
/// pixel takes half of two detector pixels, so neighbours share one and their noise has correlation ≈ ½. The
/// spectrum carries that covariance (`covariance_next`, the RED's COVAR) unless `with_covariance` is false.
fluxcal::ObservedSpectrum observe_resampled(const sim::StarTemplate& star, double peak, std::mt19937_64& rng,
                                            bool with_covariance) {
  std::vector<double> wl, clean;
  for (int i = 0; i <= 1000; ++i) {
    const double c = 4999.0 + 2.0 * i;
    double s = 0;
    for (int k = 0; k < 8; ++k) {
      const double l = c - 1.0 + (k + 0.5) * 0.25;
      s += star.photon_flux(l, kLsfSigma) * sim::system_throughput(l, 1.0);
    }
    wl.push_back(c);
    clean.push_back(s / 8.0);
  }
  const double top = *std::max_element(clean.begin(), clean.end());
  std::normal_distribution<double> g(0, 1);
  wavecal::Spectrum1D det;
  for (double v : clean) {
    const double e = v / top * peak, var = e + 25.0;
    det.flux.push_back(e + std::sqrt(var) * g(rng));
    det.variance.push_back(var);
    det.mask.push_back(0);
  }
  wavecal::WavelengthGrid grid;
  grid.step = 2.0;
  for (int j = 0; j < 1000; ++j) grid.centres.push_back(5000.0 + 2.0 * j);
  for (int j = 0; j <= 1000; ++j) grid.edges.push_back(4999.0 + 2.0 * j);
  wavecal::ResampleConfig rc;
  rc.flux_is_density = false;
  const auto rs = wavecal::resample(wl, det, grid, rc);
  fluxcal::ObservedSpectrum o;
  o.name = "test";
  o.wavelength_angstrom = grid.centres;
  o.flux = rs.flux;
  o.variance = rs.variance;
  o.good.assign(grid.size(), 1);
  if (with_covariance) o.covariance_next = rs.covariance_next;
  return o;
}

fluxcal::FitConfig config() {
  fluxcal::FitConfig c;
  c.resolution.fwhm_poly_angstrom = {2.354820045 * kLsfSigma};
  return c;
}

}  // namespace

TEST(FluxcalFit, ResamplingConservesFluxAndConvolutionHasTheRightWidth) {
  // A narrow line (σ 0.3 Å) on a flat continuum, convolved to FWHM 5 Å: the result is a Gaussian of
  // σ = √(0.3² + (5/2.3548)²) with the same equivalent width.
  std::vector<double> w, f;
  for (double l = 5000; l <= 7000; l += 0.1) {
    w.push_back(l);
    f.push_back(1.0 - 0.5 * std::exp(-0.5 * std::pow((l - 6000.0) / 0.3, 2)));
  }
  fluxcal::Resolution res;
  res.fwhm_poly_angstrom = {5.0};
  const auto pm = fluxcal::prepare_model(w, f, res, 0.0, 5600, 6400);
  std::vector<double> c;
  for (double l = 5700; l <= 6300; l += 1.7) c.push_back(l);
  const auto out = fluxcal::resample_model(pm, 0.0, c);
  double ew = 0, m2 = 0;
  for (std::size_t j = 0; j < c.size(); ++j) {
    ew += (1.0 - out[j]) * 1.7;
    m2 += (1.0 - out[j]) * 1.7 * (c[j] - 6000.0) * (c[j] - 6000.0);
  }
  const double ew_true = 0.5 * 0.3 * std::sqrt(2 * M_PI);
  EXPECT_NEAR(ew / ew_true, 1.0, 2e-3);
  // The second moment of the binned profile includes the pixel width (Δ²/12).
  const double sigma = std::sqrt(m2 / ew), expect = std::sqrt(0.09 + std::pow(5.0 / 2.354820045, 2) + 1.7 * 1.7 / 12.0);
  EXPECT_NEAR(sigma / expect, 1.0, 5e-3) << sigma << " vs " << expect;
  // A shift by v moves the line centre by λ v/c.
  const auto sh = fluxcal::resample_model(pm, 300.0, c);
  double m1 = 0, s0 = 0;
  for (std::size_t j = 0; j < c.size(); ++j) m1 += (1.0 - sh[j]) * c[j], s0 += 1.0 - sh[j];
  EXPECT_NEAR(m1 / s0 - 6000.0, 6000.0 * 300.0 / fluxcal::kSpeedOfLightKmS, 0.02);
}

TEST(FluxcalFit, RadialVelocityPullsHaveUnitWidth) {
  const auto& g = grid();
  const long idx = g.find({6250, 4.5, 0.0, 0.0});
  ASSERT_GE(idx, 0);
  auto cfg = config();
  cfg.interpolate = false;
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> u(-150, 150);
  std::vector<double> pulls;
  double mean_err = 0;
  const int n = 40;
  for (int k = 0; k < n; ++k) {
    sim::StarTemplate s;
    s.teff_k = 6250;
    s.logg = 4.5;
    s.rv_km_s = u(rng);
    const auto obs = observe(s, 3000.0, rng);
    const auto r = fluxcal::fit_template(obs, g, {static_cast<std::size_t>(idx)}, cfg);
    pulls.push_back((r.rv.rv_km_s - s.rv_km_s) / r.rv.rv_err_km_s);
    mean_err += r.rv.rv_err_km_s / n;
  }
  const auto st = kspecdr::testing::pull_stats(pulls);
  std::printf("RV pulls over %d spectra (S/N ~55): mean %.3f, stddev %.3f; mean error %.2f km/s\n", n, st.mean,
              st.stddev, mean_err);
  EXPECT_LT(std::abs(st.mean), 3.0 / std::sqrt(n));
  // The standard deviation of n unit normals scatters by ~1/√(2n) = 0.11.
  EXPECT_GT(st.stddev, 0.7);
  EXPECT_LT(st.stddev, 1.35);
}

TEST(FluxcalFit, AStarBetweenGridPointsIsRecovered) {
  const auto& g = grid();
  auto cfg = config();
  std::mt19937_64 rng(7);
  sim::StarTemplate s;
  s.teff_k = 6130;
  s.logg = 4.3;
  s.mh = -0.2;
  s.alpha = 0.1;
  s.rv_km_s = 37.0;
  const auto obs = observe(s, 20000.0, rng);
  std::vector<std::size_t> all(g.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto r = fluxcal::fit_template(obs, g, all, cfg);
  std::printf("fit: Teff %.0f logg %.2f [M/H] %.2f [a/M] %.2f (grid %ld, interpolated %d), RV %.2f +- %.2f km/s "
              "(CCF %.2f +- %.2f), chi2/dof %.2f\n",
              r.params.teff_k, r.params.logg, r.params.mh, r.params.alpha, r.grid_index, r.interpolated, r.rv.rv_km_s,
              r.rv.rv_err_km_s, r.rv.ccf_rv_km_s, r.rv.ccf_err_km_s, r.chi2_dof());
  std::printf("      sigma from the fit's covariance: Teff %.0f K, logg %.3f, [M/H] %.3f, [a/M] %.3f\n",
              std::sqrt(r.param_cov[0][0]), std::sqrt(r.param_cov[1][1]), std::sqrt(r.param_cov[2][2]),
              std::sqrt(r.param_cov[3][3]));
  EXPECT_TRUE(r.interpolated);
  EXPECT_LE(std::abs(r.params.teff_k - s.teff_k), 3.0 * std::sqrt(r.param_cov[0][0]));
  EXPECT_LT(std::abs(r.rv.rv_km_s - s.rv_km_s), 3.0 * r.rv.rv_err_km_s);
  EXPECT_LT(r.chi2_dof(), 2.0);
  EXPECT_EQ(r.candidates.size(), g.size() + (r.interpolated ? 1u : 0u));
  // The model on the data pixels, normalised like the data, follows it within the noise.
  double chi2 = 0;
  long n = 0;
  for (std::size_t i = 0; i < r.normalised_data.size(); ++i)
    if (std::isfinite(r.normalised_data[i]))
      chi2 += std::pow((r.normalised_data[i] - r.normalised_model[i]) / r.normalised_sigma[i], 2), ++n;
  EXPECT_NEAR(chi2, r.chi2, 1e-6 * r.chi2);

  // Huber scoring finds the same star, also with a cosmic ray that χ² would chase.
  auto hub = cfg;
  hub.metric = "huber";
  auto obs2 = obs;
  obs2.flux[400] += 30.0 * std::sqrt(obs2.variance[400]);
  const auto rh = fluxcal::fit_template(obs2, g, all, hub);
  EXPECT_NEAR(rh.params.teff_k, s.teff_k, 250.0);
  EXPECT_LT(std::abs(rh.rv.rv_km_s - s.rv_km_s), 3.0 * rh.rv.rv_err_km_s + 1.0);
}

// The colour of the fitted model against the truth, in units of its predicted σ (`model_uncertainty`), over
// noise realisations of one star between the grid points: the continuum-normalised fit cannot see the slope a
// wrong Teff gives the model, so that error is carried only by the parameters term (the fit's covariance times
// ∂ ln F/∂p) and the neighbours term (the interpolation). The truth is the simulator's own star, convolved,
// shifted by the fitted RV and resampled like the model; both are taken less their mean over the pixels (the
// level is the photometric scale's). Pull of one blue pixel (5050 Å) and of Teff per spectrum; n spectra, so
// |mean| ≤ 3/√n and |width − 1| ≤ 3/√(2n).
TEST(FluxcalFit, ModelColourPullsHaveUnitWidth) {
  const auto& g = grid();
  const auto cfg = config();
  const auto candidates = fluxcal::select_candidates(g, {5750.0, 6500.0}, cfg);  // as a colour range would give
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(-100, 100);
  sim::StarTemplate s;
  s.teff_k = 6130;
  s.logg = 4.3;
  s.mh = -0.2;
  s.alpha = 0.1;
  std::vector<double> truth_flux;
  for (double l : g.wavelength_angstrom) truth_flux.push_back(s.surface_flux(l, true));
  const std::size_t j = 25;  // 5050 Å
  std::vector<double> colour_pulls, teff_pulls;
  double mean_sigma = 0, mean_sigma_teff = 0;
  const int n = 40;
  for (int k = 0; k < n; ++k) {
    s.rv_km_s = u(rng);
    const auto obs = observe(s, 3000.0, rng);
    const auto r = fluxcal::fit_template(obs, g, candidates, cfg);
    const auto mu = fluxcal::model_uncertainty(obs, g, r, cfg);
    const auto pm = fluxcal::prepare_model(g.wavelength_angstrom, truth_flux, cfg.resolution, 0.0, 4980.0, 7020.0);
    const auto truth = fluxcal::resample_model(pm, r.rv.rv_km_s, obs.wavelength_angstrom);
    std::vector<double> d(truth.size());
    double mean = 0;
    for (std::size_t i = 0; i < d.size(); ++i) {
      d[i] = std::log(r.model_on_data[i] / truth[i]);
      mean += d[i] / static_cast<double>(d.size());
    }
    ASSERT_TRUE(std::isfinite(mean));
    ASSERT_GT(mu.rel_var[j], 0.0);
    colour_pulls.push_back((d[j] - mean) / std::sqrt(mu.rel_var[j]));
    ASSERT_GT(r.param_cov[0][0], 0.0);
    teff_pulls.push_back((r.params.teff_k - s.teff_k) / std::sqrt(r.param_cov[0][0]));
    mean_sigma += std::sqrt(mu.rel_var[j]) / n;
    mean_sigma_teff += std::sqrt(r.param_cov[0][0]) / n;
  }
  const auto cp = kspecdr::testing::pull_stats(colour_pulls), tp = kspecdr::testing::pull_stats(teff_pulls);
  std::printf("colour at 5050 A over %d spectra (S/N ~55): pulls mean %+.3f, width %.3f, mean sigma %.3f %%; Teff pulls "
              "mean %+.3f, width %.3f, mean sigma %.0f K\n",
              n, cp.mean, cp.stddev, 100 * mean_sigma, tp.mean, tp.stddev, mean_sigma_teff);
  EXPECT_LE(std::abs(cp.mean), 3.0 / std::sqrt(n));
  EXPECT_NEAR(cp.stddev, 1.0, 3.0 / std::sqrt(2.0 * n));
  EXPECT_LE(std::abs(tp.mean), 3.0 / std::sqrt(n));
  EXPECT_NEAR(tp.stddev, 1.0, 3.0 / std::sqrt(2.0 * n));
}

// Correlated noise: the spectra of a star between the grid points resampled like a RED (neighbours share half a
// detector pixel, correlation ≈ ½, so a smooth sum over the pixels has twice the variance that independent pixels
// would give). The fitted RV and Teff against the truth, in units of their errors, over n noise draws: with the
// spectrum's covariance of neighbours (the RED's COVAR) and, fitted again without it, with the correlation estimated
// from the residuals. |mean| ≤ 3/√n and |width − 1| ≤ 3/√(2n). The fit's resolution includes the resampling's
// broadening: each output pixel averages two detector pixels 2 Å apart, which adds (2 Å)²/4 to the LSF's variance.
TEST(FluxcalFit, CorrelatedNoisePullsHaveUnitWidth) {
  const auto& g = grid();
  auto cfg = config();
  cfg.resolution.fwhm_poly_angstrom = {2.354820045 * std::sqrt(kLsfSigma * kLsfSigma + 1.0)};
  const auto candidates = fluxcal::select_candidates(g, {6000.0, 6250.0}, cfg);  // the cell around the star
  std::mt19937_64 rng(23);
  std::uniform_real_distribution<double> u(-100, 100);
  sim::StarTemplate s;
  s.teff_k = 6130;
  s.logg = 4.3;
  s.mh = -0.2;
  s.alpha = 0.1;
  const int n = 40;
  struct Pulls {
    std::vector<double> rv, teff, rv_white;
    double rho1 = 0, rv_factor = 0, rv_err = 0, teff_err = 0;
  };
  std::map<std::string, Pulls> by;  // "covariance" | "residuals"
  for (int k = 0; k < n; ++k) {
    s.rv_km_s = u(rng);
    std::mt19937_64 draw(rng());
    for (bool with_cov : {true, false}) {
      auto d = draw;  // the same noise for both
      const auto obs = observe_resampled(s, 3000.0, d, with_cov);
      const auto r = fluxcal::fit_template(obs, g, candidates, cfg);
      ASSERT_EQ(r.noise.source, with_cov ? "covariance" : "residuals");
      ASSERT_GT(r.rv.rv_err_km_s, 0.0);
      ASSERT_GT(r.param_cov[0][0], 0.0);
      auto& p = by[r.noise.source];
      p.rv.push_back((r.rv.rv_km_s - s.rv_km_s) / r.rv.rv_err_km_s);
      p.rv_white.push_back(p.rv.back() * std::sqrt(r.noise.rv_factor));
      p.teff.push_back((r.params.teff_k - s.teff_k) / std::sqrt(r.param_cov[0][0]));
      p.rho1 += r.noise.rho1 / n;
      p.rv_factor += r.noise.rv_factor / n;
      p.rv_err += r.rv.rv_err_km_s / n;
      p.teff_err += std::sqrt(r.param_cov[0][0]) / n;
    }
  }
  for (const auto& [source, p] : by) {
    const auto rv = kspecdr::testing::pull_stats(p.rv), te = kspecdr::testing::pull_stats(p.teff),
               rw = kspecdr::testing::pull_stats(p.rv_white);
    std::printf("correlation from the %s: rho1 %.3f, RV variance factor %.2f; RV pulls mean %+.3f width %.3f "
                "(%.3f without the factor), mean error %.2f km/s; Teff pulls mean %+.3f width %.3f, mean sigma %.0f K\n",
                source.c_str(), p.rho1, p.rv_factor, rv.mean, rv.stddev, rw.stddev, p.rv_err, te.mean, te.stddev,
                p.teff_err);
    // The resampling gives ρ = V_shared/4 / √(V_j V_{j+1}) with V_j = (V_i + V_{i+1})/4: ½ where the variance is
    // smooth. From the residuals (≈ 1000 pixels per spectrum, averaged over n) the estimate scatters by ≈ 0.03/√n.
    EXPECT_NEAR(p.rho1, 0.5, source == "covariance" ? 0.01 : 0.05) << source;
    EXPECT_LE(std::abs(rv.mean), 3.0 / std::sqrt(n)) << source;
    EXPECT_NEAR(rv.stddev, 1.0, 3.0 / std::sqrt(2.0 * n)) << source;
    EXPECT_LE(std::abs(te.mean), 3.0 / std::sqrt(n)) << source;
    EXPECT_NEAR(te.stddev, 1.0, 3.0 / std::sqrt(2.0 * n)) << source;
  }
  EXPECT_EQ(by.size(), 2u);
}

// The modes term of Var(model): a second minimum whose score is worse by 2 ln 3 (× the reduced χ²) has weight
// (1/3) / (1 + 1/3) = 1/4, and adds 1/4 (d − mean d)² per pixel, d = ln F_second − ln F_used on the pixels
// (computed here independently: the grid model convolved, shifted by the fitted RV, resampled).
TEST(FluxcalFit, ASecondMinimumAddsItsColourWithItsWeight) {
  const auto& g = grid();
  const auto cfg = config();
  std::mt19937_64 rng(5);
  sim::StarTemplate s;
  s.teff_k = 6130;
  s.logg = 4.3;
  s.rv_km_s = 12.0;
  const auto obs = observe(s, 3000.0, rng);
  std::vector<std::size_t> all(g.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  auto r = fluxcal::fit_template(obs, g, all, cfg);
  ASSERT_EQ(r.modes.size(), 1u) << "one minimum expected for a star inside one grid cell";
  const auto one = fluxcal::model_uncertainty(obs, g, r, cfg);
  EXPECT_EQ(one.modes_weight, 0.0);
  fluxcal::FitMode second = r.modes.front();
  second.params = {6500.0, 4.0, 0.0, 0.4};  // a grid point 1.5 grid steps hotter, with other lines
  second.score += 2.0 * std::log(3.0) * std::max(1.0, r.chi2_dof());
  r.modes.push_back(second);
  const auto two = fluxcal::model_uncertainty(obs, g, r, cfg);
  EXPECT_NEAR(two.modes_weight, 0.25, 1e-12);
  const long idx = g.find(second.params);
  ASSERT_GE(idx, 0);
  const auto pm = fluxcal::prepare_model(g.wavelength_angstrom, g.flux_of(static_cast<std::size_t>(idx)), cfg.resolution,
                                         0.0, obs.wavelength_angstrom.front() / (1.0 + cfg.rv_max_km_s / fluxcal::kSpeedOfLightKmS),
                                         obs.wavelength_angstrom.back() / (1.0 - cfg.rv_max_km_s / fluxcal::kSpeedOfLightKmS));
  const auto m2 = fluxcal::resample_model(pm, r.rv.rv_km_s, obs.wavelength_angstrom);
  std::vector<double> d(m2.size());
  double mean = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    d[i] = std::log(m2[i] / r.model_on_data[i]);
    mean += d[i] / static_cast<double>(d.size());
  }
  double largest = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    const double expected = 0.25 * (d[i] - mean) * (d[i] - mean);
    EXPECT_NEAR(two.rel_var[i] - one.rel_var[i], expected, 1e-9 + 1e-6 * expected) << i;
    largest = std::max(largest, std::sqrt(expected));
  }
  std::printf("second minimum at weight 1/4: up to %.2f %% per pixel added (sigma)\n", 100 * largest);
  EXPECT_GT(largest, 0.005);  // a colour that matters: 370 K hotter
}

TEST(FluxcalFit, ColoursBoundTheTemperature) {
  KSPECDR_REQUIRE_SHARED(shared);
  sim::SynthGridSpec spec;  // a grid that covers the PS1 g, r, i bands
  spec.teff_k = {5000, 5250, 5500, 5750, 6000, 6250, 6500, 6750, 7000, 7250, 7500};
  spec.logg = {4.5};
  spec.mh = {0.0};
  spec.alpha = {0.0};
  spec.lambda_min = 3500;
  spec.lambda_max = 9000;
  spec.step_angstrom = 1.0;
  const auto g = sim::make_synthetic_template_grid(spec);
  fluxcal::BandMagnitudes m;
  for (const char* b : {"ps1_g", "ps1_r", "ps1_i"})
    m.filters.push_back(fluxcal::read_filter_curve(shared / "data/filters" / (std::string(b) + ".dat"), "um", b));
  const long i = g.find({6250, 4.5, 0.0, 0.0});
  const auto f = g.flux_of(static_cast<std::size_t>(i));
  for (const auto& fc : m.filters) {
    m.mag_ab.push_back(fluxcal::synthetic_ab_mag(g.wavelength_angstrom, f, fc) + 20.0);
    m.err.push_back(0.01);
  }
  const auto tr = fluxcal::teff_range_from_colours(g, m, config());
  std::printf("Teff range from g-r: %.0f..%.0f K\n", tr[0], tr[1]);
  EXPECT_LE(tr[0], 6250.0);
  EXPECT_GE(tr[1], 6250.0);
  EXPECT_LT(tr[1] - tr[0], 2500.0 - 1.0);  // narrower than the whole grid
  const auto cand = fluxcal::select_candidates(g, tr, config());
  EXPECT_LT(cand.size(), g.size());
}

TEST(FluxcalFit, ClearErrors) {
  const auto& g = grid();
  std::mt19937_64 rng(1);
  sim::StarTemplate s;
  auto obs = observe(s, 1000.0, rng);
  auto cfg = config();
  EXPECT_THROW(fluxcal::fit_template(obs, g, {}, cfg), DataError);  // no candidate
  // The grid (4500..7600 Å) does not cover a spectrum reaching 8000 Å.
  for (auto& w : obs.wavelength_angstrom) w += 1000.0;
  try {
    fluxcal::fit_template(obs, g, {0}, cfg);
    FAIL() << "a grid that does not cover the data was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("does not cover"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("needs"), std::string::npos) << e.what();
  }
  for (auto& w : obs.wavelength_angstrom) w -= 1000.0;
  cfg.metric = "l1";
  EXPECT_THROW(fluxcal::fit_template(obs, g, {0}, cfg), ConfigError);
  cfg.metric = "chi2";
  std::fill(obs.good.begin(), obs.good.end(), 0);
  EXPECT_THROW(fluxcal::fit_template(obs, g, {0}, cfg), DataError);
}

// ---------------------------------------------------------------- catalog, scale, combination


TEST(FluxcalCatalog, PositionalMatchingSurvivesAShuffledCatalog) {
  kspecdr::testing::TempDir dir("kspecdr-catalog");
  std::vector<fluxcal::FiberPosition> fibers;
  for (int i = 0; i < 6; ++i) fibers.push_back({fmt::format("fib{}", i), 150.0 + 0.01 * i, -30.0 + 0.007 * i});
  {
    std::ofstream o(dir / "cat.csv");
    o << "# ATLAS-RefCat2-like\nname,RA,Dec,ps1_g,ps1_g_err,ps1_r,dps1_r,note\n";
    // Reversed order, positions off by ~0.2", one extra star nearby (3"), one fiber (fib2) without a star.
    for (int i = 5; i >= 0; --i) {
      if (i == 2) continue;
      o << fmt::format("star{},{:.7f},{:.7f},{},{},{},{},x\n", i, 150.0 + 0.01 * i + 0.2 / 3600, -30.0 + 0.007 * i,
                       15.0 + i, 0.01, 14.5 + i, 0.02);
    }
    o << fmt::format("decoy,{:.7f},{:.7f},,,16,0.02,y\n", 150.03, -30.0 + 0.021 + 3.0 / 3600);
  }
  const auto cat = fluxcal::read_catalog(dir / "cat.csv");
  ASSERT_EQ(cat.bands, (std::vector<std::string>{"ps1_g", "ps1_r"}));
  ASSERT_EQ(cat.stars.size(), 6u);
  EXPECT_TRUE(std::isnan(cat.stars.back().mag[0]));
  const auto m = fluxcal::match_by_position(fibers, cat, 2.0);
  for (int i = 0; i < 6; ++i) {
    if (i == 2) {
      EXPECT_EQ(m.star[2], -1);
      continue;
    }
    ASSERT_GE(m.star[static_cast<std::size_t>(i)], 0);
    EXPECT_EQ(cat.stars[static_cast<std::size_t>(m.star[static_cast<std::size_t>(i)])].name, fmt::format("star{}", i));
    EXPECT_NEAR(m.separation_arcsec[static_cast<std::size_t>(i)], 0.2 * std::cos(30.0 * M_PI / 180), 0.01);
  }
  ASSERT_EQ(m.unmatched.size(), 1u);
  EXPECT_NE(m.unmatched[0].find("fib2"), std::string::npos);
  // Row order (legacy) pairs them wrongly: it is there only on request.
  const auto legacy = fluxcal::match_by_row_order(fibers, cat);
  EXPECT_EQ(cat.stars[static_cast<std::size_t>(legacy.star[0])].name, "star5");
  // Two fibers on one star: the nearer one gets it.
  std::vector<fluxcal::FiberPosition> two = {{"a", 150.0, -30.0}, {"b", 150.0, -30.0 + 0.5 / 3600}};
  const auto m2 = fluxcal::match_by_position(two, cat, 2.0);
  EXPECT_EQ(m2.star[0], static_cast<long>(4));  // star0 is the 5th row
  EXPECT_EQ(m2.star[1], -1);
  EXPECT_NE(m2.unmatched[0].find("closer"), std::string::npos);
  // Bad catalogs.
  std::ofstream(dir / "bad.csv") << "name,ra\nx,1\n";
  EXPECT_THROW(fluxcal::read_catalog(dir / "bad.csv"), DataError);
  std::ofstream(dir / "bad2.csv") << "name,ra,dec,g,g_err\nx,1,2,abc,0.1\n";
  EXPECT_THROW(fluxcal::read_catalog(dir / "bad2.csv"), DataError);
}

TEST(FluxcalCatalog, ScaleFromSyntheticPhotometryIsWithinItsError) {
  KSPECDR_REQUIRE_SHARED(shared);
  // A full-range model (the Gaia G band reaches 10500 Å).
  sim::SynthGridSpec s;
  s.teff_k = {6000};
  s.logg = {4.5};
  s.mh = {0.0};
  s.alpha = {0.0};
  const auto g = sim::make_synthetic_template_grid(s);
  const auto f = g.flux_of(0);
  std::map<std::string, fluxcal::FilterCurve> filters;
  for (const char* b : {"ps1_g", "ps1_r", "ps1_i", "gaia_g"})
    filters[b] = fluxcal::read_filter_curve(shared / "data/filters" / (std::string(b) + ".dat"), "um", b);
  const double true_scale = 3.7e-22;  // (R/d)²
  std::vector<double> scaled(f);
  for (auto& v : scaled) v *= true_scale;
  fluxcal::Catalog cat;
  cat.bands = {"ps1_g", "ps1_r", "ps1_i", "gaia_g", "ps1_y"};
  std::mt19937_64 rng(3);
  std::normal_distribution<double> gauss(0, 1);
  std::vector<double> pulls;
  for (int k = 0; k < 200; ++k) {
    fluxcal::CatalogStar st;
    st.name = "s";
    for (const auto& b : cat.bands) {
      const double err = 0.02;
      double m = b == "ps1_y" ? 14.0 : fluxcal::synthetic_ab_mag(g.wavelength_angstrom, scaled, filters[b]);
      if (b == "gaia_g") m -= fluxcal::default_ab_offset("gaia_g");  // the catalog holds Vega G
      st.mag.push_back(m + err * gauss(rng));
      st.err.push_back(err);
    }
    const auto ps = fluxcal::scale_to_photometry(g.wavelength_angstrom, f, cat, st, filters, {});
    EXPECT_EQ(ps.n_bands, 4);  // ps1_y has no filter curve loaded
    EXPECT_FALSE(ps.bands[4].used);
    pulls.push_back((ps.scale - true_scale) / ps.scale_err);
  }
  const auto stt = kspecdr::testing::pull_stats(pulls);
  std::printf("scale pulls: mean %.3f stddev %.3f over %zu\n", stt.mean, stt.stddev, pulls.size());
  EXPECT_LT(std::abs(stt.mean), 0.25);
  EXPECT_NEAR(stt.stddev, 1.0, 0.15);
  // No usable band: a clear error.
  fluxcal::CatalogStar none;
  none.name = "nobody";
  none.mag.assign(cat.bands.size(), NAN);
  none.err.assign(cat.bands.size(), NAN);
  EXPECT_THROW(fluxcal::scale_to_photometry(g.wavelength_angstrom, f, cat, none, filters, {}), DataError);
}

namespace {
/// n stars that measure the same curve with a grey factor each and Gaussian noise of relative size `rel`.
std::vector<fluxcal::StarCal> stars_of(int n, double rel, std::mt19937_64& rng, std::vector<double>& truth) {
  truth.clear();
  for (int j = 0; j < 500; ++j) truth.push_back(1e-13 * (1.0 + 0.5 * std::sin(j / 80.0)));
  std::normal_distribution<double> g(0, 1);
  std::uniform_real_distribution<double> u(0.85, 1.15);
  std::vector<fluxcal::StarCal> out;
  for (int s = 0; s < n; ++s) {
    fluxcal::StarCal c;
    c.name = fmt::format("star{}", s);
    const double a = u(rng);
    for (double t : truth) {
      const double sig = rel * t * a;
      c.cal.push_back(t * a + sig * g(rng));
      c.variance.push_back(sig * sig);
      c.good.push_back(1);
    }
    c.chi2_dof = 1.0;
    c.snr = 50;
    c.scale_rel_err = 0.01;
    out.push_back(c);
  }
  return out;
}
}  // namespace

TEST(FluxcalCombine, AStarWithWrongMagnitudesIsRejectedWithItsReason) {
  std::mt19937_64 rng(11);
  std::vector<double> truth;
  auto stars = stars_of(6, 0.02, rng, truth);
  for (auto& v : stars[3].cal) v *= 2.5;  // 1 mag too faint in the catalog
  for (auto& v : stars[3].variance) v *= 6.25;
  fluxcal::CombineConfig cfg;
  const auto c = fluxcal::combine_calibrations(stars, cfg);
  EXPECT_EQ(c.n_stars, 5);
  EXPECT_TRUE(c.qc[3].rejected);
  EXPECT_NE(c.qc[3].reason.find("level"), std::string::npos) << c.qc[3].reason;
  for (int s = 0; s < 6; ++s)
    if (s != 3) EXPECT_FALSE(c.qc[static_cast<std::size_t>(s)].rejected) << c.qc[static_cast<std::size_t>(s)].reason;
  // The grey factors have geometric mean 1; the combined curve is the truth times that mean level.
  double sum_log = 0, level = 0;
  for (int s = 0; s < 6; ++s)
    if (s != 3) sum_log += std::log(c.qc[static_cast<std::size_t>(s)].factor);
  EXPECT_NEAR(sum_log, 0.0, 1e-9);
  std::vector<double> r;
  for (std::size_t j = 0; j < truth.size(); ++j) r.push_back(c.cal[j] / truth[j]);
  std::sort(r.begin(), r.end());
  level = r[r.size() / 2];
  // Scatter of the ratio about its level: the combined noise, ~2 %/√5 per pixel.
  double ss = 0;
  for (std::size_t j = 0; j < truth.size(); ++j) ss += std::pow(c.cal[j] / truth[j] / level - 1.0, 2);
  EXPECT_LT(std::sqrt(ss / truth.size()), 0.02 / std::sqrt(5.0) * 1.3);
  // The rms of 5 stars of 2 % noise about their mean: 0.02 √(median χ²₄ / 5) = 0.0164 at the median pixel.
  EXPECT_GT(c.rms_median, 0.012);
  EXPECT_LT(c.rms_median, 0.02);
}

TEST(FluxcalCombine, NeverMoreThanHalfAndOneStarHasNoScatter) {
  std::mt19937_64 rng(12);
  std::vector<double> truth;
  auto stars = stars_of(4, 0.02, rng, truth);
  for (int s = 0; s < 3; ++s) stars[static_cast<std::size_t>(s)].chi2_dof = 10.0 + s;  // three fail the χ² gate
  const auto c = fluxcal::combine_calibrations(stars, {});
  EXPECT_EQ(c.n_stars, 2);
  EXPECT_TRUE(c.qc[2].rejected && c.qc[1].rejected);  // the worst two
  EXPECT_FALSE(c.qc[0].rejected);
  EXPECT_NE(c.qc[0].reason.find("never more than half"), std::string::npos) << c.qc[0].reason;
  // One star passes through; its scatter is undefined, not 0.
  const auto one = fluxcal::combine_calibrations({stars[3]}, {});
  EXPECT_EQ(one.n_stars, 1);
  EXPECT_TRUE(std::isnan(one.rms_median));
  for (std::size_t j = 0; j < truth.size(); ++j) EXPECT_DOUBLE_EQ(one.cal[j], stars[3].cal[j]);
  // A pixel hit in one star (e.g. a cosmic ray) is clipped, the median ignores it too.
  auto hit = stars;
  for (auto& s : hit) s.chi2_dof = 1.0;
  hit[1].cal[100] *= 1.5;
  const auto w = fluxcal::combine_calibrations(hit, {});
  EXPECT_EQ(w.n_used[100], 3);
  fluxcal::CombineConfig med;
  med.method = "median";
  med.smooth = "savgol";
  const auto m = fluxcal::combine_calibrations(hit, med);
  EXPECT_NEAR(m.cal[100] / truth[100] / (m.cal[300] / truth[300]), 1.0, 0.03);
  // Errors.
  EXPECT_THROW(fluxcal::combine_calibrations({}, {}), DataError);
  fluxcal::CombineConfig bad;
  bad.method = "mode";
  EXPECT_THROW(fluxcal::combine_calibrations(stars, bad), ConfigError);
}

TEST(FluxcalCombine, SavitzkyGolayKeepsAPolynomialAndBridgesGaps) {
  std::vector<double> y;
  std::vector<unsigned char> good;
  for (int j = 0; j < 300; ++j) {
    const double x = j / 100.0;
    y.push_back(1.0 + 0.3 * x - 0.2 * x * x + 0.05 * x * x * x);
    good.push_back(j < 140 || j > 160);
  }
  const auto s = fluxcal::savitzky_golay(y, good, 31, 3);
  for (int j = 0; j < 300; ++j)
    if (good[static_cast<std::size_t>(j)]) EXPECT_NEAR(s[static_cast<std::size_t>(j)], y[static_cast<std::size_t>(j)], 2e-3) << j;
}
