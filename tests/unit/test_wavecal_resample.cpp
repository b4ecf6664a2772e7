// Flux-conserving resampling, flexure from sky lines and cross-correlation,
// and fiber-mode smoothing of wavelength solutions, on spectra made here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/wavecal/fiber.hpp"
#include "kspecdr/wavecal/flexure.hpp"
#include "kspecdr/wavecal/resample.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::wavecal;
namespace fs = std::filesystem;

namespace {

double big_phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

/// Pixel wavelengths of a mildly non-linear solution (Å).
std::vector<double> pixel_wavelengths(long n, double start = 5000.0, double disp = 1.1, double curv = 2e-5) {
  std::vector<double> w(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) {
    const double x = static_cast<double>(i);
    w[static_cast<std::size_t>(i)] = start + disp * x + curv * x * x;
  }
  return w;
}

Spectrum1D flat_spectrum(std::size_t n, double flux, double var) {
  return Spectrum1D{std::vector<double>(n, flux), std::vector<double>(n, var), std::vector<MaskPixel>(n, 0)};
}

/// Lines (px) as pixel-integrated Gaussians of σ `sigma`, plus `bg`, with Poisson + read noise.
Spectrum1D emission_spectrum(long n, const std::vector<double>& x0, const std::vector<double>& flux, double sigma,
                             double bg, double rn, std::mt19937_64& rng) {
  std::vector<double> e(static_cast<std::size_t>(n), bg);
  for (std::size_t k = 0; k < x0.size(); ++k)
    for (long i = std::max(0L, static_cast<long>(x0[k] - 8 * sigma));
         i <= std::min(n - 1, static_cast<long>(x0[k] + 8 * sigma)); ++i) {
      const double xi = static_cast<double>(i);
      e[static_cast<std::size_t>(i)] +=
          flux[k] * (big_phi((xi + 0.5 - x0[k]) / sigma) - big_phi((xi - 0.5 - x0[k]) / sigma));
    }
  Spectrum1D s;
  std::normal_distribution<double> g(0.0, 1.0);
  for (double v : e) {
    std::poisson_distribution<long> p(v);
    s.flux.push_back(static_cast<double>(p(rng)) + rn * g(rng));
    s.variance.push_back(v + rn * rn);
    s.mask.push_back(0);
  }
  return s;
}

std::optional<fs::path> linelist_dir() {
  const fs::path debian = "/usr/lib/iraf/noao/lib/linelists";
  if (fs::exists(debian / "skylines.dat")) return debian;
  if (auto s = kspecdr::testing::shared_dir(); s && fs::exists(*s / "data/linelists/iraf/skylines.dat"))
    return *s / "data/linelists/iraf";
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------- resampling

TEST(WavecalResample, ConservesCountsAndDensityIntegral) {
  const auto w = pixel_wavelengths(1500);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(10.0, 1000.0);
  Spectrum1D s = flat_spectrum(w.size(), 0.0, 1.0);
  for (auto& f : s.flux) f = u(rng);
  ResampleConfig cfg;
  cfg.step_angstrom = 0.73;
  const WavelengthGrid g = make_grid(cfg, {w});
  ASSERT_GT(g.size(), 100u);
  const auto r = resample(w, s, g, cfg);
  // Counts: the output total equals the input counts inside [E_0, E_m], partial pixels pro rata.
  const auto e = pixel_edges(w);
  double expect = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double ov = std::min(e[i + 1], g.edges.back()) - std::max(e[i], g.edges.front());
    if (ov > 0) expect += s.flux[i] * ov / (e[i + 1] - e[i]);
  }
  const double got = std::accumulate(r.flux.begin(), r.flux.end(), 0.0);
  EXPECT_NEAR(got / expect, 1.0, 1e-6);
  for (auto m : r.mask) EXPECT_EQ(m, 0);  // the default grid lies inside the input

  // Density: ∫ f dλ is conserved.
  ResampleConfig dcfg = cfg;
  dcfg.flux_is_density = true;
  dcfg.spacing = ResampleConfig::Spacing::Log;
  dcfg.step_km_s = 45.0;
  const WavelengthGrid lg = make_grid(dcfg, {w});
  const auto rd = resample(w, s, lg, dcfg);
  double in_int = 0, out_int = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double ov = std::min(e[i + 1], lg.edges.back()) - std::max(e[i], lg.edges.front());
    if (ov > 0) in_int += s.flux[i] * ov;
  }
  for (std::size_t j = 0; j < lg.size(); ++j) out_int += rd.flux[j] * (lg.edges[j + 1] - lg.edges[j]);
  EXPECT_NEAR(out_int / in_int, 1.0, 1e-6);
  EXPECT_NEAR(std::log(lg.centres[1] / lg.centres[0]), std::log1p(45.0 / 299792.458), 1e-12);
}

TEST(WavecalResample, PropagatedVarianceAndCovarianceMatchRealisations) {
  const auto w = pixel_wavelengths(300);
  ResampleConfig cfg;
  cfg.step_angstrom = 1.7;  // wider than the input pixels: neighbours share one input pixel
  const WavelengthGrid g = make_grid(cfg, {w});
  const std::size_t m = g.size();
  const int reps = 4000;
  std::mt19937_64 rng(99);
  std::normal_distribution<double> gauss(0.0, 1.0);
  const double truth_flux = 500.0;
  std::vector<double> sum(m, 0), sum2(m, 0), sumx(m, 0);
  ResampledSpectrum first;
  Spectrum1D s = flat_spectrum(w.size(), truth_flux, 0.0);
  for (std::size_t i = 0; i < w.size(); ++i) s.variance[i] = 20.0 + 0.3 * static_cast<double>(i);
  std::vector<double> pulls;
  for (int r = 0; r < reps; ++r) {
    Spectrum1D n = s;
    for (std::size_t i = 0; i < w.size(); ++i) n.flux[i] += std::sqrt(s.variance[i]) * gauss(rng);
    const auto out = resample(w, n, g, cfg);
    if (r == 0) first = out;
    for (std::size_t j = 0; j < m; ++j) {
      sum[j] += out.flux[j];
      sum2[j] += out.flux[j] * out.flux[j];
      if (j + 1 < m) sumx[j] += out.flux[j] * out.flux[j + 1];
    }
  }
  const auto noiseless = resample(w, s, g, cfg);
  // Per output pixel: sample variance over the realisations / propagated variance ≈ 1 within its
  // sampling error √(2/reps) ≈ 2.2 %; the neighbour covariance likewise.
  int bad_var = 0, bad_cov = 0;
  for (std::size_t j = 0; j + 1 < m; ++j) {
    const double mean = sum[j] / reps, mean1 = sum[j + 1] / reps;
    const double var = sum2[j] / reps - mean * mean;
    const double var1 = sum2[j + 1] / reps - mean1 * mean1;
    const double cov = sumx[j] / reps - mean * mean1;
    if (std::abs(var / first.variance[j] - 1.0) > 4.0 * std::sqrt(2.0 / reps)) ++bad_var;
    const double cov_err = std::sqrt((var * var1 + cov * cov) / reps);
    if (std::abs(cov - first.covariance_next[j]) > 4.0 * cov_err) ++bad_cov;
    pulls.push_back((mean - noiseless.flux[j]) / std::sqrt(first.variance[j] / reps));
  }
  EXPECT_LE(bad_var, 1) << "of " << m - 1 << " pixels";
  EXPECT_LE(bad_cov, 1) << "of " << m - 1 << " pixels";
  const auto st = kspecdr::testing::pull_stats(pulls);
  EXPECT_NEAR(st.stddev, 1.0, 0.2);
  // The covariance is real and substantial here: ignoring it misstates the variance of a 2-pixel sum.
  double frac = 0;
  for (std::size_t j = 0; j + 1 < m; ++j) frac += first.covariance_next[j] / std::sqrt(first.variance[j] * first.variance[j + 1]);
  EXPECT_GT(frac / static_cast<double>(m - 1), 0.05);
}

TEST(WavecalResample, MasksAreCarriedAndOutsideIsNoData) {
  const auto w = pixel_wavelengths(200);
  Spectrum1D s = flat_spectrum(w.size(), 10.0, 1.0);
  s.mask[100] = kMaskCosmic;
  ResampleConfig cfg;
  cfg.step_angstrom = 1.0;
  cfg.start_angstrom = w.front() - 20.0;
  cfg.end_angstrom = w.back() + 20.0;
  const WavelengthGrid g = make_grid(cfg, {w});
  const auto r = resample(w, s, g, cfg);
  const auto e = pixel_edges(w);
  int cosmic = 0;
  for (std::size_t j = 0; j < g.size(); ++j) {
    const bool outside = g.edges[j] < e.front() || g.edges[j + 1] > e.back();
    if (outside) {
      EXPECT_TRUE(r.mask[j] & kMaskNoData);
      EXPECT_EQ(r.flux[j], 0.0);
      EXPECT_TRUE(std::isinf(r.variance[j]));
    } else {
      EXPECT_FALSE(r.mask[j] & kMaskNoData);
    }
    const bool touches = std::min(g.edges[j + 1], e[101]) - std::max(g.edges[j], e[100]) > 0;
    if (touches && !outside) {
      EXPECT_TRUE(r.mask[j] & kMaskCosmic);
      ++cosmic;
    } else {
      EXPECT_FALSE(r.mask[j] & kMaskCosmic);
    }
  }
  EXPECT_GE(cosmic, 1);
  // A reversed dispersion gives the same result.
  auto wr = w;
  std::reverse(wr.begin(), wr.end());
  Spectrum1D sr = s;
  std::reverse(sr.flux.begin(), sr.flux.end());
  std::reverse(sr.mask.begin(), sr.mask.end());
  const auto rr = resample(wr, sr, g, cfg);
  for (std::size_t j = 0; j < g.size(); ++j) {
    EXPECT_NEAR(rr.flux[j], r.flux[j], 1e-9);
    EXPECT_EQ(rr.mask[j], r.mask[j]);
  }
  EXPECT_THROW(pixel_edges({1.0, 2.0, 2.0}), DataError);
}

TEST(WavecalResample, SpectrumSetGetsGridAndWcs) {
  SpectrumSet ex(2, 300);
  ex.flux.setConstant(5.0f);
  ex.variance.setConstant(2.0f);
  ex.var_star.setConstant(1.0f);
  ex.var_sky.setConstant(0.5f);
  ex.var_read.setConstant(0.3f);
  ex.var_cal.setConstant(0.2f);
  ex.apertures.resize(2);
  ex.diagnostics.resize(2);
  const auto w = pixel_wavelengths(300);
  ResampleConfig cfg;
  cfg.step_angstrom = 2.0;
  const WavelengthGrid g = make_grid(cfg, {w, w});
  const SpectrumSet out = resample_spectra(ex, {w, {}}, g, cfg);
  ASSERT_EQ(out.npix(), static_cast<Eigen::Index>(g.size()));
  EXPECT_NEAR(out.header.get_double("CRVAL1").value(), g.centres.front(), 1e-6);
  EXPECT_NEAR(out.header.get_double("CDELT1").value(), 2.0, 1e-12);
  const Eigen::Index mid = out.npix() / 2;
  EXPECT_NEAR(out.var_star(0, mid) + out.var_sky(0, mid) + out.var_read(0, mid) + out.var_cal(0, mid), out.variance(0, mid), 1e-4);
  EXPECT_TRUE(out.mask(1, mid) & kMaskNoData);  // aperture without wavelengths
}

// ---------------------------------------------------------------- flexure

TEST(WavecalFlexure, ShiftRecoveredFromSkyLinesAndCrossCorrelation) {
  const auto dir = linelist_dir();
  if (!dir) GTEST_SKIP() << "IRAF skylines.dat absent (Debian iraf-noao or ../shared/data/linelists/iraf)";
  const LineList sky = read_linelist(*dir / "skylines.dat", Medium::Air);
  // Arc-epoch solution: 5800–8000 Å over 2048 px.
  WavelengthSolution sol;
  sol.npix = 2048;
  sol.status = SolutionStatus::Ok;
  sol.lambda.xmin = 0;
  sol.lambda.xmax = 2047;
  sol.lambda.coeffs = {6900.0, 1100.0, 3.0};
  // Isolated list lines become sky lines of random strength.
  std::mt19937_64 rng(17);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double shift = 0.37;
  std::vector<double> x_ref, x_obs, f;
  for (std::size_t k = 0; k < sky.size(); ++k) {
    const double lam = sky.lines[k].wavelength_angstrom;
    const bool isolated = (k == 0 || lam - sky.lines[k - 1].wavelength_angstrom > 4.0) &&
                          (k + 1 == sky.size() || sky.lines[k + 1].wavelength_angstrom - lam > 4.0);
    const double x = sol.pixel(lam);
    if (!isolated || x < 10 || x > 2037) continue;
    x_ref.push_back(x);
    x_obs.push_back(x + shift);
    f.push_back(3000.0 * std::exp(-3.0 * u(rng)));
  }
  ASSERT_GE(x_ref.size(), 12u);
  const Spectrum1D reference = emission_spectrum(2048, x_ref, f, 1.4, 200.0, 4.0, rng);
  const Spectrum1D observed = emission_spectrum(2048, x_obs, f, 1.4, 200.0, 4.0, rng);
  WavecalConfig cfg;
  const FlexureResult a = flexure_from_sky_lines(observed, sol, sky, cfg);
  ASSERT_TRUE(a.ok) << a.message;
  EXPECT_NEAR(a.shift_px, shift, 0.05);
  EXPECT_LT(std::abs(a.shift_px - shift), 4.0 * a.shift_err_px + 0.005);
  EXPECT_GE(a.n_lines, 8);
  const FlexureResult b = flexure_from_cross_correlation(observed, reference, cfg);
  ASSERT_TRUE(b.ok) << b.message;
  EXPECT_NEAR(b.shift_px, shift, 0.05);
  EXPECT_LT(std::abs(b.shift_px - shift), 4.0 * b.shift_err_px + 0.01);
  // The corrected solution puts every line where it now is.
  const WavelengthSolution moved = apply_flexure(sol, a);
  EXPECT_NEAR(moved.wavelength(1000.0 + a.shift_px), sol.wavelength(1000.0), 1e-9);
  // A sky spectrum without lines: no shift, and it says why.
  const Spectrum1D flat = emission_spectrum(2048, {}, {}, 1.4, 200.0, 4.0, rng);
  const FlexureResult c = flexure_from_sky_lines(flat, sol, sky, cfg);
  EXPECT_FALSE(c.ok);
  EXPECT_FALSE(c.message.empty());
}

// ---------------------------------------------------------------- fiber mode

TEST(WavecalFiber, SmoothingRescuesAFiberWithThreeLines) {
  const auto dir = linelist_dir();
  if (!dir) GTEST_SKIP() << "IRAF henear.dat absent (Debian iraf-noao or ../shared/data/linelists/iraf)";
  const LineList list = read_linelist(*dir / "henear.dat", Medium::Air);
  const long npix = 2048;
  const int nf = 15;
  // λ_f(x): zero point and dispersion vary smoothly (quadratically) with the fiber index.
  auto truth = [&](int fib) {
    LegendreSeries s;
    s.xmin = 0;
    s.xmax = static_cast<double>(npix - 1);
    const double t = (fib - 7.0) / 7.0;
    s.coeffs = {6400.0 + 2.0 * t + 1.5 * t * t, 1074.0 * (1.0 + 0.002 * t), 6.0, -2.5};
    return s;
  };
  auto pixel_of = [&](const LegendreSeries& s, double lam) {
    double x = 1023.5;
    for (int i = 0; i < 40; ++i) x -= (s(x) - lam) / s.derivative(x);
    return x;
  };
  std::mt19937_64 rng(21);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::vector<ArcPeak>> peaks(nf);
  std::vector<double> coord(nf);
  const int weak = 5, dark = 11;
  for (int fib = 0; fib < nf; ++fib) {
    coord[static_cast<std::size_t>(fib)] = fib;
    if (fib == dark) continue;
    const auto t = truth(fib);
    std::vector<double> x0, fl;
    for (const auto& l : list.lines) {
      const double x = pixel_of(t, l.wavelength_angstrom);
      if (x < 5 || x > npix - 6 || l.blend) continue;
      x0.push_back(x);
      fl.push_back(20000.0 * std::exp(-3.0 * u(rng)));
    }
    if (fib == weak) {  // three lines only, spread over the detector
      x0 = {x0[2], x0[x0.size() / 2], x0[x0.size() - 3]};
      fl = {fl[2], fl[fl.size() / 2], fl[fl.size() - 3]};
    }
    const Spectrum1D s = emission_spectrum(npix, x0, fl, 1.3, 20.0, 4.0, rng);
    peaks[static_cast<std::size_t>(fib)] = find_peaks(s, PeakConfig{});
  }
  DispersionHint hint{6400.0, 1.05, 1023.5};
  WavecalConfig cfg;
  // Only fibers without a good solution of their own are refitted here (the rescue on its own); the
  // default refits every fiber (SmoothModelRefitsEveryFiber).
  cfg.fiber_refit_all = false;
  const FiberCalibration fc = calibrate_fibers(peaks, npix, coord, list, hint, cfg);
  ASSERT_EQ(fc.solutions.size(), static_cast<std::size_t>(nf));
  EXPECT_EQ(fc.solutions[dark].status, SolutionStatus::Failed);
  EXPECT_FALSE(fc.solutions[dark].message.empty());
  EXPECT_EQ(fc.solutions[weak].status, SolutionStatus::Smoothed) << fc.solutions[weak].message;
  EXPECT_EQ(fc.solutions[weak].n_used, 3);
  EXPECT_EQ(fc.n_failed, 1);
  EXPECT_EQ(fc.n_smoothed, 1);
  for (int fib = 0; fib < nf; ++fib) {
    if (fib == dark) continue;
    const auto& s = fc.solutions[static_cast<std::size_t>(fib)];
    const auto t = truth(fib);
    double mx = 0;
    for (long x = 0; x < npix; x += 8) {
      const double xd = static_cast<double>(x);
      mx = std::max(mx, std::abs(s.wavelength(xd) - t(xd)) / t.derivative(xd));
    }
    EXPECT_LT(mx, fib == weak ? 0.1 : 0.05) << "fiber " << fib << " (" << to_string(s.status) << ")";
  }
}

TEST(WavecalFiber, SmoothModelRefitsEveryFiberAndBeatsTheOwnFits) {
  const auto dir = linelist_dir();
  if (!dir) GTEST_SKIP() << "IRAF henear.dat absent (Debian iraf-noao or ../shared/data/linelists/iraf)";
  const LineList list = read_linelist(*dir / "henear.dat", Medium::Air);
  const long npix = 2048;
  const int nf = 25;
  // Smooth across fibers (as a fiber slit makes it), plus a small random zero point per fiber (a fiber
  // sits slightly off its nominal slit position): the per-fiber shift of the correction must absorb it.
  std::mt19937_64 rng(5);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> offset(nf);
  for (auto& o : offset) o = 0.3 * g(rng);  // Å, ~0.3 px
  auto truth = [&](int fib) {
    LegendreSeries s;
    s.xmin = 0;
    s.xmax = static_cast<double>(npix - 1);
    const double t = (fib - 12.0) / 12.0;
    s.coeffs = {6400.0 + 2.0 * t + 1.5 * t * t + offset[static_cast<std::size_t>(fib)], 1074.0 * (1.0 + 0.002 * t),
                6.0 + 0.3 * t, -2.5};
    return s;
  };
  auto pixel_of = [&](const LegendreSeries& s, double lam) {
    double x = 1023.5;
    for (int i = 0; i < 40; ++i) x -= (s(x) - lam) / s.derivative(x);
    return x;
  };
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::vector<ArcPeak>> peaks(nf);
  std::vector<double> coord(nf);
  for (int fib = 0; fib < nf; ++fib) {
    coord[static_cast<std::size_t>(fib)] = fib;
    const auto t = truth(fib);
    std::vector<double> x0, fl;
    for (const auto& l : list.lines) {
      const double x = pixel_of(t, l.wavelength_angstrom);
      if (x < 5 || x > npix - 6 || l.blend) continue;
      x0.push_back(x);
      fl.push_back(3000.0 * std::exp(-3.0 * u(rng)));  // faint arcs: the line noise matters
    }
    const Spectrum1D s = emission_spectrum(npix, x0, fl, 1.3, 20.0, 4.0, rng);
    peaks[static_cast<std::size_t>(fib)] = find_peaks(s, PeakConfig{});
  }
  DispersionHint hint{6400.0, 1.05, 1023.5};
  WavecalConfig own_cfg;
  own_cfg.fiber_refit_all = false;
  const FiberCalibration own = calibrate_fibers(peaks, npix, coord, list, hint, own_cfg);
  const FiberCalibration all = calibrate_fibers(peaks, npix, coord, list, hint, WavecalConfig{});
  EXPECT_EQ(all.n_smoothed, nf);
  // rms over the detector of each solution's error, and how it compares with its own prediction.
  auto error_px = [&](const WavelengthSolution& s, int fib) {
    const auto t = truth(fib);
    double ss = 0;
    int n = 0;
    for (long x = 0; x < npix; x += 8, ++n) {
      const double xd = static_cast<double>(x);
      ss += std::pow((s.wavelength(xd) - t(xd)) / t.derivative(xd), 2);
    }
    return std::sqrt(ss / n);
  };
  double ss_own = 0, ss_all = 0, ss_pull = 0;
  for (int fib = 0; fib < nf; ++fib) {
    const auto& so = own.solutions[static_cast<std::size_t>(fib)];
    const auto& sa = all.solutions[static_cast<std::size_t>(fib)];
    ASSERT_TRUE(so.ok() && sa.ok()) << fib;
    const double eo = error_px(so, fib), ea = error_px(sa, fib);
    ss_own += eo * eo;
    ss_all += ea * ea;
    ss_pull += std::pow(ea / sa.predicted_error_px, 2);
  }
  const double rms_own = std::sqrt(ss_own / nf), rms_all = std::sqrt(ss_all / nf);
  const double pull_rms = std::sqrt(ss_pull / nf);
  std::printf("fiber solutions vs truth: own fits %.4f px, smooth model + own shift/scale %.4f px; error / "
              "predicted rms %.2f\n",
              rms_own, rms_all, pull_rms);
  EXPECT_LT(rms_all, rms_own);
  // The predicted error is honest: neither far too small (< 1/2 of the truth) nor far too large (> 2x).
  EXPECT_GT(pull_rms, 0.5);
  EXPECT_LT(pull_rms, 2.0);
}
