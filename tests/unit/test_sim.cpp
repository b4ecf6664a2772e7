// The simulator ("going backward"): reproducible nights whose raw frames the
// instrument profiles describe correctly, and whose truth agrees with the
// pixels to within the noise the truth itself predicts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/sim/scene.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
namespace kt = kspecdr::testing;

namespace {

sim::SimConfig small_night(SpectroMode mode, const fs::path& out, std::uint64_t seed) {
  sim::SimConfig c;
  c.mode = mode;
  c.out_dir = out;
  c.seed = seed;
  c.n_bias = 2;
  c.n_flat = 1;
  c.n_arc = 2;
  c.n_science = mode == SpectroMode::Fiber ? 1 : 6;
  if (mode == SpectroMode::Slit) c.nx = 512;
  return c;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

/// Raw frame: pixels, primary header, and the pipeline position of every raw data pixel.
struct RawFrame {
  ImageArrayD dn;
  Header header;
};

RawFrame read_raw(const fs::path& p) {
  auto f = fits::Fits::open(p);
  RawFrame r;
  r.header = f.read_header();
  r.dn = f.read_image_double();
  return r;
}

struct AmpSections {
  std::string name;
  Section datasec, biassec, detsec;
  double gain = 0, read_noise = 0;
};

/// The amplifier sections a pipeline would use: from the profile, else from the header keywords.
std::vector<AmpSections> sections_of(const InstrumentProfile& p, const Header& h) {
  std::vector<AmpSections> out;
  for (const auto& a : p.amplifiers) {
    AmpSections s;
    s.name = a.name;
    s.datasec = a.datasec ? *a.datasec : parse_fits_section(h.require_string(a.datasec_key));
    s.biassec = a.biassec ? *a.biassec : parse_fits_section(h.require_string(a.biassec_key));
    s.detsec = a.detsec ? *a.detsec : parse_fits_section(h.require_string(a.detsec_key));
    s.gain = a.gain;
    s.read_noise = a.read_noise;
    out.push_back(s);
  }
  return out;
}

/// Pipeline (y, x) of raw pixel (yr, xr) of amplifier `a`, following the profile's orientation
/// rules: trim and place by detsec, dispersion onto x (transpose for axis 2), then flips.
std::pair<long, long> raw_to_pipeline(const InstrumentProfile& p, const std::vector<AmpSections>& amps,
                                      const AmpSections& a, long yr, long xr) {
  long asm_ny = 0, asm_nx = 0;
  for (const auto& s : amps) {
    asm_ny = std::max(asm_ny, s.detsec.y1);
    asm_nx = std::max(asm_nx, s.detsec.x1);
  }
  const long ya = a.detsec.y0 + (yr - a.datasec.y0), xa = a.detsec.x0 + (xr - a.datasec.x0);
  long y = ya, x = xa, ny = asm_ny, nx = asm_nx;
  if (p.dispersion_axis == 2) {
    y = xa;
    x = ya;
    ny = asm_nx;
    nx = asm_ny;
  }
  if (p.flip_dispersion) x = nx - 1 - x;
  if (p.flip_spatial) y = ny - 1 - y;
  return {y, x};
}

/// Every dataset (as doubles or strings) and attribute of an HDF5 file, by path, for comparing
/// the content of two files whose bytes may differ only in HDF5's object timestamps.
struct H5Content {
  std::map<std::string, std::vector<double>> numbers;
  std::map<std::string, std::vector<std::string>> strings;
  bool operator==(const H5Content&) const = default;
};

herr_t collect_attr(hid_t obj, const char* name, const H5A_info_t*, void* data) {
  auto* ctx = static_cast<std::pair<H5Content*, std::string>*>(data);
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  hid_t s = H5Aget_space(a);
  const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(s));
  const std::string key = ctx->second + "@" + name;
  if (H5Tget_class(t) == H5T_STRING) {
    // Variable-length strings: read through a native string type and free them after copying.
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    std::vector<char*> buf(n, nullptr);
    H5Aread(a, mt, buf.data());
    for (auto* c : buf) ctx->first->strings[key].push_back(c ? c : "");
    H5Dvlen_reclaim(mt, s, H5P_DEFAULT, buf.data());
    H5Tclose(mt);
  } else {
    std::vector<double> v(n);
    H5Aread(a, H5T_NATIVE_DOUBLE, v.data());
    ctx->first->numbers[key] = v;
  }
  H5Sclose(s);
  H5Tclose(t);
  H5Aclose(a);
  return 0;
}

herr_t collect_object(hid_t root, const char* name, const H5O_info_t* info, void* data) {
  auto* content = static_cast<H5Content*>(data);
  hid_t obj = H5Oopen(root, name, H5P_DEFAULT);
  std::pair<H5Content*, std::string> ctx{content, name};
  H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr, &ctx);
  if (info->type == H5O_TYPE_DATASET) {
    hid_t t = H5Dget_type(obj);
    hid_t s = H5Dget_space(obj);
    const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(s));
    if (H5Tget_class(t) == H5T_STRING) {
      hid_t mt = H5Tcopy(H5T_C_S1);
      H5Tset_size(mt, H5T_VARIABLE);
      std::vector<char*> buf(n, nullptr);
      H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
      for (auto* c : buf) content->strings[name].push_back(c ? c : "");
      H5Dvlen_reclaim(mt, s, H5P_DEFAULT, buf.data());
      H5Tclose(mt);
    } else {
      std::vector<double> v(n);
      H5Dread(obj, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
      content->numbers[name] = v;
    }
    H5Sclose(s);
    H5Tclose(t);
  }
  H5Oclose(obj);
  return 0;
}

H5Content read_content(const fs::path& p) {
  H5Content c;
  h5::File f = h5::File::open(p);
  H5Ovisit(f.root().id(), H5_INDEX_NAME, H5_ITER_INC, collect_object, &c);
  return c;
}

/// One simulated night shared by the tests of a suite.
struct Night {
  kt::TempDir dir{"kspecdr-sim"};
  sim::SimConfig config;
  sim::NightResult result;
  InstrumentProfile profile;
};

std::unique_ptr<Night> make_night(SpectroMode mode, std::uint64_t seed) {
  auto n = std::make_unique<Night>();
  n->config = small_night(mode, n->dir.path(), seed);
  n->result = sim::simulate_night(n->config);
  n->profile = load_instrument(n->result.profile_file.string());
  sim::resolve_mode_defaults(n->config);
  return n;
}

template <typename T>
Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> truth_array(const h5::File& f, const std::string& p) {
  return f.root().read_array<T>(p);
}

}  // namespace

// ---------------------------------------------------------------- reproducibility

TEST(SimNight, SameSeedGivesIdenticalFramesAndTruthDifferentSeedDiffers) {
  kt::TempDir dir("kspecdr-sim-seed");
  auto run = [&](const std::string& sub, std::uint64_t seed) {
    auto c = small_night(SpectroMode::Fiber, dir / sub, seed);
    c.nx = 512;  // the profile's sections are rescaled in the copy written beside the frames
    return sim::simulate_night(c);
  };
  const auto a = run("a", 3), b = run("b", 3), other = run("c", 4);
  ASSERT_EQ(a.raw_files.size(), b.raw_files.size());
  for (std::size_t i = 0; i < a.raw_files.size(); ++i)
    EXPECT_EQ(read_bytes(a.raw_files[i]), read_bytes(b.raw_files[i])) << a.raw_files[i].filename();
  EXPECT_TRUE(read_content(a.truth_file) == read_content(b.truth_file));
  EXPECT_EQ(read_bytes(a.profile_file), read_bytes(b.profile_file));

  EXPECT_NE(read_bytes(a.raw_files.back()), read_bytes(other.raw_files.back()));
  EXPECT_FALSE(read_content(a.truth_file) == read_content(other.truth_file));
}

// ---------------------------------------------------------------- fiber night

class FiberNight : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Fiber, 7).release(); }
  static void TearDownTestSuite() {
    delete night_;
    night_ = nullptr;
  }
  static Night* night_;
};
Night* FiberNight::night_ = nullptr;

class SlitNight : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Slit, 11).release(); }
  static void TearDownTestSuite() {
    delete night_;
    night_ = nullptr;
  }
  static Night* night_;
};
Night* SlitNight::night_ = nullptr;

namespace {

/// Checks every raw frame: it opens, is unsigned 16-bit, carries the mapped keywords, has the
/// shape its sections describe, and the profile classifies it as the truth says.
void check_frames_against_profile(const Night& n) {
  const auto& p = n.profile;
  // At the profile's own size the copy beside the frames is the shipped profile itself.
  EXPECT_EQ(read_bytes(n.result.profile_file), read_bytes(data_dir() / "instruments" / (p.name + ".ini")));
  h5::File truth = h5::File::open(n.result.truth_file);
  std::set<FrameClass> seen;
  bool arc_as_object = false;
  for (const auto& path : n.result.raw_files) {
    SCOPED_TRACE(path.filename().string());
    auto f = fits::Fits::open(path);
    EXPECT_EQ(f.image_equiv_bitpix(), 20);  // USHORT_IMG: BITPIX 16 with BZERO 32768
    const Header h = f.read_header();
    for (const char* logical :
         {"frame_type", "object", "exptime", "date_obs", "mjd_obs", "airmass", "ra", "dec", "disperser", "lamps", "filter"}) {
      ASSERT_FALSE(p.keyword(logical).empty()) << logical;
      EXPECT_TRUE(h.has(p.keyword(logical))) << p.keyword(logical);
    }
    EXPECT_NE(h.require_string(p.keyword("date_obs")).find('T'), std::string::npos);
    const auto shape = f.image_shape();
    ASSERT_EQ(shape.size(), 2u);
    const auto amps = sections_of(p, h);
    long ny = 0, nx = 0;
    for (const auto& a : amps) {
      for (const Section& s : {a.datasec, a.biassec}) {
        EXPECT_TRUE(s.inside(shape[1], shape[0])) << s.to_fits();
        ny = std::max(ny, s.y1);
        nx = std::max(nx, s.x1);
      }
      EXPECT_EQ(a.datasec.nx(), a.detsec.nx());
      EXPECT_EQ(a.datasec.ny(), a.detsec.ny());
    }
    EXPECT_EQ(ny, shape[0]);
    EXPECT_EQ(nx, shape[1]);
    if (p.raw_shape) EXPECT_EQ(*p.raw_shape, shape);

    const std::string name = path.stem().string();
    const FrameClass want = frame_class_from_string(truth.root().open_group("frames/" + name).attr_string("class"));
    EXPECT_EQ(p.classify(h), want);
    seen.insert(want);
    if (want == FrameClass::Arc && h.require_string(p.keyword("frame_type")) == "OBJECT") arc_as_object = true;
  }
  EXPECT_EQ(seen, (std::set<FrameClass>{FrameClass::Bias, FrameClass::Flat, FrameClass::Arc, FrameClass::Science}));
  EXPECT_TRUE(arc_as_object) << "one arc must be OBSTYPE=OBJECT with the lamp on";
}

/// Overscan of every bias: mean level per amplifier and the scatter (read noise / gain) agree
/// with the truth, within five times their sampling uncertainty.
void check_bias_overscan(const Night& n) {
  h5::File truth = h5::File::open(n.result.truth_file);
  int biases = 0;
  for (const auto& path : n.result.raw_files) {
    const std::string name = path.stem().string();
    if (truth.root().open_group("frames/" + name).attr_string("class") != "bias") continue;
    ++biases;
    const RawFrame raw = read_raw(path);
    for (const auto& a : sections_of(n.profile, raw.header)) {
      SCOPED_TRACE(name + " amplifier " + a.name);
      h5::Group g = truth.root().open_group("detector/amplifiers/" + a.name);
      const double level = g.attr_double("bias_level_dn"), slope = g.attr_double("bias_gradient_dn");
      const double gain = g.attr_double("gain_e_per_dn"), rn = g.attr_double("read_noise_e");
      EXPECT_DOUBLE_EQ(gain, a.gain);
      EXPECT_DOUBLE_EQ(rn, a.read_noise);
      std::vector<double> v, resid;
      for (long y = a.biassec.y0; y < a.biassec.y1; ++y) {
        const double t = (static_cast<double>(y - a.datasec.y0) + 0.5) / static_cast<double>(a.datasec.ny()) - 0.5;
        for (long x = a.biassec.x0; x < a.biassec.x1; ++x) {
          v.push_back(raw.dn(y, x));
          resid.push_back(raw.dn(y, x) - (level + slope * t));
        }
      }
      const double nn = static_cast<double>(v.size());
      const double sigma_dn = std::sqrt(std::pow(rn / gain, 2) + 1.0 / 12.0);  // read noise + quantisation
      const double mean = std::accumulate(v.begin(), v.end(), 0.0) / nn;
      EXPECT_NEAR(mean, level, 5.0 * sigma_dn / std::sqrt(nn));
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      EXPECT_NEAR(v[v.size() / 2], level, 0.5 + 5.0 * 1.2533 * sigma_dn / std::sqrt(nn) + std::abs(slope) / 2.0);
      const auto stats = kt::pull_stats(resid);
      EXPECT_NEAR(stats.stddev / sigma_dn, 1.0, 5.0 / std::sqrt(2.0 * nn));
    }
  }
  EXPECT_GE(biases, 1);
}

/// Raw DN of a science frame = bias + (expected × flat + dark) / gain, with pulls of unit width
/// where no cosmic ray, bad column or saturation touches the pixel.
void check_science_pixels(const Night& n) {
  h5::File truth = h5::File::open(n.result.truth_file);
  const auto flat = truth_array<float>(truth, "detector/pixel_flat");
  const auto bias = truth_array<float>(truth, "detector/bias_dn");
  const auto dark = truth_array<float>(truth, "detector/dark_e_per_s");
  const auto bad = truth_array<std::uint8_t>(truth, "detector/bad_pixels");
  int frames = 0;
  for (const auto& path : n.result.raw_files) {
    const std::string name = path.stem().string();
    h5::Group fg = truth.root().open_group("frames/" + name);
    if (fg.attr_string("class") != "science") continue;
    ++frames;
    SCOPED_TRACE(name);
    const double exptime = fg.attr_double("exptime_s");
    const auto expected = truth_array<float>(truth, "frames/" + name + "/expected_e");
    const auto cosmic = truth_array<float>(truth, "frames/" + name + "/cosmic_e");
    const auto sat = truth_array<std::uint8_t>(truth, "frames/" + name + "/saturated");
    const RawFrame raw = read_raw(path);
    const auto amps = sections_of(n.profile, raw.header);
    std::vector<double> pulls;
    long cosmic_pixels = 0;
    for (const auto& a : amps)
      for (long yr = a.datasec.y0; yr < a.datasec.y1; ++yr)
        for (long xr = a.datasec.x0; xr < a.datasec.x1; ++xr) {
          const auto [y, x] = raw_to_pipeline(n.profile, amps, a, yr, xr);
          if (cosmic(y, x) > 0) ++cosmic_pixels;
          if (cosmic(y, x) > 0 || bad(y, x) || sat(y, x)) continue;
          const double e = static_cast<double>(expected(y, x)) * flat(y, x) + dark(y, x) * exptime;
          const double model = bias(y, x) + e / a.gain;
          const double sigma = std::sqrt((a.read_noise * a.read_noise + e) / (a.gain * a.gain) + 1.0 / 12.0);
          pulls.push_back((raw.dn(yr, xr) - model) / sigma);
        }
    const auto s = kt::pull_stats(pulls);
    const double nn = static_cast<double>(s.n);
    EXPECT_GT(cosmic_pixels, 0) << "science frames carry cosmic rays";
    EXPECT_NEAR(s.mean, 0.0, 5.0 / std::sqrt(nn) + 0.01);  // + Poisson skewness at low counts
    EXPECT_NEAR(s.stddev, 1.0, 5.0 / std::sqrt(2.0 * nn) + 0.01);
    const auto outliers = std::count_if(pulls.begin(), pulls.end(), [](double p) { return std::abs(p) > 6.0; });
    EXPECT_LT(static_cast<double>(outliers), 1e-4 * nn);
  }
  EXPECT_GE(frames, 1);
}

void check_saturation(const Night& n) {
  h5::File truth = h5::File::open(n.result.truth_file);
  long saturated = 0;
  for (const auto& path : n.result.raw_files) {
    const std::string name = path.stem().string();
    const auto sat = truth_array<std::uint8_t>(truth, "frames/" + name + "/saturated");
    saturated += sat.cast<long>().sum();
    if (!sat.any()) continue;
    const RawFrame raw = read_raw(path);
    EXPECT_GE(raw.dn.maxCoeff(), n.profile.saturation_dn) << name;
  }
  EXPECT_GT(saturated, 0) << "the long arc must saturate its brightest lines";
}

}  // namespace

TEST_F(FiberNight, FramesMatchTheProfile) { check_frames_against_profile(*night_); }
TEST_F(SlitNight, FramesMatchTheProfile) { check_frames_against_profile(*night_); }
TEST_F(FiberNight, BiasOverscanMatchesTruth) { check_bias_overscan(*night_); }
TEST_F(SlitNight, BiasOverscanMatchesTruth) { check_bias_overscan(*night_); }
TEST_F(FiberNight, ScienceRawMatchesTruthWithinNoise) { check_science_pixels(*night_); }
TEST_F(SlitNight, ScienceRawMatchesTruthWithinNoise) { check_science_pixels(*night_); }
TEST_F(FiberNight, BrightestArcLinesSaturate) { check_saturation(*night_); }
TEST_F(SlitNight, BrightestArcLinesSaturate) { check_saturation(*night_); }

TEST_F(FiberNight, FibreTableHasStandardsSkyAndOneDeadFiber) {
  h5::File truth = h5::File::open(night_->result.truth_file);
  for (const auto& path : night_->result.raw_files) {
    SCOPED_TRACE(path.filename().string());
    auto f = fits::Fits::open(path);
    f.move_to(night_->profile.fibre_table_hdu);
    const fits::Table t = f.read_table();
    for (const char* col : {"NAME", "TYPE", "RA", "DEC", "MAG_G", "MAG_R", "MAG_I"}) EXPECT_TRUE(t.has(col)) << col;
    std::map<std::string, int> count;
    for (const auto& s : t.column("TYPE").strings) ++count[s];
    EXPECT_GE(t.nrows(), 30u);
    EXPECT_GE(count["C"], 3);
    EXPECT_GE(count["S"], 5);
    EXPECT_EQ(count["N"], 1);
    // Table rows follow the truth's apertures, and standards carry magnitudes.
    const auto& names = t.column("NAME").strings;
    for (std::size_t i = 0; i < t.nrows(); ++i) {
      h5::Group g = truth.root().open_group("apertures/" + names[i]);
      EXPECT_EQ(g.attr_string("type"), t.column("TYPE").strings[i]);
      if (t.column("TYPE").strings[i] == "C") EXPECT_TRUE(std::isfinite(t.column("MAG_R").number(i)));
    }
  }
}

TEST_F(FiberNight, DeadFiberIsDarkAndBlocksHaveGaps) {
  h5::File truth = h5::File::open(night_->result.truth_file);
  const auto illum = truth_array<float>(truth, "detector/illumination");
  const long xc = illum.cols() / 2;
  const double top = illum.col(xc).maxCoeff();
  std::string dead;
  for (const auto& name : truth.root().open_group("apertures").members())
    if (truth.root().open_group("apertures/" + name).attr_string("type") == "N") dead = name;
  ASSERT_FALSE(dead.empty());
  const auto centre = truth.root().read<double>("apertures/" + dead + "/centre_y");
  const long yd = std::lround(centre[static_cast<std::size_t>(xc)]);
  EXPECT_LT(illum(yd, xc), 1e-3 * top) << "the dead fiber " << dead << " must carry no light";
  // Gaps between blocks: runs of at least 10 dark rows between the first and last lit rows.
  long first = -1, last = -1, run = 0, gaps = 0;
  for (long y = 0; y < illum.rows(); ++y)
    if (illum(y, xc) > 1e-3 * top) {
      if (first < 0) first = y;
      last = y;
    }
  for (long y = first; y <= last; ++y) {
    if (illum(y, xc) < 1e-3 * top) {
      ++run;
    } else {
      if (run >= 10) ++gaps;
      run = 0;
    }
  }
  EXPECT_GE(gaps, 2);
}

TEST_F(FiberNight, ApertureTruthAddsUpToTheExpectedImage) {
  // A window of rows around each fiber holds exactly the parts of every fiber's star + sky that
  // its Gaussian profile (centre_y, sigma from the truth) puts there.
  h5::File truth = h5::File::open(night_->result.truth_file);
  std::string sci;
  for (const auto& name : truth.root().open_group("frames").members())
    if (truth.root().open_group("frames/" + name).attr_string("class") == "science") sci = name;
  ASSERT_FALSE(sci.empty());
  const auto expected = truth_array<float>(truth, "frames/" + sci + "/expected_e");
  const double offset = truth.root().open_group("frames/" + sci).attr_double("trace_offset_px");
  struct Fib {
    std::vector<double> total, centre, sigma;
  };
  std::map<std::string, Fib> fibs;
  for (const auto& name : truth.root().open_group("frames/" + sci + "/apertures").members()) {
    Fib f;
    const auto star = truth.root().read<double>("frames/" + sci + "/apertures/" + name + "/star_e");
    const auto sky = truth.root().read<double>("frames/" + sci + "/apertures/" + name + "/sky_e");
    for (std::size_t i = 0; i < star.size(); ++i) f.total.push_back(star[i] + sky[i]);
    f.centre = truth.root().read<double>("apertures/" + name + "/centre_y");
    f.sigma = truth.root().read<double>("apertures/" + name + "/sigma");
    fibs[name] = f;
  }
  auto in_rows = [](double c, double s, long y0, long y1) {
    return 0.5 * (std::erf((y1 + 0.5 - c) / (std::sqrt(2.0) * s)) - std::erf((y0 - 0.5 - c) / (std::sqrt(2.0) * s)));
  };
  int checked = 0;
  for (const auto& [name, fib] : fibs) {
    for (long x = 3; x < expected.cols(); x += 61) {
      const auto ix = static_cast<std::size_t>(x);
      const long y0 = std::lround(fib.centre[ix] + offset) - 4, y1 = y0 + 8;
      double sum = 0.0, want = 0.0;
      for (long y = y0; y <= y1; ++y) sum += expected(y, x);
      for (const auto& [other, o] : fibs) want += o.total[ix] * in_rows(o.centre[ix] + offset, o.sigma[ix], y0, y1);
      EXPECT_NEAR(sum, want, 1e-5 * want + 1e-3) << name << " column " << x;
      ++checked;
    }
  }
  EXPECT_GT(checked, 300);
}

TEST(SimScene, ColumnSumOfOneStarEqualsStarElectrons) {
  // The spatial profile is integrated exactly over pixels: a column of one star's light sums to
  // the truth's star_e when the trace is well inside the detector.
  sim::SimConfig c;
  c.mode = SpectroMode::Slit;
  c.nx = 256;
  sim::resolve_mode_defaults(c);
  std::mt19937_64 rng(5);
  const auto spec = sim::make_spectrograph(c, load_instrument("sim-slit"), 150.0, 10.0, rng);
  for (const auto& ap : spec.apertures) {
    sim::ExposureState state;
    state.exptime_s = 300.0;
    state.airmass = 1.3;
    state.trace_offset_px = 0.37;
    state.sigma_scale = 1.4;
    sim::SceneBuilder scene(spec, state);
    scene.add_star(ap);
    const auto& e = scene.electrons();
    const auto& star = scene.light().at(ap.name).star_e;
    for (long x = 0; x < spec.nx; ++x) {
      const double sum = e.col(x).sum();
      ASSERT_GT(star[static_cast<std::size_t>(x)], 0.0);
      EXPECT_NEAR(sum / star[static_cast<std::size_t>(x)], 1.0, 1e-6) << ap.name << " column " << x;
      // Well inside: the whole star is on the detector.
      EXPECT_GT(ap.centre_y(static_cast<double>(x), spec.nx, state) - 10 * ap.sigma(static_cast<double>(x), spec.nx, state), 0.0);
    }
    // Nothing of one star leaks into rows far from its trace.
    const long far = std::lround(ap.centre_y(0.0, spec.nx, state) + 20.0 * ap.sigma(0.0, spec.nx, state));
    if (far < spec.ny) EXPECT_EQ(e(far, 0), 0.0);
  }
}

TEST_F(SlitNight, TimeSeriesHasTransitDriftSeeingAndAirmass) {
  h5::File truth = h5::File::open(night_->result.truth_file);
  std::vector<double> transit, offset, sigma, airmass, target_sum;
  for (const auto& name : truth.root().open_group("frames").members()) {
    h5::Group g = truth.root().open_group("frames/" + name);
    if (g.attr_string("class") != "science") continue;
    transit.push_back(g.attr_double("transit_model"));
    offset.push_back(g.attr_double("trace_offset_px"));
    sigma.push_back(g.attr_double("sigma_scale"));
    airmass.push_back(g.attr_double("airmass"));
    const auto star = truth.root().read<double>("frames/" + name + "/apertures/target/star_e");
    target_sum.push_back(std::accumulate(star.begin(), star.end(), 0.0));
    EXPECT_DOUBLE_EQ(truth.root().open_group("frames/" + name + "/apertures/target").attr_double("transit_model"),
                     transit.back());
  }
  ASSERT_EQ(transit.size(), 6u);
  const double depth = truth.root().open_group("night").attr_double("transit_depth");
  EXPECT_DOUBLE_EQ(depth, night_->config.transit_depth);
  EXPECT_DOUBLE_EQ(*std::min_element(transit.begin(), transit.end()), 1.0 - depth);
  EXPECT_DOUBLE_EQ(transit.front(), 1.0);
  auto range = [](const std::vector<double>& v) {
    return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
  };
  EXPECT_GT(range(offset), 0.5);
  EXPECT_GT(range(sigma), 0.05);
  EXPECT_GT(range(airmass), 0.02);
  // The target dims by the transit (beyond what airmass and slit losses change).
  const auto deepest = std::min_element(transit.begin(), transit.end()) - transit.begin();
  EXPECT_LT(target_sum[static_cast<std::size_t>(deepest)], target_sum.front());
}

// ---------------------------------------------------------------- sizes and bad input

TEST(SimNight, OtherSizesRescaleTheProfileCopy) {
  kt::TempDir dir("kspecdr-sim-size");
  auto c = small_night(SpectroMode::Fiber, dir.path(), 2);
  c.n_bias = 1;
  c.n_arc = 1;
  c.nx = 2048;
  c.ny = 480;
  const auto r = sim::simulate_night(c);
  const auto p = load_instrument(r.profile_file.string());
  ASSERT_TRUE(p.raw_shape.has_value());
  auto f = fits::Fits::open(r.raw_files.front());
  EXPECT_EQ(f.image_shape(), *p.raw_shape);
  EXPECT_EQ(*p.raw_shape, (std::vector<long>{480, 2048 + 2 * 32}));
  h5::File truth = h5::File::open(r.truth_file);
  EXPECT_EQ(truth.root().attr_int("nx"), 2048);
  EXPECT_EQ(truth.root().attr_int("ny"), 480);
}

TEST(SimNight, BadInputIsAConfigErrorAndWritesNothing) {
  kt::TempDir dir("kspecdr-sim-bad");
  {
    auto c = small_night(SpectroMode::Fiber, dir / "small", 1);
    c.ny = 120;  // 36 fibers do not fit
    try {
      sim::simulate_night(c);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "small"));
  }
  {
    std::ofstream(dir / "file") << "x";
    auto c = small_night(SpectroMode::Slit, dir / "file" / "night", 1);
    EXPECT_THROW(sim::simulate_night(c), ConfigError);
  }
  {
    auto c = small_night(SpectroMode::Slit, dir / "lines", 1);
    c.arc_linelist = (dir / "no-such-list.dat").string();
    EXPECT_THROW(sim::simulate_night(c), ConfigError);
    EXPECT_FALSE(fs::exists(dir / "lines" / "truth.h5"));
    EXPECT_TRUE(!fs::exists(dir / "lines" / "raw") || fs::is_empty(dir / "lines" / "raw"));
  }
  {
    // An existing night is not replaced without --overwrite.
    auto c = small_night(SpectroMode::Slit, dir / "twice", 1);
    c.nx = 256;
    c.n_science = 1;
    sim::simulate_night(c);
    EXPECT_THROW(sim::simulate_night(c), ConfigError);
    c.overwrite = true;
    EXPECT_NO_THROW(sim::simulate_night(c));
  }
}

TEST(SimCommand, UsageErrorsExitWithCode2) {
  kt::TempDir dir("kspecdr-sim-cli");
  // KSPECDR_BIN names the program; without it, the build tree puts kspecdr one folder above the tests.
  fs::path bin_path = std::getenv("KSPECDR_BIN") ? kt::kspecdr_bin() : fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "kspecdr";
  if (!fs::exists(bin_path)) GTEST_SKIP() << "the kspecdr program is not at " << bin_path << "; set KSPECDR_BIN";
  const std::string bin = bin_path.string();
  std::string out;
  EXPECT_EQ(kt::run_command(bin + " simulate --mode prism --out " + (dir / "a").string(), &out), 2) << out;
  EXPECT_NE(out.find("fiber or slit"), std::string::npos) << out;
  std::ofstream(dir / "cfg.ini") << "mode = slit\nno-such-key = 3\n";
  EXPECT_EQ(kt::run_command(bin + " simulate --out " + (dir / "b").string() + " --config " +
                                     (dir / "cfg.ini").string(), &out), 2)
      << out;
  EXPECT_NE(out.find("no-such-key"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "b"));
  EXPECT_EQ(kt::run_command(bin + " simulate --mode fiber --ny 100 --out " + (dir / "c").string(), &out), 2)
      << out;
}
