// Cosmic-ray detection (L.A.Cosmic) on synthetic calibrated frames: cosmic-ray
// tracks injected into sky continuum, with and without sharp sky/arc emission
// lines and star traces.
//
// Completeness = flagged / injected over the pixels whose cosmic-ray charge
// exceeds 5 sqrt(variance), where variance = RN^2 + expected electrons is the
// noise of that pixel without the cosmic ray. The false rate = flagged / clean
// over the pixels with no injected charge anywhere in their 3x3 box (pixels next
// to a hit may hold shared charge below any threshold, so they count neither way).
// Requirement: completeness >= 95 %, false rate <= 0.1 %, on both scenes.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <random>

#include "kspecdr/detector/cosmic.hpp"

using namespace kspecdr;
using namespace kspecdr::detector;

namespace {

constexpr double kReadNoise = 5.0;
// A cosmic-ray pixel counts towards completeness when its charge exceeds this many sigma.
constexpr double kCompletenessSigma = 5.0;
constexpr double kMinCompleteness = 0.95;
constexpr double kMaxFalseRate = 0.001;

struct CrScene {
  ImageArray truth;     // expected electrons without cosmic rays
  ImageArray cr;        // injected cosmic-ray electrons
  Image im;             // observed: data, variance as the pipeline estimates it, mask
};

CrScene make_scene(bool lines_and_traces, unsigned seed, Eigen::Index ny = 400, Eigen::Index nx = 400) {
  std::mt19937_64 rng(seed);
  CrScene s;
  s.truth = ImageArray::Constant(ny, nx, 300.0f);
  if (lines_and_traces) {
    // Sky/arc lines: unresolved along x (sigma 0.9 px, FWHM 2.1 px), full slit length in y,
    // slightly tilted; peaks from 500 to 40000 e-.
    std::uniform_real_distribution<double> ux(5.0, static_cast<double>(nx) - 5.0);
    for (int l = 0; l < 25; ++l) {
      const double x0 = ux(rng), peak = 500.0 * std::pow(80.0, l / 24.0), tilt = 0.01 * (l % 5 - 2);
      for (Eigen::Index y = 0; y < ny; ++y)
        for (Eigen::Index x = 0; x < nx; ++x) {
          const double dx = static_cast<double>(x) - x0 - tilt * static_cast<double>(y);
          s.truth(y, x) += static_cast<float>(peak * std::exp(-0.5 * dx * dx / 0.81));
        }
    }
    // Star traces along x: spatial sigma 1.2 px, a faint, a bright and a very bright one.
    const double amps[] = {2000.0, 20000.0, 50000.0};
    const double yc[] = {80.0, 200.0, 320.0};
    for (int t = 0; t < 3; ++t)
      for (Eigen::Index y = 0; y < ny; ++y)
        for (Eigen::Index x = 0; x < nx; ++x) {
          const double dy = static_cast<double>(y) - yc[t] - 0.004 * static_cast<double>(x);
          s.truth(y, x) += static_cast<float>(amps[t] * (1.0 + 0.3 * std::sin(static_cast<double>(x) / 20.0)) *
                                              std::exp(-0.5 * dy * dy / 1.44));
        }
  }
  // Cosmic rays: short tracks, log-uniform charge per pixel, some charge shared with a neighbour.
  s.cr = ImageArray::Zero(ny, nx);
  std::uniform_int_distribution<Eigen::Index> uy(2, ny - 3), uxi(2, nx - 3);
  std::uniform_int_distribution<int> len(1, 5), dir(0, 3), coin(0, 1);
  std::uniform_real_distribution<double> lq(std::log(30.0), std::log(30000.0));
  const int dxs[] = {1, 0, 1, 1}, dys[] = {0, 1, 1, -1};
  for (int c = 0; c < 350; ++c) {
    Eigen::Index y = uy(rng), x = uxi(rng);
    const int d = dir(rng), n = len(rng);
    for (int k = 0; k < n; ++k) {
      if (y < 1 || y >= ny - 1 || x < 1 || x >= nx - 1) break;
      const double q = std::exp(lq(rng));
      s.cr(y, x) += static_cast<float>(q);
      if (coin(rng)) s.cr(y + (d == 0 ? 1 : 0), x + (d == 0 ? 0 : 1)) += static_cast<float>(0.3 * q);
      y += dys[d];
      x += dxs[d];
    }
  }
  const double rn = kReadNoise;
  std::normal_distribution<double> g;
  s.im = Image(ny, nx);
  for (Eigen::Index i = 0; i < s.truth.size(); ++i) {
    const double mu = s.truth(i);
    const double v = mu + std::sqrt(mu + rn * rn) * g(rng) + s.cr(i);
    s.im.data(i) = static_cast<float>(v);
    // As the pipeline estimates it: from the observed signal (cosmic ray included).
    s.im.variance(i) = static_cast<float>(rn * rn + std::max(v, 0.0));
  }
  return s;
}

struct CrScore {
  double completeness = 0, false_rate = 0;
  std::size_t n_cr = 0, n_clean = 0, n_false = 0;
};

CrScore score(const CrScene& s) {
  CrScore r;
  std::size_t found = 0;
  const Eigen::Index ny = s.cr.rows(), nx = s.cr.cols();
  for (Eigen::Index y = 0; y < ny; ++y)
    for (Eigen::Index x = 0; x < nx; ++x) {
      const bool flagged = s.im.mask(y, x) & kMaskCosmic;
      const double variance = kReadNoise * kReadNoise + s.truth(y, x);
      if (s.cr(y, x) > kCompletenessSigma * std::sqrt(variance)) {
        ++r.n_cr;
        found += flagged;
      }
      bool near = false;
      for (Eigen::Index dy = -1; dy <= 1 && !near; ++dy)
        for (Eigen::Index dx = -1; dx <= 1 && !near; ++dx) {
          const Eigen::Index yy = y + dy, xx = x + dx;
          if (yy >= 0 && yy < ny && xx >= 0 && xx < nx && s.cr(yy, xx) > 0) near = true;
        }
      if (!near) {
        ++r.n_clean;
        r.n_false += flagged;
      }
    }
  r.completeness = static_cast<double>(found) / static_cast<double>(r.n_cr);
  r.false_rate = static_cast<double>(r.n_false) / static_cast<double>(r.n_clean);
  return r;
}

CrScore run(bool lines, unsigned seed, const char* label, const DetectorConfig& cfg = DetectorConfig{}) {
  CrScene s = make_scene(lines, seed);
  const ImageArray before = s.im.data;
  CosmicResult res = detect_cosmics(s.im.data, s.im.variance, s.im.mask, cfg);
  CrScore sc = score(s);
  std::cout << label << ": completeness " << sc.completeness << " over " << sc.n_cr << " cosmic-ray pixels above "
            << kCompletenessSigma << " sigma, false rate " << sc.false_rate << " (" << sc.n_false << " of "
            << sc.n_clean << " clean pixels), " << res.npix << " flagged in " << res.iterations << " passes\n";
  EXPECT_TRUE((s.im.data == before).all()) << "data must not be changed";
  return sc;
}

void check(bool lines, unsigned seed, const char* label) {
  CrScore sc = run(lines, seed, label);
  EXPECT_GT(sc.n_cr, 500u);
  EXPECT_GE(sc.completeness, kMinCompleteness) << label;
  EXPECT_LE(sc.false_rate, kMaxFalseRate) << label;
}

}  // namespace

TEST(DetectorCosmic, FindsInjectedHitsOnSkyContinuum) {
  check(false, 1, "continuum seed 1");
  check(false, 2, "continuum seed 2");
}

// 25 unresolved lines up to 40000 e- and three traces covering the frame: hits of a few sigma
// on line peaks and wings, and charge shared with a neighbour, must be found as on the
// continuum, without flagging the lines, the traces or their crossings.
TEST(DetectorCosmic, FindsHitsWithoutFlaggingSharpLinesOrStarTraces) {
  check(true, 2, "lines+traces seed 2");
  check(true, 3, "lines+traces seed 3");
  check(true, 5, "lines+traces seed 5");
}

// The score must be able to fail: without the detection routes that the requirement depends
// on (thresholds out of reach) the completeness is far below the requirement, and a mask that
// flags everything breaks the false-rate bound.
TEST(DetectorCosmic, ScoreDetectsMissedHitsAndOverFlagging) {
  DetectorConfig blind;
  blind.cosmic_sigclip = 1e6;
  CrScore missed = run(true, 2, "lines+traces, thresholds out of reach", blind);
  EXPECT_LT(missed.completeness, 0.5);

  CrScene s = make_scene(true, 2);
  s.im.mask.setConstant(kMaskCosmic);
  CrScore all = score(s);
  EXPECT_EQ(all.completeness, 1.0);
  EXPECT_GT(all.false_rate, kMaxFalseRate);
}

TEST(DetectorCosmic, BadPixelsAreNeverFlaggedAndDoNotSeedDetections) {
  CrScene s = make_scene(false, 4, 100, 100);
  s.cr.setZero();
  for (Eigen::Index i = 0; i < s.truth.size(); ++i) s.im.data(i) = s.truth(i);
  s.im.data(50, 50) = 0.0f;
  s.im.mask(50, 50) = kMaskBad;
  s.im.data(20, 20) = 1e6f;
  s.im.mask(20, 20) = kMaskSaturated;
  CosmicResult r = detect_cosmics(s.im.data, s.im.variance, s.im.mask, DetectorConfig{});
  EXPECT_FALSE(s.im.mask(50, 50) & kMaskCosmic);
  EXPECT_FALSE(s.im.mask(20, 20) & kMaskCosmic);
  EXPECT_FALSE(s.im.mask(50, 51) & kMaskCosmic);
  EXPECT_LE(r.npix, 8u);  // at most the saturated pixel's neighbours
}

TEST(DetectorCosmic, SeparableMedianIsTheMedianOnSeparableInput) {
  ImageArray a(9, 11);
  for (Eigen::Index y = 0; y < 9; ++y)
    for (Eigen::Index x = 0; x < 11; ++x) a(y, x) = static_cast<float>(x * x % 7);
  ImageArray m = separable_median(a, 3);
  // Constant along y: the column pass returns the row medians.
  EXPECT_EQ(m(4, 5), 2.0f);  // x = 4, 5, 6 give 2, 4, 1
}
