// Known-standard flux calibration pieces: extinction and standard-star readers, the calibration vector
// and its variance (against a Monte-Carlo ensemble), masks, applying a vector with variance propagation
// in both declared array layouts, and the errors for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/fluxcal/apply.hpp"
#include "kspecdr/fluxcal/extinction.hpp"
#include "kspecdr/fluxcal/photometry.hpp"
#include "kspecdr/fluxcal/sensitivity.hpp"
#include "kspecdr/fluxcal/standard.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::fluxcal;
namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }

/// A one-aperture RED on a linear grid with flux C and variance V per pixel.
wavecal::RedSpectra small_red(std::size_t n, double lam0, double step, double counts, double var) {
  wavecal::RedSpectra red;
  red.spectra = SpectrumSet(1, static_cast<Eigen::Index>(n));
  for (std::size_t j = 0; j < n; ++j) red.grid.centres.push_back(lam0 + step * static_cast<double>(j));
  red.grid.edges = wavecal::pixel_edges(red.grid.centres);
  red.grid.step = step;
  red.spectra.flux.setConstant(static_cast<float>(counts));
  red.spectra.variance.setConstant(static_cast<float>(var));
  red.spectra.var_star.setConstant(static_cast<float>(var));
  red.spectra.apertures.resize(1);
  red.spectra.apertures[0].name = "std";
  red.spectra.diagnostics.resize(1);
  red.wavela = ImageArrayD::Zero(1, static_cast<Eigen::Index>(n));
  red.covariance_next = ImageArray::Zero(1, static_cast<Eigen::Index>(n));
  red.wave.resize(1);
  wavecal::set_wavelength_wcs(red.spectra.header, red.grid);
  red.spectra.header.set("EXPTIME", 100.0);
  red.spectra.header.set("AIRMASS", 1.2);
  return red;
}

}  // namespace

TEST(FluxcalExtinction, ReadsInterpolatesAndRefusesToExtrapolate) {
  kspecdr::testing::TempDir dir;
  write_text(dir / "ext.dat", "# test\n4000 0.30\n5000 0.20\n6000 0.10\n");
  const auto c = read_extinction_curve(dir / "ext.dat");
  EXPECT_DOUBLE_EQ(c.k(4500), 0.25);
  EXPECT_DOUBLE_EQ(c.k(6000), 0.10);
  EXPECT_NEAR(c.factor(5000, 1.5), std::pow(10.0, 0.4 * 0.2 * 1.5), 1e-14);
  EXPECT_THROW(c.k(3999), DataError);
  EXPECT_TRUE(c.covers(4000, 6000));
  EXPECT_FALSE(c.covers(3900, 6000));
  write_text(dir / "bad.dat", "4000 0.3\n3990 0.2\n");
  EXPECT_THROW(read_extinction_curve(dir / "bad.dat"), DataError);
  write_text(dir / "neg.dat", "4000 0.3\n5000 -0.2\n");
  EXPECT_THROW(read_extinction_curve(dir / "neg.dat"), DataError);
}

TEST(FluxcalExtinction, RealCurvesRead) {
  KSPECDR_REQUIRE_SHARED(shared);
  for (const char* f : {"lapalmaextinct.dat", "kpnoextinct.dat", "ctioextinct.dat", "apoextinct.dat"}) {
    const auto c = read_extinction_curve(shared / "data/extinction" / f);
    EXPECT_GT(c.k(5000), 0.05) << f;
    EXPECT_LT(c.k(5000), 0.4) << f;
    EXPECT_GT(c.k(4000), c.k(8000)) << f;  // bluer light is extincted more
  }
}

TEST(FluxcalExtinction, ToAirmassRoundTrip) {
  CalVector v;
  v.wavelength_angstrom = {4500, 5500};
  v.cal = {2.0, 3.0};
  v.variance = {0.04, 0.09};
  v.good = {1, 1};
  v.airmass = 1.4;
  ExtinctionCurve c{"t", {4000, 6000}, {0.3, 0.1}};
  const auto z = to_airmass(v, c, 0.0);
  EXPECT_NEAR(z.cal[0], 2.0 * std::pow(10.0, -0.4 * 0.25 * 1.4), 1e-12);
  EXPECT_NEAR(z.variance[0] / (z.cal[0] * z.cal[0]), 0.01, 1e-12);  // relative error unchanged
  const auto back = to_airmass(z, c, 1.4);
  EXPECT_NEAR(back.cal[1], 3.0, 1e-12);
  v.airmass = CalVector::kNaN;
  EXPECT_THROW(to_airmass(v, c, 0.0), DataError);
}

TEST(FluxcalStandard, ReadsIrafTablesAndFindsByName) {
  KSPECDR_REQUIRE_SHARED(shared);
  const fs::path iraf = shared / "data/standards/iraf";
  const auto f = find_standard("Feige 110", {iraf});
  EXPECT_EQ(f.stem().string(), "feige110");
  EXPECT_EQ(find_standard("EG158", {iraf}).stem().string(), "feige110");  // names.men alias
  const auto s = read_standard_file(f);
  ASSERT_GT(s.wavelength_angstrom.size(), 10u);
  // f_λ from the AB magnitude: m = −2.5 log10 f_ν − 48.60.
  const double fnu = std::pow(10.0, -0.4 * (s.ab_mag[5] + 48.6));
  EXPECT_NEAR(s.flambda[5] / (fnu * 2.99792458e18 / std::pow(s.wavelength_angstrom[5], 2)), 1.0, 1e-3);
  EXPECT_THROW(find_standard("NoSuchStar 1", {iraf}), DataError);
  // IRAF placeholders (mag 0.00) are dropped.
  const auto pg = read_standard_file(iraf / "spec50cal/pg0934554.dat");
  for (double m : pg.ab_mag) EXPECT_NE(m, 0.0);
  const auto g93 = load_standard((shared / "data/real/wht-isis-red/g93_48_hststan.dat").string(), {});
  EXPECT_GT(g93.wavelength_angstrom.size(), 5000u);
}

TEST(FluxcalStandard, BadTablesAreRefused) {
  kspecdr::testing::TempDir dir;
  write_text(dir / "a.dat", "# A\n5000 15.0 50\n4990 15.0 50\n");
  EXPECT_THROW(read_standard_file(dir / "a.dat"), DataError);
  write_text(dir / "b.dat", "# B\n5000 15.0 0\n5050 15.0 50\n");
  EXPECT_THROW(read_standard_file(dir / "b.dat"), DataError);
  write_text(dir / "c.dat", "# C\n5000 15.0 50\n");
  EXPECT_THROW(read_standard_file(dir / "c.dat"), DataError);
}

// The tabulated spectrum's stated fractional uncertainty f enters Var(model) = (f F)²: the vector's relative
// variance is f² + Var(C)/C² per band, and a negative or non-finite f is refused.
TEST(FluxcalStandard, TableUncertaintyEntersTheVariance) {
  const fs::path dir = fs::temp_directory_path() / "kspecdr-fluxcal-table-error";
  fs::create_directories(dir);
  write_text(dir / "star.dat", "# NAME star\n5000 15.0 50\n5100 15.1 50\n5200 15.2 50\n5300 15.3 50\n");
  const auto star = read_standard_file(dir / "star.dat");
  const auto red = small_red(300, 5000.0, 1.0, 1.0e4, 1.0e4);
  const BandMask none;
  const CalVector v0 = cal_from_tabulated(star, red, 0, 100.0, 1.2, none, "test");
  const CalVector v2 = cal_from_tabulated(star, red, 0, 100.0, 1.2, none, "test", 0.02);
  ASSERT_EQ(v0.size(), v2.size());
  ASSERT_GT(v0.n_good(), 0u);
  for (std::size_t i = 0; i < v0.size(); ++i) {
    if (!v0.good[i]) continue;
    EXPECT_DOUBLE_EQ(v2.cal[i], v0.cal[i]);
    const double counts_rel = v0.variance[i] / (v0.cal[i] * v0.cal[i]);  // Var(C)/C² of the band, ≈ 1/(50 × 1e4)
    EXPECT_NEAR(counts_rel * 5.0e5, 1.0, 0.02);
    EXPECT_NEAR(v2.variance[i] / (v2.cal[i] * v2.cal[i]), 0.02 * 0.02 + counts_rel, 1e-12);
  }
  EXPECT_THROW(cal_from_tabulated(star, red, 0, 100.0, 1.2, none, "test", -0.01), ConfigError);
  fs::remove_all(dir);
}

TEST(FluxcalSensitivity, MasksAndBands) {
  kspecdr::testing::TempDir dir;
  write_text(dir / "m.dat", "# bands\n6860 6960\n\n7590.0 7700.0  # A band\n");
  const auto m = read_band_mask(dir / "m.dat");
  ASSERT_EQ(m.bands_angstrom.size(), 2u);
  EXPECT_TRUE(m.contains(6860));
  EXPECT_TRUE(m.contains(7600));
  EXPECT_FALSE(m.contains(7000));
  write_text(dir / "bad.dat", "7000 6900\n");
  EXPECT_THROW(read_band_mask(dir / "bad.dat"), DataError);

  const std::vector<double> lam{6800, 6900, 7000, 7100, 7200, 7300};
  const std::vector<double> w(6, 100.0), model{1, 1, 1, -1, 1, NAN}, mv(6, 0.0);
  const std::vector<double> c{10, 10, 0, 10, 10, 10}, cv{10, 10, 10, 10, INFINITY, 10};
  const auto v = make_cal_vector(lam, w, model, mv, c, cv, 10.0, m, "t");
  // good: 6800 only (6900 in a band, 7000 zero counts, 7100 negative model, 7200 infinite variance, 7300 NaN).
  EXPECT_EQ(v.n_good(), 1u);
  EXPECT_TRUE(v.good[0]);
  for (std::size_t i = 1; i < 6; ++i) {
    EXPECT_TRUE(std::isnan(v.cal[i]));  // masked, never 0 with variance 0
    EXPECT_TRUE(std::isnan(v.variance[i]));
  }
  EXPECT_DOUBLE_EQ(v.cal[0], 1.0 * 10.0 * 100.0 / 10.0);
  EXPECT_THROW(make_cal_vector(lam, w, model, mv, c, cv, 0.0, m, "t"), DataError);
  EXPECT_THROW(make_cal_vector({1, 2}, {1}, {1, 1}, {0, 0}, {1, 1}, {1, 1}, 1.0, {}, "t"), DataError);
  EXPECT_THROW(make_cal_vector({7000}, {1}, {1}, {0}, {-1}, {1}, 1.0, {}, "t"), DataError);
}

TEST(FluxcalSensitivity, VarianceMatchesMonteCarlo) {
  // Cal = model t dλ / C with noisy model and counts: the predicted variance against the ensemble's.
  std::mt19937_64 rng(7);
  const double model = 2e-15, sm = 0.02 * model, counts = 4000, sc = std::sqrt(counts + 100.0);
  std::normal_distribution<double> nm(model, sm), nc(counts, sc);
  const int n = 40000;
  double sum = 0, sum2 = 0, pred = 0;
  for (int k = 0; k < n; ++k) {
    const double mk = nm(rng), ck = nc(rng);
    const auto v = make_cal_vector({6000}, {2.0}, {mk}, {sm * sm}, {ck}, {sc * sc}, 300.0, {}, "mc");
    sum += v.cal[0];
    sum2 += v.cal[0] * v.cal[0];
    pred += v.variance[0];
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  pred /= n;
  // The ensemble variance of a variance estimate from n draws has a relative error of √(2/n) ≈ 0.7 %;
  // first-order propagation is good to (σ/C)² ≈ 0.1 % here.
  EXPECT_NEAR(var / pred, 1.0, 5 * std::sqrt(2.0 / n));
}

TEST(FluxcalApply, DeclaredAxesDecideTheLayout) {
  Header h;
  h.set("CTYPE1", "WAVE");
  EXPECT_EQ(declared_axes(h, 3, 3, 3), SpectrumAxes::ApertureRows);  // square: still decided by the header
  Header h2;
  h2.set("CTYPE2", "WAVE");
  EXPECT_EQ(declared_axes(h2, 3, 3, 3), SpectrumAxes::ApertureColumns);
  EXPECT_EQ(declared_axes(h2, 5, 2, 5), SpectrumAxes::ApertureColumns);
  EXPECT_THROW(declared_axes(h2, 2, 5, 5), DataError);  // axis 2 has 2 pixels, not 5
  Header none;
  EXPECT_THROW(declared_axes(none, 3, 3, 3), DataError);
  Header both = h;
  both.set("CTYPE2", "WAVE");
  EXPECT_THROW(declared_axes(both, 3, 3, 3), DataError);
}

TEST(FluxcalApply, VariancePropagationInBothLayouts) {
  const std::vector<double> m{2.0, 3.0, NAN}, vm{0.01, 0.04, 0.0};
  // (NAPER=2, NWAVE=3)
  ImageArray f(2, 3), v(2, 3);
  f << 10, 20, 30, 1, 2, 3;
  v << 1, 4, 9, 1, 1, 1;
  MaskArray mask = MaskArray::Zero(2, 3);
  ImageArray ft = f.transpose(), vt = v.transpose();
  MaskArray mt = mask.transpose();
  apply_factor(f, {&v}, mask, SpectrumAxes::ApertureRows, m, vm);
  apply_factor(ft, {&vt}, mt, SpectrumAxes::ApertureColumns, m, vm);
  EXPECT_FLOAT_EQ(f(0, 1), 60.0f);
  EXPECT_FLOAT_EQ(v(0, 1), static_cast<float>(4 * 9 + 400 * 0.04));
  EXPECT_FLOAT_EQ(f(1, 0), 2.0f);
  EXPECT_FLOAT_EQ(v(1, 0), static_cast<float>(1 * 4 + 1 * 0.01));
  // masked calibration: no data, never flux 0 with variance 0
  EXPECT_TRUE(std::isinf(v(0, 2)));
  EXPECT_TRUE(mask(0, 2) & kMaskNoData);
  for (Eigen::Index a = 0; a < 2; ++a)
    for (Eigen::Index j = 0; j < 3; ++j) {
      EXPECT_EQ(f(a, j), ft(j, a));
      EXPECT_EQ(v(a, j), vt(j, a));
      EXPECT_EQ(mask(a, j), mt(j, a));
    }
}

TEST(FluxcalApply, RedFileRoundTripWithHeader) {
  kspecdr::testing::TempDir dir;
  auto red = small_red(50, 5000, 2.0, 1000.0, 1100.0);
  const ExtinctionCurve curve{"flat", {4000, 7000}, {0.1, 0.1}};
  CalVector cal;
  cal.wavelength_angstrom = {4990, 5050, 5110};
  cal.cal = {1e-13, 1e-13, 1e-13};
  cal.variance = {1e-28, 1e-28, 1e-28};
  cal.good = {1, 1, 0};
  cal.airmass = 0.0;
  cal.source = "test";
  CalibrationRecord rec{1, CalVector::kNaN, "exposure", "flat", {"FCAL test"}};
  apply_to_red(red, cal, curve, rec, "mem");
  EXPECT_THROW(apply_to_red(red, cal, curve, rec, "mem"), DataError);  // never twice
  write_red_file(dir / "x.fcal.fits", red, false);
  const auto back = wavecal::read_red_file(dir / "x.fcal.fits");
  const auto& h = back.spectra.header;
  EXPECT_EQ(h.get_string("BUNIT").value_or(""), "erg/cm2/s/A");
  EXPECT_TRUE(h.get_bool("FLUXCAL").value_or(false));
  EXPECT_EQ(h.get_int("FCALNSTR").value_or(0), 1);
  EXPECT_FALSE(h.has("FCALRMS"));  // one standard: no scatter
  ASSERT_FALSE(h.history().empty());
  const double x = std::pow(10.0, 0.4 * 0.1 * 1.2) / (100.0 * 2.0);
  EXPECT_NEAR(back.spectra.flux(0, 0) / (1000.0 * 1e-13 * x), 1.0, 1e-5);
  const double var = 1100.0 * std::pow(1e-13 * x, 2) + 1e6 * 1e-28 * x * x;
  EXPECT_NEAR(back.spectra.variance(0, 0) / var, 1.0, 1e-5);
  // beyond 5050 Å the vector is masked: no data
  EXPECT_TRUE(back.spectra.mask(0, 40) & kMaskNoData);
  EXPECT_TRUE(std::isinf(back.spectra.variance(0, 40)));
  // the variance components still add up
  const double sum = back.spectra.var_star(0, 3) + back.spectra.var_sky(0, 3) + back.spectra.var_read(0, 3) +
                     back.spectra.var_cal(0, 3);
  EXPECT_NEAR(sum / back.spectra.variance(0, 3), 1.0, 1e-5);
  auto noexp = small_red(5, 5000, 2.0, 1, 1);
  noexp.spectra.header.erase("EXPTIME");
  EXPECT_THROW(apply_to_red(noexp, cal, curve, rec), DataError);
}

TEST(FluxcalApply, CombineMeanClipsAndScalesVariance) {
  auto vec = [](double c, double v) {
    CalVector x;
    x.wavelength_angstrom = {5000, 5001};
    x.cal = {c, c};
    x.variance = {v, v};
    x.good = {1, 1};
    x.airmass = 0;
    return x;
  };
  double rms = 0;
  const auto one = combine_mean({vec(1.0, 0.01)}, 3.0, &rms);
  EXPECT_TRUE(std::isnan(rms));
  EXPECT_DOUBLE_EQ(one.cal[0], 1.0);
  const auto m = combine_mean({vec(1.0, 1e-4), vec(1.01, 1e-4), vec(0.99, 1e-4), vec(2.0, 1e-4)}, 3.0, &rms);
  EXPECT_NEAR(m.cal[0], 1.0, 1e-9);  // the outlier is clipped
  EXPECT_NEAR(rms, std::sqrt(2.0 / 3.0) * 0.01, 1e-4);
  const auto s = combine_mean({vec(1.0, 1e-6), vec(1.1, 1e-6)});
  EXPECT_GT(s.variance[0], 1e-3);  // scatter larger than the noise inflates the variance
}

TEST(FluxcalKnownStandard, BadInputLeavesUncalibratedRed) {
  KSPECDR_REQUIRE_SHARED(shared);
  kspecdr::testing::TempDir dir;
  auto red = small_red(200, 5000, 2.0, 1000.0, 1100.0);
  red.spectra.header.set("MJD-OBS", 60000.0);
  wavecal::write_red_file(dir / "run1.red.fits", red, false);
  KnownStandardConfig cfg;
  cfg.red_files = {dir / "run1.red.fits"};
  cfg.standard_dirs = {shared / "data/standards/iraf"};
  cfg.extinction_file = shared / "data/extinction/kpnoextinct.dat";
  cfg.out_dir = dir / "out";
  fs::create_directories(cfg.out_dir);
  auto check_failed = [&](const std::string& what) {
    cfg.overwrite = true;
    const auto r = run_known_standard(cfg);
    EXPECT_FALSE(r.error.empty()) << what;
    EXPECT_NE(r.error.find(what), std::string::npos) << r.error;
    ASSERT_EQ(r.files.size(), 1u);
    EXPECT_FALSE(r.files[0].ok);
    const auto out = wavecal::read_red_file(r.files[0].output);
    EXPECT_FALSE(out.spectra.header.get_bool("FLUXCAL").value_or(true));
    EXPECT_EQ(out.spectra.header.get_string("BUNIT").value_or(""), "electron");
    EXPECT_FLOAT_EQ(out.spectra.flux(0, 10), 1000.0f);
    // the input is untouched
    const auto in = wavecal::read_red_file(cfg.red_files[0]);
    EXPECT_FALSE(in.spectra.header.has("FLUXCAL"));
  };
  cfg.standard = "feige110";
  check_failed("no standard exposure");               // no standard
  cfg.standard_exposures = {"run1"};
  cfg.standard = "Nonexistent 42";
  check_failed("has no table in the catalogs");       // catalog without the star
  // a table that stops inside the spectrum (5000–5400 Å)
  write_text(dir / "short.dat", "# SHORT\n4000 15 50\n4050 15 50\n5100 15 50\n");
  cfg.standard = (dir / "short.dat").string();
  check_failed("not the whole");
}
