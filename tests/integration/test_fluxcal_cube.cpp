// The flux-calibrated Rainbow cube: `kspecdr reduce --stage red --fluxcal.*` on a simulated fiber night at 1
// and 2 ranks writes <night>.fcal.rainbow.h5 beside the electron cube. Checked:
//   - it holds the calibrated RED files (OUT/fcal/<run>.fcal.fits) value for value: flux, uncertainty (the
//     square root of the calibrated variance), sky and the variance components, as float32; NaN where the
//     file says NODATA; ok where the mask is 0 and the variance finite; the units attributes are those of
//     rainbow_fcal_format() and the calibrated files' BUNIT;
//   - 1 and 2 ranks write the same cube, value for value (the stars' fits and the cube's time slices are
//     spread differently over the ranks, the numbers are not);
//   - an exposure whose calibration failed (its file FLUXCAL = F) is ok = 0 in the cube, its arrays NaN.
// The instrument resolution is measured from the night's arc lines (the default of --fluxcal.fwhm-angstrom).
// The programs run under mpiexec; this process initialises MPI only for the last check.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kspecdr/core/mask.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/series/rainbow.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> star_groups(const h5::File& f) {
  std::vector<std::string> groups;
  std::function<void(const h5::Group&, const std::string&)> walk = [&](const h5::Group& g, const std::string& p) {
    if (g.exists("fluxlike")) groups.push_back(p);
    else
      for (const auto& m : g.members()) walk(g.open_group(m), p.empty() ? m : p + "/" + m);
  };
  walk(f.root(), "");
  return groups;
}

bool same(float a, float b) { return a == b || (a != a && b != b); }

}  // namespace

TEST(FluxcalCube, CalibratedCubeEqualsTheFcalFilesAtOneAndTwoRanks) {
  KSPECDR_REQUIRE_SHARED(shared);
  kspecdr::testing::TempDir dir("kspecdr-fluxcal-cube");
  const std::string bin = kspecdr::testing::kspecdr_bin().string();
  const fs::path night = dir.path() / "night";
  std::string log;
  ASSERT_EQ(kspecdr::testing::run_command(bin + " simulate --mode fiber --out " + night.string() +
                                              " --seed 20261121 --n-science 2 --n-arc 1 --n-bias 3 --n-flat 3"
                                              " --catalog-filters-dir " + (shared / "data/filters").string(),
                                          &log),
            0)
      << log;
  ASSERT_EQ(kspecdr::testing::run_command(bin + " templates synth --out " + (dir.path() / "grid.h5").string() +
                                              " --teff 5500:7250:250 --lambda-min 3000 --lambda-max 11000",
                                          &log),
            0)
      << log;
  // The simulator's extinction curve has no file (an analytic function of the site): from truth.h5.
  {
    const h5::File truth = h5::File::open(night / "truth.h5");
    const auto lam = truth.root().read<double>("spectra/wavelength");
    const auto ext = truth.root().read<double>("spectra/extinction");
    std::ofstream f(dir.path() / "extinction.dat");
    f << "# simulator extinction: Angstrom mag/airmass\n";
    for (std::size_t i = 0; i < lam.size(); i += 10) f << fmt::format("{:.3f} {:.6f}\n", lam[i], ext[i]);
  }
  const std::string fluxcal_opts = " --fluxcal.catalog " + (night / "catalog.csv").string() +
                                   " --fluxcal.templates " + (dir.path() / "grid.h5").string() +
                                   " --fluxcal.filters " + (shared / "data/filters").string() +
                                   " --fluxcal.extinction " + (dir.path() / "extinction.dat").string();
  for (int np : {1, 2}) {
    const fs::path out = dir.path() / ("out-np" + std::to_string(np));
    const std::string cmd = kspecdr::testing::mpiexec_command(np) + " " + bin + " reduce --raw " +
                            (night / "raw").string() + " --instrument " + (night / "instrument.ini").string() +
                            " --out " + out.string() + " --stage red --night n" + fluxcal_opts;
    ASSERT_EQ(kspecdr::testing::run_command(cmd, &log), 0)
        << cmd << "\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    ASSERT_TRUE(fs::exists(out / "n.fcal.rainbow.h5")) << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
  }

  // ---- The cube against the calibrated files (1 rank).
  const fs::path out1 = dir.path() / "out-np1";
  const h5::File cube = h5::File::open(out1 / "n.fcal.rainbow.h5");
  const auto groups = star_groups(cube);
  ASSERT_FALSE(groups.empty());
  std::map<std::string, std::string> want_units;
  for (const auto& it : series::rainbow_fcal_format())
    if (it.hdu == "<star>/fluxlike") want_units[it.name] = it.unit;
  long compared = 0, mismatches = 0;
  for (const auto& gname : groups) {
    const h5::Group g = cube.root().open_group(gname);
    const std::string aperture = g.attr_string("name");
    std::vector<std::string> exposures;
    {
      std::stringstream ss(g.attr_string("exposures"));
      for (std::string e; std::getline(ss, e, ',');) exposures.push_back(e);
    }
    ASSERT_EQ(exposures.size(), 2u) << gname;
    h5::Dims dims;
    std::map<std::string, std::vector<float>> arr;
    for (const char* d : {"flux", "uncertainty", "sky", "var_star", "var_sky", "var_read", "var_cal"}) {
      arr[d] = g.read<float>(std::string("fluxlike/") + d, &dims);
      EXPECT_EQ(g.open_dataset(std::string("fluxlike/") + d).attr_string("units"), want_units.at(d)) << gname << " " << d;
    }
    const auto ok = g.read<std::uint8_t>("fluxlike/ok");
    const auto tok = g.read<std::uint8_t>("timelike/ok");
    ASSERT_EQ(dims.size(), 2u);
    const std::size_t nwave = dims[0], ntime = dims[1];
    for (std::size_t t = 0; t < ntime; ++t) {
      const auto red = wavecal::read_red_file(out1 / "fcal" / (exposures[t] + ".fcal.fits"));
      ASSERT_TRUE(red.spectra.header.get_bool("FLUXCAL").value_or(false)) << exposures[t];
      EXPECT_EQ(red.spectra.header.get_string("BUNIT").value_or(""), want_units.at("flux"));
      Eigen::Index a = -1;
      for (std::size_t k = 0; k < red.spectra.apertures.size(); ++k)
        if (red.spectra.apertures[k].name == aperture) a = static_cast<Eigen::Index>(k);
      ASSERT_GE(a, 0) << aperture;
      ASSERT_EQ(static_cast<std::size_t>(red.spectra.npix()), nwave);
      EXPECT_EQ(tok[t], red.spectra.diagnostics[static_cast<std::size_t>(a)].status == "ok" ? 1 : 0);
      for (std::size_t w = 0; w < nwave; ++w) {
        const auto j = static_cast<Eigen::Index>(w);
        const bool nodata = red.spectra.mask(a, j) & kMaskNoData;
        const float nan = std::numeric_limits<float>::quiet_NaN();
        const std::size_t i = w * ntime + t;
        const float want[] = {nodata ? nan : red.spectra.flux(a, j),
                              nodata ? nan : static_cast<float>(std::sqrt(red.spectra.variance(a, j))),
                              nodata ? nan : red.spectra.sky(a, j),
                              nodata ? nan : red.spectra.var_star(a, j),
                              nodata ? nan : red.spectra.var_sky(a, j),
                              nodata ? nan : red.spectra.var_read(a, j),
                              nodata ? nan : red.spectra.var_cal(a, j)};
        int k = 0;
        for (const char* d : {"flux", "uncertainty", "sky", "var_star", "var_sky", "var_read", "var_cal"}) {
          if (!same(arr[d][i], want[k])) ++mismatches;
          ++k;
        }
        const std::uint8_t want_ok =
            red.spectra.mask(a, j) == 0 && std::isfinite(red.spectra.variance(a, j)) ? 1 : 0;
        if (ok[i] != want_ok) ++mismatches;
        ++compared;
      }
    }
  }
  std::cout << fmt::format("[fcal cube] {} star groups, {} pixel-times compared with the fcal files, {} mismatches\n",
                           groups.size(), compared, mismatches);
  EXPECT_EQ(mismatches, 0);

  // ---- 1 and 2 ranks: the same cube.
  {
    const h5::File c2 = h5::File::open(dir.path() / "out-np2" / "n.fcal.rainbow.h5");
    ASSERT_EQ(star_groups(c2), groups);
    long diffs = 0, n = 0;
    for (const auto& g : groups) {
      for (const char* d : {"fluxlike/flux", "fluxlike/uncertainty", "fluxlike/sky", "fluxlike/var_star",
                            "fluxlike/var_sky", "fluxlike/var_read", "fluxlike/var_cal"}) {
        const auto x = cube.root().read<float>(g + "/" + d), y = c2.root().read<float>(g + "/" + d);
        ASSERT_EQ(x.size(), y.size()) << g << d;
        for (std::size_t i = 0; i < x.size(); ++i) diffs += !same(x[i], y[i]), ++n;
      }
      for (const char* d : {"fluxlike/ok", "timelike/ok"}) {
        const auto x = cube.root().read<std::uint8_t>(g + "/" + d), y = c2.root().read<std::uint8_t>(g + "/" + d);
        ASSERT_EQ(x, y) << g << d;
      }
    }
    std::cout << fmt::format("[fcal cube] 1 vs 2 ranks: {} of {} values differ\n", diffs, n);
    EXPECT_EQ(diffs, 0);
  }

  // ---- A failed calibration is ok = 0: the second exposure's file replaced by an uncalibrated one. The cube is
  // written in this process (one rank); MPI is initialised only now, after the mpiexec runs above (a process
  // that has initialised MPI cannot launch mpiexec).
  {
    int argc = 0;
    char** argv = nullptr;
    mpi::Environment mpi_env(argc, argv);
    const fs::path fake = dir.path() / "fake";
    fs::create_directories(fake);
    std::vector<std::string> runs;
    for (const auto& e : fs::directory_iterator(out1 / "fcal"))
      if (e.path().string().ends_with(".fcal.fits")) runs.push_back(e.path().filename().string());
    std::sort(runs.begin(), runs.end());
    ASSERT_EQ(runs.size(), 2u);
    fs::copy_file(out1 / "fcal" / runs[0], fake / runs[0]);
    auto red = wavecal::read_red_file(out1 / "red" / (runs[1].substr(0, runs[1].find('.')) + ".red.fits"));
    red.spectra.header.set("FLUXCAL", false, "not flux calibrated");
    red.spectra.header.set("FCALERR", "injected failure", "why");
    wavecal::write_red_file(fake / runs[1], red, false);
    series::SeriesSet set;
    set.setup = "test";
    for (const auto& r : runs) {
      const std::string run = r.substr(0, r.find('.'));
      set.exposures.push_back({run, fake / r, 60000.0 + static_cast<double>(set.exposures.size()) * 0.01, 600.0, 1.2,
                               112.0, -29.0});
    }
    const auto rs = series::write_rainbow_file(fake / "cube.h5", {set}, series::Site{-17.88, 28.76, 2396.0},
                                               "test", mpi::world(), false, true);
    EXPECT_EQ(rs.failed_exposures, 1u);
    const h5::File c = h5::File::open(fake / "cube.h5");
    for (const auto& g : star_groups(c)) {
      const auto tok = c.root().read<std::uint8_t>(g + "/timelike/ok");
      ASSERT_EQ(tok.size(), 2u);
      EXPECT_EQ(tok[1], 0) << g;
      h5::Dims dims;
      const auto flux = c.root().read<float>(g + "/fluxlike/flux", &dims);
      const auto fok = c.root().read<std::uint8_t>(g + "/fluxlike/ok");
      for (std::size_t w = 0; w < dims[0]; ++w) {
        EXPECT_TRUE(std::isnan(flux[w * 2 + 1])) << g;
        EXPECT_EQ(fok[w * 2 + 1], 0) << g;
      }
    }
  }
}
