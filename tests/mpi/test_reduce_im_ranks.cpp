// `reduce --stage im` on 1..4 ranks gives the IM files that one process gives:
// rank 0 simulates a small slit night into a shared folder, every rank runs the
// night, and each IM file's digest is compared with that of a single-process
// calibrate_frame of the same raw frame with the same master products.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
namespace kt = kspecdr::testing;

namespace {

constexpr int kMaskBits = 16;
/// Values per digest: shape (2), sum and sum of squares of data and of variance (4), then the
/// number of pixels with each mask bit set.
constexpr std::size_t kDigestSize = 6 + kMaskBits;

/// An order-independent digest of an IM: sums in double over the pixels in storage order, so
/// two identical images give identical numbers whichever rank computed them.
std::vector<double> digest(const Image& im) {
  std::vector<double> d(kDigestSize, 0.0);
  d[0] = static_cast<double>(im.data.rows());
  d[1] = static_cast<double>(im.data.cols());
  for (Eigen::Index i = 0; i < im.data.size(); ++i) {
    const double v = im.data(i), w = im.variance(i);
    d[2] += v;
    d[3] += v * v;
    d[4] += w;
    d[5] += w * w;
    for (int b = 0; b < kMaskBits; ++b) d[6 + static_cast<std::size_t>(b)] += (im.mask(i) >> b) & 1u;
  }
  return d;
}

std::string describe(const std::vector<double>& d) {
  std::string s;
  for (double v : d) s += (s.empty() ? "" : " ") + std::to_string(v);
  return s;
}

/// The science and arc frames of the night in the order of the truth's plan, as (run, raw file).
std::vector<std::pair<std::string, fs::path>> im_frames(const fs::path& night_dir) {
  h5::File truth = h5::File::open(night_dir / "truth.h5");
  std::vector<std::pair<std::string, fs::path>> out;
  for (const auto& run : truth.root().read_strings("night/frames")) {
    const h5::Group g = truth.root().open_group("frames/" + run);
    const std::string cls = g.attr_string("class");
    if (cls == "science" || cls == "arc")
      out.emplace_back(run, night_dir / "raw" / fs::path(g.attr_string("file")).filename());
  }
  return out;
}

}  // namespace

TEST(ReduceImRanks, EveryRankCountGivesTheSingleProcessImFiles) {
  const mpi::Comm& world = mpi::world();
  std::unique_ptr<kt::TempDir> dir;
  std::string night_path, error;
  if (world.is_root()) {
    try {
      dir = std::make_unique<kt::TempDir>("kspecdr-reduce-ranks");
      sim::SimConfig c;
      c.mode = SpectroMode::Slit;
      c.out_dir = dir->path() / "night";
      c.seed = 77;
      c.nx = 512;
      c.n_bias = 3;
      c.n_flat = 2;
      c.n_arc = 2;
      c.n_science = 5;  // with the arcs, 7 exposures: uneven shares at 2, 3 and 4 ranks
      sim::simulate_night(c);
      night_path = dir->path().string();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  world.bcast(night_path);
  world.bcast(error);
  ASSERT_TRUE(error.empty()) << "simulation failed: " << error;
  const fs::path base = night_path, night = base / "night", out = base / "out";

  ReduceConfig cfg;
  cfg.raw_dir = night / "raw";
  cfg.out_dir = out;
  cfg.instrument = (night / "instrument.ini").string();
  cfg.resolved_config = "[reduce]\nstage = im\n";
  ReduceSummary summary;
  std::string reduce_error;
  try {
    summary = reduce_night(cfg, world);
  } catch (const std::exception& e) {
    reduce_error = e.what();
  }
  const bool reduced = world.all_true(reduce_error.empty());
  ASSERT_TRUE(reduced) << "rank " << world.rank() << ": " << reduce_error;

  const auto frames = im_frames(night);
  // The reference: one process, the masters the night wrote, every frame.
  std::vector<double> reference;
  if (world.is_root()) {
    try {
      const InstrumentProfile profile = load_instrument(cfg.instrument);
      fs::path bias_file, flat_file;
      for (const auto& e : fs::directory_iterator(out / "calib")) {
        const std::string name = e.path().filename().string();
        if (name.rfind("master_bias_", 0) == 0) bias_file = e.path();
        if (name.rfind("master_flat_", 0) == 0) flat_file = e.path();
      }
      const detector::MasterBias bias = detector::read_master_bias(bias_file);
      const detector::MasterFlat flat = detector::read_master_flat(flat_file);
      for (const auto& [run, raw] : frames) {
        const auto d = digest(detector::calibrate_frame(raw, profile, &bias, &flat, cfg.detector));
        reference.insert(reference.end(), d.begin(), d.end());
      }
    } catch (const std::exception& e) {
      reference.clear();
      std::cerr << "reference calibration failed: " << e.what() << "\n";
    }
  }
  world.bcast(reference);
  ASSERT_TRUE(world.all_true(reference.size() == frames.size() * kDigestSize)) << "no reference digests";

  // Each rank checks a share of the IM files (not the share it reduced, when it can).
  bool ok = summary.failures.empty() && summary.exit_code() == 0 && summary.exposures == frames.size() &&
            summary.done == frames.size() && summary.skipped == 0;
  if (!ok)
    ADD_FAILURE() << "rank " << world.rank() << ": " << summary.exposures << " exposures, " << summary.done
                  << " done, " << summary.skipped << " skipped, " << summary.failures.size() << " failed";
  const int shift = world.size() > 1 ? 1 : 0;
  for (std::size_t k = 0; k < frames.size(); ++k) {
    if (static_cast<int>((k + static_cast<std::size_t>(shift)) % static_cast<std::size_t>(world.size())) !=
        world.rank())
      continue;
    const auto& [run, raw] = frames[k];
    const fs::path im_file = out / "im" / (run + ".im.fits");
    std::vector<double> d;
    try {
      d = digest(fits::read_image_file(im_file));
    } catch (const std::exception& e) {
      ok = false;
      ADD_FAILURE() << "rank " << world.rank() << ": " << im_file << ": " << e.what();
      continue;
    }
    const std::vector<double> ref(reference.begin() + static_cast<std::ptrdiff_t>(k * kDigestSize),
                                  reference.begin() + static_cast<std::ptrdiff_t>((k + 1) * kDigestSize));
    if (d != ref) {
      ok = false;
      ADD_FAILURE() << "rank " << world.rank() << ": " << run << " IM digest\n  " << describe(d)
                    << "\nsingle process\n  " << describe(ref);
    }
  }
  if (world.is_root())
    for (std::size_t k = 0; k < frames.size(); ++k)
      std::cout << "np " << world.size() << " " << frames[k].first << ": sum "
                << std::to_string(reference[k * kDigestSize + 2]) << " var "
                << std::to_string(reference[k * kDigestSize + 4]) << " cosmic " << reference[k * kDigestSize + 6 + 2]
                << "\n";
  const bool all_ok = world.all_true(ok);
  // Rank 0 owns the folder: nobody may still read it when it goes.
  world.barrier();
  dir.reset();
  EXPECT_TRUE(all_ok);
}
