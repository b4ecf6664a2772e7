// Template grids: the HDF5 format round trip, the labelled-synthetic grid of the simulator's star family,
// the BOSZ 2024 reader on a small folder in the BOSZ layout, and `kspecdr templates`.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <fstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/templates.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/sim/spectra.hpp"
#include "kspecdr/sim/template_grid.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

sim::SynthGridSpec small_spec() {
  sim::SynthGridSpec s;
  s.teff_k = {5500, 6000, 6500};
  s.logg = {4.0, 4.5};
  s.mh = {-0.5, 0.0};
  s.alpha = {0.0};
  s.lambda_min = 4000;
  s.lambda_max = 8000;
  s.step_angstrom = 1.0;
  return s;
}

/// One BOSZ-like text file: a comment header, then wavelength, H_lambda, continuum.
void write_bosz(const fs::path& path, const sim::StarTemplate& s, const std::vector<double>& w, bool gz) {
  std::string text = "# BOSZ 2024 test file\n# wavelength  H_lambda  continuum\n";
  for (double l : w)
    text += fmt::format("{:.4f} {:.8e} {:.8e}\n", l, s.surface_flux(l) / (4.0 * M_PI), s.surface_flux(l, false) / (4.0 * M_PI));
  if (gz) {
    gzFile f = gzopen(path.string().c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
    gzclose(f);
  } else {
    std::ofstream(path) << text;
  }
}

std::string bosz_name(double teff, double logg, double mh, double alpha, int r, const char* ext = ".txt.gz") {
  return fmt::format("bosz2024_mp_t{:.0f}_g{:+.2f}_m{:+.2f}_a{:+.2f}_c+0.00_v1_r{}_resam{}", teff, logg, mh, alpha, r, ext);
}

}  // namespace

TEST(FluxcalTemplates, SyntheticGridRoundTripsAndIsLabelled) {
  kspecdr::testing::TempDir dir("kspecdr-templates");
  const auto g = sim::make_synthetic_template_grid(small_spec());
  ASSERT_EQ(g.size(), 12u);
  EXPECT_TRUE(g.synthetic);
  EXPECT_NE(g.source.find("SYNTHETIC"), std::string::npos);
  fluxcal::write_template_grid(dir / "g.h5", g);
  EXPECT_THROW(fluxcal::write_template_grid(dir / "g.h5", g), Error);  // no silent overwrite
  const auto r = fluxcal::read_template_grid(dir / "g.h5");
  ASSERT_EQ(r.size(), g.size());
  EXPECT_TRUE(r.synthetic);
  EXPECT_EQ(r.source, g.source);
  EXPECT_EQ(r.wavelength_medium, "air");
  EXPECT_EQ(r.wavelength_angstrom, g.wavelength_angstrom);
  EXPECT_TRUE((r.flux == g.flux).all());
  EXPECT_TRUE((r.continuum == g.continuum).all());
  EXPECT_EQ(r.axis(0), (std::vector<double>{5500, 6000, 6500}));
  EXPECT_EQ(r.find({6000, 4.5, -0.5, 0.0}), g.find({6000, 4.5, -0.5, 0.0}));
  EXPECT_EQ(r.find({6100, 4.5, -0.5, 0.0}), -1);
  // A wavelength window keeps one sample beyond each end.
  const auto w = fluxcal::read_template_grid(dir / "g.h5", 5000.0, 6000.0);
  EXPECT_DOUBLE_EQ(w.wavelength_angstrom.front(), 4999.0);
  EXPECT_DOUBLE_EQ(w.wavelength_angstrom.back(), 6001.0);
  EXPECT_FLOAT_EQ(w.flux(3, 1), g.flux(3, 1000));
  // The surface flux is π B_λ times the lines: the continuum of 6000 K at 5000 Å.
  const double h = 6.62607015e-27, c = 2.99792458e10, k = 1.380649e-16, lam = 5000e-8;
  const double bb = M_PI * 2 * h * c * c / std::pow(lam, 5) / std::expm1(h * c / (lam * k * 6000.0)) * 1e-8;
  EXPECT_NEAR(r.continuum(r.find({6000, 4.0, 0.0, 0.0}), 1000) / bb, 1.0, 1e-4);
  // Lines: Hα is an absorption in the line flux, not in the continuum.
  const long i = r.find({6000, 4.0, 0.0, 0.0});
  EXPECT_LT(r.flux(i, 2563) / r.continuum(i, 2563), 0.8);
}

TEST(FluxcalTemplates, ParametersChangeTheLinesTheyShould) {
  const auto w = std::vector<double>{5183.6, 6562.8 + 15.0};
  sim::StarTemplate base;
  base.teff_k = 6000;
  sim::StarTemplate metal = base, gravity = base;
  metal.mh = -1.0;
  gravity.logg = 3.5;
  // Metal-poor: a shallower Mg b line; lower gravity: narrower Balmer wings (less absorption 15 Å off Hα).
  EXPECT_GT(metal.surface_flux(w[0]) / metal.surface_flux(w[0], false),
            base.surface_flux(w[0]) / base.surface_flux(w[0], false) + 0.05);
  EXPECT_GT(gravity.surface_flux(w[1]) / gravity.surface_flux(w[1], false),
            base.surface_flux(w[1]) / base.surface_flux(w[1], false));
}

TEST(FluxcalTemplates, BoszNamesAreParsed) {
  fluxcal::BoszName b;
  ASSERT_TRUE(fluxcal::parse_bosz_name("bosz2024_mp_t5750_g+4.50_m-0.25_a+0.00_c+0.00_v1_r2000_resam.txt.gz", b));
  EXPECT_EQ(b.atmosphere, "mp");
  EXPECT_DOUBLE_EQ(b.params.teff_k, 5750);
  EXPECT_DOUBLE_EQ(b.params.logg, 4.5);
  EXPECT_DOUBLE_EQ(b.params.mh, -0.25);
  EXPECT_DOUBLE_EQ(b.params.alpha, 0.0);
  EXPECT_DOUBLE_EQ(b.resolving_power, 2000);
  EXPECT_TRUE(b.gzipped);
  ASSERT_TRUE(fluxcal::parse_bosz_name("bosz2024_ap_t9000_g+3.00_m+0.50_a+0.25_c-0.25_v2_rorig_noresam.txt", b));
  EXPECT_DOUBLE_EQ(b.resolving_power, 0);
  EXPECT_DOUBLE_EQ(b.carbon, -0.25);
  EXPECT_FALSE(b.gzipped);
  EXPECT_FALSE(fluxcal::parse_bosz_name("amp00cp00op00t5750g45v20modrt0b2000rs.fits", b));
}

TEST(FluxcalTemplates, BoszFolderIsImported) {
  kspecdr::testing::TempDir dir("kspecdr-bosz");
  std::vector<double> w;
  for (double l = 3000; l <= 9000; l += 1.5) w.push_back(l);
  const double teffs[] = {5500, 6000};
  const double mhs[] = {-0.5, 0.0};
  for (double t : teffs)
    for (double m : mhs) {
      sim::StarTemplate s;
      s.teff_k = t;
      s.mh = m;
      s.logg = 4.5;
      write_bosz(dir / bosz_name(t, 4.5, m, 0.0, 2000, m < 0 ? ".txt" : ".txt.gz"), s, w, m >= 0);
    }
  std::ofstream(dir / "README.txt") << "not a model\n";  // other files are ignored
  fluxcal::BoszImportOptions o;
  o.lambda_min = 4000;
  o.lambda_max = 8000;
  const auto g = fluxcal::import_bosz(dir.path(), o);
  ASSERT_EQ(g.size(), 4u);
  EXPECT_FALSE(g.synthetic);
  EXPECT_EQ(g.wavelength_medium, "vacuum");
  EXPECT_DOUBLE_EQ(g.resolving_power, 2000);
  EXPECT_GE(g.wavelength_angstrom.front(), 4000);
  EXPECT_LE(g.wavelength_angstrom.back(), 8000);
  EXPECT_NE(g.source.find("BOSZ 2024"), std::string::npos);
  // H_λ × 4π is the surface flux.
  sim::StarTemplate s;
  s.teff_k = 6000;
  s.mh = -0.5;
  s.logg = 4.5;
  const long i = g.find({6000, 4.5, -0.5, 0.0});
  ASSERT_GE(i, 0);
  for (std::size_t j = 0; j < g.wavelength_angstrom.size(); j += 500)
    EXPECT_NEAR(g.flux(i, static_cast<Eigen::Index>(j)) / s.surface_flux(g.wavelength_angstrom[j]), 1.0, 1e-6);

  // Through the command line: the same grid in the file.
  const auto out = dir / "bosz.h5";
  std::string log;
  ASSERT_EQ(kspecdr::testing::run_command(fmt::format("{} templates import-bosz {} {} --lambda-min 4000 --lambda-max 8000",
                                                      kspecdr::testing::kspecdr_bin().string(), dir.path().string(),
                                                      out.string()),
                                          &log),
            0)
      << log;
  const auto r = fluxcal::read_template_grid(out);
  EXPECT_EQ(r.size(), 4u);
  EXPECT_TRUE((r.flux == g.flux).all());
}

TEST(FluxcalTemplates, BadBoszFoldersAreClearErrors) {
  kspecdr::testing::TempDir dir("kspecdr-bosz-bad");
  EXPECT_THROW(fluxcal::import_bosz(dir.path()), DataError);  // empty
  EXPECT_THROW(fluxcal::import_bosz(dir / "missing"), DataError);
  sim::StarTemplate s;
  std::vector<double> w = {4000, 5000, 6000, 7000};
  write_bosz(dir / bosz_name(6000, 4.5, 0, 0, 2000), s, w, true);
  write_bosz(dir / bosz_name(6500, 4.5, 0, 0, 5000), s, w, true);
  EXPECT_THROW(fluxcal::import_bosz(dir.path()), DataError);  // mixed R
  fs::remove(dir / bosz_name(6500, 4.5, 0, 0, 5000));
  write_bosz(dir / bosz_name(6500, 4.5, 0, 0, 2000), s, {4000, 5000, 6000, 7100}, true);
  EXPECT_THROW(fluxcal::import_bosz(dir.path()), DataError);  // another wavelength grid
  fs::remove(dir / bosz_name(6500, 4.5, 0, 0, 2000));
  std::ofstream(dir / bosz_name(7000, 4.5, 0, 0, 2000, ".txt")) << "4000 1.0 1.0\n5000 x 1\n";
  try {
    fluxcal::import_bosz(dir.path());
    FAIL() << "a bad row was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  // A HDF5 file that is not a grid.
  {
    auto f = h5::File::create(dir / "other.h5");
    f.root().write("x", std::vector<double>{1, 2});
  }
  EXPECT_THROW(fluxcal::read_template_grid(dir / "other.h5"), DataError);
  EXPECT_THROW(fluxcal::read_template_grid(dir / "none.h5"), DataError);
}

TEST(FluxcalTemplates, SynthCommandWritesALabelledGrid) {
  kspecdr::testing::TempDir dir("kspecdr-synth");
  std::string log;
  const auto bin = kspecdr::testing::kspecdr_bin().string();
  ASSERT_EQ(kspecdr::testing::run_command(fmt::format("{} templates synth --out {} --teff 5000:6000:500 --logg 4.5 --mh 0 "
                                                      "--alpha 0 --lambda-min 4000 --lambda-max 7000 --step 1",
                                                      bin, (dir / "g.h5").string()),
                                          &log),
            0)
      << log;
  const auto g = fluxcal::read_template_grid(dir / "g.h5");
  EXPECT_EQ(g.size(), 3u);
  EXPECT_TRUE(g.synthetic);
  EXPECT_EQ(g.wavelength_angstrom.size(), 3001u);
  EXPECT_EQ(kspecdr::testing::run_command(fmt::format("{} templates synth --out {} --teff 5000:4000:10", bin,
                                                      (dir / "h.h5").string()),
                                          &log),
            2)
      << log;
  EXPECT_EQ(kspecdr::testing::run_command(fmt::format("{} templates frobnicate", bin), &log), 2) << log;
}
