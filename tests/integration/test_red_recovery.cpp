// Recovery of the RED stage (EX -> wavelength-calibrated spectra on one grid) through `reduce_night`
// on simulated nights, against the simulator's truth (DIR/truth.h5):
//   arc solutions: λ(x) of every aperture against the true λ(x) along its trace, in pixels, and
//                  against the error the solution predicts for itself from its line centroids;
//   flexure:       the shift measured per science exposure from the sky lines against the shift the
//                  simulator applied (frames/<run> flexure_px);
//   RED files:     WAVELA is the arc solution moved by the exposure's flexure, the WCS describes the
//                  grid, the variance components add up, counts are conserved by the resampling;
//   fluxes:        RED flux against the true star electrons resampled through the true wavelengths
//                  of this exposure, in units of the stated uncertainty (pulls).
// One process, one rank: MPI is initialised by a test environment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "kspecdr/core/mask.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/trace/trace_file.hpp"
#include "kspecdr/wavecal/arc_file.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/mpi_environment.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {


struct ReducedNight {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  sim::SimConfig config;
  sim::NightResult result;
  h5::File truth;
  std::vector<std::string> science;
  fs::path out;
  ReduceSummary summary;
  wavecal::ArcCalibration arc;
  std::vector<std::string> truth_names;  ///< truth aperture of each arc-solution aperture ("" = none)

  std::vector<double> vec(const std::string& path) const { return truth.root().read<double>(path); }
  fs::path red_file(const std::string& run) const { return out / "red" / (run + ".red.fits"); }
  fs::path ex_file(const std::string& run) const { return out / "ex" / (run + ".ex.fits"); }
};

std::unique_ptr<ReducedNight> make_night(SpectroMode mode) {
  auto n = std::make_unique<ReducedNight>();
  n->dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-red-recovery");
  n->config.mode = mode;
  n->config.out_dir = n->dir->path() / "night";
  n->config.seed = 20261121;
  n->config.n_bias = 3;
  n->config.n_flat = 3;
  n->config.n_arc = 2;
  n->config.n_science = mode == SpectroMode::Slit ? 5 : 3;
  n->result = sim::simulate_night(n->config);
  n->truth = h5::File::open(n->result.truth_file);
  const auto& root = n->truth.root();
  for (const auto& run : root.read_strings("night/frames"))
    if (root.open_group("frames/" + run).attr_string("class") == "science") n->science.push_back(run);

  ReduceConfig cfg;
  cfg.raw_dir = n->config.out_dir / "raw";
  cfg.out_dir = n->out = n->dir->path() / "out";
  cfg.instrument = n->result.profile_file.string();
  cfg.stage = ReduceStage::Red;
  cfg.resolved_config = "[reduce]\nstage = red\n";
  n->summary = reduce_night(cfg, mpi::world());

  TraceSet master;
  for (const auto& e : fs::directory_iterator(n->out / "calib")) {
    const std::string f = e.path().filename().string();
    if (f.rfind("arcsol_", 0) == 0) n->arc = wavecal::read_arc_file(e.path());
    if (f.rfind("traces_", 0) == 0) master = trace::read_trace_file(e.path()).traces;
  }
  // Apertures: fibers by name; slit stars by the trace centre at the middle column.
  for (std::size_t a = 0; a < n->arc.apertures.size(); ++a) {
    const std::string& name = n->arc.apertures[a].name;
    std::string best;
    if (root.exists("apertures/" + name)) {
      best = name;
    } else if (a < master.size() && !master[a].centre.coeffs.empty()) {
      const double xm = 0.5 * static_cast<double>(master.nx - 1);
      double dy = 2.0;
      for (const auto& t : root.open_group("apertures").members()) {
        const double d = std::abs(n->vec("apertures/" + t + "/centre_y")[static_cast<std::size_t>(xm)] - master[a].y(xm));
        if (d < dy) dy = d, best = t;
      }
    }
    n->truth_names.push_back(best);
  }
  return n;
}

/// rms over the pixels of (solution − truth) in pixels, and the solution's own predicted error.
struct SolutionError {
  double rms_px = 0, predicted_px = 0, max_abs_px = 0;
};

SolutionError solution_error(const ReducedNight& n, std::size_t a) {
  const auto& s = n.arc.solutions[a];
  const auto truth = n.vec("apertures/" + n.truth_names[a] + "/wavelength");
  SolutionError e;
  double ss = 0;
  for (std::size_t x = 1; x + 1 < truth.size(); ++x) {
    const double disp = 0.5 * std::abs(truth[x + 1] - truth[x - 1]);
    const double d = (s.wavelength(static_cast<double>(x)) - truth[x]) / disp;
    ss += d * d;
    e.max_abs_px = std::max(e.max_abs_px, std::abs(d));
  }
  e.rms_px = std::sqrt(ss / static_cast<double>(truth.size() - 2));
  e.predicted_px = s.predicted_error_px;
  return e;
}

void check_arc_solutions(const ReducedNight& n) {
  ASSERT_GT(n.arc.naper(), 0u);
  int checked = 0;
  std::vector<double> rms;
  for (std::size_t a = 0; a < n.arc.naper(); ++a) {
    const auto& s = n.arc.solutions[a];
    if (n.arc.apertures[a].type == aperture_type::kUnused) {
      EXPECT_FALSE(s.ok()) << n.arc.apertures[a].name << ": an unused fiber has no arc lines";
      continue;
    }
    ASSERT_TRUE(s.ok()) << n.arc.apertures[a].name << ": " << s.message;
    ASSERT_FALSE(n.truth_names[a].empty()) << n.arc.apertures[a].name << " matches no simulated aperture";
    const SolutionError e = solution_error(n, a);
    std::cout << n.arc.apertures[a].name << " (" << n.truth_names[a] << "): " << s.n_used << " lines, rms "
              << s.rms_px << " px about the fit; vs truth rms " << e.rms_px << " px (max " << e.max_abs_px
              << "), predicted " << e.predicted_px << " px\n";
    // The requirement (0.02 px) holds where the centroid noise allows it, i.e. where the solution's own
    // predicted error is well below it; in every case the truth lies within what the errors predict.
    if (e.predicted_px < 0.01) EXPECT_LT(e.rms_px, 0.02) << n.arc.apertures[a].name;
    EXPECT_LT(e.rms_px, 3.0 * e.predicted_px + 0.002) << n.arc.apertures[a].name << ": error beyond its prediction";
    rms.push_back(e.rms_px);
    ++checked;
  }
  ASSERT_GT(checked, 0);
  std::sort(rms.begin(), rms.end());
  std::cout << "median rms vs truth over " << checked << " apertures: " << rms[rms.size() / 2] << " px\n";
  EXPECT_LT(rms[rms.size() / 2], 0.02);
}

void check_flexure(const ReducedNight& n) {
  for (const auto& run : n.science) {
    const auto red = wavecal::read_red_file(n.red_file(run));
    const double truth = n.truth.root().open_group("frames/" + run).attr_double("flexure_px");
    const double got = red.spectra.header.get_double("FLEXPX").value_or(NAN);
    const double err = red.spectra.header.get_double("FLEXERR").value_or(NAN);
    std::cout << run << ": flexure " << got << " +- " << err << " px ("
              << red.spectra.header.get_string("FLEXMETH").value_or("?") << ", "
              << red.spectra.header.get_int("FLEXNLIN").value_or(0) << " lines), true " << truth << " px\n";
    ASSERT_TRUE(std::isfinite(got) && std::isfinite(err) && err > 0) << run;
    EXPECT_LT(std::abs(got - truth), 0.05) << run;
    EXPECT_LT(std::abs(got - truth) / err, 4.0) << run << ": off by more than 4 of its own errors";
  }
}

/// Counts of `flux` on pixels with wavelengths `w` (centres, monotonic) moved onto the edges `E`: the
/// overlap of every input pixel [e_i, e_i+1] with every output pixel, in proportion to its width.
std::vector<double> rebin_counts(const std::vector<double>& w, const std::vector<double>& flux,
                                 const std::vector<double>& E) {
  const std::size_t n = w.size();
  std::vector<double> e(n + 1);
  for (std::size_t i = 1; i < n; ++i) e[i] = 0.5 * (w[i - 1] + w[i]);
  e[0] = w[0] - 0.5 * (w[1] - w[0]);
  e[n] = w[n - 1] + 0.5 * (w[n - 1] - w[n - 2]);
  std::vector<double> out(E.size() - 1, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    const double lo = std::min(e[i], e[i + 1]), hi = std::max(e[i], e[i + 1]);
    for (std::size_t j = 0; j + 1 < E.size(); ++j) {
      const double ov = std::min(hi, E[j + 1]) - std::max(lo, E[j]);
      if (ov > 0) out[j] += flux[i] * ov / (hi - lo);
    }
  }
  return out;
}

void check_red_files(const ReducedNight& n) {
  for (const auto& run : n.science) {
    const auto red = wavecal::read_red_file(n.red_file(run));
    const SpectrumSet ex = extract::read_ex_file(n.ex_file(run));
    const double s = red.spectra.header.get_double("FLEXPX").value_or(0.0);
    ASSERT_EQ(red.spectra.naper(), ex.naper());
    ASSERT_EQ(red.wavela.cols(), ex.npix());
    // The WCS: the grid's first centre and step.
    EXPECT_EQ(red.spectra.header.get_string("CTYPE1").value_or(""), "WAVE");
    EXPECT_EQ(red.spectra.header.get_string("CUNIT1").value_or(""), "Angstrom");
    EXPECT_NEAR(red.grid.centres.front(), red.spectra.header.get_double("CRVAL1").value_or(0), 1e-9);
    double worst_wavela = 0, worst_components = 0, worst_counts = 0;
    for (std::size_t a = 0; a < n.arc.naper(); ++a) {
      const auto& sol = n.arc.solutions[a];
      if (!sol.ok()) continue;
      const auto ai = static_cast<Eigen::Index>(a);
      // WAVELA = λ_arc(x − s): the arc solution moved by the exposure's flexure.
      std::vector<double> w(static_cast<std::size_t>(ex.npix()));
      for (Eigen::Index x = 0; x < ex.npix(); ++x) {
        w[static_cast<std::size_t>(x)] = red.wavela(ai, x);
        worst_wavela = std::max(worst_wavela, std::abs(red.wavela(ai, x) - sol.wavelength(static_cast<double>(x) - s)));
      }
      // Counts are conserved: flux + sky of the RED (the sky holds the EX sky and, in fiber mode, the
      // master sky subtracted here) equal the EX flux + sky moved by overlap, over the output pixels
      // that touch no NODATA input (those are NODATA themselves).
      std::vector<double> f(static_cast<std::size_t>(ex.npix()));
      for (Eigen::Index x = 0; x < ex.npix(); ++x)
        f[static_cast<std::size_t>(x)] = static_cast<double>(ex.flux(ai, x)) + ex.sky(ai, x);
      double sum_red = 0, sum_ref = 0;
      {
        const auto ref = rebin_counts(w, f, red.grid.edges);
        for (std::size_t j = 0; j < ref.size(); ++j) {
          if (red.spectra.mask(ai, static_cast<Eigen::Index>(j)) & kMaskNoData) continue;
          sum_ref += ref[j];
          sum_red += static_cast<double>(red.spectra.flux(ai, static_cast<Eigen::Index>(j))) +
                     red.spectra.sky(ai, static_cast<Eigen::Index>(j));
        }
        worst_counts = std::max(worst_counts, std::abs(sum_red / sum_ref - 1.0));
      }
      for (Eigen::Index j = 0; j < red.spectra.npix(); ++j) {
        const double v = red.spectra.variance(ai, j);
        if (!std::isfinite(v) || !(v > 0)) continue;
        const double sum = static_cast<double>(red.spectra.var_star(ai, j)) + red.spectra.var_sky(ai, j) +
                           red.spectra.var_read(ai, j) + red.spectra.var_cal(ai, j);
        worst_components = std::max(worst_components, std::abs(sum - v) / v);
      }
    }
    std::cout << run << ": WAVELA off the moved arc solution by at most " << worst_wavela
              << " A; counts conserved to " << worst_counts << "; components add up to " << worst_components << "\n";
    EXPECT_LT(worst_wavela, 1e-6) << run;
    EXPECT_LT(worst_counts, 1e-5) << run << ": the resampling lost or made counts (float32 storage: ~1e-7 per value)";
    EXPECT_LT(worst_components, 1e-4) << run;
  }
}

/// RED flux of the apertures with a star against the true star electrons resampled through this
/// exposure's true wavelengths (the arc-epoch λ(x) moved by the simulated flexure).
kspecdr::testing::PullStats red_flux_pulls(const ReducedNight& n, char type) {
  std::vector<double> pulls;
  for (const auto& run : n.science) {
    const auto red = wavecal::read_red_file(n.red_file(run));
    const double s = n.truth.root().open_group("frames/" + run).attr_double("flexure_px");
    for (std::size_t a = 0; a < n.arc.naper(); ++a) {
      if (!n.arc.solutions[a].ok() || n.arc.apertures[a].type != type || n.truth_names[a].empty()) continue;
      const std::string g = "frames/" + run + "/apertures/" + n.truth_names[a];
      if (!n.truth.root().exists(g + "/star_e")) continue;
      const auto star = n.vec(g + "/star_e");
      const auto lam = n.vec("apertures/" + n.truth_names[a] + "/wavelength");
      // λ_true(x) = λ_arc(x − s), interpolated in the tabulated true λ(x).
      std::vector<double> w(lam.size());
      for (std::size_t x = 0; x < lam.size(); ++x) {
        const double xs = static_cast<double>(x) - s;
        const auto i0 = static_cast<std::size_t>(std::clamp(std::floor(xs), 0.0, static_cast<double>(lam.size() - 2)));
        const double t = xs - static_cast<double>(i0);
        w[x] = lam[i0] + t * (lam[i0 + 1] - lam[i0]);
      }
      const auto truth = rebin_counts(w, star, red.grid.edges);
      const auto ai = static_cast<Eigen::Index>(a);
      for (Eigen::Index j = 0; j < red.spectra.npix(); ++j) {
        const double v = red.spectra.variance(ai, j);
        if (red.spectra.mask(ai, j) != 0 || !std::isfinite(v) || !(v > 0)) continue;
        pulls.push_back((red.spectra.flux(ai, j) - truth[static_cast<std::size_t>(j)]) / std::sqrt(v));
      }
    }
  }
  return kspecdr::testing::pull_stats(pulls);
}

/// The cube group of arc-solution aperture `a`: "<object>/<aperture>" in slit mode, the fiber name otherwise.
std::string series_group(const ReducedNight& n, std::size_t a) {
  return n.config.mode == SpectroMode::Slit ? n.arc.traceset + "/" + n.arc.apertures[a].name : n.arc.apertures[a].name;
}

}  // namespace

class RedRecoverySlit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Slit); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<ReducedNight> night_;
};
std::unique_ptr<ReducedNight> RedRecoverySlit::night_;

class RedRecoveryFiber : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Fiber); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<ReducedNight> night_;
};
std::unique_ptr<ReducedNight> RedRecoveryFiber::night_;

TEST_F(RedRecoverySlit, EveryScienceExposureHasARedFile) {
  EXPECT_EQ(night_->summary.exit_code(), 0);
  for (const auto& run : night_->science) EXPECT_TRUE(fs::exists(night_->red_file(run))) << run;
}
TEST_F(RedRecoveryFiber, EveryScienceExposureHasARedFile) {
  EXPECT_EQ(night_->summary.exit_code(), 0);
  for (const auto& run : night_->science) EXPECT_TRUE(fs::exists(night_->red_file(run))) << run;
}

TEST_F(RedRecoverySlit, ArcSolutionsMatchTheTrueWavelengths) { check_arc_solutions(*night_); }
TEST_F(RedRecoveryFiber, ArcSolutionsMatchTheTrueWavelengths) { check_arc_solutions(*night_); }

TEST_F(RedRecoverySlit, FlexureRecoveredFromTheSkyLines) { check_flexure(*night_); }
TEST_F(RedRecoveryFiber, FlexureRecoveredFromTheSkyLines) { check_flexure(*night_); }

TEST_F(RedRecoverySlit, RedFilesAreConsistent) { check_red_files(*night_); }
TEST_F(RedRecoveryFiber, RedFilesAreConsistent) { check_red_files(*night_); }

TEST_F(RedRecoverySlit, RedFluxPullsAgainstTheResampledTruth) {
  const auto p = red_flux_pulls(*night_, aperture_type::kProgram);
  std::cout << "slit RED flux: " << p.n << " pixels, pull mean " << p.mean << ", width " << p.stddev << "\n";
  ASSERT_GT(p.n, 3000u);
  EXPECT_LT(std::abs(p.mean), 0.05);
  EXPECT_NEAR(p.stddev, 1.0, 0.05);
}

TEST_F(RedRecoveryFiber, RedFluxPullsAgainstTheResampledTruth) {
  for (char type : {aperture_type::kProgram, aperture_type::kStandard}) {
    const auto p = red_flux_pulls(*night_, type);
    std::cout << "fiber RED flux, type " << type << ": " << p.n << " pixels, pull mean " << p.mean << ", width "
              << p.stddev << "\n";
    ASSERT_GT(p.n, 1000u) << type;
    EXPECT_LT(std::abs(p.mean), 0.05) << type;
    EXPECT_NEAR(p.stddev, 1.0, 0.05) << type;
  }
}

// The night's Rainbow cube holds each exposure's RED spectrum of each star in time order, with the
// exposure's BJD_TDB, flexure and diagnostics in timelike.
void check_cube(const ReducedNight& n) {
  const fs::path cube = n.out / "night.rainbow.h5";
  ASSERT_TRUE(fs::exists(cube)) << cube;
  const h5::File f = h5::File::open(cube);
  int checked = 0;
  for (std::size_t a = 0; a < n.arc.naper(); ++a) {
    if (n.arc.apertures[a].type == aperture_type::kUnused) continue;
    const std::string g = series_group(n, a);
    ASSERT_TRUE(f.root().exists(g)) << g;
    h5::Dims dims;
    const auto flux = f.root().read<float>(g + "/fluxlike/flux", &dims);
    ASSERT_EQ(dims.size(), 2u);
    ASSERT_EQ(dims[1], n.science.size());
    const auto time = f.root().read<double>(g + "/timelike/time");
    const auto shift = f.root().read<double>(g + "/timelike/wavelength_shift_px");
    for (std::size_t t = 0; t < n.science.size(); ++t) {
      const auto red = wavecal::read_red_file(n.red_file(n.science[t]));
      ASSERT_EQ(static_cast<hsize_t>(red.spectra.npix()), dims[0]);
      long diff = 0;
      for (Eigen::Index j = 0; j < red.spectra.npix(); ++j) {
        const float c = flux[static_cast<std::size_t>(j) * dims[1] + t];
        const bool nodata = red.spectra.mask(static_cast<Eigen::Index>(a), j) & kMaskNoData;
        diff += nodata ? !std::isnan(c) : c != red.spectra.flux(static_cast<Eigen::Index>(a), j);
      }
      EXPECT_EQ(diff, 0) << g << " " << n.science[t];
      EXPECT_EQ(shift[t], red.spectra.header.get_double("FLEXPX").value_or(NAN)) << g;
      const double mjd = n.truth.root().open_group("frames/" + n.science[t]).attr_double("mjd_mid");
      // BJD_TDB − JD_UTC is the Rømer delay (≤ 8.4 min) plus TT − UTC (69.2 s since 2017).
      const double dt_s = (time[t] - (mjd + 2400000.5)) * 86400.0;
      EXPECT_LT(std::abs(dt_s - 69.184), 8.4 * 60.0) << g;
      if (t > 0) EXPECT_GT(time[t], time[t - 1]) << g << ": not in time order";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

/// diagnostics.h5 names every science exposure with its stage, status, flexure and per-aperture numbers.
void check_diagnostics(const ReducedNight& n) {
  const h5::File f = h5::File::open(n.out / "diagnostics.h5");
  for (const auto& run : n.science) {
    const h5::Group g = f.root().open_group("exposures/" + run);
    EXPECT_EQ(g.attr_string("status"), "ok") << run;
    EXPECT_EQ(g.attr_string("stage"), "red") << run;
    const auto red = wavecal::read_red_file(n.red_file(run));
    EXPECT_EQ(g.attr_double("flexure_px"), red.spectra.header.get_double("FLEXPX").value_or(NAN)) << run;
    const auto snr = g.read<double>("apertures/snr_median");
    ASSERT_EQ(snr.size(), static_cast<std::size_t>(red.spectra.naper())) << run;
    for (std::size_t a = 0; a < snr.size(); ++a) {
      const double want = red.spectra.diagnostics[a].snr_median;  // NaN for the dead fiber
      if (std::isnan(want)) EXPECT_TRUE(std::isnan(snr[a])) << run << " aperture " << a;
      else EXPECT_EQ(snr[a], want) << run << " aperture " << a;
    }
  }
  EXPECT_FALSE(f.root().open_group("calibration").members().empty());
}

TEST_F(RedRecoverySlit, TheRainbowCubeHoldsTheRedSpectraInTimeOrder) { check_cube(*night_); }
TEST_F(RedRecoverySlit, TheNightDiagnosticsHoldEveryExposure) { check_diagnostics(*night_); }
TEST_F(RedRecoveryFiber, TheNightDiagnosticsHoldEveryExposure) { check_diagnostics(*night_); }
TEST_F(RedRecoveryFiber, TheRainbowCubeHoldsTheRedSpectraInTimeOrder) { check_cube(*night_); }
