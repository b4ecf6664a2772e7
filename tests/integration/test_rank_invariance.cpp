// The same simulated night reduced by `kspecdr reduce --stage red` on 1, 2, 3 and 4 ranks gives the same
// RED files and the same Rainbow cube, value for value: an exposure is reduced by one rank alone, or — when
// fewer exposures than ranks are left — by a group of ranks that share its apertures (or the joint fit's
// columns) and exchange what every aperture needs, and calibrations are built once (the master bias and flat by
// all ranks together, one band of detector rows each; traces and arc solutions identically on every rank), so the
// rank count may change who does the work, never the numbers. A night of two science exposures makes 3 and 4
// ranks reduce every science exposure in groups.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kspecdr/detector/masters.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

/// Number of values that differ between two arrays of the same shape (NaN equals NaN).
template <typename A>
long differences(const A& a, const A& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return -1;
  long n = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const auto x = a.data()[i], y = b.data()[i];
    if (!(x == y) && !(x != x && y != y)) ++n;
  }
  return n;
}

/// Reduces a simulated night of `n_science` science exposures on 1–4 ranks and compares everything with 1 rank.
/// From `groups_from_np` ranks on, the log must say that rank groups shared the RED step's exposures.
void check_mode(const std::string& mode, int n_science, int groups_from_np) {
  kspecdr::testing::TempDir dir("kspecdr-rank-invariance");
  const std::string bin = kspecdr::testing::kspecdr_bin().string();
  const fs::path night = dir / "night";
  std::string log;
  ASSERT_EQ(kspecdr::testing::run_command(bin + " simulate --mode " + mode + " --out " + night.string() +
                                              " --seed 11 --n-science " + std::to_string(n_science) +
                                              " --n-arc 1 --n-bias 3 --n-flat 2",
                                          &log),
            0)
      << log;
  for (int np = 1; np <= 4; ++np) {
    const fs::path out = dir / ("out-np" + std::to_string(np));
    const std::string cmd = kspecdr::testing::mpiexec_command(np) + " " + bin + " reduce --raw " +
                            (night / "raw").string() + " --instrument " + (night / "instrument.ini").string() +
                            " --out " + out.string() + " --stage red --night n";
    ASSERT_EQ(kspecdr::testing::run_command(cmd, &log), 0) << cmd << "\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    bool grouped = false;  // a line of the RED step that names its rank groups
    {
      std::istringstream lines(log);
      for (std::string line; std::getline(lines, line);)
        grouped = grouped || (line.find("RED spectra of setup") != std::string::npos &&
                              line.find("shared by rank groups") != std::string::npos);
    }
    if (np >= groups_from_np)
      EXPECT_TRUE(grouped) << mode << " np" << np << ": the RED exposures should have been shared by rank groups\n"
                           << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    if (np == 1) EXPECT_EQ(log.find("shared by rank groups"), std::string::npos) << "one rank forms no groups";
  }
  const fs::path ref = dir / "out-np1";
  std::vector<std::string> reds;
  for (const auto& e : fs::directory_iterator(ref / "red")) reds.push_back(e.path().filename().string());
  ASSERT_EQ(reds.size(), static_cast<std::size_t>(n_science)) << mode;
  std::vector<fs::path> masters;
  for (const auto& e : fs::directory_iterator(ref / "calib"))
    if (e.path().filename().string().rfind("master_", 0) == 0) masters.push_back(e.path().filename());
  ASSERT_EQ(masters.size(), 2u) << mode << ": a master bias and a master flat";
  for (int np = 2; np <= 4; ++np) {
    const fs::path out = dir / ("out-np" + std::to_string(np));
    for (const auto& name : masters) {
      const bool is_bias = name.string().rfind("master_bias", 0) == 0;
      const Image a = is_bias ? detector::read_master_bias(ref / "calib" / name).image
                              : detector::read_master_flat(ref / "calib" / name).pixel_flat;
      const Image b = is_bias ? detector::read_master_bias(out / "calib" / name).image
                              : detector::read_master_flat(out / "calib" / name).pixel_flat;
      EXPECT_EQ(differences(a.data, b.data), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.variance, b.variance), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.mask, b.mask), 0) << mode << " np" << np << " " << name;
      if (!is_bias)
        EXPECT_EQ(differences(detector::read_master_flat(ref / "calib" / name).illumination,
                              detector::read_master_flat(out / "calib" / name).illumination),
                  0)
            << mode << " np" << np << " " << name;
    }
    for (const auto& name : reds) {
      const auto a = wavecal::read_red_file(ref / "red" / name), b = wavecal::read_red_file(out / "red" / name);
      EXPECT_EQ(differences(a.spectra.flux, b.spectra.flux), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.spectra.variance, b.spectra.variance), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.spectra.sky, b.spectra.sky), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.spectra.mask, b.spectra.mask), 0) << mode << " np" << np << " " << name;
      EXPECT_EQ(differences(a.wavela, b.wavela), 0) << mode << " np" << np << " " << name;
    }
    const h5::File ca = h5::File::open(ref / "n.rainbow.h5"), cb = h5::File::open(out / "n.rainbow.h5");
    std::vector<std::string> groups;
    std::function<void(const h5::Group&, const std::string&)> walk = [&](const h5::Group& g, const std::string& p) {
      if (g.exists("fluxlike")) groups.push_back(p);
      else
        for (const auto& m : g.members()) walk(g.open_group(m), p.empty() ? m : p + "/" + m);
    };
    walk(ca.root(), "");
    ASSERT_FALSE(groups.empty());
    long diffs = 0;
    for (const auto& g : groups) {
      for (const char* d : {"fluxlike/flux", "fluxlike/uncertainty", "fluxlike/sky"}) {
        const auto x = ca.root().read<float>(g + "/" + d), y = cb.root().read<float>(g + "/" + d);
        ASSERT_EQ(x.size(), y.size()) << g << d;
        for (std::size_t i = 0; i < x.size(); ++i) diffs += !(x[i] == y[i]) && !(x[i] != x[i] && y[i] != y[i]);
      }
      for (const char* d : {"timelike/time", "timelike/wavelength_shift_px", "timelike/trace_offset_px"}) {
        const auto x = ca.root().read<double>(g + "/" + d), y = cb.root().read<double>(g + "/" + d);
        ASSERT_EQ(x.size(), y.size()) << g << d;
        for (std::size_t i = 0; i < x.size(); ++i) diffs += !(x[i] == y[i]) && !(x[i] != x[i] && y[i] != y[i]);
      }
    }
    std::cout << mode << ": " << reds.size() << " RED files and " << groups.size() << " star groups, np " << np
              << " vs np 1: " << diffs << " cube values differ\n";
    EXPECT_EQ(diffs, 0) << mode << " np" << np;
  }
}

}  // namespace

// Five exposures: full rounds of one exposure per rank, and the last exposures in groups (2 ranks: one left for a
// group of 2; 3 ranks: two left; 4 ranks: one left for a group of 4).
TEST(RankInvariance, SlitNightIsTheSameOnOneToFourRanks) { check_mode("slit", 5, 2); }
TEST(RankInvariance, FiberNightIsTheSameOnOneToFourRanks) { check_mode("fiber", 5, 2); }
// Two exposures: from 3 ranks on every science exposure is shared by a group (3 ranks: groups of 2 and 1; 4 ranks:
// 2 and 2), in the EX step too.
TEST(RankInvariance, SlitNightOfFewerExposuresThanRanksIsTheSameInRankGroups) { check_mode("slit", 2, 3); }
TEST(RankInvariance, FiberNightOfFewerExposuresThanRanksIsTheSameInRankGroups) { check_mode("fiber", 2, 3); }

// An exposure that fails in a rank group is a failure of the night like any other: named once (by the group's
// root), the other exposures go on, and the night ends with exit code 3 — on 4 ranks as on 1. The arc is taken
// away, so neither science exposure can be wavelength-calibrated; on 4 ranks both are reduced by groups of 2.
TEST(RankInvariance, ExposuresThatFailInRankGroupsAreNamedOnceAndTheNightEndsWith3) {
  kspecdr::testing::TempDir dir("kspecdr-rank-groups-fail");
  const std::string bin = kspecdr::testing::kspecdr_bin().string();
  const fs::path night = dir / "night";
  std::string log;
  ASSERT_EQ(kspecdr::testing::run_command(bin + " simulate --mode slit --out " + night.string() +
                                              " --seed 11 --n-science 2 --n-arc 1 --n-bias 3 --n-flat 2",
                                          &log),
            0)
      << log;
  ASSERT_EQ(kspecdr::testing::run_command(bin + " log " + (night / "raw").string() + " --instrument " +
                                              (night / "instrument.ini").string() + " --out " +
                                              (dir / "log.ecsv").string(),
                                          &log),
            0)
      << log;
  std::vector<std::string> science;
  int arcs = 0;
  {
    std::ifstream csv(dir / "log.csv");
    std::string line;
    std::getline(csv, line);  // file,exposure,class,...
    while (std::getline(csv, line)) {
      std::vector<std::string> f;
      std::istringstream fields(line);
      for (std::string x; std::getline(fields, x, ',');) f.push_back(x);
      ASSERT_GE(f.size(), 3u) << line;
      if (f[2] == "arc") {
        fs::remove(f[0]);
        ++arcs;
      }
      if (f[2] == "science") science.push_back(f[1]);
    }
  }
  ASSERT_EQ(arcs, 1);
  ASSERT_EQ(science.size(), 2u);
  for (int np : {1, 4}) {
    const std::string cmd = kspecdr::testing::mpiexec_command(np) + " " + bin + " reduce --raw " +
                            (night / "raw").string() + " --instrument " + (night / "instrument.ini").string() +
                            " --out " + (dir / ("out-np" + std::to_string(np))).string() + " --stage red --night n";
    const int rc = kspecdr::testing::run_command(cmd, &log);
    EXPECT_EQ(rc, 3) << cmd << "\n" << log;
    if (np > 1) EXPECT_NE(log.find("shared by rank groups of 2, 2"), std::string::npos) << log;
    for (const auto& run : science) {
      // One summary line per failed exposure, whatever the number of ranks that shared it.
      std::size_t named = 0;
      const std::string key = "failed exposure " + run + " (";
      for (auto pos = log.find(key); pos != std::string::npos; pos = log.find(key, pos + 1)) ++named;
      EXPECT_EQ(named, 1u) << run << " on " << np << " ranks\n" << log;
      EXPECT_FALSE(fs::exists(dir / ("out-np" + std::to_string(np)) / "red" / (run + ".red.fits"))) << run;
    }
    EXPECT_NE(log.find("2 failed"), std::string::npos) << np << " ranks\n" << log;
  }
}
