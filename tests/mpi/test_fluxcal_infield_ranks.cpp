// The in-field flux calibration on 1..4 ranks gives what one process gives: rank 0 simulates a fiber night
// (three C fibers) with its catalog, every rank reduces it to RED, then one exposure is calibrated by all
// ranks together (stars spread over the ranks; at 4 ranks, more ranks than stars, the template grid of a
// star is split too) and, on rank 0 alone, through a one-rank communicator. Every star's fit, scale,
// calibration vector, scaled model and photometry per band must agree bit for bit: the candidates are scored
// independently and gathered in grid order, whichever rank scored them; every rank holds the gathered records.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/infield.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/sim/template_grid.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
namespace kt = kspecdr::testing;

namespace {
/// Bit for bit, NaN equal to NaN.
bool same_value(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
}  // namespace

TEST(FluxcalInFieldRanks, SameResultOnEveryRankCount) {
  auto& world = mpi::world();
  const auto shared = kt::shared_dir();
  if (!world.all_true(shared.has_value()))
    GTEST_SKIP() << "reference data folder ../shared (KSPECDR_SHARED_DIR) is absent";
  std::unique_ptr<kt::TempDir> dir;
  std::string base, error;
  if (world.is_root()) {
    try {
      dir = std::make_unique<kt::TempDir>("kspecdr-fluxcal-ranks");
      base = dir->path().string();
      sim::SimConfig c;
      c.mode = SpectroMode::Fiber;
      c.out_dir = dir->path() / "night";
      c.seed = 20261121;
      c.n_bias = 3;
      c.n_flat = 3;
      c.n_arc = 2;
      c.n_science = 1;
      c.catalog_filters_dir = *shared / "data/filters";
      const auto night = sim::simulate_night(c);
      sim::SynthGridSpec gs;
      gs.teff_k = {5500, 5750, 6000, 6250, 6500, 6750, 7000, 7250};
      fluxcal::write_template_grid(dir->path() / "grid.h5", sim::make_synthetic_template_grid(gs));
      auto truth = h5::File::open(night.truth_file);
      const auto lam = truth.root().read<double>("spectra/wavelength");
      const auto ext = truth.root().read<double>("spectra/extinction");
      std::ofstream f(dir->path() / "extinction.dat");
      for (std::size_t i = 0; i < lam.size(); i += 10) f << fmt::format("{:.3f} {:.6f}\n", lam[i], ext[i]);
      fs::rename(night.profile_file, dir->path() / "instrument.ini");
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  world.bcast(base);
  world.bcast(error);
  ASSERT_TRUE(error.empty()) << error;
  const fs::path root_dir = base;

  ReduceConfig rc;
  rc.raw_dir = root_dir / "night/raw";
  rc.out_dir = root_dir / "out";
  rc.instrument = (root_dir / "instrument.ini").string();
  rc.stage = ReduceStage::Red;
  rc.resolved_config = "[reduce]\nstage = red\n";
  reduce_night(rc, world);
  world.barrier();
  std::vector<fs::path> reds;
  for (const auto& e : fs::directory_iterator(rc.out_dir / "red"))
    if (e.path().string().ends_with(".red.fits")) reds.push_back(e.path());
  ASSERT_TRUE(world.all_true(reds.size() == 1));

  fluxcal::InFieldConfig cfg;
  cfg.red_files = reds;
  cfg.catalog_file = root_dir / "night/catalog.csv";
  cfg.templates_file = root_dir / "grid.h5";
  cfg.filters_dir = *shared / "data/filters";
  cfg.extinction_file = root_dir / "extinction.dat";
  cfg.fit.resolution.fwhm_poly_angstrom = {5.17};
  cfg.out_dir = root_dir / fmt::format("fcal_np{}", world.size());
  if (world.is_root()) fs::create_directories(cfg.out_dir);
  world.barrier();
  const auto par = fluxcal::run_infield(cfg, world);
  ASSERT_EQ(par.exposures.size(), 1u);
  const auto& pe = par.exposures.front();
  EXPECT_TRUE(pe.error.empty()) << pe.error;

  // The single-process reference on rank 0 (a communicator of its own).
  mpi::Comm self = world.split(world.rank(), 0);
  bool same = true;
  std::string why;
  if (world.is_root()) {
    auto one = cfg;
    one.out_dir = root_dir / "fcal_single";
    fs::create_directories(one.out_dir);
    const auto ref = fluxcal::run_infield(one, self);
    const auto& re = ref.exposures.front();
    auto differ = [&](const std::string& what) {
      same = false;
      why += what + "; ";
    };
    if (re.stars.size() != pe.stars.size() || re.stars.size() != 3) differ("number of stars");
    for (std::size_t i = 0; same && i < re.stars.size(); ++i) {
      const auto &a = re.stars[i], &b = pe.stars[i];
      if (a.params.teff_k != b.params.teff_k || a.params.logg != b.params.logg || a.params.mh != b.params.mh ||
          a.params.alpha != b.params.alpha)
        differ(a.fiber + " parameters");
      if (a.rv_km_s != b.rv_km_s || a.rv_err_km_s != b.rv_err_km_s) differ(a.fiber + " RV");
      if (a.scale != b.scale || a.scale_err != b.scale_err) differ(a.fiber + " scale");
      if (a.used != b.used || a.reason != b.reason) differ(a.fiber + " decision");
      // The diagnostics written to fluxcal_cal.h5: the scaled model and the photometry per band.
      if (a.model.size() != b.model.size() || a.model.empty()) differ(a.fiber + " model length");
      for (std::size_t j = 0; same && j < a.model.size(); ++j)
        if (!same_value(a.model[j], b.model[j])) differ(fmt::format("{} model at pixel {}", a.fiber, j));
      const auto &pa = a.photometry, &pb = b.photometry;
      if (!same_value(pa.dm, pb.dm) || !same_value(pa.dm_err, pb.dm_err) || !same_value(pa.chi2, pb.chi2) ||
          pa.n_bands != pb.n_bands)
        differ(a.fiber + " photometric offset");
      if (pa.bands.size() != pb.bands.size() || pa.bands.empty()) differ(a.fiber + " number of bands");
      for (std::size_t k = 0; same && k < pa.bands.size(); ++k) {
        const auto &x = pa.bands[k], &y = pb.bands[k];
        if (x.band != y.band || x.used != y.used || x.note != y.note || !same_value(x.mag, y.mag) ||
            !same_value(x.ab_offset, y.ab_offset) || !same_value(x.obs_ab, y.obs_ab) || !same_value(x.err, y.err) ||
            !same_value(x.synth_ab, y.synth_ab) || !same_value(x.synth_scaled_ab, y.synth_scaled_ab) ||
            !same_value(x.residual, y.residual))
          differ(fmt::format("{} band {}", a.fiber, x.band));
      }
    }
    if (re.cal.cal.size() != pe.cal.cal.size()) differ("vector length");
    for (std::size_t j = 0; same && j < re.cal.cal.size(); ++j)
      if (re.cal.good[j] != pe.cal.good[j] || (re.cal.good[j] && re.cal.cal[j] != pe.cal.cal[j]))
        differ(fmt::format("Cal at pixel {}", j));
    if (!pe.ok) differ("not written: " + pe.message);
  }
  // Every rank holds the broadcast combined vector.
  std::vector<double> cal0 = pe.cal.cal;
  world.bcast(cal0);
  bool mine = cal0.size() == pe.cal.cal.size();
  for (std::size_t j = 0; mine && j < cal0.size(); ++j)
    mine = (std::isnan(cal0[j]) && std::isnan(pe.cal.cal[j])) || cal0[j] == pe.cal.cal[j];
  // Every rank holds the gathered per-star diagnostics (the model and the synthetic magnitudes).
  for (const auto& st : pe.stars) {
    std::vector<double> diag = st.model;
    for (const auto& b : st.photometry.bands) diag.insert(diag.end(), {b.synth_scaled_ab, b.residual});
    std::vector<double> diag0 = diag;
    world.bcast(diag0);
    bool agree = diag0.size() == diag.size() && !st.model.empty();
    for (std::size_t j = 0; agree && j < diag.size(); ++j) agree = same_value(diag0[j], diag[j]);
    EXPECT_TRUE(world.all_true(agree)) << "rank " << world.rank() << ": " << st.fiber << " model or photometry differs";
  }
  world.bcast(why);
  EXPECT_TRUE(world.all_true(same)) << why;
  EXPECT_TRUE(world.all_true(mine)) << "rank " << world.rank() << " holds another combined vector";
  world.barrier();
}
