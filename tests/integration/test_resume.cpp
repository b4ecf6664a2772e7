// Killing `kspecdr reduce` at any moment and running the same command again gives the same outputs as
// a run that was never interrupted: outputs are written under temporary names and renamed when complete,
// and a re-run keeps an existing output only when its checksums verify and its CFGHASH is this
// configuration's; everything else is redone and the cubes are rebuilt. The configuration does not depend on
// how the folders are spelled or where the output folder is; products of another kspecdr build are kept and
// said; a master calibration that does not verify is rebuilt.
#include <fitsio.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "kspecdr/core/version.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/io/fits.hpp"
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

/// Rewrites a string keyword of the primary header and the HDU's checksums, as another build writing the same
/// product would have left it.
void set_primary_keyword(const fs::path& path, const char* key, const std::string& value) {
  fitsfile* f = nullptr;
  int status = 0;
  fits_open_file(&f, path.c_str(), READWRITE, &status);
  fits_update_key_str(f, key, value.c_str(), nullptr, &status);
  fits_write_chksum(f, &status);
  fits_close_file(f, &status);
  ASSERT_EQ(status, 0) << "cannot rewrite " << key << " in " << path;
}

/// The one file in `dir` whose name starts with `prefix`.
fs::path only_file(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) found.push_back(e.path());
  EXPECT_EQ(found.size(), 1u) << prefix << "* in " << dir;
  return found.empty() ? dir / prefix : found.front();
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

TEST(Resume, TheSameNightAgainKeepsEverythingHoweverItsFoldersAreSpelledOrMoved) {
  const Runs r = make_runs();
  std::string log;
  // Relative paths, the output folder made by the first run (so it does not exist when that run starts).
  const std::string here = "cd " + r.dir->path().string() + " && ";
  const std::string args = " --stage red --night n";
  ASSERT_EQ(kspecdr::testing::run_command(
                here + r.bin + " reduce --raw night/raw --instrument night/instrument.ini --out rel" + args, &log),
            0)
      << log;
  ASSERT_EQ(log.find(" 0 files written"), std::string::npos) << log;
  auto expect_all_kept = [&](const std::string& command, const std::string& what) {
    ASSERT_EQ(kspecdr::testing::run_command(command, &log), 0) << log;
    EXPECT_NE(log.find(" 0 files written"), std::string::npos) << what << ": everything should be kept\n" << log;
    EXPECT_EQ(log.find("redoing it"), std::string::npos) << what << "\n" << log;
    EXPECT_EQ(log.find("building master"), std::string::npos) << what << "\n" << log;
  };
  expect_all_kept(here + r.bin + " reduce --raw night/raw --instrument night/instrument.ini --out rel" + args,
                  "the same command again");
  expect_all_kept(r.bin + " reduce --raw " + (r.dir->path() / "night/./raw/").string() + " --instrument " +
                      (r.dir->path() / "night/../night/instrument.ini").string() + " --out " +
                      (r.dir->path() / "rel/").string() + args,
                  "absolute paths spelled otherwise");
  fs::rename(r.dir->path() / "rel", r.dir->path() / "moved");
  expect_all_kept(here + r.bin + " reduce --raw night/raw --instrument night/instrument.ini --out moved" + args,
                  "the output folder moved");
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

TEST(Resume, AProductOfAnotherBuildIsKeptAndSaidADamagedMasterIsRebuilt) {
  const Runs r = make_runs();
  std::string log;
  const fs::path out = r.dir->path() / "out";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out), &log), 0) << log;
  const fs::path red = out / "red" / "run0009.red.fits";
  const fs::path bias = only_file(out / "calib", "master_bias_"), flat = only_file(out / "calib", "master_flat_");
  const detector::MasterFlat flat_before = detector::read_master_flat(flat);
  const auto red_before = wavecal::read_red_file(red);
  // Two products as another build would have written them (same inputs and configuration, another KSPSHA) ...
  const std::string other = std::string(git_sha()) == "0123456789ab" ? "ba9876543210" : "0123456789ab";
  set_primary_keyword(red, "KSPSHA", other);
  set_primary_keyword(bias, "KSPSHA", other);
  // ... and a master flat changed after it was written: one byte in the middle of its pixels, header untouched.
  {
    std::fstream f(flat, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f) << flat;
    const auto at = static_cast<std::streamoff>(fs::file_size(flat) / 3);
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(at);
    f.write(&c, 1);
  }
  ASSERT_FALSE(fits::Fits::open(flat).verify_checksums()) << "the damaged byte should break the flat's checksums";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out), &log), 0) << log;
  // Kept, each said, and counted once in the night's summary.
  EXPECT_NE(log.find(red.filename().string() + " was made by another kspecdr build (git " + other), std::string::npos) << log;
  EXPECT_NE(log.find(bias.string() + " was made by another kspecdr build (git " + other), std::string::npos) << log;
  EXPECT_NE(log.find("2 product(s) kept from earlier runs were made by another kspecdr build"), std::string::npos) << log;
  EXPECT_EQ(differences(red_before.spectra.flux, wavecal::read_red_file(red).spectra.flux), 0);
  // The damaged flat is rebuilt (not read), equal to the first one and whole again.
  EXPECT_NE(log.find("does not verify against its checksums"), std::string::npos) << log;
  EXPECT_NE(log.find("building master flat"), std::string::npos) << log;
  EXPECT_TRUE(fits::Fits::open(flat).verify_checksums());
  const detector::MasterFlat flat_after = detector::read_master_flat(flat);
  EXPECT_EQ(differences(flat_before.pixel_flat.data, flat_after.pixel_flat.data), 0);
  EXPECT_EQ(differences(flat_before.pixel_flat.variance, flat_after.pixel_flat.variance), 0);
  // --overwrite remakes everything with this build, the masters included.
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(out) + " --overwrite", &log), 0) << log;
  EXPECT_NE(log.find("building master bias"), std::string::npos) << log;
  EXPECT_NE(log.find("building master flat"), std::string::npos) << log;
  EXPECT_NE(log.find(" 0 kept from earlier runs"), std::string::npos) << log;
  EXPECT_EQ(log.find("made by another kspecdr build"), std::string::npos) << log;
  for (const fs::path& p : {red, bias}) {
    auto f = fits::Fits::open(p);
    EXPECT_EQ(f.read_header().get_string("KSPSHA").value_or(""), git_sha()) << p;
  }
}

TEST(Resume, AProductThatCannotBeWrittenFailsTheNightNotItsExposures) {
  const Runs r = make_runs();
  std::string log;
  const fs::path clean = r.dir->path() / "clean";
  ASSERT_EQ(kspecdr::testing::run_command(r.reduce(clean), &log), 0) << log;
  // The same night on 2 ranks into a folder where the arc solution's and the trace map's names are taken by
  // folders, so that neither file can be written (rank 0 writes them).
  const fs::path out = r.dir->path() / "blocked";
  const fs::path arcsol = only_file(clean / "calib", "arcsol_"), traces = only_file(clean / "calib", "traces_");
  fs::create_directories(out / "calib" / arcsol.filename() / "x");
  fs::create_directories(out / "calib" / traces.filename() / "x");
  const int rc = kspecdr::testing::run_command(kspecdr::testing::mpiexec_command(2) + " " + r.reduce(out), &log);
  EXPECT_EQ(rc, 3) << "a product that could not be written must give exit code 3\n" << log;
  EXPECT_NE(log.find(arcsol.filename().string() + " not written"), std::string::npos) << log;
  EXPECT_NE(log.find(traces.filename().string() + " not written"), std::string::npos) << log;
  EXPECT_NE(log.find("failed exposure calibration (" + (out / "calib" / arcsol.filename()).string()),
            std::string::npos)
      << log;
  // Every exposure is still reduced, whichever rank took it, and equals the clean run.
  expect_same_outputs(clean, out);
}
