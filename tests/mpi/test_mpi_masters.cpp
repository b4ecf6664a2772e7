// The master bias and flat built by all ranks together — each raw frame read and prepared by one rank (the biases
// in pairs), the numbers of whole frames shared, the pixels combined by bands of rows — equal the masters one
// process builds alone, bit for bit: images, read noise, overscan levels, flat normalisations. A frame that cannot
// be read fails every rank with the message of the earliest such frame in file order, whichever rank read it.
// Run at 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
namespace kt = kspecdr::testing;

namespace {

/// The raw files of one class, in the night's frame order.
std::vector<fs::path> frames_of(const fs::path& night_dir, const std::string& cls) {
  h5::File truth = h5::File::open(night_dir / "truth.h5");
  std::vector<fs::path> out;
  for (const auto& run : truth.root().read_strings("night/frames")) {
    const h5::Group g = truth.root().open_group("frames/" + run);
    if (g.attr_string("class") == cls) out.push_back(night_dir / "raw" / fs::path(g.attr_string("file")).filename());
  }
  return out;
}

/// Pixels where two images differ in data, variance or mask.
long differences(const Image& a, const Image& b) {
  if (a.data.rows() != b.data.rows() || a.data.cols() != b.data.cols()) return -1;
  long n = 0;
  for (Eigen::Index i = 0; i < a.data.size(); ++i)
    n += !(a.data(i) == b.data(i) || (std::isnan(a.data(i)) && std::isnan(b.data(i)))) ||
         a.variance(i) != b.variance(i) || a.mask(i) != b.mask(i);
  return n;
}

/// Cuts a copy of `from` short in the middle of its pixels.
void truncated_copy(const fs::path& from, const fs::path& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::resize_file(to, fs::file_size(from) / 2);
}

/// The error every rank gets from `build`, or "" when it succeeds.
template <typename F>
std::string error_of(F&& build) {
  try {
    build();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(MpiMasters, BuiltByAllRanksEqualTheOneProcessMasters) {
  const mpi::Comm& world = mpi::world();
  std::unique_ptr<kt::TempDir> dir;
  std::string base, error;
  if (world.is_root()) {
    try {
      dir = std::make_unique<kt::TempDir>("kspecdr-mpi-masters");
      sim::SimConfig c;
      c.mode = SpectroMode::Slit;
      c.out_dir = dir->path() / "night";
      c.seed = 5;
      c.nx = 256;
      c.n_bias = 5;  // two pairs and one frame alone: uneven shares at every rank count
      c.n_flat = 3;
      c.n_arc = 1;
      c.n_science = 1;
      sim::simulate_night(c);
      const fs::path night = c.out_dir;
      // Corrupt copies, for the failures: bias frames 3 and 4 cut short (at 2 ranks read by different ranks;
      // frame 3 is named), flat frame 1 cut short (read by rank 1 from 2 ranks on).
      fs::create_directories(dir->path() / "bad");
      const auto biases = frames_of(night, "bias"), flats = frames_of(night, "flat");
      for (std::size_t k : {3u, 4u}) truncated_copy(biases[k], dir->path() / "bad" / biases[k].filename());
      truncated_copy(flats[1], dir->path() / "bad" / flats[1].filename());
      base = dir->path().string();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  world.bcast(base);
  world.bcast(error);
  ASSERT_TRUE(error.empty()) << "simulation failed: " << error;
  const fs::path night = fs::path(base) / "night", bad = fs::path(base) / "bad";
  const InstrumentProfile profile = load_instrument((night / "instrument.ini").string());
  const auto biases = frames_of(night, "bias"), flats = frames_of(night, "flat");
  ASSERT_EQ(biases.size(), 5u);
  ASSERT_EQ(flats.size(), 3u);
  detector::DetectorConfig cfg;

  // The reference: this rank alone.
  const detector::MasterBias bias1 = detector::build_master_bias(biases, profile, cfg, nullptr);
  const detector::MasterFlat flat1 = detector::build_master_flat(flats, profile, &bias1, nullptr, cfg, nullptr);
  // All ranks together.
  detector::MasterBias biasN;
  detector::MasterFlat flatN;
  const std::string build_error = error_of([&] {
    biasN = detector::build_master_bias(biases, profile, cfg, &world);
    flatN = detector::build_master_flat(flats, profile, &biasN, nullptr, cfg, &world);
  });
  const bool built = world.all_true(build_error.empty());
  ASSERT_TRUE(built) << "rank " << world.rank() << ": " << build_error;

  long wrong = differences(bias1.image, biasN.image) + differences(flat1.pixel_flat, flatN.pixel_flat);
  EXPECT_EQ(wrong, 0) << "rank " << world.rank() << " of " << world.size();
  ASSERT_EQ(flat1.illumination.size(), flatN.illumination.size());
  for (Eigen::Index i = 0; i < flat1.illumination.size(); ++i) {
    const float x = flat1.illumination(i), y = flatN.illumination(i);
    wrong += !(x == y || (std::isnan(x) && std::isnan(y)));
  }
  ASSERT_EQ(bias1.amps.size(), biasN.amps.size());
  for (std::size_t a = 0; a < bias1.amps.size(); ++a) {
    const auto &x = bias1.amps[a], &y = biasN.amps[a];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.gain, y.gain);
    EXPECT_EQ(x.bias_level_dn, y.bias_level_dn);
    EXPECT_EQ(x.bias_level_err_dn, y.bias_level_err_dn);
    EXPECT_EQ(x.read_noise_e, y.read_noise_e);
    EXPECT_EQ(x.read_noise_err_e, y.read_noise_err_e);
    wrong += x.read_noise_e != y.read_noise_e || x.bias_level_dn != y.bias_level_dn;
    // The read noise is measured, not the nominal value: pairs were used.
    EXPECT_GT(x.read_noise_err_e, 0.0);
  }
  for (const char* key : {"RDNOISE1", "BIASLV1", "NCOMBINE"})
    EXPECT_EQ(bias1.image.header.get_double(key), biasN.image.header.get_double(key)) << key;
  for (int k = 1; k <= 3; ++k) {
    const std::string key = "FLTNRM0" + std::to_string(k);
    ASSERT_TRUE(flatN.pixel_flat.header.get_double(key)) << key;
    EXPECT_EQ(flat1.pixel_flat.header.get_double(key), flatN.pixel_flat.header.get_double(key)) << key;
    wrong += flat1.pixel_flat.header.get_double(key) != flatN.pixel_flat.header.get_double(key);
  }

  // Failures: the earliest bad frame is named on every rank; no rank waits for another.
  auto with_bad = [&](std::vector<fs::path> files) {
    for (auto& f : files)
      if (fs::exists(bad / f.filename())) f = bad / f.filename();
    return files;
  };
  const std::string bias_error =
      error_of([&] { (void)detector::build_master_bias(with_bad(biases), profile, cfg, &world); });
  EXPECT_NE(bias_error.find(biases[3].filename().string()), std::string::npos) << "rank " << world.rank() << ": "
                                                                               << bias_error;
  EXPECT_EQ(bias_error.find(biases[4].filename().string()), std::string::npos) << bias_error;
  const std::string flat_error =
      error_of([&] { (void)detector::build_master_flat(with_bad(flats), profile, &biasN, nullptr, cfg, &world); });
  EXPECT_NE(flat_error.find(flats[1].filename().string()), std::string::npos) << "rank " << world.rank() << ": "
                                                                             << flat_error;
  const bool named = bias_error.find(biases[3].filename().string()) != std::string::npos &&
                     flat_error.find(flats[1].filename().string()) != std::string::npos;
  EXPECT_TRUE(world.all_true(wrong == 0 && named));
  world.barrier();  // the folder stays until every rank is done with it
}
