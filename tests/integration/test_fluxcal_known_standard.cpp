// Known-standard (long-slit) flux calibration end to end.
//
// Simulated slit night: one slit star plays the spectrophotometric standard; its tabulated spectrum (20 Å
// bands, AB mag, IRAF format) and the simulator's extinction curve are written from the truth. The other
// slit stars are the science. What "recovered to ≤ 2 %" can honestly mean here: the stars of one exposure
// share its airmass and its seeing, so (a) in exposure mode, standard and science of the same exposure,
// the science flux density is recovered absolutely, after dividing by the ratio of their true slit
// transmissions (≈ 1, printed); (b) in nightly mode, one vector formed at airmass 0 from all exposures and
// moved back to each exposure's airmass, the slit losses differ between exposures (the seeing changes),
// so the flux is compared after one grey scale per exposure: the shape, which is what the extinction
// correction must get right across the airmass range of the night. Both within 2 % in 50 Å bands.
//
// Real night (WHT/ISIS red, 2018-08-01/02): the G93-48 sensitivity from two of its exposures, applied to the
// third (leave one out), against its reference table outside the telluric bands, within 5 % in 100 Å bands
// over 7000–10100 Å (the range the arc lines constrain, ../shared/data/real/wht-isis-red/README.md); and
// PSO J180+62 gets finite calibrated flux.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/core/mask.hpp"
#include "kspecdr/fluxcal/apply.hpp"
#include "kspecdr/fluxcal/standard.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/trace/trace_file.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/mpi_environment.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {


constexpr double kHcErgAngstrom = 1.98644586e-8;  // h c in erg Å
constexpr double kCAngstromPerS = 2.99792458e18;

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Mean of y over x in [lo, hi) where ok.
double band_mean(const std::vector<double>& x, const std::vector<double>& y, double lo, double hi,
                 const std::vector<char>* ok = nullptr, std::size_t* count = nullptr) {
  double s = 0;
  std::size_t n = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i] >= lo && x[i] < hi && (!ok || (*ok)[i]) && std::isfinite(y[i])) s += y[i], ++n;
  if (count) *count = n;
  return n ? s / static_cast<double>(n) : NAN;
}

struct SlitNight {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  h5::File truth;
  std::vector<std::string> science;
  fs::path out;
  std::vector<std::string> ap_truth;  ///< truth star of each RED aperture
  std::vector<double> grid, flambda_std;
  std::string std_star;
  fs::path table, extinction;
};

std::unique_ptr<SlitNight> make_slit_night() {
  auto n = std::make_unique<SlitNight>();
  n->dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-fluxcal-known");
  sim::SimConfig c;
  c.mode = SpectroMode::Slit;
  c.out_dir = n->dir->path() / "night";
  c.seed = 20261122;
  c.n_bias = 3;
  c.n_flat = 3;
  c.n_arc = 2;
  c.n_science = 5;
  const auto result = sim::simulate_night(c);
  n->truth = h5::File::open(result.truth_file);
  const auto& root = n->truth.root();
  for (const auto& run : root.read_strings("night/frames"))
    if (root.open_group("frames/" + run).attr_string("class") == "science") n->science.push_back(run);
  ReduceConfig cfg;
  cfg.raw_dir = c.out_dir / "raw";
  cfg.out_dir = n->out = n->dir->path() / "out";
  cfg.instrument = result.profile_file.string();
  cfg.stage = ReduceStage::Red;
  cfg.resolved_config = "[reduce]\nstage = red\n";
  reduce_night(cfg, mpi::world());

  // RED apertures ↔ truth stars by the trace centre at the middle column.
  TraceSet master;
  for (const auto& e : fs::directory_iterator(n->out / "calib"))
    if (e.path().filename().string().rfind("traces_", 0) == 0) master = trace::read_trace_file(e.path()).traces;
  const auto red0 = wavecal::read_red_file(n->out / "red" / (n->science[0] + ".red.fits"));
  for (std::size_t a = 0; a < red0.spectra.apertures.size(); ++a) {
    std::string best;
    if (a < master.size() && !master[a].centre.coeffs.empty()) {
      const double xm = 0.5 * static_cast<double>(master.nx - 1);
      double dy = 2.0;
      for (const auto& t : root.open_group("apertures").members()) {
        const double d = std::abs(root.read<double>("apertures/" + t + "/centre_y")[static_cast<std::size_t>(xm)] -
                                  master[a].y(xm));
        if (d < dy) dy = d, best = t;
      }
    }
    n->ap_truth.push_back(best);
  }
  // The standard: the first matched star that does not transit.
  const std::string transit = root.open_group("night").has_attr("transit_star")
                                  ? root.open_group("night").attr_string("transit_star") : "";
  for (const auto& t : n->ap_truth)
    if (!t.empty() && t != transit) {
      n->std_star = t;
      break;
    }
  // Its table: f_λ = photons × h c / λ, mean over 20 Å bands, as AB magnitudes (IRAF layout).
  n->grid = root.read<double>("spectra/wavelength");
  const auto photons = root.read<double>("spectra/templates/" + n->std_star + "/photon_flux");
  for (std::size_t i = 0; i < n->grid.size(); ++i) n->flambda_std.push_back(photons[i] * kHcErgAngstrom / n->grid[i]);
  n->table = n->dir->path() / "simstd.dat";
  std::ofstream t(n->table);
  t << "# SIMSTD\n";
  for (double lo = n->grid.front(); lo + 20.0 <= n->grid.back(); lo += 20.0) {
    const double f = band_mean(n->grid, n->flambda_std, lo, lo + 20.0), lam = lo + 10.0;
    t << fmt::format("{:.2f} {:.6f} 20.0\n", lam, -2.5 * std::log10(f * lam * lam / kCAngstromPerS) - 48.60);
  }
  n->extinction = n->dir->path() / "simext.dat";
  std::ofstream x(n->extinction);
  const auto k = root.read<double>("spectra/extinction");
  for (std::size_t i = 0; i < n->grid.size(); i += 10) x << fmt::format("{:.2f} {:.6f}\n", n->grid[i], k[i]);
  return n;
}

class FluxcalSlit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_slit_night(); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<SlitNight> night_;
};
std::unique_ptr<SlitNight> FluxcalSlit::night_;

struct Recovery {
  double worst_abs = 0, worst_shape = 0;
};

/// Calibrated science stars of every exposure against their true f_λ in 50 Å bands.
Recovery check_science(const SlitNight& n, const fs::path& out_dir, const std::string& mode) {
  const auto& root = n.truth.root();
  Recovery r;
  for (const auto& run : n.science) {
    const auto red = wavecal::read_red_file(out_dir / (run + ".fcal.fits"));
    EXPECT_EQ(red.spectra.header.get_string("BUNIT").value_or(""), "erg/cm2/s/A");
    const std::size_t std_ap = static_cast<std::size_t>(
        std::find(n.ap_truth.begin(), n.ap_truth.end(), n.std_star) - n.ap_truth.begin());
    const auto t_std = root.read<double>("frames/" + run + "/apertures/" + n.std_star + "/slit_transmission");
    for (std::size_t a = 0; a < n.ap_truth.size(); ++a) {
      const std::string& star = n.ap_truth[a];
      if (star.empty() || a == std_ap) continue;
      const auto ag = root.open_group("frames/" + run + "/apertures/" + star);
      const double transit = ag.has_attr("transit_model") ? ag.attr_double("transit_model") : 1.0;
      const auto t_sci = root.read<double>("frames/" + run + "/apertures/" + star + "/slit_transmission");
      std::vector<double> ratio;
      for (std::size_t x = 0; x < t_sci.size(); ++x)
        if (t_std[x] > 0) ratio.push_back(t_sci[x] / t_std[x]);
      const double slit_ratio = median_of(ratio) * transit;
      const auto photons = root.read<double>("spectra/templates/" + star + "/photon_flux");
      std::vector<double> ftrue;
      for (std::size_t i = 0; i < n.grid.size(); ++i) ftrue.push_back(photons[i] * kHcErgAngstrom / n.grid[i]);
      std::vector<double> lam = red.grid.centres, f(lam.size());
      std::vector<char> ok(lam.size());
      for (std::size_t j = 0; j < lam.size(); ++j) {
        f[j] = red.spectra.flux(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(j));
        ok[j] = red.spectra.mask(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(j)) == 0;
      }
      std::vector<double> rb;
      for (double lo = lam.front() + 25; lo + 50 < lam.back() - 25; lo += 50) {
        std::size_t cnt = 0;
        const double fm = band_mean(lam, f, lo, lo + 50, &ok, &cnt);
        if (cnt < 10) continue;
        rb.push_back(fm / band_mean(n.grid, ftrue, lo, lo + 50));
      }
      EXPECT_GT(rb.size(), 10u);
      const double grey = median_of(rb);
      double worst_abs = 0, worst_shape = 0;
      for (double v : rb) {
        worst_abs = std::max(worst_abs, std::abs(v / slit_ratio - 1.0));
        worst_shape = std::max(worst_shape, std::abs(v / grey - 1.0));
      }
      std::cout << fmt::format("[fluxcal sim {}] {} {}: slit ratio {:.4f}, grey {:.4f}, worst band {:.2f} % "
                               "(absolute / slit ratio), {:.2f} % (shape)\n",
                               mode, run, star, slit_ratio, grey, 100 * worst_abs, 100 * worst_shape);
      r.worst_abs = std::max(r.worst_abs, worst_abs);
      r.worst_shape = std::max(r.worst_shape, worst_shape);
    }
  }
  return r;
}

fluxcal::KnownStandardConfig slit_config(const SlitNight& n, const std::string& mode) {
  fluxcal::KnownStandardConfig cfg;
  for (const auto& run : n.science) cfg.red_files.push_back(n.out / "red" / (run + ".red.fits"));
  cfg.standard = n.table.string();
  cfg.standard_exposures = n.science;
  const auto red0 = wavecal::read_red_file(cfg.red_files.front());
  const std::size_t std_ap = static_cast<std::size_t>(
      std::find(n.ap_truth.begin(), n.ap_truth.end(), n.std_star) - n.ap_truth.begin());
  cfg.standard_aperture = red0.spectra.apertures.at(std_ap).name;
  cfg.extinction_file = n.extinction;
  cfg.out_dir = n.dir->path() / ("fcal_" + mode);
  cfg.mode = mode;
  cfg.cal_file = cfg.out_dir / "fluxcal_cal.h5";
  fs::create_directories(cfg.out_dir);
  return cfg;
}

}  // namespace

TEST_F(FluxcalSlit, ExposureModeRecoversScienceFluxWithinTwoPercent) {
  ASSERT_FALSE(night_->std_star.empty());
  const auto cfg = slit_config(*night_, "exposure");
  const auto result = fluxcal::run_known_standard(cfg);
  ASSERT_TRUE(result.error.empty()) << result.error;
  for (const auto& f : result.files) EXPECT_TRUE(f.ok) << f.message;
  const auto r = check_science(*night_, cfg.out_dir, "exposure");
  std::cout << fmt::format("[fluxcal sim exposure] worst 50 A band: {:.2f} % absolute (after the true slit ratio)\n",
                           100 * r.worst_abs);
  EXPECT_LE(r.worst_abs, 0.02);
}

TEST_F(FluxcalSlit, NightlyModeRecoversShapesAcrossAirmassWithinTwoPercent) {
  const auto cfg = slit_config(*night_, "nightly");
  const auto result = fluxcal::run_known_standard(cfg);
  ASSERT_TRUE(result.error.empty()) << result.error;
  EXPECT_EQ(result.per_exposure.size(), night_->science.size());
  const auto r = check_science(*night_, cfg.out_dir, "nightly");
  std::cout << fmt::format("[fluxcal sim nightly] worst 50 A band after one grey scale per exposure: {:.2f} %; "
                           "rms between the exposures' Cal {:.2f} %\n",
                           100 * r.worst_shape, 100 * result.rms);
  EXPECT_LE(r.worst_shape, 0.02);
  const auto red = wavecal::read_red_file(cfg.out_dir / (night_->science[0] + ".fcal.fits"));
  EXPECT_EQ(red.spectra.header.get_int("FCALNSTR").value_or(0), static_cast<long long>(night_->science.size()));
  EXPECT_TRUE(red.spectra.header.has("FCALRMS"));
}

// ---------------------------------------------------------------- the real WHT/ISIS night

TEST(FluxcalRealIsis, G9348RecoversItsReferenceAndCalibratesPsoJ180) {
  KSPECDR_REQUIRE_SHARED(shared);
  const fs::path raw = shared / "data/real/wht-isis-red";
  kspecdr::testing::TempDir dir("kspecdr-fluxcal-isis");
  ReduceConfig rc;
  rc.raw_dir = raw;
  rc.out_dir = dir / "out";
  rc.instrument = "wht-isis-red";
  rc.stage = ReduceStage::Red;
  rc.resolved_config = "[reduce]\nstage = red\n";
  reduce_night(rc, mpi::world());
  const std::vector<std::string> g93 = {"r2701253", "r2701255", "r2701257"}, pso = {"r2701242", "r2701244"};
  const auto table = fluxcal::read_standard_file(raw / "g93_48_hststan.dat");
  const auto curve = fluxcal::read_extinction_curve(shared / "data/extinction/lapalmaextinct.dat");
  const auto mask = fluxcal::read_band_mask(shared / "data/masks/telluric_default.dat");

  std::vector<fluxcal::CalVector> cal0;
  for (const auto& run : g93) {
    const auto red = wavecal::read_red_file(rc.out_dir / "red" / (run + ".red.fits"));
    const auto& h = red.spectra.header;
    ASSERT_EQ(red.spectra.naper(), 1);
    const auto v = fluxcal::cal_from_tabulated(table, red, 0, *h.get_double("EXPTIME"), *h.get_double("AIRMASS"),
                                               mask, run);
    cal0.push_back(fluxcal::to_airmass(v, curve, 0.0));
  }
  // Leave one out: the other two exposures calibrate each G93-48 exposure.
  std::vector<double> all_bands;
  for (std::size_t i = 0; i < g93.size(); ++i) {
    std::vector<fluxcal::CalVector> others;
    for (std::size_t k = 0; k < g93.size(); ++k)
      if (k != i) others.push_back(cal0[k]);
    double rms = 0;
    const auto cal = fluxcal::combine_mean(others, 3.0, &rms);
    auto red = wavecal::read_red_file(rc.out_dir / "red" / (g93[i] + ".red.fits"));
    fluxcal::apply_to_red(red, cal, curve, {2, rms, "nightly", curve.name, {}}, g93[i]);
    const auto& lam = red.grid.centres;
    std::vector<double> ratio(lam.size(), NAN);
    std::vector<char> ok(lam.size());
    for (std::size_t j = 0; j < lam.size(); ++j) {
      const auto jj = static_cast<Eigen::Index>(j);
      ok[j] = red.spectra.mask(0, jj) == 0 && !mask.contains(lam[j]);
      auto it = std::lower_bound(table.wavelength_angstrom.begin(), table.wavelength_angstrom.end(), lam[j]);
      const auto b = static_cast<std::size_t>(it - table.wavelength_angstrom.begin());
      if (b == 0 || b >= table.wavelength_angstrom.size()) continue;
      const double t = (lam[j] - table.wavelength_angstrom[b - 1]) /
                       (table.wavelength_angstrom[b] - table.wavelength_angstrom[b - 1]);
      ratio[j] = red.spectra.flux(0, jj) / ((1 - t) * table.flambda[b - 1] + t * table.flambda[b]);
    }
    double worst = 0;
    std::string bands;
    for (double lo = 7000; lo + 100 <= 10100; lo += 100) {
      std::size_t cnt = 0;
      std::vector<double> in;
      for (std::size_t j = 0; j < lam.size(); ++j)
        if (ok[j] && lam[j] >= lo && lam[j] < lo + 100 && std::isfinite(ratio[j])) in.push_back(ratio[j]), ++cnt;
      if (cnt < 30) continue;  // mostly inside a telluric band
      const double r = median_of(in) - 1.0;
      worst = std::max(worst, std::abs(r));
      all_bands.push_back(std::abs(r));
      bands += fmt::format(" {:.0f}:{:+.1f}", lo, 100 * r);
    }
    std::cout << fmt::format("[fluxcal isis] {} (Cal from the other two, rms {:.2f} %): worst 100 A band {:.2f} %\n  "
                             "residual per band [%]:{}\n",
                             g93[i], 100 * rms, 100 * worst, bands);
    EXPECT_LE(worst, 0.05) << g93[i];
  }
  std::cout << fmt::format("[fluxcal isis] G93-48 median |residual| over all 100 A bands: {:.2f} %\n",
                           100 * median_of(all_bands));

  // PSO J180+62 through the command (nightly, all three G93-48 exposures).
  fluxcal::KnownStandardConfig cfg;
  for (const auto& run : pso) cfg.red_files.push_back(rc.out_dir / "red" / (run + ".red.fits"));
  for (const auto& run : g93) cfg.red_files.push_back(rc.out_dir / "red" / (run + ".red.fits"));
  cfg.standard = (raw / "g93_48_hststan.dat").string();
  cfg.standard_exposures = g93;
  cfg.extinction_file = shared / "data/extinction/lapalmaextinct.dat";
  cfg.mask_file = shared / "data/masks/telluric_default.dat";
  cfg.out_dir = dir / "fcal";
  cfg.cal_file = cfg.out_dir / "fluxcal_cal.h5";
  fs::create_directories(cfg.out_dir);
  const auto result = fluxcal::run_known_standard(cfg);
  ASSERT_TRUE(result.error.empty()) << result.error;
  for (const auto& run : pso) {
    const auto red = wavecal::read_red_file(cfg.out_dir / (run + ".fcal.fits"));
    EXPECT_TRUE(red.spectra.header.get_bool("FLUXCAL").value_or(false));
    std::vector<double> f, snr;
    std::size_t good = 0;
    for (Eigen::Index j = 0; j < red.spectra.npix(); ++j) {
      if (red.spectra.mask(0, j) != 0) continue;
      ++good;
      EXPECT_TRUE(std::isfinite(red.spectra.flux(0, j)) && std::isfinite(red.spectra.variance(0, j)));
      if (red.grid.centres[static_cast<std::size_t>(j)] > 7000 && red.grid.centres[static_cast<std::size_t>(j)] < 10000)
        f.push_back(red.spectra.flux(0, j)), snr.push_back(red.spectra.flux(0, j) / std::sqrt(red.spectra.variance(0, j)));
    }
    EXPECT_GT(good, static_cast<std::size_t>(red.spectra.npix() / 2));
    std::cout << fmt::format("[fluxcal isis] PSO J180+62 {}: {} good pixels, median F_lambda 7000-10000 A = {:.3e} "
                             "erg/cm2/s/A, median S/N per pixel {:.1f}\n",
                             run, good, median_of(f), median_of(snr));
    EXPECT_GT(median_of(f), 0.0);
  }
  if (const char* keep = std::getenv("KSPECDR_FLUXCAL_KEEP")) fs::copy(dir.path(), keep, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}
