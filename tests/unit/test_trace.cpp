// Trace finding and fitting on synthetic frames built here: pixel-integrated
// Gaussian profiles along curved traces with varying width, sky, Poisson and
// read noise; fiber flats with blocks, gaps, a dead and a missing fiber.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/trace/profile.hpp"
#include "kspecdr/trace/trace.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::trace;

namespace {

struct Path {
  double y0, tilt, curv, sigma0, sigma_slope, sigma_curv;
  double u(double x, long nx) const { return 2.0 * x / static_cast<double>(nx - 1) - 1.0; }
  double centre(double x, long nx, double shift = 0.0) const {
    const double uu = u(x, nx);
    return y0 + tilt * uu + curv * uu * uu + shift;
  }
  double sigma(double x, long nx, double scale = 1.0) const {
    const double uu = u(x, nx);
    return scale * sigma0 * (1.0 + sigma_slope * uu + sigma_curv * uu * uu);
  }
};

/// Noisy frame: star columns of `flux` e- along each path, uniform `sky` e-/px, read noise `rn`.
Image render(long nx, long ny, const std::vector<Path>& paths, const std::vector<double>& flux, double sky, double rn,
             std::mt19937_64& rng, double shift = 0.0, double scale = 1.0) {
  Image im(ny, nx);
  std::normal_distribution<double> g(0.0, 1.0);
  ImageArrayD e = ImageArrayD::Constant(ny, nx, sky);
  for (std::size_t k = 0; k < paths.size(); ++k)
    for (long x = 0; x < nx; ++x) {
      const double yc = paths[k].centre(static_cast<double>(x), nx, shift), sg = paths[k].sigma(static_cast<double>(x), nx, scale);
      for (long r = std::max(0L, static_cast<long>(yc - 8 * sg)); r <= std::min(ny - 1, static_cast<long>(yc + 8 * sg)); ++r)
        e(r, x) += flux[k] * pixel_gaussian(static_cast<double>(r), yc, sg);
    }
  for (long r = 0; r < ny; ++r)
    for (long x = 0; x < nx; ++x) {
      const double v = static_cast<double>(std::poisson_distribution<long>(e(r, x))(rng)) + rn * g(rng);
      im.data(r, x) = static_cast<float>(v);
      im.variance(r, x) = static_cast<float>(rn * rn + std::max(v, 0.0));
    }
  return im;
}

/// RMS over the fitted bins of (measured bin centre − the true centre averaged over the bin's columns).
double bin_centre_rms(const Trace& t, const Path& p, long nx, int bin_px, double& sigma_rel_max) {
  double ss = 0;
  int n = 0;
  sigma_rel_max = 0;
  for (std::size_t b = 0; b < t.bin_x.size(); ++b) {
    if (!t.bin_used_centre[b]) continue;
    const long x0 = static_cast<long>(b) * bin_px, x1 = std::min(nx, x0 + bin_px);
    double yt = 0;
    for (long x = x0; x < x1; ++x) yt += p.centre(static_cast<double>(x), nx);
    yt /= static_cast<double>(x1 - x0);
    ss += std::pow(t.bin_centre[b] - yt, 2);
    ++n;
  }
  for (long x = 0; x < nx; x += 7)
    sigma_rel_max = std::max(sigma_rel_max, std::abs(t.sigma(static_cast<double>(x)) / p.sigma(static_cast<double>(x), nx) - 1.0));
  return std::sqrt(ss / n);
}

}  // namespace

TEST(Legendre, EvaluatesAndDifferentiatesTheSeries) {
  LegendreSeries s{10.0, 30.0, {1.0, 2.0, 0.5, -0.25}};
  const double x = 17.0, u = (2 * x - 40.0) / 20.0;
  const double p2 = 0.5 * (3 * u * u - 1), p3 = 0.5 * (5 * u * u * u - 3 * u);
  EXPECT_NEAR(s(x), 1.0 + 2.0 * u + 0.5 * p2 - 0.25 * p3, 1e-12);
  const double h = 1e-5;
  EXPECT_NEAR(s.derivative(x), (s(x + h) - s(x - h)) / (2 * h), 1e-7);
}

TEST(ClippedFit, RejectsOutliersAndRecoversTheCurve) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> g(0.0, 0.05);
  std::vector<double> x, y, e;
  for (int i = 0; i < 100; ++i) {
    x.push_back(i);
    y.push_back(3.0 + 0.02 * i - 1e-4 * i * i + g(rng));
    e.push_back(0.05);
  }
  y[10] += 2.0, y[50] -= 3.0, y[51] += 1.0;
  const ClippedFit f = fit_legendre_clipped(x, y, e, 2, 0.0, 99.0, 3.5, 10);
  ASSERT_TRUE(f.ok);
  EXPECT_FALSE(f.used[10]);
  EXPECT_FALSE(f.used[50]);
  EXPECT_FALSE(f.used[51]);
  EXPECT_GE(f.n_used, 95);
  for (int i = 0; i < 100; i += 9) EXPECT_NEAR(f.series(i), 3.0 + 0.02 * i - 1e-4 * i * i, 0.03);
  EXPECT_NEAR(f.rms, 0.05, 0.01);
}

class SlitTrace : public ::testing::TestWithParam<ProfileMeasure> {};

TEST_P(SlitTrace, RecoversCentreAndWidthOfCurvedTraces) {
  const long nx = 1024, ny = 110;
  const std::vector<Path> paths = {{35.3, 1.2, 2.5, 1.7, 0.10, 0.08}, {72.8, -0.8, 1.5, 2.2, -0.06, 0.10}};
  // 1500 and 1000 e- per column over 16-column bins: per-bin S/N ≈ 150 and 120, above 50.
  std::mt19937_64 rng(17);
  const Image im = render(nx, ny, paths, {1500.0, 1000.0}, 60.0, 4.0, rng);
  TraceConfig c;
  c.measure = GetParam();
  c.n_stars = 2;
  const TraceSet ts = trace_slit(im, c);
  ASSERT_EQ(ts.size(), 2u);
  for (std::size_t k = 0; k < 2; ++k) {
    const Trace& t = ts[k];
    ASSERT_TRUE(t.usable()) << t.message;
    double srel = 0;
    const double rms = bin_centre_rms(t, paths[k], nx, c.bin_px, srel);
    double fit_err = 0;
    for (long x = 0; x < nx; x += 5)
      fit_err = std::max(fit_err, std::abs(t.centre(static_cast<double>(x)) - paths[k].centre(static_cast<double>(x), nx)));
    std::printf("[%s] trace %zu: bin centre rms %.4f px, fitted centre max error %.4f px, width max rel error %.4f\n",
                to_string(c.measure).c_str(), k, rms, fit_err, srel);
    EXPECT_LT(rms, 0.05);
    EXPECT_LT(fit_err, 0.05);
    EXPECT_LT(srel, 0.02);
    // The per-bin errors describe the scatter: fit rms against the median quoted error.
    std::vector<double> errs;
    for (std::size_t b = 0; b < t.bin_x.size(); ++b)
      if (t.bin_used_centre[b]) errs.push_back(t.bin_centre_err[b]);
    std::nth_element(errs.begin(), errs.begin() + errs.size() / 2, errs.end());
    EXPECT_NEAR(t.centre_rms_px / errs[errs.size() / 2], 1.0, 0.35);
  }
  // Explicit reference points give the same traces.
  TraceConfig ce = c;
  ce.references = {{300.0, paths[0].centre(300.0, nx)}, {700.0, paths[1].centre(700.0, nx)}};
  const TraceSet te = trace_slit(im, ce);
  for (std::size_t k = 0; k < 2; ++k) EXPECT_NEAR(te[k].centre(512.0), ts[k].centre(512.0), 0.01);
}

INSTANTIATE_TEST_SUITE_P(Measures, SlitTrace, ::testing::Values(ProfileMeasure::Gaussian, ProfileMeasure::Moments),
                         [](const auto& info) { return to_string(info.param); });

TEST(SlitTraceBadInput, TooFewStarsAndTracesLeavingTheDetector) {
  const long nx = 512, ny = 60;
  std::mt19937_64 rng(3);
  // Star 2 runs off the top edge over most of the detector, star 3 over a third of it.
  const std::vector<Path> paths = {
      {20.0, 0.0, 0.0, 1.8, 0.0, 0.0}, {80.0, 40.0, 0.0, 1.8, 0.0, 0.0}, {45.0, 20.0, 0.0, 1.8, 0.0, 0.0}};
  const Image im = render(nx, ny, paths, {2000.0, 2000.0, 2000.0}, 30.0, 4.0, rng);
  TraceConfig c;
  c.n_stars = 5;
  EXPECT_THROW(trace_slit(im, c), DataError);
  c.references = {{256.0, 20.0}, {30.0, paths[1].centre(30.0, nx)}, {100.0, paths[2].centre(100.0, nx)}};
  const TraceSet ts = trace_slit(im, c, {"a", "b", "c"});
  ASSERT_EQ(ts.size(), 3u);
  EXPECT_TRUE(ts[0].usable());
  EXPECT_EQ(ts[1].status, TraceStatus::Failed);
  EXPECT_EQ(ts[1].info.name, "b");
  EXPECT_NE(ts[1].message.find("off the detector"), std::string::npos) << ts[1].message;
  ASSERT_TRUE(ts[2].usable()) << ts[2].message;  // partly off: the part on the detector is fitted
  EXPECT_NEAR(ts[2].centre(100.0), paths[2].centre(100.0, nx), 0.05);
  c.references = {{256.0, 0.5}};
  const TraceSet te = trace_slit(im, c);
  EXPECT_EQ(te[0].status, TraceStatus::Failed);
}

TEST(TraceShift, MeasuresOffsetAndWidthChangeAgainstTheMaster) {
  const long nx = 1024, ny = 80;
  const std::vector<Path> paths = {{30.0, 1.0, 2.0, 1.8, 0.05, 0.05}, {55.0, -1.0, 1.0, 2.0, 0.0, 0.05}};
  std::mt19937_64 rng(8);
  const Image master_im = render(nx, ny, paths, {3000.0, 3000.0}, 50.0, 4.0, rng);
  TraceConfig c;
  c.n_stars = 2;
  const TraceSet master = trace_slit(master_im, c);
  const double shift = 0.37, scale = 1.08;
  std::vector<double> pulls;
  for (int rep = 0; rep < 4; ++rep) {
    const Image ex = render(nx, ny, paths, {3000.0, 3000.0}, 50.0, 4.0, rng, shift, scale);
    const auto s = measure_trace_shifts(ex, master, c);
    ASSERT_EQ(s.size(), 2u);
    for (const auto& si : s) {
      ASSERT_TRUE(si.ok);
      EXPECT_NEAR(si.offset_px, shift, 0.02);
      EXPECT_LT(si.offset_err_px, 0.01);
      EXPECT_NEAR(si.width_scale, scale, 0.01);
      pulls.push_back((si.offset_px - shift) / std::hypot(si.offset_err_px, 0.003));
    }
    const TraceSet moved = apply_trace_shifts(master, s);
    EXPECT_NEAR(moved[0].centre(500.0) - master[0].centre(500.0), s[0].offset_px, 1e-12);
    EXPECT_NEAR(moved[1].sigma(500.0) / master[1].sigma(500.0), s[1].width_scale, 1e-12);
  }
  for (double p : pulls) EXPECT_LT(std::abs(p), 4.0);
  // A frame without the stars: nothing to measure, the master is kept.
  const Image blank = render(nx, ny, {}, {}, 50.0, 4.0, rng);
  const auto none = measure_trace_shifts(blank, master, c);
  EXPECT_FALSE(none[0].ok);
  EXPECT_EQ(apply_trace_shifts(master, none)[0].centre(100.0), master[0].centre(100.0));
}

// ---------------------------------------------------------------- fiber mode

namespace {
/// 30 fibers in 3 blocks of 10 with 20 px gaps, pitch 8 px; fiber 14 (index 13) is unused, fiber 22
/// (index 21) is broken (no light although the table says program).
struct FiberLayout {
  std::vector<Path> paths;
  std::vector<ApertureInfo> table;
  std::vector<double> flux;
  FiberLayout() {
    for (int f = 0; f < 30; ++f) {
      const double y = 20.0 + 8.0 * f + 20.0 * (f / 10);
      paths.push_back({y, 1.0 + 0.01 * f, 2.0, 1.3 + 0.01 * (f % 5), 0.03, 0.1});
      ApertureInfo a;
      a.name = "fib" + std::to_string(f + 1);
      a.type = f == 13 ? aperture_type::kUnused : (f % 6 == 0 ? aperture_type::kSky : aperture_type::kProgram);
      table.push_back(a);
      flux.push_back(f == 13 || f == 21 ? 0.0 : 20000.0 * (0.8 + 0.02 * (f % 7)));
    }
  }
};
}  // namespace

TEST(FiberTrace, FindsMatchesAndFollowsEveryFiber) {
  FiberLayout L;
  const long nx = 800, ny = 330;
  std::mt19937_64 rng(12);
  const Image flat = render(nx, ny, L.paths, L.flux, 5.0, 4.0, rng);
  TraceConfig c;
  const TraceSet ts = trace_fibers(flat, L.table, c);
  ASSERT_EQ(ts.size(), 30u);
  double worst = 0, worst_sigma = 0;
  for (std::size_t f = 0; f < 30; ++f) {
    const Trace& t = ts[f];
    EXPECT_EQ(t.info.name, L.table[f].name);
    if (f == 13) {
      EXPECT_EQ(t.status, TraceStatus::Dead);
    } else if (f == 21) {
      EXPECT_EQ(t.status, TraceStatus::NotFound);
      EXPECT_NE(t.message.find("no light"), std::string::npos);
    } else {
      ASSERT_TRUE(t.usable()) << f << ": " << t.message;
    }
    for (long x = 0; x < nx; x += 10) {
      const double err = std::abs(t.centre(static_cast<double>(x)) - L.paths[f].centre(static_cast<double>(x), nx));
      if (t.usable()) {
        worst = std::max(worst, err);
        worst_sigma = std::max(worst_sigma, std::abs(t.sigma(static_cast<double>(x)) / L.paths[f].sigma(static_cast<double>(x), nx) - 1));
      } else {
        EXPECT_LT(err, 1.0) << "interpolated position of fiber " << f + 1;
      }
    }
  }
  std::printf("fibers: worst fitted centre error %.4f px, worst width error %.4f\n", worst, worst_sigma);
  EXPECT_LT(worst, 0.05);
  // The window stops at just under half the pitch (2.6 σ here), where the neighbours' wings already lift
  // the edges: fitted widths come out about 2 % narrow between two neighbours (up to 3.5 % at the ends of
  // the dispersion axis), 1 % at a block edge. A joint fit of the neighbours would remove it.
  EXPECT_LT(worst_sigma, 0.04);
}

TEST(FiberTrace, OrderMatchHandlesGapsDeadAndSpuriousPeaks) {
  TraceConfig c;
  // Slots at 10, 18, (26: unused, no peak), 34, 42, then a 20 px block gap: 70, 78, 86.
  const std::vector<bool> lit = {true, true, false, true, true, true, true, true};
  auto m = match_peaks_to_table({10, 18, 34, 42, 70, 78, 86}, lit, c);
  EXPECT_EQ(m, (std::vector<int>{0, 1, -1, 2, 3, 4, 5, 6}));
  // A spurious peak inside the gap is left unmatched.
  m = match_peaks_to_table({10, 18, 34, 42, 55, 70, 78, 86}, lit, c);
  EXPECT_EQ(m, (std::vector<int>{0, 1, -1, 2, 3, 5, 6, 7}));
  // A lit fiber without light (slot 6): the others keep their slots.
  m = match_peaks_to_table({10, 18, 34, 42, 70, 86}, lit, c);
  EXPECT_EQ(m, (std::vector<int>{0, 1, -1, 2, 3, 4, -1, 5}));
}

TEST(FiberTrace, NoFiberOnTheFlatIsAnError) {
  FiberLayout L;
  std::mt19937_64 rng(2);
  const Image blank = render(300, 330, {}, {}, 5.0, 4.0, rng);
  try {
    trace_fibers(blank, L.table, TraceConfig{});
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("no fiber"), std::string::npos) << e.what();
  }
}
