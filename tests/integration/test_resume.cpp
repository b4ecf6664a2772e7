// Killing `kspecdr reduce` at any moment and running the same command again gives the same outputs as
// a run that was never interrupted: outputs are written under temporary names and renamed when complete,
// and a re-run keeps an existing output only when its checksums verify and its CFGHASH is this
// configuration's; everything else is redone and the cubes are rebuilt.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

long differences(const ImageArray& a, const ImageArray& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return -1;
  long n = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const float x = a.data()[i], y = b.data()[i];
    n += !(x == y) && !(x != x && y != y);
  }
  return n;
}

struct Runs {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  fs::path night;
  std::string bin;
  std::string reduce(const fs::path& out) const {
    return bin + " reduce --raw " + (night / "raw").string() + " --instrument " + (night / "instrument.ini").string() +
           " --out " + out.string() + " --stage red --night n";
  }
};

Runs make_runs() {
  Runs r;
  r.dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-resume");
  r.night = r.dir->path() / "night";
  r.bin = kspecdr::testing::kspecdr_bin().string();
  std::string log;
  EXPECT_EQ(kspecdr::testing::run_command(r.bin + " simulate --mode slit --out " + r.night.string() +
                                              " --seed 5 --n-science 6 --n-arc 1 --n-bias 3 --n-flat 2",
                                          &log),
            0)
      << log;
  return r;
}

void expect_same_outputs(const fs::path& a, const fs::path& b) {
  std::vector<std::string> reds;
  for (const auto& e : fs::directory_iterator(a / "red")) reds.push_back(e.path().filename().string());
  ASSERT_EQ(reds.size(), 6u);
  for (const auto& name : reds) {
    ASSERT_TRUE(fs::exists(b / "red" / name)) << name;
    const auto x = wavecal::read_red_file(a / "red" / name), y = wavecal::read_red_file(b / "red" / name);
    EXPECT_EQ(differences(x.spectra.flux, y.spectra.flux), 0) << name;
    EXPECT_EQ(differences(x.spectra.variance, y.spectra.variance), 0) << name;
  }
  const h5::File ca = h5::File::open(a / "n.rainbow.h5"), cb = h5::File::open(b / "n.rainbow.h5");
  for (const char* g : {"SIMTRANSIT-1/star1", "SIMTRANSIT-1/star2", "SIMTRANSIT-1/star3"}) {
    const auto x = ca.root().read<float>(std::string(g) + "/fluxlike/flux");
    const auto y = cb.root().read<float>(std::string(g) + "/fluxlike/flux");
    ASSERT_EQ(x.size(), y.size()) << g;
    long d = 0;
    for (std::size_t i = 0; i < x.size(); ++i) d += !(x[i] == y[i]) && !(x[i] != x[i] && y[i] != y[i]);
    EXPECT_EQ(d, 0) << g;
  }
}

}  // namespace

TEST(Resume, AKilledRunFinishedByARerunEqualsAnUninterruptedRun) {
  const Runs r = make_runs();
  std::string log;
  const fs::path clean = r.dir->path() / "clean";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(clean), &log), 0) << log;
  // Kill at several moments of the run (SIGKILL: no clean-up), each time finishing with a plain re-run.
  for (const char* when : {"0.3", "0.8", "1.5"}) {
    const fs::path out = r.dir->path() / (std::string("killed-") + when);
    const int rc = kspecdr::testing::run_command("timeout -s KILL " + std::string(when) + " " + r.reduce(out), &log);
    std::cout << "killed after " << when << " s (exit " << rc << "), re-running\n";
    ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out), &log), 0) << log;
    expect_same_outputs(clean, out);
  }
}

TEST(Resume, ACorruptOrForeignOutputIsRedoneNotKept) {
  const Runs r = make_runs();
  std::string log;
  const fs::path out = r.dir->path() / "out";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out), &log), 0) << log;
  const fs::path first = out / "red" / "run0009.red.fits";  // the first science exposure of this night
  ASSERT_TRUE(fs::exists(first)) << "expected science exposure file " << first;
  const auto before = wavecal::read_red_file(first);
  // Cut the file short, as a disk-full or an external copy might.
  fs::resize_file(first, fs::file_size(first) / 2);
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out), &log), 0) << log;
  EXPECT_NE(log.find("exists but"), std::string::npos) << "the re-run should say why it redid the file:\n" << log;
  const auto after = wavecal::read_red_file(first);
  EXPECT_EQ(differences(before.spectra.flux, after.spectra.flux), 0);
  // Another configuration's file (another extraction method) is redone too.
  const fs::path other = r.dir->path() / "other";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(other) + " --extract.method boxcar", &log), 0) << log;
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(other), &log), 0) << log;
  EXPECT_NE(log.find("another configuration"), std::string::npos) << log;
  const auto redone = wavecal::read_red_file(other / "red" / "run0009.red.fits");
  EXPECT_EQ(differences(before.spectra.flux, redone.spectra.flux), 0) << "the re-run must use this configuration";
}
