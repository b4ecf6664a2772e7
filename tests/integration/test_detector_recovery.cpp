// Recovery of the detector stage (raw -> IM) on simulated nights, against the
// simulator's truth (DIR/truth.h5), in units of the noise the pipeline states:
// bias level and read noise per amplifier, science frames against the
// noiseless electrons (with and without a flat), the pixel flat, cosmic rays,
// saturation, and bad input through calibrate_frame and `kspecdr reduce`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/core/section.hpp"
#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/config.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/detector/raw.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
namespace kt = kspecdr::testing;

namespace {

template <typename T>
using Array2 = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr std::uint64_t kSeed = 20240611;
/// Mask bits that make a pixel unusable for cosmic-ray statistics (no data, known bad, clipped).
constexpr MaskPixel kMaskUnusable = kMaskBad | kMaskSaturated | kMaskNoData | kMaskLowFlat;

/// One simulated night with its truth, profile and master calibrations, shared by a suite.
struct Night {
  kt::TempDir dir{"kspecdr-recovery"};
  sim::SimConfig config;
  sim::NightResult result;
  InstrumentProfile profile;
  h5::File truth;
  std::map<std::string, fs::path> file_of;             ///< run name -> raw file
  std::map<std::string, std::string> class_of;         ///< run name -> truth class
  std::vector<std::string> biases, flats, arcs, science;
  detector::DetectorConfig dcfg;
  detector::MasterBias bias;
  detector::MasterFlat flat;
  detector::AmpIndexArray amp;                         ///< amplifier of each pipeline pixel
  std::vector<double> read_noise_e;                    ///< truth, per amplifier in profile order
  std::map<std::string, Image> ims;                    ///< calibrated frames (bias + flat), computed once

  template <typename T>
  Array2<T> truth_array(const std::string& path) const {
    return truth.root().read_array<T>(path);
  }

  /// The IM of a run with the master bias and flat (cached).
  const Image& im(const std::string& run) {
    auto it = ims.find(run);
    if (it == ims.end())
      it = ims.emplace(run, detector::calibrate_frame(file_of.at(run), profile, &bias, &flat, dcfg)).first;
    return it->second;
  }

  std::vector<fs::path> files(const std::vector<std::string>& runs) const {
    std::vector<fs::path> out;
    for (const auto& r : runs) out.push_back(file_of.at(r));
    return out;
  }
};

std::unique_ptr<Night> make_night(SpectroMode mode) {
  auto n = std::make_unique<Night>();
  n->config.mode = mode;
  n->config.out_dir = n->dir.path();
  n->config.seed = kSeed;
  // Default sizes and calibration plan; fewer slit science exposures than the 12 of a time
  // series keep the suite fast while giving the cosmic-ray statistics enough hits.
  if (mode == SpectroMode::Slit) n->config.n_science = 4;
  n->result = sim::simulate_night(n->config);
  n->profile = load_instrument(n->result.profile_file.string());
  n->truth = h5::File::open(n->result.truth_file);
  for (const auto& f : n->result.raw_files) n->file_of[f.stem().string()] = f;
  const auto& root = n->truth.root();
  for (const auto& run : root.read_strings("night/frames")) {
    const std::string cls = root.open_group("frames/" + run).attr_string("class");
    n->class_of[run] = cls;
    if (cls == "bias") n->biases.push_back(run);
    else if (cls == "flat") n->flats.push_back(run);
    else if (cls == "arc") n->arcs.push_back(run);
    else if (cls == "science") n->science.push_back(run);
  }
  n->bias = detector::build_master_bias(n->files(n->biases), n->profile, n->dcfg);
  n->flat = detector::build_master_flat(n->files(n->flats), n->profile, &n->bias, nullptr, n->dcfg);
  n->amp = detector::overscan_trim_gain(detector::load_raw(n->file_of.at(n->science.front()), n->profile), n->profile,
                                        n->dcfg)
               .amp;
  for (const auto& a : n->profile.amplifiers)
    n->read_noise_e.push_back(root.open_group("detector/amplifiers/" + a.name).attr_double("read_noise_e"));
  return n;
}

/// FNV-1a of a file's bytes: a checksum to show that raw files are never written.
std::uint64_t file_checksum(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::uint64_t h = 1469598103934665603ull;
  for (std::istreambuf_iterator<char> it(f), end; it != end; ++it) {
    h ^= static_cast<unsigned char>(*it);
    h *= 1099511628211ull;
  }
  return h;
}

std::map<std::string, std::uint64_t> checksums(const fs::path& dir) {
  std::map<std::string, std::uint64_t> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().filename().string()] = file_checksum(e.path());
  return out;
}

/// A copy of a raw frame with its header edited (data written back as 16-bit like the original).
void write_edited_copy(const fs::path& src, const fs::path& dst, const std::function<void(Header&)>& edit) {
  fits::Fits in = fits::Fits::open(src);
  Header h = in.read_header();
  ImageArray data = in.read_image_float();
  in.close();
  edit(h);
  fits::Fits out = fits::Fits::create(dst);
  out.write_image(data, h, "", fits::PixelType::UInt16);
  out.close();
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// ------------------------------------------------------------------ the checks

void check_bias_and_read_noise(const Night& n) {
  const auto& amps = n.bias.amps;
  ASSERT_EQ(amps.size(), n.profile.amplifiers.size());
  const double nframes = static_cast<double>(n.biases.size());
  for (const auto& ab : amps) {
    const h5::Group g = n.truth.root().open_group("detector/amplifiers/" + ab.name);
    // The truth's bias_level_dn is the mean level of the amplifier's overscan: the simulator's
    // row ramp (bias_gradient_dn) is centred on it, and the edge excess (bias_edge_dn) lies in
    // data columns only. The master bias's BIASLVn is the mean overscan level of the bias frames
    // (the overscan model averaged over the amplifier's rows), so the two are like for like.
    const double level = g.attr_double("bias_level_dn"), gain = g.attr_double("gain_e_per_dn");
    const double rn = g.attr_double("read_noise_e");
    const Section os = parse_fits_section(g.attr_string("biassec"));
    // Noise-only uncertainty of the mean overscan level: read noise and 1/12 DN² of rounding
    // over the strip's pixels and the frames.
    const double sigma_pred =
        std::sqrt((rn * rn / (gain * gain) + 1.0 / 12.0) / (static_cast<double>(os.nx() * os.ny()) * nframes));
    const double pull = (ab.bias_level_dn - level) / ab.bias_level_err_dn;
    // Rounding to integer DN adds gain²/12 e-² to the variance of every pixel: part of the read
    // noise that pair differences of raw frames see.
    const double rn_eff = std::sqrt(rn * rn + gain * gain / 12.0);
    const double rn_err = ab.read_noise_e / rn_eff - 1.0;
    std::cout << n.profile.name << " amp " << ab.name << ": level " << ab.bias_level_dn << " +- "
              << ab.bias_level_err_dn << " DN (truth " << level << ", pull " << pull << ", noise-only sigma "
              << sigma_pred << "); read noise " << ab.read_noise_e << " e- (truth " << rn_eff << " incl. rounding, "
              << 100.0 * rn_err << " %)\n";
    EXPECT_NEAR(ab.gain, gain, 1e-12) << ab.name;
    EXPECT_GT(ab.bias_level_err_dn, 0.0) << ab.name;
    EXPECT_LT(std::abs(pull), 3.0) << ab.name;
    // A 3-sigma test is only as strong as its sigma: the stated uncertainty must not exceed the
    // noise-only one by more than the overscan ramp's spread can explain.
    EXPECT_LT(ab.bias_level_err_dn, 2.0 * sigma_pred) << ab.name;
    EXPECT_LT(std::abs(rn_err), 0.03) << ab.name;
  }
}

/// Pulls (IM - reference) / sqrt(variance) over mask == 0, leaving out the truth's bad
/// columns (the simulator's documented raw -> IM check does; KnownBadColumns tests them).
kt::PullStats science_pulls(const Image& im, const Array2<float>& reference, const Array2<unsigned char>& bad) {
  std::vector<double> pulls;
  pulls.reserve(static_cast<std::size_t>(im.data.size()));
  for (Eigen::Index i = 0; i < im.data.size(); ++i)
    if (im.mask(i) == 0 && bad(i) == 0)
      pulls.push_back((im.data(i) - reference(i)) / std::sqrt(static_cast<double>(im.variance(i))));
  return kt::pull_stats(pulls);
}

void check_science_with_flat(Night& n) {
  const std::string run = n.science.front();
  const Image& im = n.im(run);
  const auto expected = n.truth_array<float>("frames/" + run + "/expected_e");
  ASSERT_EQ(im.data.rows(), expected.rows());
  ASSERT_EQ(im.data.cols(), expected.cols());
  const auto st = science_pulls(im, expected, n.truth_array<unsigned char>("detector/bad_pixels"));
  std::cout << n.profile.name << " " << run << " (bias + flat): pulls mean " << st.mean << " width " << st.stddev
            << " over " << st.n << " of " << im.data.size() << " pixels\n";
  EXPECT_GT(static_cast<double>(st.n), 0.5 * static_cast<double>(im.data.size()));
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

void check_science_without_flat(Night& n) {
  const std::string run = n.science.back();
  const Image im = detector::calibrate_frame(n.file_of.at(run), n.profile, &n.bias, nullptr, n.dcfg);
  EXPECT_FALSE(im.header.get_bool("FLATCORR").value());
  EXPECT_EQ(im.header.get_string("BIASCORR").value(), "MASTER");
  // Without a flat the IM keeps the pixel sensitivity: compare with what the pixels recorded.
  const auto expected = n.truth_array<float>("frames/" + run + "/expected_e");
  const auto pixflat = n.truth_array<float>("detector/pixel_flat");
  const Array2<float> reference = expected * pixflat;
  const auto st = science_pulls(im, reference, n.truth_array<unsigned char>("detector/bad_pixels"));
  std::cout << n.profile.name << " " << run << " (bias, no flat): pulls mean " << st.mean << " width " << st.stddev
            << " over " << st.n << " of " << im.data.size() << " pixels\n";
  EXPECT_GT(static_cast<double>(st.n), 0.9 * static_cast<double>(im.data.size()));
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

void check_pixel_flat(const Night& n) {
  const Image& pf = n.flat.pixel_flat;
  const auto truth = n.truth_array<float>("detector/pixel_flat");
  const auto illum = n.truth_array<float>("detector/illumination");
  const auto bad = n.truth_array<unsigned char>("detector/bad_pixels");
  ASSERT_EQ(pf.data.rows(), truth.rows());
  ASSERT_EQ(pf.data.cols(), truth.cols());
  std::vector<double> pulls;
  long lit_truth = 0, lit_and_unmasked = 0;
  const float illum_max = illum.maxCoeff();
  for (Eigen::Index i = 0; i < pf.data.size(); ++i) {
    // Brightly lit in the truth (a global cut, unlike the pipeline's local one): such pixels
    // must be inside the pipeline's illuminated footprint unless they are bad.
    if (illum(i) > 0.5f * illum_max) {
      ++lit_truth;
      lit_and_unmasked += pf.mask(i) == 0;
    }
    // mask == 0: illuminated by the pipeline's footprint, neither low nor bad; the truth's bad
    // columns are left to KnownBadColumns. The truth's pixel flat has mean 1 over the detector,
    // the measured one over each smoothing bin: the difference is ~0.1 % (1 % rms / sqrt(64)),
    // a fraction of the per-pixel noise, and is left in.
    if (pf.mask(i) == 0 && bad(i) == 0)
      pulls.push_back((pf.data(i) - truth(i)) / std::sqrt(static_cast<double>(pf.variance(i))));
  }
  const auto st = kt::pull_stats(pulls);
  std::cout << n.profile.name << " pixel flat: pulls mean " << st.mean << " width " << st.stddev << " over " << st.n
            << " pixels; " << lit_and_unmasked << " of " << lit_truth << " brightly lit pixels unmasked\n";
  // Only the low-response column may be masked where the lamp is bright.
  EXPECT_GT(static_cast<double>(lit_and_unmasked), 0.98 * static_cast<double>(lit_truth));
  EXPECT_LT(std::abs(st.mean), 0.05);
  EXPECT_NEAR(st.stddev, 1.0, 0.05);
}

struct CosmicScore {
  long eligible = 0, found = 0;  ///< truth hits above 5 sigma of the local noise, and those flagged
  long clean = 0, false_flags = 0;
};

/// Compares the COSMIC bits of a run's IM with the truth's cosmic_e.
void score_cosmics(Night& n, const std::string& run, CosmicScore& s) {
  const Image& im = n.im(run);
  const std::string base = "frames/" + run + "/";
  const auto cosmic = n.truth_array<float>(base + "cosmic_e");
  const auto expected = n.truth_array<float>(base + "expected_e");
  const auto pixflat = n.truth_array<float>("detector/pixel_flat");
  const auto dark = n.truth_array<float>("detector/dark_e_per_s");
  const auto bad = n.truth_array<unsigned char>("detector/bad_pixels");
  const double t = n.truth.root().open_group("frames/" + run).attr_double("exptime_s");
  const Eigen::Index ny = im.data.rows(), nx = im.data.cols();
  for (Eigen::Index y = 0; y < ny; ++y)
    for (Eigen::Index x = 0; x < nx; ++x) {
      const MaskPixel m = im.mask(y, x);
      // Known bad columns are judged by KnownBadColumns, not as cosmic-ray false alarms.
      if ((m & kMaskUnusable) || bad(y, x) != 0) continue;
      const bool flagged = (m & kMaskCosmic) != 0;
      if (cosmic(y, x) > 0) {
        // Local noise without the hit: read noise of the amplifier, light and dark current.
        const double rn = n.read_noise_e.at(n.amp(y, x));
        const double sigma = std::sqrt(rn * rn + expected(y, x) * pixflat(y, x) + dark(y, x) * t);
        if (cosmic(y, x) > 5.0 * sigma) {
          ++s.eligible;
          s.found += flagged;
        }
        continue;
      }
      ++s.clean;
      s.false_flags += flagged;
    }
}

void check_cosmics(Night& n, const std::vector<std::string>& runs, const char* what) {
  CosmicScore s;
  for (const auto& run : runs) score_cosmics(n, run, s);
  const double completeness = s.eligible ? static_cast<double>(s.found) / static_cast<double>(s.eligible) : 0.0;
  const double false_rate = static_cast<double>(s.false_flags) / static_cast<double>(std::max(1L, s.clean));
  std::cout << n.profile.name << " cosmic rays on " << what << " (" << runs.size() << " frames): " << s.found << " of "
            << s.eligible << " hit pixels above 5 sigma flagged (" << 100.0 * completeness << " %), " << s.false_flags
            << " of " << s.clean << " clean pixels flagged (" << 100.0 * false_rate << " %)\n";
  ASSERT_GE(s.eligible, 10) << "too few cosmic-ray pixels in the truth to measure completeness";
  EXPECT_GE(completeness, 0.95);
  EXPECT_LE(false_rate, 0.001);
}

/// Every pixel of the truth's low-response and hot columns is masked in a science IM, or its
/// value agrees with the truth within 5 sigma (a correction that worked).
void check_bad_columns(Night& n) {
  const auto bad = n.truth_array<unsigned char>("detector/bad_pixels");
  const std::string run = n.science.front();
  const Image& im = n.im(run);
  const auto expected = n.truth_array<float>("frames/" + run + "/expected_e");
  for (const int kind : {1, 2}) {
    long pixels = 0, masked = 0, wrong = 0;
    double worst = 0;
    for (Eigen::Index i = 0; i < im.data.size(); ++i) {
      if (bad(i) != kind) continue;
      ++pixels;
      if (im.mask(i) & (kMaskBad | kMaskLowFlat | kMaskNoData)) {
        ++masked;
        continue;
      }
      const double pull = (im.data(i) - expected(i)) / std::sqrt(static_cast<double>(im.variance(i)));
      if (std::abs(pull) > 5.0) {
        ++wrong;
        worst = std::max(worst, std::abs(pull));
      }
    }
    const char* what = kind == 1 ? "low-response" : "hot";
    std::cout << n.profile.name << " " << run << " " << what << " column: " << pixels << " pixels, " << masked
              << " masked, " << wrong << " unmasked and off the truth by more than 5 sigma (worst " << worst << ")\n";
    EXPECT_GT(pixels, 0) << what;
    EXPECT_EQ(wrong, 0) << what << " column pixels are neither masked nor corrected";
  }
}

void check_saturation(Night& n) {
  long truth_sat = 0, missed = 0, extra = 0;
  std::vector<std::string> runs = n.arcs;
  runs.insert(runs.end(), n.science.begin(), n.science.end());
  for (const auto& run : runs) {
    const Image& im = n.im(run);
    const auto sat = n.truth_array<unsigned char>("frames/" + run + "/saturated");
    for (Eigen::Index i = 0; i < im.data.size(); ++i) {
      const bool masked = (im.mask(i) & kMaskSaturated) != 0;
      truth_sat += sat(i) != 0;
      missed += sat(i) != 0 && !masked;
      extra += sat(i) == 0 && masked;
    }
  }
  std::cout << n.profile.name << " saturation: " << truth_sat << " truth-saturated pixels, " << missed
            << " not masked, " << extra << " masked without being saturated\n";
  ASSERT_GT(truth_sat, 0) << "the night has no saturated pixel to check";
  EXPECT_EQ(missed, 0);
  // Same threshold on the same raw values: the mask is exact both ways.
  EXPECT_EQ(extra, 0);
}

// ------------------------------------------------------------------ suites

class FiberRecovery : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Fiber); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<Night> night_;
};
std::unique_ptr<Night> FiberRecovery::night_;

class SlitRecovery : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Slit); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<Night> night_;
};
std::unique_ptr<Night> SlitRecovery::night_;

}  // namespace

TEST_F(FiberRecovery, BiasLevelWithinThreeSigmaAndReadNoiseWithinThreePercent) {
  check_bias_and_read_noise(*night_);
}
TEST_F(SlitRecovery, BiasLevelWithinThreeSigmaAndReadNoiseWithinThreePercent) {
  check_bias_and_read_noise(*night_);
}

TEST_F(FiberRecovery, SciencePullsAgainstNoiselessTruth) { check_science_with_flat(*night_); }
TEST_F(SlitRecovery, SciencePullsAgainstNoiselessTruth) { check_science_with_flat(*night_); }

TEST_F(FiberRecovery, SciencePullsWithoutFlatAgainstTruthTimesPixelFlat) { check_science_without_flat(*night_); }
TEST_F(SlitRecovery, SciencePullsWithoutFlatAgainstTruthTimesPixelFlat) { check_science_without_flat(*night_); }

TEST_F(FiberRecovery, KnownBadColumnsAreMaskedOrCorrected) { check_bad_columns(*night_); }
TEST_F(SlitRecovery, KnownBadColumnsAreMaskedOrCorrected) { check_bad_columns(*night_); }

// The fiber pixel flat needs a flat model that follows curved fiber profiles along each row and
// carries its own variance (local quartic along x: pull width 0.995, was 1.645 with 64-px bins).
TEST_F(FiberRecovery, PixelFlatWithinItsNoise) { check_pixel_flat(*night_); }
TEST_F(SlitRecovery, PixelFlatWithinItsNoise) { check_pixel_flat(*night_); }

TEST_F(FiberRecovery, CosmicRaysOnScienceFrames) { check_cosmics(*night_, night_->science, "science"); }
TEST_F(SlitRecovery, CosmicRaysOnScienceFrames) { check_cosmics(*night_, night_->science, "science"); }
TEST_F(FiberRecovery, CosmicRaysOnArcs) { check_cosmics(*night_, night_->arcs, "arcs"); }
TEST_F(SlitRecovery, CosmicRaysOnArcs) { check_cosmics(*night_, night_->arcs, "arcs"); }

TEST_F(FiberRecovery, EverySaturatedPixelIsMasked) { check_saturation(*night_); }
TEST_F(SlitRecovery, EverySaturatedPixelIsMasked) { check_saturation(*night_); }

// ------------------------------------------------------------------ bad input

namespace {

/// Names of the files under `dir` (recursively) that look like unfinished atomic writes.
std::vector<std::string> temporary_files(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".tmp", 0) == 0 || name.find(".tmp-") != std::string::npos || name.ends_with(".tmp"))
      out.push_back(e.path().string());
  }
  return out;
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

/// The kspecdr program: KSPECDR_BIN, else the one built beside the tests (build/tests/..).
fs::path program() {
  if (std::getenv("KSPECDR_BIN")) return kt::kspecdr_bin();
  return fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "kspecdr";
}

}  // namespace

TEST_F(SlitRecovery, CorruptAndTruncatedFramesFailAloneAndTheNightEndsWithExitCode3) {
  const Night& n = *night_;
  const fs::path bin = program();
  ASSERT_TRUE(fs::exists(bin)) << "no kspecdr program at " << bin << " (set KSPECDR_BIN)";
  kt::TempDir work("kspecdr-badraw");
  const fs::path raw = work / "raw", out = work / "out";
  fs::create_directories(raw);
  for (const auto& [run, file] : n.file_of) fs::copy_file(file, raw / file.filename());
  ASSERT_GE(n.science.size(), 3u);
  // A frame cut short after its header, and one whose header is overwritten with garbage.
  const fs::path truncated = raw / n.file_of.at(n.science[0]).filename();
  const fs::path corrupt = raw / n.file_of.at(n.science[1]).filename();
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  {
    std::fstream f(corrupt, std::ios::in | std::ios::out | std::ios::binary);
    const std::string junk(160, '\x7f');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  const auto before = checksums(raw);
  const auto originals_before = checksums(n.result.truth_file.parent_path() / "raw");

  std::string output;
  const int rc = kt::run_command(quoted(bin) + " reduce --raw " + quoted(raw) + " --instrument " +
                                     quoted(n.result.profile_file) + " --out " + quoted(out),
                                 &output);
  EXPECT_EQ(rc, 3) << output;
  for (const fs::path& bad : {truncated, corrupt}) {
    EXPECT_NE(output.find(bad.filename().string()), std::string::npos) << bad << " is not named:\n" << output;
    EXPECT_FALSE(fs::exists(out / "im" / (bad.stem().string() + ".im.fits"))) << bad;
  }
  EXPECT_NE(output.find("failed"), std::string::npos) << output;
  // Every other science frame and every arc became an IM file.
  std::vector<std::string> expected_ims = n.arcs;
  expected_ims.insert(expected_ims.end(), n.science.begin() + 2, n.science.end());
  for (const auto& run : expected_ims) {
    const fs::path im = out / "im" / (run + ".im.fits");
    EXPECT_TRUE(fs::exists(im)) << im << "\n" << output;
  }
  EXPECT_EQ(checksums(raw), before) << "raw files were modified";
  EXPECT_EQ(checksums(n.result.truth_file.parent_path() / "raw"), originals_before);
  EXPECT_TRUE(temporary_files(out).empty()) << temporary_files(out).front();
}

TEST_F(SlitRecovery, MissingSectionKeywordIsNamed) {
  const Night& n = *night_;
  kt::TempDir work("kspecdr-nokey");
  const fs::path src = n.file_of.at(n.science.front()), copy = work / "nodatasec.fits";
  write_edited_copy(src, copy, [](Header& h) { h.erase("DATASEC1"); });
  // The unedited copy calibrates: the message below is about the keyword, not the copy.
  const fs::path same = work / "same.fits";
  write_edited_copy(src, same, [](Header&) {});
  EXPECT_NO_THROW(detector::calibrate_frame(same, n.profile, &n.bias, &n.flat, n.dcfg));
  const auto before = file_checksum(copy);
  const std::string msg = message_of([&] { detector::calibrate_frame(copy, n.profile, &n.bias, &n.flat, n.dcfg); });
  EXPECT_NE(msg.find("DATASEC1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nodatasec.fits"), std::string::npos) << msg;
  EXPECT_THROW(detector::calibrate_frame(copy, n.profile, &n.bias, &n.flat, n.dcfg), DataError);
  EXPECT_EQ(file_checksum(copy), before);
}

TEST_F(SlitRecovery, MissingGainKeywordOfAHeaderKeywordProfileIsNamed) {
  const Night& n = *night_;
  kt::TempDir work("kspecdr-nogain");
  // The slit profile with amplifier gains read from GAIN1 / GAIN2 instead of given nominally.
  std::ifstream in(n.result.profile_file);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  for (const auto& [nominal, key] :
       {std::pair{"gain = 1.21", "gain_key = GAIN1"}, std::pair{"gain = 0.97", "gain_key = GAIN2"}}) {
    const auto pos = text.find(nominal);
    ASSERT_NE(pos, std::string::npos) << nominal;
    text.replace(pos, std::string(nominal).size(), key);
  }
  const fs::path profile_path = work / "slit-gain-keywords.ini";
  std::ofstream(profile_path) << text;
  const InstrumentProfile profile = load_instrument(profile_path.string());
  ASSERT_EQ(profile.amplifiers.at(0).gain_key, "GAIN1");

  const fs::path src = n.file_of.at(n.science.front());
  const fs::path with_gain = work / "withgain.fits", without_gain = work / "nogain.fits";
  write_edited_copy(src, with_gain, [](Header& h) {
    h.set("GAIN1", 1.21, "[e-/DN]");
    h.set("GAIN2", 0.97, "[e-/DN]");
  });
  write_edited_copy(src, without_gain, [](Header& h) { h.set("GAIN2", 0.97, "[e-/DN]"); });
  const Image good = detector::calibrate_frame(with_gain, profile, nullptr, nullptr, n.dcfg);
  EXPECT_EQ(good.header.get_double("GAIN1").value(), 1.21);
  const std::string msg =
      message_of([&] { detector::calibrate_frame(without_gain, profile, nullptr, nullptr, n.dcfg); });
  EXPECT_NE(msg.find("GAIN1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nogain.fits"), std::string::npos) << msg;
}

TEST_F(SlitRecovery, FrameOfAnotherShapeThanTheMasterIsNamed) {
  const Night& n = *night_;
  kt::TempDir work("kspecdr-shape");
  // The same frame with both amplifiers' data sections 12 raw rows shorter: 1000 columns
  // along the dispersion after trimming, against masters of 1024.
  const fs::path copy = work / "short.fits";
  const Section d1 =
      parse_fits_section(fits::Fits::open(n.file_of.at(n.science.front())).read_header().require_string("DATASEC1"));
  const long half = d1.ny();
  const long cut = 12;
  write_edited_copy(n.file_of.at(n.science.front()), copy, [&](Header& h) {
    const auto sec = [](long x0, long x1, long y0, long y1) {
      return Section{.x0 = x0, .x1 = x1, .y0 = y0, .y1 = y1}.to_fits();
    };
    h.set("DATASEC1", sec(d1.x0, d1.x1, 0, half - cut));
    h.set("DETSEC1", sec(d1.x0, d1.x1, 0, half - cut));
    h.set("BIASSEC1", sec(d1.x1, d1.x1 + 32, 0, half - cut));
    h.set("DATASEC2", sec(d1.x0, d1.x1, half, 2 * half - cut));
    h.set("DETSEC2", sec(d1.x0, d1.x1, half - cut, 2 * half - 2 * cut));
    h.set("BIASSEC2", sec(d1.x1, d1.x1 + 32, half, 2 * half - cut));
  });
  // Alone it is a good frame of 1000 columns.
  const Image alone = detector::calibrate_frame(copy, n.profile, nullptr, nullptr, n.dcfg);
  EXPECT_EQ(alone.data.cols(), 2 * half - 2 * cut);
  const std::string msg = message_of([&] { detector::calibrate_frame(copy, n.profile, &n.bias, &n.flat, n.dcfg); });
  EXPECT_NE(msg.find("master bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("short.fits"), std::string::npos) << msg;
  EXPECT_THROW(detector::calibrate_frame(copy, n.profile, nullptr, &n.flat, n.dcfg), DataError);
}

TEST(DetectorBadInput, UnknownInstrumentIsAConfigErrorAndReduceWritesNothing) {
  EXPECT_THROW(load_instrument("no-such-spectrograph"), ConfigError);
  const std::string msg = message_of([] { load_instrument("no-such-spectrograph"); });
  EXPECT_NE(msg.find("no-such-spectrograph"), std::string::npos) << msg;
  const fs::path bin = program();
  ASSERT_TRUE(fs::exists(bin)) << "no kspecdr program at " << bin << " (set KSPECDR_BIN)";
  kt::TempDir work("kspecdr-noinst");
  fs::create_directories(work / "raw");
  std::string output;
  const int rc = kt::run_command(quoted(bin) + " reduce --raw " + quoted(work / "raw") +
                                     " --instrument no-such-spectrograph --out " + quoted(work / "out"),
                                 &output);
  EXPECT_EQ(rc, 2) << output;
  EXPECT_NE(output.find("no-such-spectrograph"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(work / "out")) << output;
}
