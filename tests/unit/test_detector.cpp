// Detector stage (raw -> IM) on synthetic raw frames made here: a two-amplifier
// CCD with known bias levels, gains, read noise, a residual bias pattern, a pixel
// flat, a slit illumination and Poisson noise. Recovered numbers are compared with
// the truth in units of their stated uncertainties.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <random>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/combine.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/detector/raw.hpp"
#include "kspecdr/detector/stats.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/instrument.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::detector;
namespace kt = kspecdr::testing;
namespace fs = std::filesystem;

namespace {

constexpr long kNy = 200;     // rows per amplifier
constexpr long kAmpNx = 100;  // data columns per amplifier
constexpr long kOs = 20;      // overscan columns per amplifier
constexpr long kRawNx = 2 * (kAmpNx + kOs);

const char* kProfile = R"(
[instrument]
name = testspec
mode = slit
raw_shape = 200x240
[detector]
amplifiers = 2
saturation_dn = 65000
overscan_method = median
[amplifier.1]
name = L
datasec = [1:100,1:200]
biassec = [101:120,1:200]
detsec = [1:100,1:200]
gain_key = GAIN1
read_noise = 4.0
[amplifier.2]
name = R
datasec = [141:240,1:200]
biassec = [121:140,1:200]
detsec = [101:200,1:200]
gain = 2.0
read_noise = 5.0
[keywords]
frame_type = IMAGETYP
exptime = EXPTIME
[classify]
r1 = bias: IMAGETYP == bias
r2 = flat: IMAGETYP == flat
default = science
)";

/// The detector that the synthetic frames are read out through (going backward).
struct SynthCcd {
  double gain[2] = {1.5, 2.0};            // e-/DN
  double bias_dn[2] = {1000.3, 1200.7};   // overscan level
  double rn_e[2] = {4.0, 5.0};            // read noise
  ImageArray pattern;                     // residual bias structure (e-), assembled
  ImageArray pixflat;                     // true pixel sensitivity, assembled
  std::mt19937_64 rng{2024};

  SynthCcd() {
    pattern.resize(kNy, 2 * kAmpNx);
    pixflat.resize(kNy, 2 * kAmpNx);
    std::normal_distribution<double> g;
    for (long y = 0; y < kNy; ++y)
      for (long x = 0; x < 2 * kAmpNx; ++x) {
        pattern(y, x) = static_cast<float>(3.0 * std::sin(static_cast<double>(x) / 15.0) + 0.01 * static_cast<double>(y));
        pixflat(y, x) = static_cast<float>(1.0 + 0.01 * g(rng));
      }
  }
  static int amp_of(long x) { return x < kAmpNx ? 0 : 1; }
  static long raw_x(long x) { return x < kAmpNx ? x : x + 2 * kOs; }

  /// Raw DN frame for expected electrons `e` (assembled, before Poisson); Poisson applied when asked.
  ImageArray raw_dn(const ImageArray* e, bool poisson) {
    ImageArray raw(kNy, kRawNx);
    std::normal_distribution<double> g;
    for (long y = 0; y < kNy; ++y) {
      for (long x = 0; x < kRawNx; ++x) {
        const int a = (x < kAmpNx + kOs) ? 0 : 1;
        raw(y, x) = static_cast<float>(bias_dn[a] + rn_e[a] * g(rng) / gain[a]);
      }
      for (long x = 0; x < 2 * kAmpNx; ++x) {
        const int a = amp_of(x);
        double el = pattern(y, x);
        if (e) {
          const double mu = (*e)(y, x);
          el += poisson ? static_cast<double>(std::poisson_distribution<long>(mu)(rng)) : mu;
        }
        raw(y, raw_x(x)) = static_cast<float>(bias_dn[a] + (el + rn_e[a] * g(rng)) / gain[a]);
      }
    }
    for (Eigen::Index i = 0; i < raw.size(); ++i) raw(i) = std::clamp(std::round(raw(i)), 0.0f, 65535.0f);
    return raw;
  }

  void write(const fs::path& path, const ImageArray& raw, const std::string& type, bool float_pixels = false) {
    Header h;
    h.set("IMAGETYP", type);
    h.set("EXPTIME", 100.0);
    h.set("GAIN1", gain[0]);
    fits::Fits f = fits::Fits::create(path);
    f.write_image(raw, h, "", float_pixels ? fits::PixelType::Float32 : fits::PixelType::UInt16);
    f.close();
  }
};

/// Slit illumination (rows 20-180, soft edges) times a linear lamp gradient along x.
ImageArray flat_expectation(double peak) {
  ImageArray e(kNy, 2 * kAmpNx);
  for (long y = 0; y < kNy; ++y) {
    const double yy = static_cast<double>(y);
    const double illum = 0.5 * (std::tanh((yy - 20.0) / 2.0) - std::tanh((yy - 180.0) / 2.0));
    for (long x = 0; x < 2 * kAmpNx; ++x)
      e(y, x) = static_cast<float>(peak * illum * (0.8 + 0.4 * static_cast<double>(x) / (2.0 * kAmpNx)));
  }
  return e;
}

/// Continuum + a star trace along x (science truth, incident electrons before pixel sensitivity).
ImageArray science_truth() {
  ImageArray s(kNy, 2 * kAmpNx);
  for (long y = 0; y < kNy; ++y)
    for (long x = 0; x < 2 * kAmpNx; ++x) {
      const double dy = static_cast<double>(y) - 100.0 - 0.01 * static_cast<double>(x);
      s(y, x) = static_cast<float>(1500.0 + 6000.0 * std::exp(-0.5 * dy * dy / 4.0));
    }
  return s;
}

struct Night {
  kt::TempDir dir{"kspecdr-det"};
  SynthCcd ccd;
  InstrumentProfile profile;
  std::vector<fs::path> biases, flats;
  ImageArray sci_truth;
  fs::path science;

  Night() {
    std::ofstream(dir / "testspec.ini") << kProfile;
    profile = load_instrument((dir / "testspec.ini").string());
    for (int k = 0; k < 8; ++k) {
      biases.push_back(dir / fmt::format("bias{}.fits", k));
      ccd.write(biases.back(), ccd.raw_dn(nullptr, false), "bias");
    }
    ImageArray fe = flat_expectation(4000.0) * ccd.pixflat;
    for (int k = 0; k < 5; ++k) {
      flats.push_back(dir / fmt::format("flat{}.fits", k));
      ImageArray scaled = fe * static_cast<float>(1.0 + 0.05 * k);  // lamp drifts between flats
      ccd.write(flats.back(), ccd.raw_dn(&scaled, true), "flat");
    }
    sci_truth = science_truth();
    ImageArray se = sci_truth * ccd.pixflat;
    science = dir / "sci.fits";
    ccd.write(science, ccd.raw_dn(&se, true), "object");
  }
};

Night& night() {
  static Night n;
  return n;
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no exception";
}

}  // namespace

// ------------------------------------------------------------------ raw, geometry, overscan

TEST(DetectorRaw, OverscanLevelPerAmplifierWithinItsUncertainty) {
  auto& n = night();
  DetectorConfig cfg;
  std::vector<double> pulls;
  for (const auto& b : n.biases) {
    DetectorFrame d = overscan_trim_gain(load_raw(b, n.profile), n.profile, cfg);
    ASSERT_EQ(d.overscan.size(), 2u);
    for (int a = 0; a < 2; ++a) {
      EXPECT_TRUE(d.overscan[a].along_rows);
      const double pull = (d.overscan[a].level - n.ccd.bias_dn[a]) / d.overscan[a].error;
      EXPECT_LT(std::abs(pull), 3.0) << "amp " << a << " level " << d.overscan[a].level;
      pulls.push_back(pull);
    }
  }
  auto st = kt::pull_stats(pulls);
  std::cout << "overscan-level pulls: mean " << st.mean << " width " << st.stddev << " over " << st.n << "\n";
  EXPECT_LT(st.stddev, 1.6) << "stated overscan uncertainty too small";
  EXPECT_GT(st.stddev, 0.4) << "stated overscan uncertainty too large";
}

TEST(DetectorRaw, GainFromHeaderKeywordOrProfileAndElectronsAssembledAtDetsec) {
  auto& n = night();
  RawFrame raw = load_raw(n.science, n.profile);
  FrameGeometry g = resolve_geometry(raw, n.profile);
  ASSERT_EQ(g.amps.size(), 2u);
  EXPECT_EQ(g.nx, 200);
  EXPECT_EQ(g.ny, 200);
  EXPECT_EQ(g.amps[0].gain_source, "GAIN1");
  EXPECT_DOUBLE_EQ(g.amps[0].gain, 1.5);
  EXPECT_EQ(g.amps[1].gain_source, "profile");
  DetectorFrame d = overscan_trim_gain(raw, n.profile, DetectorConfig{});
  EXPECT_EQ(d.amp(0, 0), 0);
  EXPECT_EQ(d.amp(0, 199), 1);
  // Continuum 1500 e- (x sensitivity) + bias pattern: the mean of a clean patch is within noise.
  const double m = d.electrons.block(40, 110, 20, 80).mean();
  const double expect = (n.sci_truth.block(40, 110, 20, 80) * n.ccd.pixflat.block(40, 110, 20, 80) +
                         n.ccd.pattern.block(40, 110, 20, 80)).mean();
  EXPECT_NEAR(m, expect, 5.0 * std::sqrt(1600.0 / 1600.0) + 0.5);
}

TEST(DetectorRaw, PolynomialOverscanFollowsARampAlongTheReadout) {
  ImageArray raw(300, 40);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> g;
  for (long y = 0; y < 300; ++y)
    for (long x = 0; x < 40; ++x) raw(y, x) = static_cast<float>(500.0 + 0.02 * static_cast<double>(y) + 2.0 * g(rng));
  Section bs{30, 40, 0, 300}, ds{0, 30, 0, 300};
  std::vector<double> model;
  OverscanResult r = measure_overscan(raw, bs, ds, "poly", 1, 3.0, &model);
  ASSERT_EQ(model.size(), 300u);
  EXPECT_NEAR(model.front(), 500.0, 5 * r.rms / std::sqrt(10.0));
  EXPECT_NEAR(model.back(), 500.0 + 0.02 * 299, 5 * r.rms / std::sqrt(10.0));
  EXPECT_NEAR(r.level, 500.0 + 0.01 * 299, 3.0 * r.error);
  // The vector is the mean of 10 columns of 2 DN noise.
  EXPECT_NEAR(r.rms, 2.0 / std::sqrt(10.0), 0.1);
}

TEST(DetectorRaw, OrientationPutsAKnownFeatureAtThePipelinePixel) {
  kt::TempDir dir("kspecdr-orient");
  std::string ini = kProfile;
  auto rep = [&](const std::string& from, const std::string& to) { ini.replace(ini.find(from), from.size(), to); };
  rep("raw_shape = 200x240", "dispersion_axis = 2\nflip_dispersion = true\nflip_spatial = true");
  std::ofstream(dir / "p.ini") << ini;
  InstrumentProfile p = load_instrument((dir / "p.ini").string());
  SynthCcd ccd;
  ImageArray e = ImageArray::Zero(kNy, 2 * kAmpNx);
  e(30, 150) = 50000.0f;  // assembled raw-orientation (row 30, column 150)
  ImageArray raw = ccd.raw_dn(&e, false);
  ccd.write(dir / "o.fits", raw, "object");
  DetectorFrame d = overscan_trim_gain(load_raw(dir / "o.fits", p), p, DetectorConfig{});
  // Transposed: 200 (raw x) columns become rows... dispersion (raw y) runs along pipeline x.
  ASSERT_EQ(d.electrons.rows(), 2 * kAmpNx);
  ASSERT_EQ(d.electrons.cols(), kNy);
  Eigen::Index my = 0, mx = 0;
  d.electrons.maxCoeff(&my, &mx);
  EXPECT_EQ(mx, kNy - 1 - 30);         // raw row 30, flipped along dispersion
  EXPECT_EQ(my, 2 * kAmpNx - 1 - 150); // raw column 150, flipped along the slit
}

// ------------------------------------------------------------------ bad input

TEST(DetectorRaw, MissingFileNamesTheFile) {
  auto& n = night();
  auto msg = message_of([&] { load_raw(n.dir / "nope.fits", n.profile); });
  EXPECT_NE(msg.find("nope.fits"), std::string::npos) << msg;
  EXPECT_THROW(load_raw(n.dir / "nope.fits", n.profile), FitsError);
}

TEST(DetectorRaw, TruncatedFileIsAFitsErrorNamingTheFile) {
  auto& n = night();
  fs::path cut = n.dir / "truncated.fits";
  fs::copy_file(n.science, cut, fs::copy_options::overwrite_existing);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  EXPECT_THROW(load_raw(cut, n.profile), FitsError);
  auto msg = message_of([&] { load_raw(cut, n.profile); });
  EXPECT_NE(msg.find("truncated.fits"), std::string::npos) << msg;
}

TEST(DetectorRaw, SectionOutsideTheArrayNamesAmplifierKeywordAndSection) {
  auto& n = night();
  kt::TempDir dir("kspecdr-sec");
  std::string ini = kProfile;
  ini.replace(ini.find("datasec = [141:240,1:200]"), 25, "datasec_key = DATASEC2");
  std::ofstream(dir / "p.ini") << ini;
  InstrumentProfile p = load_instrument((dir / "p.ini").string());
  RawFrame raw = load_raw(n.science, p);
  raw.header.set("DATASEC2", "[141:260,1:200]");
  try {
    resolve_geometry(raw, p);
    FAIL() << "no exception";
  } catch (const DataError& e) {
    std::string m = e.what();
    EXPECT_EQ(e.context().keyword, "DATASEC2");
    EXPECT_NE(m.find("amplifier R"), std::string::npos) << m;
    EXPECT_NE(m.find("[141:260,1:200]"), std::string::npos) << m;
    EXPECT_NE(m.find("sci.fits"), std::string::npos) << m;
  }
  raw.header.erase("DATASEC2");
  auto msg = message_of([&] { resolve_geometry(raw, p); });
  EXPECT_NE(msg.find("DATASEC2"), std::string::npos) << msg;
}

TEST(DetectorRaw, OverlappingDetsecsAreRejected) {
  auto& n = night();
  kt::TempDir dir("kspecdr-ovl");
  std::string ini = kProfile;
  ini.replace(ini.find("detsec = [101:200,1:200]"), 24, "detsec = [91:190,1:200]");
  std::ofstream(dir / "p.ini") << ini;
  InstrumentProfile p = load_instrument((dir / "p.ini").string());
  auto msg = message_of([&] { resolve_geometry(load_raw(n.science, p), p); });
  EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[91:190,1:200]"), std::string::npos) << msg;
}

TEST(DetectorRaw, MissingGainKeywordWithoutNominalGainNamesTheKeyword) {
  auto& n = night();
  kt::TempDir dir("kspecdr-gain");
  std::string ini = kProfile;
  ini.replace(ini.find("gain_key = GAIN1"), 16, "gain_key = EGAIN");
  std::ofstream(dir / "p.ini") << ini;
  InstrumentProfile p = load_instrument((dir / "p.ini").string());
  try {
    overscan_trim_gain(load_raw(n.science, p), p, DetectorConfig{});
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_EQ(e.context().keyword, "EGAIN");
    EXPECT_NE(std::string(e.what()).find("sci.fits"), std::string::npos) << e.what();
  }
}

TEST(DetectorRaw, WrongRawShapeIsRejected) {
  auto& n = night();
  InstrumentProfile p = n.profile;
  p.raw_shape = std::vector<long>{100, 240};
  auto msg = message_of([&] { load_raw(n.science, p); });
  EXPECT_NE(msg.find("raw_shape"), std::string::npos) << msg;
}

TEST(DetectorRaw, NanAndSaturatedPixelsAreMasked) {
  auto& n = night();
  kt::TempDir dir("kspecdr-nan");
  ImageArray e = ImageArray::Constant(kNy, 2 * kAmpNx, 1000.0f);
  ImageArray raw = n.ccd.raw_dn(&e, false);
  raw(10, 10) = std::numeric_limits<float>::quiet_NaN();
  raw(20, raw.cols() - 5) = 65535.0f;
  n.ccd.write(dir / "nan.fits", raw, "object", /*float_pixels=*/true);
  DetectorConfig cfg;
  cfg.cosmic_enable = false;
  Image im = calibrate_frame(dir / "nan.fits", n.profile, nullptr, nullptr, cfg);
  EXPECT_TRUE(im.mask(10, 10) & kMaskBad);
  EXPECT_TRUE(std::isfinite(im.data(10, 10)));
  EXPECT_TRUE(im.mask(20, 2 * kAmpNx - 5) & kMaskSaturated);
  EXPECT_EQ(im.mask(50, 50), 0);
}

// ------------------------------------------------------------------ combine

TEST(DetectorCombine, MedianAndClippedMeanMatchAReferenceAndIgnoreNaN) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> g;
  for (int nframes : {1, 2, 3, 5, 6, 9}) {
    std::vector<ImageArray> f(static_cast<std::size_t>(nframes), ImageArray(7, 600));
    for (auto& a : f)
      for (Eigen::Index i = 0; i < a.size(); ++i) a(i) = 100.0f + g(rng);
    f[0](3, 17) = std::numeric_limits<float>::quiet_NaN();
    if (nframes >= 3) f[1](4, 300) = 1e5f;  // an outlier
    std::vector<const ImageArray*> p;
    for (auto& a : f) p.push_back(&a);
    CombinedBand med = combine(p, {CombineMethod::Median, 3.0});
    CombinedBand cm = combine(p, {CombineMethod::ClippedMean, 3.0});
    for (Eigen::Index y = 0; y < 7; ++y)
      for (Eigen::Index x = 0; x < 600; ++x) {
        std::vector<double> v;
        for (auto& a : f)
          if (std::isfinite(a(y, x))) v.push_back(a(y, x));
        if (v.empty()) {
          ASSERT_TRUE(std::isnan(med.value(y, x)));
          ASSERT_EQ(med.used(y, x), 0);
          continue;
        }
        const double ref = median_inplace(v);
        ASSERT_NEAR(med.value(y, x), ref, 1e-4) << nframes << " frames at " << y << "," << x;
        ASSERT_EQ(med.used(y, x), v.size());
      }
    EXPECT_EQ(med.used(3, 17), nframes - 1);
    EXPECT_EQ(cm.used(3, 17), nframes - 1);
    if (nframes >= 3) {
      EXPECT_LT(std::abs(cm.value(4, 300) - 100.0f), 3.0f) << "outlier not rejected with " << nframes << " frames";
      EXPECT_LE(cm.used(4, 300), nframes - 1);
    }
    // Bands give the same numbers as the whole frame (the MPI split relies on it).
    CombinedBand b = combine_rows(p, 2, 5, {CombineMethod::ClippedMean, 3.0});
    for (Eigen::Index i = 0; i < b.value.size(); ++i) {
      const float want = cm.value(2 + i / 600, i % 600);
      ASSERT_TRUE(b.value(i) == want || (std::isnan(b.value(i)) && std::isnan(want)));
    }
  }
}

TEST(DetectorCombine, CombinedVarianceRatioMatchesTheScatterOfCombinedNoise) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> g;
  for (auto method : {CombineMethod::Median, CombineMethod::ClippedMean}) {
    std::vector<ImageArray> f(5, ImageArray(200, 200));
    for (auto& a : f)
      for (Eigen::Index i = 0; i < a.size(); ++i) a(i) = g(rng);
    std::vector<const ImageArray*> p;
    for (auto& a : f) p.push_back(&a);
    CombinedBand c = combine(p, {method, 3.0});
    const double var = (c.value - c.value.mean()).square().mean();
    // 40000 samples: the variance is known to 0.7 %.
    EXPECT_NEAR(var / combined_variance_ratio(method, 5), 1.0, 0.05) << to_string(method);
  }
}

TEST(DetectorCombine, RejectsMismatchedShapesAndBadBands) {
  ImageArray a(4, 4), b(4, 5);
  EXPECT_THROW(combine({&a, &b}, {}), DataError);
  EXPECT_THROW(combine_rows({&a}, 2, 6, {}), DataError);
  EXPECT_THROW(combine({}, {}), DataError);
}

// ------------------------------------------------------------------ master bias and flat

TEST(DetectorMasters, ReadNoiseWithinThreePercentAndBiasLevelWithinThreeSigma) {
  auto& n = night();
  MasterBias mb = build_master_bias(n.biases, n.profile, DetectorConfig{});
  ASSERT_EQ(mb.amps.size(), 2u);
  for (int a = 0; a < 2; ++a) {
    // Integer DN add gain^2/12 of quantisation variance: part of the real read noise.
    const double rn_true = std::sqrt(n.ccd.rn_e[a] * n.ccd.rn_e[a] + n.ccd.gain[a] * n.ccd.gain[a] / 12.0);
    std::cout << "amp " << a << ": read noise " << mb.amps[a].read_noise_e << " +- " << mb.amps[a].read_noise_err_e
              << " e- (true " << rn_true << "), overscan level " << mb.amps[a].bias_level_dn << " +- "
              << mb.amps[a].bias_level_err_dn << " DN (true " << n.ccd.bias_dn[a] << ")\n";
    EXPECT_NEAR(mb.amps[a].read_noise_e / rn_true, 1.0, 0.03) << "amp " << a;
    EXPECT_NEAR(mb.amps[a].read_noise_e, rn_true, 4.0 * mb.amps[a].read_noise_err_e) << "amp " << a;
    EXPECT_NEAR(mb.amps[a].bias_level_dn, n.ccd.bias_dn[a], 3.0 * mb.amps[a].bias_level_err_dn) << "amp " << a;
  }
  // The residual bias structure is recovered within its stated variance.
  std::vector<double> pulls;
  for (Eigen::Index i = 0; i < mb.image.data.size(); ++i)
    pulls.push_back((mb.image.data(i) - n.ccd.pattern(i)) / std::sqrt(mb.image.variance(i)));
  auto st = kt::pull_stats(pulls);
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

TEST(DetectorMasters, PixelFlatRecoveredWithinItsNoiseAndIlluminationMasked) {
  auto& n = night();
  DetectorConfig cfg;
  MasterBias mb = build_master_bias(n.biases, n.profile, cfg);
  MasterFlat mf = build_master_flat(n.flats, n.profile, &mb, nullptr, cfg);
  const Image& pf = mf.pixel_flat;
  std::vector<double> pulls;
  for (Eigen::Index y = 0; y < kNy; ++y)
    for (Eigen::Index x = 0; x < 2 * kAmpNx; ++x) {
      if (y < 15 || y > 185) {
        EXPECT_TRUE(pf.mask(y, x) & kMaskUnilluminated) << y << "," << x;
        EXPECT_EQ(pf.data(y, x), 1.0f);
      }
      if (y > 30 && y < 170) EXPECT_EQ(pf.mask(y, x), 0) << y << "," << x;
      if (pf.mask(y, x)) continue;
      pulls.push_back((pf.data(y, x) - n.ccd.pixflat(y, x)) / std::sqrt(pf.variance(y, x)));
    }
  ASSERT_GT(pulls.size(), 25000u);
  auto st = kt::pull_stats(pulls);
  std::cout << "pixel-flat pulls: mean " << st.mean << " width " << st.stddev << " over " << st.n << " pixels\n";
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

// An order-blocking filter's cut-on inside the detector: the lamp gives no light at all over the first columns and
// rises over tens more. Where there is no light the model is noise, and its local maximum too: the pixels must come
// out unilluminated (pixel flat 1), not half of them "illuminated" with a random pixel flat flagged low or high.
// Where the light is too faint to tell a normal pixel from a low one the pixel is not measured: flat 1 with the
// response scatter as variance, not masked. Nothing bright is flagged (every true response here is 1 +- 0.01), and
// every unmasked pixel flat, measured or not, is within its stated noise of the truth.
TEST(DetectorMasters, FilterCutOnInsideTheDetectorIsUnilluminatedWhereDarkAndUnmeasuredWhereFaint) {
  kt::TempDir dir("kspecdr-cuton");
  std::ofstream(dir / "testspec.ini") << kProfile;
  const InstrumentProfile profile = load_instrument((dir / "testspec.ini").string());
  SynthCcd ccd;
  ccd.rng.seed(99);
  std::vector<fs::path> biases, flats;
  for (int k = 0; k < 6; ++k) {
    biases.push_back(dir / fmt::format("bias{}.fits", k));
    ccd.write(biases.back(), ccd.raw_dn(nullptr, false), "bias");
  }
  // A smooth edge (erf, 10 to 90 % over 72 columns, half light at column 130): below 5e-5 at columns < 20.
  auto transmission = [](long x) { return 0.5 * std::erfc((130.0 - static_cast<double>(x)) / 40.0); };
  ImageArray lamp = flat_expectation(4000.0);  // electrons per flat before the pixel response
  for (long y = 0; y < kNy; ++y)
    for (long x = 0; x < 2 * kAmpNx; ++x) lamp(y, x) *= static_cast<float>(transmission(x));
  const ImageArray fe = lamp * ccd.pixflat;
  for (int k = 0; k < 5; ++k) {
    flats.push_back(dir / fmt::format("flat{}.fits", k));
    ccd.write(flats.back(), ccd.raw_dn(&fe, true), "flat");
  }
  DetectorConfig cfg;
  const MasterBias mb = build_master_bias(biases, profile, cfg);
  const MasterFlat mf = build_master_flat(flats, profile, &mb, nullptr, cfg);
  const Image& pf = mf.pixel_flat;
  const float s2 = static_cast<float>(std::pow(*pf.header.get_double("FLATRESP"), 2));
  long dark_lit = 0, flagged_bright = 0, flagged_faint = 0, faint_lit = 0, unmeasured = 0;
  std::vector<double> pulls;
  for (long y = 0; y < kNy; ++y)
    for (long x = 0; x < 2 * kAmpNx; ++x) {
      const MaskPixel m = pf.mask(y, x);
      if (x < 20 && !(m & kMaskUnilluminated)) ++dark_lit;  // the model's window reaches 4 columns into the light
      // Bright: a normal pixel's flat noise below 0.03, a low one (< 0.5) more than 15 sigma away. Faint: noise up
      // to the 1/6 at which the flat stops measuring, where a normal pixel falls below 0.5 at 3 sigma, 0.13 %.
      const bool bright = lamp(y, x) > 400.0f;
      if (!(m & kMaskUnilluminated) && !bright) ++faint_lit;
      if (m & ~kMaskUnilluminated) ++(bright ? flagged_bright : flagged_faint);
      if (m) continue;
      if (pf.data(y, x) == 1.0f && std::abs(pf.variance(y, x) - s2) <= 1e-6f * s2) {
        ++unmeasured;
        // A normal pixel's flat noise is about 1 / sqrt(electrons of the five flats): not measured below ~36 e-.
        EXPECT_LT(lamp(y, x), 50.0f) << "a pixel of " << lamp(y, x) << " e- per flat left unmeasured at " << y << ","
                                     << x;
      }
      pulls.push_back((pf.data(y, x) - ccd.pixflat(y, x)) / std::sqrt(pf.variance(y, x)));
    }
  const auto st = kt::pull_stats(pulls);
  std::cout << "filter cut-on: " << dark_lit << " dark pixels called illuminated, " << flagged_bright << " bright and " << flagged_faint
            << " of " << faint_lit << " faint pixels flagged, "
            << unmeasured << " lit too faintly to measure (NFLATFNT " << *pf.header.get_int("NFLATFNT")
            << "); pixel-flat pulls mean " << st.mean << " width " << st.stddev << " over " << st.n << "\n";
  EXPECT_EQ(dark_lit, 0);
  EXPECT_EQ(flagged_bright, 0);
  EXPECT_LE(static_cast<double>(flagged_faint), 0.0013 * faint_lit + 3.0 * std::sqrt(0.0013 * faint_lit) + 1.0);
  EXPECT_GT(unmeasured, 0) << "the cut-on's faintest lit columns should be too faint to measure";
  EXPECT_EQ(unmeasured, *pf.header.get_int("NFLATFNT"));
  ASSERT_GT(pulls.size(), 20000u);
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

// Narrow fiber profiles (sigma 1.3 px) on traces that drift by 12 px across 1024 columns, with a
// curvature: along a detector row the light rises and falls over ~100 columns. The model must
// follow that within its own stated noise (Poisson of the window plus the response averaged by
// the window), as measured against the noiseless illumination times the true response.
TEST(DetectorMasters, FlatModelFollowsCurvedNarrowFiberTraces) {
  constexpr Eigen::Index ny = 120, nx = 1024;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> g;
  ImageArray illum = ImageArray::Zero(ny, nx), resp(ny, nx), comb(ny, nx), var(ny, nx);
  for (Eigen::Index y = 0; y < ny; ++y)
    for (Eigen::Index x = 0; x < nx; ++x) {
      const double u = (static_cast<double>(x) - 511.5) / 512.0;
      double v = 0;
      for (int f = 0; f < 10; ++f) {
        const double dy = static_cast<double>(y) - (12.0 + 10.0 * f + 3.0 * u + 9.0 * u * u);
        v += std::exp(-0.5 * dy * dy / 1.69);
      }
      illum(y, x) = static_cast<float>(v * (1.0 + 0.3 * u));
      resp(y, x) = static_cast<float>(1.0 + 0.01 * g(rng));
    }
  constexpr double kPeakE = 60000.0;  // electrons at the brightest pixel of the stack
  for (Eigen::Index i = 0; i < comb.size(); ++i) {
    const double e = kPeakE * illum(i) * resp(i) + 25.0;  // light and read noise (5 e-)
    comb(i) = static_cast<float>((kPeakE * illum(i) * resp(i) + std::sqrt(e) * g(rng)) / kPeakE);
    var(i) = static_cast<float>(e / (kPeakE * kPeakE));
  }
  const FlatModel fm = flat_large_scale_model(comb, var, 64.0);
  EXPECT_NEAR(std::sqrt(fm.response_variance), 0.01, 0.001);
  std::vector<double> pulls;
  for (Eigen::Index i = 0; i < comb.size(); ++i) {
    if (illum(i) < 0.3) continue;
    const double m = fm.model(i), truth = illum(i);
    pulls.push_back((m - truth) / std::sqrt(fm.noise_variance(i) + truth * truth * fm.response_variance * fm.weight_sq(i)));
  }
  const auto st = kt::pull_stats(pulls);
  std::cout << "flat model on curved fiber traces: pulls mean " << st.mean << " width " << st.stddev << " over " << st.n
            << " pixels\n";
  EXPECT_LT(std::abs(st.mean), 0.1);
  EXPECT_NEAR(st.stddev, 1.0, 0.1);
}

TEST(DetectorMasters, ProductsRoundTripThroughFitsAndCarryTheirHash) {
  auto& n = night();
  DetectorConfig cfg;
  MasterBias mb = build_master_bias(n.biases, n.profile, cfg);
  MasterFlat mf = build_master_flat(n.flats, n.profile, &mb, nullptr, cfg);
  kt::TempDir dir("kspecdr-calib");
  write_master_bias(dir / "bias.fits", mb, false);
  write_master_flat(dir / "flat.fits", mf, false);
  EXPECT_THROW(write_master_bias(dir / "bias.fits", mb, false), Error);  // no silent overwrite
  MasterBias rb = read_master_bias(dir / "bias.fits");
  MasterFlat rf = read_master_flat(dir / "flat.fits");
  EXPECT_EQ(rb.calhash, mb.calhash);
  EXPECT_EQ(rf.calhash, mf.calhash);
  // Exactly what was built: reduce uses a master it built as built and one it reuses as read, and the two must
  // calibrate frames bit for bit alike.
  ASSERT_EQ(rb.amps.size(), mb.amps.size());
  for (std::size_t a = 0; a < mb.amps.size(); ++a) {
    EXPECT_EQ(rb.amps[a].name, mb.amps[a].name);
    EXPECT_EQ(rb.amps[a].gain, mb.amps[a].gain);
    EXPECT_EQ(rb.amps[a].bias_level_dn, mb.amps[a].bias_level_dn);
    EXPECT_EQ(rb.amps[a].bias_level_err_dn, mb.amps[a].bias_level_err_dn);
    EXPECT_EQ(rb.amps[a].read_noise_e, mb.amps[a].read_noise_e);
    EXPECT_EQ(rb.amps[a].read_noise_err_e, mb.amps[a].read_noise_err_e);
  }
  EXPECT_TRUE((rb.image.data == mb.image.data).all());
  EXPECT_TRUE((rb.image.variance == mb.image.variance).all());
  EXPECT_TRUE((rb.image.mask == mb.image.mask).all());
  EXPECT_TRUE((rf.pixel_flat.data == mf.pixel_flat.data).all());
  EXPECT_TRUE((rf.pixel_flat.variance == mf.pixel_flat.variance).all());
  EXPECT_TRUE((rf.pixel_flat.mask == mf.pixel_flat.mask).all());
  EXPECT_TRUE((rf.illumination == mf.illumination).all());
  const Image a = calibrate_frame(n.science, n.profile, &mb, &mf, cfg), b = calibrate_frame(n.science, n.profile, &rb, &rf, cfg);
  EXPECT_TRUE((a.data == b.data).all() && (a.variance == b.variance).all() && (a.mask == b.mask).all());
  EXPECT_EQ(rb.inputs.size(), 8u);
  std::string made_by;
  EXPECT_TRUE(calibration_is_current(dir / "bias.fits", calibration_hash(n.biases, bias_config_text(n.profile, cfg)),
                                     &made_by));
  EXPECT_EQ(made_by, git_sha()) << "the master should name the build that wrote it (KSPSHA)";
  DetectorConfig other = cfg;
  other.bias_combine = CombineMethod::ClippedMean;
  EXPECT_FALSE(calibration_is_current(dir / "bias.fits", calibration_hash(n.biases, bias_config_text(n.profile, other))));
  EXPECT_FALSE(calibration_is_current(dir / "missing.fits", mb.calhash));
  EXPECT_THROW(read_master_flat(dir / "bias.fits"), DataError);
}

// ------------------------------------------------------------------ calibrated science frame

TEST(DetectorCalibrate, SciencePullsHaveUnitWidthOverGoodPixels) {
  auto& n = night();
  DetectorConfig cfg;
  MasterBias mb = build_master_bias(n.biases, n.profile, cfg);
  MasterFlat mf = build_master_flat(n.flats, n.profile, &mb, nullptr, cfg);
  Image im = calibrate_frame(n.science, n.profile, &mb, &mf, cfg);
  std::vector<double> pulls;
  for (Eigen::Index i = 0; i < im.data.size(); ++i)
    if (im.mask(i) == 0) pulls.push_back((im.data(i) - n.sci_truth(i)) / std::sqrt(im.variance(i)));
  ASSERT_GT(pulls.size(), 25000u);
  auto st = kt::pull_stats(pulls);
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
  RecordProperty("pull_mean", std::to_string(st.mean));
  RecordProperty("pull_width", std::to_string(st.stddev));
  std::cout << "science pulls: mean " << st.mean << " width " << st.stddev << " over " << st.n << " pixels\n";
  const Header& h = im.header;
  EXPECT_EQ(h.get_string("BIASCORR").value(), "MASTER");
  EXPECT_TRUE(h.get_bool("FLATCORR").value());
  EXPECT_TRUE(h.get_bool("CRMASK").value());
  EXPECT_EQ(h.get_string("IMINPUT").value(), "sci.fits");
  EXPECT_NEAR(h.get_double("GAIN1").value(), 1.5, 1e-12);
  EXPECT_NEAR(h.get_double("GAIN").value_or(1.0), 1.0, 1e-12);
  EXPECT_TRUE(h.has("OVSCLV2") && h.has("OVSCER2") && h.has("RDNOISE2") && h.has("KSPSHA") && h.has("NCOSMIC"));
  EXPECT_EQ(im.unit, "electron");
  // Clean synthetic frame: hardly any pixel may be taken for a cosmic ray.
  EXPECT_LT(h.get_int("NCOSMIC").value(), 0.001 * static_cast<double>(im.data.size()) + 1);

  kt::TempDir dir("kspecdr-im");
  write_im(dir / "sci_im.fits", im, false);
  Image back = fits::read_image_file(dir / "sci_im.fits");
  EXPECT_EQ(back.unit, "electron");
  EXPECT_TRUE((back.variance == im.variance).all());
}

TEST(DetectorCalibrate, FallbackWithoutCalibrationsSaysWhatWasDone) {
  auto& n = night();
  Image im = calibrate_frame(n.science, n.profile, nullptr, nullptr, DetectorConfig{});
  EXPECT_EQ(im.header.get_string("BIASCORR").value(), "OVERSCAN");
  EXPECT_FALSE(im.header.get_bool("FLATCORR").value());
  // Variance uses the nominal read noise; the residual bias pattern stays in the data.
  EXPECT_NEAR(im.header.get_double("RDNOISE2").value(), 5.0, 1e-12);
  const double resid = (im.data.block(40, 0, 20, 200) - n.sci_truth.block(40, 0, 20, 200) *
                                                             n.ccd.pixflat.block(40, 0, 20, 200))
                           .mean();
  EXPECT_NEAR(resid, n.ccd.pattern.block(40, 0, 20, 200).mean(), 1.0);
}

TEST(DetectorCalibrate, ShapeMismatchWithTheMasterIsADataError) {
  auto& n = night();
  DetectorConfig cfg;
  MasterBias mb = build_master_bias(n.biases, n.profile, cfg);
  mb.image = Image(10, 10);
  auto msg = message_of([&] { calibrate_frame(n.science, n.profile, &mb, nullptr, cfg); });
  EXPECT_NE(msg.find("master bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sci.fits"), std::string::npos) << msg;
}
