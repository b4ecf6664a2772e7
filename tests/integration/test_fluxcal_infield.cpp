// The in-field flux calibration end to end on a simulated fiber night: raw frames → RED (reduce_night, in
// process) → per exposure, the three C fibers matched to the simulator's (shuffled) catalog by position,
// fitted with a labelled-synthetic template grid made in process (the simulator draws the stars off-grid
// from the same family), scaled to their catalog magnitudes, combined, applied. Checked against the truth:
//   Cal:    the combined vector at airmass 0 against h c / (λ A_eff G): the RED counts are not divided by the
//           fiber throughput g_s, so star s alone gives Cal_true / g_s; the combination models every star as a
//           grey factor × one curve with the factors at geometric mean 1 (the split between a common grey
//           level and the factors is otherwise degenerate), so the curve it returns is Cal_true / G with G the
//           geometric mean of g_s over the stars it used;
//   stars:  RV within 3σ of the truth (σ the fit's own error); the photometric scale within 2σ of the scale
//           that the catalog's true AB magnitudes (noise-free) would give to the same model;
//   QC:     a star whose catalog magnitudes are made 0.5 mag too faint is rejected by the level gate and its
//           record says so; matching is by position, so a reversed catalog gives the same associations;
//   errors: no C fibers, and a catalog without the stars, end with FLUXCAL = F and the reason, the input intact;
//   file:   fluxcal_cal.h5 holds exactly its format table; per star the written model gives back the counts
//           through the written Cal, the written photometric residuals average to 0 over the used bands, and the
//           written synthetic magnitudes are the model's and lie within 3σ of the catalog's true AB magnitudes.
// One process, one rank (MPI initialised by a test environment).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kspecdr/core/trace.hpp"
#include "kspecdr/fluxcal/infield.hpp"
#include "kspecdr/fluxcal/resolution.hpp"
#include "kspecdr/wavecal/arc_file.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/sim/template_grid.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/mpi_environment.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {


constexpr double kHcErgAngstrom = 6.62607015e-27 * 2.99792458e18;  // h c [erg Å]

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream f(p);
  std::vector<std::string> lines;
  for (std::string l; std::getline(f, l);)
    if (!l.empty()) lines.push_back(l);
  return lines;
}

void write_lines(const fs::path& p, const std::vector<std::string>& lines) {
  std::ofstream f(p);
  for (const auto& l : lines) f << l << "\n";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Night {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  fs::path shared;
  sim::NightResult sim;
  h5::File truth;
  std::vector<fs::path> reds;
  fluxcal::InFieldConfig cfg;  ///< the base configuration
  fluxcal::InFieldResult result;
  std::map<std::string, std::string> fiber_star;  ///< C fiber → catalog name (truth)
  double seconds_setup = 0, seconds_calibrate = 0;
  bool calibrated = false;
};

Night* g_night = nullptr;

class InField : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shared = kspecdr::testing::shared_dir();
    if (!shared) return;
    const auto t0 = std::chrono::steady_clock::now();
    auto* n = new Night;
    n->shared = *shared;
    n->dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-fluxcal-infield");
    sim::SimConfig sc;
    sc.mode = SpectroMode::Fiber;
    sc.out_dir = n->dir->path() / "night";
    sc.seed = 20261121;
    sc.n_bias = 3;
    sc.n_flat = 3;
    sc.n_arc = 2;
    sc.n_science = 3;
    sc.catalog_filters_dir = n->shared / "data/filters";
    n->sim = sim::simulate_night(sc);
    n->truth = h5::File::open(n->sim.truth_file);

    ReduceConfig rc;
    rc.raw_dir = sc.out_dir / "raw";
    rc.out_dir = n->dir->path() / "out";
    rc.instrument = n->sim.profile_file.string();
    rc.stage = ReduceStage::Red;
    rc.resolved_config = "[reduce]\nstage = red\n";
    reduce_night(rc, mpi::world());
    for (const auto& e : fs::directory_iterator(rc.out_dir / "red"))
      if (e.path().string().ends_with(".red.fits")) n->reds.push_back(e.path());
    std::sort(n->reds.begin(), n->reds.end());

    // The template grid: the simulator's synthetic family around its F stars, every wavelength the filters need.
    sim::SynthGridSpec gs;
    gs.teff_k = {5500, 5750, 6000, 6250, 6500, 6750, 7000, 7250};
    const auto grid = sim::make_synthetic_template_grid(gs);
    const fs::path grid_file = n->dir->path() / "grid.h5";
    fluxcal::write_template_grid(grid_file, grid);

    // The simulator's extinction curve (mag/airmass), every 5 Å.
    const auto& root = n->truth.root();
    const auto lam = root.read<double>("spectra/wavelength");
    const auto ext = root.read<double>("spectra/extinction");
    std::vector<std::string> rows = {"# simulator extinction: Angstrom mag/airmass"};
    for (std::size_t i = 0; i < lam.size(); i += 10) rows.push_back(fmt::format("{:.3f} {:.6f}", lam[i], ext[i]));
    write_lines(n->dir->path() / "extinction.dat", rows);

    const auto names = root.read_strings("catalog/name");
    const auto aps = root.read_strings("catalog/aperture");
    for (std::size_t i = 0; i < names.size(); ++i)
      if (root.exists("apertures/" + aps[i]) && root.open_group("apertures/" + aps[i]).attr_string("type") == "C")
        n->fiber_star[aps[i]] = names[i];

    // A reversed copy of the (already shuffled) catalog: the association must not depend on the row order.
    auto lines = read_lines(sc.out_dir / "catalog.csv");
    std::reverse(lines.begin() + 1, lines.end());
    write_lines(n->dir->path() / "catalog_reversed.csv", lines);

    auto& c = n->cfg;
    c.red_files = n->reds;
    c.catalog_file = n->dir->path() / "catalog_reversed.csv";
    c.templates_file = grid_file;
    c.filters_dir = n->shared / "data/filters";
    c.extinction_file = n->dir->path() / "extinction.dat";
    c.out_dir = n->dir->path() / "fcal";
    c.mode = "exposure";
    // The instrument FWHM: measured from the arc lines of the night's arc solution (as reduce does).
    for (const auto& e : fs::directory_iterator(rc.out_dir / "calib"))
      if (e.path().filename().string().rfind("arcsol_", 0) == 0) c.arcsol_files.push_back(e.path());
    c.fit.resolution.fwhm_poly_angstrom = {0.0};  // not used: measured
    fs::create_directories(c.out_dir);
    n->seconds_setup = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << fmt::format("[in-field] setup (simulation, reduction, grid) {:.1f} s\n", n->seconds_setup);
    g_night = n;
  }
  /// The calibration of the whole night in exposure mode, run once by the first test that needs it (each
  /// test is its own ctest entry, so the error tests do not pay for it).
  static const fluxcal::InFieldResult& calibrated() {
    Night& n = *g_night;
    if (!n.calibrated) {
      const auto t1 = std::chrono::steady_clock::now();
      n.result = fluxcal::run_infield(n.cfg, mpi::world());
      n.seconds_calibrate = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      n.calibrated = true;
      std::cout << fmt::format("[in-field] calibration of {} exposures {:.1f} s\n", n.reds.size(), n.seconds_calibrate);
    }
    return n.result;
  }
  static void TearDownTestSuite() {
    delete g_night;
    g_night = nullptr;
  }
  void SetUp() override {
    KSPECDR_REQUIRE_SHARED(shared);
    ASSERT_NE(g_night, nullptr);
    ASSERT_EQ(g_night->reds.size(), 3u) << "the simulated night did not reduce to three RED files";
  }
};

/// The true Cal of an exposure: h c / (λ A_eff(λ) G), A_eff from the truth (linear in λ between its samples)
/// and G the geometric mean of the true fiber throughputs of the stars used — the combination normalises the
/// per-star grey factors to a geometric mean of 1, so its curve is Cal_true at that throughput.
struct TrueCal {
  std::vector<double> lam, area;
  double G = 1.0;
  int used = 0;
  double operator()(double l) const {
    const auto it = std::lower_bound(lam.begin(), lam.end(), l);
    const auto i = static_cast<std::size_t>(
        std::clamp<std::ptrdiff_t>(it - lam.begin(), 1, static_cast<std::ptrdiff_t>(lam.size() - 1)));
    const double a = area[i - 1] + (area[i] - area[i - 1]) * (l - lam[i - 1]) / (lam[i] - lam[i - 1]);
    return kHcErgAngstrom / (l * a * G);
  }
};

TrueCal true_cal(const Night& n, const fluxcal::ExposureCalibration& ex) {
  const auto& root = n.truth.root();
  TrueCal t;
  t.lam = root.read<double>("spectra/wavelength");
  t.area = root.read<double>("spectra/effective_area_cm2");
  double log_g = 0;
  for (const auto& s : ex.stars)
    if (s.used) log_g += std::log(root.open_group("apertures/" + s.fiber).attr_double("throughput")), ++t.used;
  t.G = t.used ? std::exp(log_g / t.used) : 1.0;
  return t;
}

// ---- fluxcal_cal.h5 against its format table (fluxcal::infield_cal_format()): every item without a condition in
// the file (unless not `complete`: a file of an exposure without any vector has no dataset at all), every numeric
// dataset with the table's type and `units`, and nothing the table does not list. Items with a condition are
// collected in `seen_conditional` (a test writing several files checks they all occur).
void check_cal_file_layout(const fs::path& file, std::set<std::string>& seen_conditional, bool complete = true) {
  SCOPED_TRACE(file.string());
  const std::vector<kspecdr::testing::H5Item> seen = kspecdr::testing::h5_items(file, /*root_attributes=*/false);
  ASSERT_FALSE(seen.empty());
  const auto& table = fluxcal::infield_cal_format();
  auto matches = [](const io::FormatItem& it, const kspecdr::testing::H5Item& s) {
    return it.kind == s.kind && it.name == s.name && kspecdr::testing::h5_path_matches(it.hdu, s.path);
  };
  for (const auto& it : table) {
    bool here = false;
    for (const auto& s : seen) {
      if (!matches(it, s)) continue;
      here = true;
      EXPECT_EQ(s.type, it.type) << s.path << " " << s.name << ": type";
      if (it.kind == io::FormatItem::Kind::Dataset && it.type != "string") {
        EXPECT_EQ(s.unit, it.unit) << s.path << " " << s.name << ": units";
      }
    }
    if (it.when.empty() && complete) {
      EXPECT_TRUE(here) << it.hdu << " " << io::to_string(it.kind) << " " << it.name << " is missing";
    } else if (here) {
      seen_conditional.insert(it.hdu + " " + it.name);
    }
  }
  for (const auto& s : seen) {
    bool listed = false;
    for (const auto& it : table) listed = listed || matches(it, s);
    EXPECT_TRUE(listed) << s.path << " " << io::to_string(s.kind) << " " << s.name
                        << " is not in fluxcal::infield_cal_format()";
  }
}

/// The inverse-variance weighted mean of the written residuals over the used bands (mag).
double weighted_mean_residual(const h5::Group& phot) {
  const auto res = phot.read<double>("residual_mag"), err = phot.read<double>("mag_ab_err");
  const auto used = phot.read<std::uint8_t>("used");
  double sw = 0, swr = 0;
  for (std::size_t b = 0; b < used.size(); ++b)
    if (used[b]) sw += 1.0 / (err[b] * err[b]), swr += res[b] / (err[b] * err[b]);
  return sw > 0 ? swr / sw : std::numeric_limits<double>::quiet_NaN();
}

TEST_F(InField, CombinedCalRecoversTheTruth) {
  const auto& result = calibrated();
  for (const auto& ex : result.exposures) {
    ASSERT_TRUE(ex.error.empty()) << ex.run << ": " << ex.error;
    ASSERT_TRUE(ex.ok) << ex.run << ": " << ex.message;
    const TrueCal truth = true_cal(*g_night, ex);
    ASSERT_GE(truth.used, 2) << ex.run;
    std::vector<double> dev;
    for (std::size_t j = 0; j < ex.cal.size(); ++j)
      if (ex.cal.good[j]) dev.push_back(std::abs(ex.cal.cal[j] / truth(ex.cal.wavelength_angstrom[j]) - 1.0));
    ASSERT_GT(dev.size(), ex.cal.size() / 2);
    const double med = median(dev);
    std::cout << fmt::format("[in-field] {}: {} stars used, G = {:.4f}, median |Cal/true - 1| = {:.3f} %, FCALRMS "
                             "{:.3f} %\n",
                             ex.run, truth.used, truth.G, 100 * med, 100 * ex.rms);
    EXPECT_LE(med, 0.01) << ex.run;
    // The calibrated file says so.
    const auto red = wavecal::read_red_file(ex.output);
    EXPECT_TRUE(red.spectra.header.get_bool("FLUXCAL").value_or(false));
    EXPECT_EQ(red.spectra.header.get_string("BUNIT").value_or(""), "erg/cm2/s/A");
    EXPECT_TRUE(fs::exists(fluxcal::star_table_path(ex.output)));
  }
}

// The combined vector's predicted uncertainty against its actual error (truth h c / (λ A_eff G) as above).
// Two parts, because they are not equally independent:
//   level  the fully correlated part (ExposureCalibration::level_rel_err: the stars' photometric scales):
//          ln(median Cal/true) against it, one number per exposure; the three exposures share the catalog's
//          magnitudes (the same noise draw), so together they are about one independent point: |pull| ≤ 3;
//   shape  ln(Cal/true) minus that level, against the rest of the variance: the pull width over the good
//          pixels. The pixels are not independent (the RED resampling correlates neighbours, the model terms
//          are smooth): the number of independent points is N / τ, τ = 1 + 2 Σ ρ_k the integrated
//          autocorrelation time of the pulls (summed while ρ_k > 0.05); the width of N_eff unit Gaussians
//          has σ ≈ 1 / √(2 N_eff), and the check is |width − 1| ≤ 3 / √(2 N_eff).
TEST_F(InField, CalUncertaintyMatchesItsScatter) {
  const auto& result = calibrated();
  for (const auto& ex : result.exposures) {
    ASSERT_TRUE(ex.error.empty()) << ex.run << ": " << ex.error;
    const TrueCal truth = true_cal(*g_night, ex);
    ASSERT_GT(truth.used, 0) << ex.run;
    ASSERT_TRUE(std::isfinite(ex.level_rel_err) && ex.level_rel_err > 0) << ex.run;
    std::vector<double> lr, rel_sigma;
    for (std::size_t j = 0; j < ex.cal.size(); ++j) {
      if (!ex.cal.good[j]) continue;
      lr.push_back(std::log(ex.cal.cal[j] / truth(ex.cal.wavelength_angstrom[j])));
      rel_sigma.push_back(std::sqrt(ex.cal.variance[j]) / ex.cal.cal[j]);
    }
    ASSERT_GT(lr.size(), 100u);
    const double level = median(lr);
    const double level_pull = level / ex.level_rel_err;
    std::vector<double> z;
    for (std::size_t k = 0; k < lr.size(); ++k) {
      const double v = rel_sigma[k] * rel_sigma[k] - ex.level_rel_err * ex.level_rel_err;
      ASSERT_GT(v, 0) << ex.run << ": the level part exceeds the whole variance";
      z.push_back((lr[k] - level) / std::sqrt(v));
    }
    const auto ps = kspecdr::testing::pull_stats(z);
    const double N = static_cast<double>(z.size());
    double tau = 1.0;
    for (std::size_t lag = 1; lag < 50; ++lag) {
      double c = 0, c0 = 0;
      for (std::size_t k = 0; k < z.size(); ++k) {
        c0 += (z[k] - ps.mean) * (z[k] - ps.mean);
        if (k + lag < z.size()) c += (z[k] - ps.mean) * (z[k + lag] - ps.mean);
      }
      const double rho = c / c0;
      if (rho < 0.05) break;
      tau += 2.0 * rho;
    }
    const double n_eff = N / tau, tol = 3.0 / std::sqrt(2.0 * n_eff);
    std::cout << fmt::format("[in-field] {}: level ln(Cal/true) {:+.4f} vs predicted {:.4f} (pull {:+.2f}); shape "
                             "pulls mean {:+.3f} width {:.3f} over {} pixels, tau {:.2f}, N_eff {:.0f}, tolerance "
                             "{:.3f}; median predicted sigma {:.3f} % (level {:.3f} %)\n",
                             ex.run, level, ex.level_rel_err, level_pull, ps.mean, ps.stddev, z.size(), tau, n_eff,
                             tol, 100 * median(rel_sigma), 100 * ex.level_rel_err);
    EXPECT_LE(std::abs(level_pull), 3.0) << ex.run;
    EXPECT_NEAR(ps.stddev, 1.0, tol) << ex.run;
  }
}

// The resolution measured from the arc lines against the simulator's line-spread function: σ(x) =
// lsf_sigma0_px (1 + 0.15 u²), u = 2x/(nx − 1) − 1, times |dλ/dx| of the aperture's true wavelength solution,
// at the true position of every line the measurement used. Those true FWHMs are fitted with the same
// polynomial in λ; `check` requires the two curves to agree within 3 σ of the measurement (its covariance,
// from the lines' scatter) at seven wavelengths across the lines' range.
//
// The check runs on a night whose arc solution comes from one arc. With two arcs of different exposure times
// (this suite's night: 10 s and 30 s) the lines of the combined arc are wider than the LSF: the arcs are
// combined pixel by pixel with inverse-variance weights (wavecal::combine_spectra), which weight the
// brighter arc more in the line wings (read-noise dominated) than in the cores (photon-noise dominated) and
// so widen every line; that night's bias is printed, not required to vanish.
namespace {
struct ResolutionCheck {
  std::vector<double> lambda, measured, error, truth;
};
ResolutionCheck resolution_against_truth(const fs::path& arcsol, const h5::File& truth_file) {
  const fluxcal::ArcResolution r = fluxcal::resolution_from_arc_file(arcsol);
  const auto arc = wavecal::read_arc_file(arcsol);
  const auto& root = truth_file.root();
  const double s0 = root.open_group("spectra").attr_double("lsf_sigma0_px");
  std::vector<double> lam, truth;
  for (std::size_t a = 0; a < arc.naper(); ++a) {
    const auto& sol = arc.solutions[a];
    if (!sol.ok() || !root.exists("apertures/" + arc.apertures[a].name)) continue;
    const auto wl = root.read<double>("apertures/" + arc.apertures[a].name + "/wavelength");
    const double nx = static_cast<double>(wl.size());
    const bool up = wl.back() > wl.front();
    for (const auto& l : sol.lines) {
      if (!l.used || !(l.sigma_px > 0)) continue;
      const double lw = sol.wavelength(l.x_px);
      // The true detector position of this wavelength.
      std::size_t k = 1;
      while (k + 1 < wl.size() && (up ? wl[k] < lw : wl[k] > lw)) ++k;
      const double x = static_cast<double>(k - 1) + (lw - wl[k - 1]) / (wl[k] - wl[k - 1]);
      const double u = 2.0 * x / (nx - 1.0) - 1.0;
      lam.push_back(lw);
      truth.push_back(2.354820045 * s0 * (1.0 + 0.15 * u * u) * std::abs(wl[k] - wl[k - 1]));
    }
  }
  EXPECT_GT(lam.size(), 20u);
  // The truth fitted like the measurement: least squares in u = (λ − centre) / half width, same degree.
  const std::size_t np = r.coeff_u.size();
  Eigen::MatrixXd A(static_cast<Eigen::Index>(lam.size()), static_cast<Eigen::Index>(np));
  Eigen::VectorXd y(static_cast<Eigen::Index>(lam.size()));
  for (std::size_t i = 0; i < lam.size(); ++i) {
    const double u = (lam[i] - r.lambda_centre) / r.lambda_half_width;
    for (std::size_t k = 0; k < np; ++k) A(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(k)) = std::pow(u, k);
    y(static_cast<Eigen::Index>(i)) = truth[i];
  }
  const Eigen::VectorXd tc = A.colPivHouseholderQr().solve(y);
  std::cout << fmt::format("[in-field] resolution of {}: {} lines of {} apertures used of {}, rms {:.3f} A; {}\n",
                           arcsol.filename().string(), r.n_used, r.n_apertures, r.n_lines, r.rms_angstrom, r.summary());
  ResolutionCheck c;
  for (int k = 0; k <= 6; ++k) {
    const double l = r.arc_fwhm.lambda_lo + (r.arc_fwhm.lambda_hi - r.arc_fwhm.lambda_lo) * k / 6.0;
    const double u = (l - r.lambda_centre) / r.lambda_half_width;
    double t = 0;
    for (std::size_t i = 0; i < np; ++i) t += tc(static_cast<Eigen::Index>(i)) * std::pow(u, i);
    const double m = r.arc_fwhm.fwhm(l), e = r.arc_fwhm_error(l);
    std::cout << fmt::format("[in-field]   {:.0f} A: arc FWHM {:.4f} +- {:.4f} A, true {:.4f} A ({:+.2f} sigma, "
                             "ratio {:.4f}); template-fit FWHM {:.4f} A\n",
                             l, m, e, t, (m - t) / e, m / t, r.resolution.fwhm(l));
    c.lambda.push_back(l), c.measured.push_back(m), c.error.push_back(e), c.truth.push_back(t);
  }
  return c;
}
}  // namespace

TEST_F(InField, ResolutionFromTheArcsMatchesTheSimulator) {
  const Night& n = *g_night;
  // One arc: the same night's configuration with a single arc exposure.
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-resolution");
  sim::SimConfig sc;
  sc.mode = SpectroMode::Fiber;
  sc.out_dir = tmp.path() / "night";
  sc.seed = 20261121;
  sc.n_bias = 3;
  sc.n_flat = 3;
  sc.n_arc = 1;
  sc.n_science = 1;
  const auto night = sim::simulate_night(sc);
  ReduceConfig rc;
  rc.raw_dir = sc.out_dir / "raw";
  rc.out_dir = tmp.path() / "out";
  rc.instrument = night.profile_file.string();
  rc.stage = ReduceStage::Red;
  rc.resolved_config = "[reduce]\nstage = red\n";
  reduce_night(rc, mpi::world());
  fs::path arcsol;
  for (const auto& e : fs::directory_iterator(rc.out_dir / "calib"))
    if (e.path().filename().string().rfind("arcsol_", 0) == 0) arcsol = e.path();
  ASSERT_FALSE(arcsol.empty());
  const h5::File truth = h5::File::open(night.truth_file);
  const ResolutionCheck one = resolution_against_truth(arcsol, truth);
  for (std::size_t k = 0; k < one.lambda.size(); ++k)
    EXPECT_LE(std::abs(one.measured[k] - one.truth[k]), 3.0 * one.error[k]) << one.lambda[k] << " A";
  // This suite's night (a 10 s and a 30 s arc): printed.
  ASSERT_EQ(n.cfg.arcsol_files.size(), 1u);
  std::cout << "[in-field] the suite's night, two arcs of 10 s and 30 s:\n";
  (void)resolution_against_truth(n.cfg.arcsol_files.front(), n.truth);
}

TEST_F(InField, StarsRadialVelocityAndScale) {
  const Night& n = *g_night;
  const auto& result = calibrated();
  const auto& root = n.truth.root();
  const fluxcal::TemplateGrid grid = fluxcal::read_template_grid(n.cfg.templates_file);
  const auto cat = fluxcal::read_catalog(n.cfg.catalog_file);
  std::map<std::string, fluxcal::FilterCurve> filters;
  for (const auto& b : cat.bands) filters[b] = fluxcal::read_filter_curve(n.cfg.filters_dir / (b + ".dat"), "um", b);
  const auto cat_names = root.read_strings("catalog/name");
  std::vector<double> rv_pulls, scale_pulls;
  for (const auto& ex : result.exposures) {
    ASSERT_EQ(ex.stars.size(), 3u);
    for (const auto& s : ex.stars) {
      ASSERT_TRUE(std::isfinite(s.rv_km_s)) << s.fiber << ": " << s.reason;
      // Positional matching through the reversed catalog: the simulator's own association.
      EXPECT_EQ(s.name, n.fiber_star.at(s.fiber)) << ex.run << " " << s.fiber;
      const double rv_true = root.open_group("apertures/" + s.fiber).attr_double("rv_km_s");
      const double rv_pull = (s.rv_km_s - rv_true) / s.rv_err_km_s;
      EXPECT_LE(std::abs(rv_pull), 3.0) << ex.run << " " << s.fiber << ": RV " << s.rv_km_s << " ± " << s.rv_err_km_s
                                        << ", truth " << rv_true;
      rv_pulls.push_back(rv_pull);
      // The scale the noise-free true magnitudes give to the fitted model (same bands, same weights).
      std::vector<double> model;
      ASSERT_TRUE(fluxcal::interpolate_model(grid, s.params, model)) << s.fiber;
      const std::size_t row = static_cast<std::size_t>(
          std::find(cat_names.begin(), cat_names.end(), s.name) - cat_names.begin());
      const auto& cs = *std::find_if(cat.stars.begin(), cat.stars.end(), [&](const auto& c) { return c.name == s.name; });
      double sw = 0, swd = 0;
      for (std::size_t b = 0; b < cat.bands.size(); ++b) {
        const double m_true = root.read<double>("catalog/" + cat.bands[b] + "/true_ab")[row];
        const double m_syn = fluxcal::synthetic_ab_mag(grid.wavelength_angstrom, model, filters.at(cat.bands[b]));
        const double w = 1.0 / (cs.err[b] * cs.err[b]);
        sw += w;
        swd += w * (m_true - m_syn);
      }
      const double scale_true = std::pow(10.0, -0.4 * swd / sw);
      const double scale_pull = (s.scale - scale_true) / s.scale_err;
      EXPECT_LE(std::abs(scale_pull), 2.0) << ex.run << " " << s.fiber << ": scale " << s.scale << " ± " << s.scale_err
                                           << ", truth " << scale_true;
      scale_pulls.push_back(scale_pull);
      std::cout << fmt::format("[in-field] {} {}: Teff {:.0f} logg {:.2f} [M/H] {:+.2f} [a/M] {:.2f}; RV {:.1f} ± {:.1f} "
                               "(true {:.1f}, pull {:+.2f}); scale pull {:+.2f}; chi2/dof {:.2f}\n",
                               ex.run, s.fiber, s.params.teff_k, s.params.logg, s.params.mh, s.params.alpha, s.rv_km_s,
                               s.rv_err_km_s, rv_true, rv_pull, scale_pull, s.chi2_dof);
    }
  }
  const auto rs = kspecdr::testing::pull_stats(rv_pulls), ss = kspecdr::testing::pull_stats(scale_pulls);
  std::cout << fmt::format("[in-field] RV pulls mean {:+.2f} sd {:.2f}; scale pulls mean {:+.2f} sd {:.2f} (n = {})\n",
                           rs.mean, rs.stddev, ss.mean, ss.stddev, rs.n);
}

// What `kspecdr fluxcal` writes per star to fluxcal_cal.h5 (write_infield_cal_file): the layout of its table; the
// fit's attributes equal to the star record; the scaled model is the F_model of the star's Cal — model × t × Δλ /
// Cal(X) gives back the RED counts, Cal moved from airmass 0 to the exposure's with the extinction curve; the
// photometry: catalog AB = catalog + offset, the residuals' inverse-variance weighted mean over the used bands 0
// (the scale sets it so), the written synthetic magnitudes those of the interpolated model at the written
// parameters × scale (recomputed here from the grid and the filter curves), and within 3 catalog σ of the
// catalog's noise-free true AB magnitudes.
TEST_F(InField, WrittenDiagnosticsAgreeWithTheFitAndTheTruth) {
  const Night& n = *g_night;
  const auto& result = calibrated();
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-calfile");
  const fs::path file = tmp.path() / "fluxcal_cal.h5";
  fluxcal::write_infield_cal_file(file, result, false);
  std::set<std::string> conditional;
  check_cal_file_layout(file, conditional);

  const auto& root = n.truth.root();
  const auto cat_names = root.read_strings("catalog/name");
  const auto cat = fluxcal::read_catalog(n.cfg.catalog_file);
  const fluxcal::TemplateGrid grid = fluxcal::read_template_grid(n.cfg.templates_file);
  std::map<std::string, fluxcal::FilterCurve> filters;
  for (const auto& b : cat.bands) filters[b] = fluxcal::read_filter_curve(n.cfg.filters_dir / (b + ".dat"), "um", b);
  const auto ext = fluxcal::read_extinction_curve(n.cfg.extinction_file);
  const h5::File f = h5::File::open(file);
  int n_stars = 0;
  double worst_mean = 0, worst_counts = 0, worst_synth = 0, worst_truth_pull = 0;
  for (std::size_t i = 0; i < result.exposures.size(); ++i) {
    const auto& ex = result.exposures[i];
    const h5::Group eg = f.root().open_group(fmt::format("exposures/{:03d}", i));
    EXPECT_EQ(eg.attr_string("run"), ex.run);
    {
      // QC rms_frac(λ): the used stars' fractional scatter about the combined vector, recomputed from the file's
      // own vectors and grey factors. It agrees wherever no star was clipped at the pixel (the file does not say
      // where that happened), and its median is the exposure's FCALRMS.
      const auto cal = eg.read<double>("cal"), rms = eg.read<double>("rms_frac");
      const auto good = eg.read<std::uint8_t>("good");
      ASSERT_EQ(rms.size(), cal.size());
      std::vector<std::vector<double>> star_cal;
      std::vector<std::vector<std::uint8_t>> star_good;
      std::vector<double> factor;
      for (std::size_t k = 0; k < ex.stars.size(); ++k) {
        const std::string gname = fmt::format("stars/{:03d}", k);
        if (!eg.exists(gname) || eg.open_group(gname).attr_double("used") != 1.0) continue;
        const h5::Group sg = eg.open_group(gname);
        star_cal.push_back(sg.read<double>("cal"));
        star_good.push_back(sg.read<std::uint8_t>("good"));
        factor.push_back(sg.attr_double("factor"));
      }
      std::size_t finite = 0, agree = 0;
      std::vector<double> finite_rms;
      for (std::size_t j = 0; j < cal.size(); ++j) {
        if (!std::isfinite(rms[j])) continue;
        ++finite;
        finite_rms.push_back(rms[j]);
        EXPECT_TRUE(good[j]) << "rms_frac at a masked pixel " << j;
        double ss = 0;
        int k = 0;
        for (std::size_t q = 0; q < star_cal.size(); ++q)
          if (star_good[q][j]) {
            const double d = star_cal[q][j] / factor[q] / cal[j] - 1.0;
            ss += d * d;
            ++k;
          }
        if (k >= 2 && std::abs(std::sqrt(ss / k) - rms[j]) <= 1e-9 * rms[j]) ++agree;
      }
      ASSERT_GT(finite, cal.size() / 2) << ex.run;
      EXPECT_GE(static_cast<double>(agree), 0.9 * static_cast<double>(finite)) << ex.run;
      std::sort(finite_rms.begin(), finite_rms.end());
      const std::size_t m = finite_rms.size();
      const double median = m % 2 ? finite_rms[m / 2] : 0.5 * (finite_rms[m / 2 - 1] + finite_rms[m / 2]);
      EXPECT_NEAR(median, eg.attr_double("rms"), 1e-12) << ex.run;
      std::cout << ex.run << ": rms_frac recomputed at " << agree << " of " << finite << " pixels, median "
                << median << "\n";
    }
    const auto red = wavecal::read_red_file(ex.input);
    for (std::size_t k = 0; k < ex.stars.size(); ++k) {
      const auto& s = ex.stars[k];
      const std::string gname = fmt::format("stars/{:03d}", k);
      ASSERT_TRUE(eg.exists(gname)) << ex.run << " " << s.fiber << " (a vector was formed: " << s.reason << ")";
      const h5::Group sg = eg.open_group(gname);
      SCOPED_TRACE(ex.run + " " + s.fiber);
      ++n_stars;
      // The fit: the star record's values (the star table's, at full precision).
      EXPECT_EQ(sg.attr_string("fiber"), s.fiber);
      EXPECT_EQ(sg.attr_double("teff_k"), s.params.teff_k);
      EXPECT_EQ(sg.attr_double("logg"), s.params.logg);
      EXPECT_EQ(sg.attr_double("mh"), s.params.mh);
      EXPECT_EQ(sg.attr_double("alpha"), s.params.alpha);
      EXPECT_EQ(sg.attr_double("rv_km_s"), s.rv_km_s);
      EXPECT_EQ(sg.attr_double("rv_err_km_s"), s.rv_err_km_s);
      EXPECT_EQ(sg.attr_double("chi2_dof"), s.chi2_dof);
      EXPECT_EQ(sg.attr_double("scale"), s.scale);
      EXPECT_EQ(sg.attr_double("scale_err"), s.scale_err);
      // The scaled model through Cal back to the counts.
      fluxcal::CalVector c0;
      c0.wavelength_angstrom = sg.read<double>("wavelength");
      c0.cal = sg.read<double>("cal");
      c0.variance = sg.read<double>("variance");
      c0.good = sg.read<unsigned char>("good");
      c0.airmass = 0.0;
      const auto cx = fluxcal::to_airmass(c0, ext, eg.attr_double("exposure_airmass"));
      const auto model = sg.read<double>("model");
      EXPECT_EQ(sg.open_dataset("model").attr_string("units"), "erg/cm2/s/A");
      ASSERT_EQ(model.size(), c0.cal.size());
      Eigen::Index a = -1;
      for (std::size_t q = 0; q < red.spectra.apertures.size(); ++q)
        if (red.spectra.apertures[q].name == s.fiber) a = static_cast<Eigen::Index>(q);
      ASSERT_GE(a, 0);
      const double t = eg.attr_double("exptime_s");
      std::size_t checked = 0;
      for (std::size_t j = 0; j < model.size(); ++j) {
        if (!c0.good[j]) continue;
        const double counts = red.spectra.flux(a, static_cast<Eigen::Index>(j));
        const double back = model[j] * t * (red.grid.edges[j + 1] - red.grid.edges[j]) / cx.cal[j];
        worst_counts = std::max(worst_counts, std::abs(back / counts - 1.0));
        ++checked;
      }
      EXPECT_GT(checked, model.size() / 2);
      // Photometry.
      ASSERT_TRUE(sg.exists("photometry"));
      const h5::Group ph = sg.open_group("photometry");
      const auto bands = ph.read_strings("band");
      ASSERT_EQ(bands, cat.bands);
      const auto mag = ph.read<double>("mag_catalog"), off = ph.read<double>("ab_offset_mag");
      const auto ab = ph.read<double>("mag_ab"), err = ph.read<double>("mag_ab_err");
      const auto syn = ph.read<double>("mag_ab_synth"), res = ph.read<double>("residual_mag");
      const auto used = ph.read<std::uint8_t>("used");
      const auto notes = ph.read_strings("note");
      const auto& cs = *std::find_if(cat.stars.begin(), cat.stars.end(), [&](const auto& c) { return c.name == s.name; });
      const std::size_t row =
          static_cast<std::size_t>(std::find(cat_names.begin(), cat_names.end(), s.name) - cat_names.begin());
      std::vector<double> model_surface;
      ASSERT_TRUE(fluxcal::interpolate_model(grid, s.params, model_surface));
      std::size_t n_used = 0;
      for (std::size_t b = 0; b < bands.size(); ++b) {
        EXPECT_EQ(mag[b], cs.mag[b]) << bands[b];
        EXPECT_EQ(off[b], fluxcal::default_ab_offset(bands[b])) << bands[b];
        EXPECT_EQ(ab[b], mag[b] + off[b]) << bands[b];
        EXPECT_EQ(err[b], cs.err[b]) << bands[b];
        if (!used[b]) {
          EXPECT_FALSE(notes[b].empty()) << bands[b] << ": a band not used says why";
          continue;
        }
        ++n_used;
        EXPECT_TRUE(notes[b].empty()) << bands[b] << ": " << notes[b];
        EXPECT_NEAR(res[b], syn[b] - ab[b], 1e-12) << bands[b];
        // The synthetic magnitude of the model at the written parameters × the written scale.
        const double m_model = fluxcal::synthetic_ab_mag(grid.wavelength_angstrom, model_surface, filters.at(bands[b])) -
                               2.5 * std::log10(sg.attr_double("scale"));
        worst_synth = std::max(worst_synth, std::abs(m_model - syn[b]));
        EXPECT_NEAR(m_model, syn[b], 1e-6) << bands[b];
        // Against the catalog's noise-free AB magnitude.
        const double m_true = root.read<double>("catalog/" + bands[b] + "/true_ab")[row];
        const double pull = (syn[b] - m_true) / err[b];
        worst_truth_pull = std::max(worst_truth_pull, std::abs(pull));
        EXPECT_LE(std::abs(pull), 3.0) << bands[b] << ": synthetic " << syn[b] << ", true " << m_true << " ± " << err[b];
      }
      EXPECT_EQ(static_cast<std::size_t>(ph.attr_double("n_used")), n_used);
      ASSERT_GT(n_used, 0u);
      const double mean = weighted_mean_residual(ph);
      worst_mean = std::max(worst_mean, std::abs(mean));
      EXPECT_LE(std::abs(mean), 1e-3) << "weighted mean residual " << mean << " mag";
    }
  }
  EXPECT_EQ(n_stars, 9);
  EXPECT_LE(worst_counts, 1e-9) << "model × t × dlambda / Cal(X) against the counts";
  std::cout << fmt::format("[in-field] fluxcal_cal.h5: {} stars; largest |weighted mean residual| {:.2e} mag; model "
                           "through Cal against the counts {:.2e}; written synthetic magnitudes against the model "
                           "rebuilt from the grid {:.2e} mag; largest |synthetic - true AB| / sigma {:.2f}\n",
                           n_stars, worst_mean, worst_counts, worst_synth, worst_truth_pull);
}

TEST_F(InField, WrongMagnitudesAreRejectedWithTheReason) {
  const Night& n = *g_night;
  // One C star's catalog magnitudes made 0.5 mag fainter in every band.
  const std::string fiber = n.fiber_star.begin()->first, star = n.fiber_star.begin()->second;
  auto lines = read_lines(n.cfg.catalog_file);
  bool edited = false;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].find(star) == std::string::npos) continue;
    std::vector<std::string> cells;
    std::stringstream ss(lines[i]);
    for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
    for (std::size_t k = 3; k < cells.size(); k += 2) cells[k] = fmt::format("{:.4f}", std::stod(cells[k]) + 0.5);
    std::string row;
    for (std::size_t k = 0; k < cells.size(); ++k) row += (k ? "," : "") + cells[k];
    lines[i] = row;
    edited = true;
  }
  ASSERT_TRUE(edited);
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-bad");
  write_lines(tmp.path() / "catalog.csv", lines);
  auto cfg = n.cfg;
  cfg.red_files = {n.reds.front()};
  cfg.catalog_file = tmp.path() / "catalog.csv";
  cfg.out_dir = tmp.path();
  const auto r = fluxcal::run_infield(cfg, mpi::world());
  ASSERT_EQ(r.exposures.size(), 1u);
  const auto& ex = r.exposures.front();
  ASSERT_TRUE(ex.ok) << ex.message;
  EXPECT_EQ(ex.n_used, 2);
  for (const auto& s : ex.stars) {
    if (s.fiber == fiber) {
      EXPECT_FALSE(s.used);
      EXPECT_NE(s.reason.find("level"), std::string::npos) << s.reason;
      std::cout << fmt::format("[in-field] injected {} (+0.5 mag): ln level {:+.3f}, rejected: {}\n", s.fiber,
                               s.log_level, s.reason);
    } else {
      EXPECT_TRUE(s.used) << s.fiber << ": " << s.reason;
    }
  }
  // The reason is in the sidecar table and in the HISTORY of the calibrated file.
  const auto table = read_lines(fluxcal::star_table_path(ex.output));
  ASSERT_EQ(table.size(), 4u);
  bool in_table = false;
  for (const auto& l : table)
    if (l.find(fiber) != std::string::npos && l.find(",0,\"") != std::string::npos) in_table = true;
  EXPECT_TRUE(in_table);
  const auto red = wavecal::read_red_file(ex.output);
  bool in_history = false;
  for (const auto& h : red.spectra.header.history())
    if (h.find("FCAL " + fiber) != std::string::npos && h.find("rej:") != std::string::npos) in_history = true;
  EXPECT_TRUE(in_history);
  // The rejected star keeps in fluxcal_cal.h5 what was measured: its fit, model and photometry (all 0.5 mag off,
  // so its residuals still average to 0 and its scale is 10^0.2 too small).
  const fs::path cal_file = tmp.path() / "fluxcal_cal.h5";
  fluxcal::write_infield_cal_file(cal_file, r, false);
  const h5::File f = h5::File::open(cal_file);
  bool found = false;
  for (std::size_t k = 0; k < ex.stars.size(); ++k) {
    if (ex.stars[k].fiber != fiber) continue;
    const h5::Group sg = f.root().open_group(fmt::format("exposures/000/stars/{:03d}", k));
    found = true;
    EXPECT_EQ(sg.attr_double("used"), 0.0);
    EXPECT_NE(sg.attr_string("reason").find("level"), std::string::npos);
    EXPECT_TRUE(std::isfinite(sg.attr_double("teff_k")));
    EXPECT_TRUE(std::isfinite(sg.attr_double("scale")));
    ASSERT_TRUE(sg.exists("model"));
    ASSERT_TRUE(sg.exists("photometry"));
    const h5::Group ph = sg.open_group("photometry");
    EXPECT_GT(ph.attr_double("n_used"), 0.0);
    EXPECT_LE(std::abs(weighted_mean_residual(ph)), 1e-3);
  }
  EXPECT_TRUE(found) << fiber << " has no group in " << cal_file;
}

TEST_F(InField, NoStandardFibersIsAClearError) {
  const Night& n = *g_night;
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-noc");
  auto red = wavecal::read_red_file(n.reds.front());
  for (auto& a : red.spectra.apertures)
    if (a.type == aperture_type::kStandard) a.type = aperture_type::kProgram;
  const fs::path in = tmp.path() / "run0000.red.fits";
  wavecal::write_red_file(in, red, false);
  const auto before = fs::file_size(in);
  auto cfg = n.cfg;
  cfg.red_files = {in};
  cfg.out_dir = tmp.path() / "out";
  fs::create_directories(cfg.out_dir);
  const auto r = fluxcal::run_infield(cfg, mpi::world());
  const auto& ex = r.exposures.front();
  EXPECT_FALSE(ex.ok);
  EXPECT_NE(ex.error.find("no standard-star fibers"), std::string::npos) << ex.error;
  const auto out = wavecal::read_red_file(ex.output);
  EXPECT_FALSE(out.spectra.header.get_bool("FLUXCAL").value_or(true));
  EXPECT_NE(out.spectra.header.get_string("FCALERR").value_or("").find("no standard-star fibers"), std::string::npos);
  EXPECT_EQ(out.spectra.header.get_string("BUNIT").value_or(""), "electron");
  EXPECT_EQ(fs::file_size(in), before);
  EXPECT_TRUE(wavecal::read_red_file(in).spectra.flux.isApprox(out.spectra.flux));
}

TEST_F(InField, NightlyVectorCalibratesAnExposureWithoutStandards) {
  const Night& n = *g_night;
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-nightly");
  auto red = wavecal::read_red_file(n.reds.front());
  for (auto& a : red.spectra.apertures)
    if (a.type == aperture_type::kStandard) a.type = aperture_type::kProgram;
  const fs::path in = tmp.path() / "run0000.red.fits";
  wavecal::write_red_file(in, red, false);
  auto cfg = n.cfg;
  cfg.red_files = {in, n.reds.back()};
  cfg.out_dir = tmp.path() / "out";
  cfg.mode = "nightly";
  fs::create_directories(cfg.out_dir);
  const auto r = fluxcal::run_infield(cfg, mpi::world());
  ASSERT_EQ(r.exposures.size(), 2u);
  const auto& bare = r.exposures[0];
  const auto& own = r.exposures[1];
  ASSERT_TRUE(own.ok) << own.message;
  EXPECT_EQ(own.applied, "own");
  ASSERT_TRUE(bare.ok) << bare.message;
  EXPECT_EQ(bare.applied, "nightly");
  // One exposure behind the nightly vector: it is that exposure's airmass-0 vector.
  ASSERT_EQ(r.nightly.size(), own.cal.size());
  for (std::size_t j = 0; j < own.cal.size(); ++j) {
    if (own.cal.good[j]) {
      EXPECT_NEAR(r.nightly.cal[j] / own.cal.cal[j], 1.0, 1e-12);
    }
  }
  const auto out = wavecal::read_red_file(bare.output);
  EXPECT_TRUE(out.spectra.header.get_bool("FLUXCAL").value_or(false));
  EXPECT_EQ(out.spectra.header.get_string("FCALMODE").value_or(""), "nightly");
  // fluxcal_cal.h5 of this run has every item of its table that depends on the run: an exposure without a
  // vector, one with, stars, and the nightly vector.
  const fs::path cal_file = tmp.path() / "fluxcal_cal.h5";
  fluxcal::write_infield_cal_file(cal_file, r, false);
  std::set<std::string> conditional;
  check_cal_file_layout(cal_file, conditional);
  for (const auto& it : fluxcal::infield_cal_format())
    if (!it.when.empty()) {
      EXPECT_TRUE(conditional.count(it.hdu + " " + it.name)) << it.hdu << " " << it.name << " (" << it.when << ")";
    }
}

TEST_F(InField, GridNotCoveringTheDataIsAClearError) {
  const Night& n = *g_night;
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-grid");
  sim::SynthGridSpec gs;
  gs.teff_k = {6000, 6250};
  gs.logg = {4.5};
  gs.mh = {0.0};
  gs.alpha = {0.0};
  gs.lambda_min = 5500.0;  // the RED starts at 4975 Å
  fluxcal::write_template_grid(tmp.path() / "grid.h5", sim::make_synthetic_template_grid(gs));
  auto cfg = n.cfg;
  cfg.red_files = {n.reds.front()};
  cfg.templates_file = tmp.path() / "grid.h5";
  cfg.out_dir = tmp.path();
  const auto r = fluxcal::run_infield(cfg, mpi::world());
  const auto& ex = r.exposures.front();
  EXPECT_FALSE(ex.ok);
  EXPECT_NE(ex.error.find("cover"), std::string::npos) << ex.error;
  const auto out = wavecal::read_red_file(ex.output);
  EXPECT_FALSE(out.spectra.header.get_bool("FLUXCAL").value_or(true));
  std::cout << "[in-field] grid too short: " << ex.error << "\n";
}

TEST_F(InField, CatalogWithoutTheStarsIsAClearError) {
  const Night& n = *g_night;
  kspecdr::testing::TempDir tmp("kspecdr-fluxcal-infield-nocat");
  auto lines = read_lines(n.cfg.catalog_file);
  std::vector<std::string> kept = {lines.front()};
  for (std::size_t i = 1; i < lines.size(); ++i) {
    bool standard = false;
    for (const auto& [f, s] : n.fiber_star) standard = standard || lines[i].find(s) != std::string::npos;
    if (!standard) kept.push_back(lines[i]);
  }
  ASSERT_EQ(kept.size() + n.fiber_star.size(), lines.size());
  write_lines(tmp.path() / "catalog.csv", kept);
  auto cfg = n.cfg;
  cfg.red_files = {n.reds.front()};
  cfg.catalog_file = tmp.path() / "catalog.csv";
  cfg.out_dir = tmp.path();
  const auto r = fluxcal::run_infield(cfg, mpi::world());
  const auto& ex = r.exposures.front();
  EXPECT_FALSE(ex.ok);
  EXPECT_NE(ex.error.find("no standard star can be fitted"), std::string::npos) << ex.error;
  for (const auto& [fiber, star] : n.fiber_star) EXPECT_NE(ex.error.find(fiber), std::string::npos) << ex.error;
  const auto out = wavecal::read_red_file(ex.output);
  EXPECT_FALSE(out.spectra.header.get_bool("FLUXCAL").value_or(true));
  EXPECT_EQ(ex.stars.size(), 3u);
  for (const auto& s : ex.stars) EXPECT_FALSE(s.used);
  // fluxcal_cal.h5 still names every standard fiber with its reason, and holds nothing it did not measure.
  const fs::path cal_file = tmp.path() / "fluxcal_cal.h5";
  fluxcal::write_infield_cal_file(cal_file, r, false);
  const h5::File f = h5::File::open(cal_file);
  const h5::Group eg = f.root().open_group("exposures/000");
  EXPECT_EQ(eg.attr_string("error"), ex.error);
  EXPECT_FALSE(eg.exists("cal"));
  for (std::size_t k = 0; k < ex.stars.size(); ++k) {
    const std::string gname = fmt::format("stars/{:03d}", k);
    ASSERT_TRUE(eg.exists(gname)) << ex.stars[k].fiber;
    const h5::Group sg = eg.open_group(gname);
    EXPECT_EQ(sg.attr_string("fiber"), ex.stars[k].fiber);
    EXPECT_EQ(sg.attr_double("used"), 0.0);
    EXPECT_NE(sg.attr_string("reason").find("catalog"), std::string::npos) << sg.attr_string("reason");
    EXPECT_TRUE(std::isnan(sg.attr_double("teff_k")));
    for (const char* absent : {"cal", "wavelength", "model", "photometry"}) EXPECT_FALSE(sg.exists(absent)) << absent;
  }
  std::set<std::string> seen_conditional;
  check_cal_file_layout(cal_file, seen_conditional, /*complete=*/false);
}

}  // namespace

// `kspecdr reduce` runs the in-field calibration after the RED stage when given a catalog (--fluxcal.*): the
// night's RED files (kept: same configuration) are calibrated into OUTDIR/fcal with their star tables.
TEST_F(InField, ReduceRunsItAfterTheRedStage) {
  const Night& n = *g_night;
  ReduceConfig rc;
  rc.raw_dir = n.dir->path() / "night" / "raw";
  rc.out_dir = n.dir->path() / "out";
  rc.instrument = n.sim.profile_file.string();
  rc.stage = ReduceStage::Red;
  rc.resolved_config = "[reduce]\nstage = red\n";  // the configuration the night was reduced with: REDs kept
  rc.infield = n.cfg;
  const ReduceSummary s = reduce_night(rc, mpi::world());
  EXPECT_EQ(s.exit_code(), 0);
  for (const auto& f : s.failures) ADD_FAILURE() << f.exposure << ": " << f.reason;
  EXPECT_EQ(s.skipped, 2 * s.exposures + n.reds.size()) << "IM, EX (science and arcs) and RED files should be kept";
  for (const auto& red : n.reds) {
    const std::string run = red.filename().string().substr(0, red.filename().string().find('.'));
    const fs::path cal = rc.out_dir / "fcal" / (run + ".fcal.fits");
    ASSERT_TRUE(fs::exists(cal)) << cal;
    const auto r = wavecal::read_red_file(cal);
    EXPECT_TRUE(r.spectra.header.get_bool("FLUXCAL").value_or(false)) << run;
    EXPECT_EQ(r.spectra.header.get_string("BUNIT").value_or(""), "erg/cm2/s/A") << run;
    EXPECT_TRUE(fs::exists(fluxcal::star_table_path(cal))) << run;
    // The template fit's resolution was measured from the night's arcs, and the file says so.
    EXPECT_EQ(r.spectra.header.get_string("FCALRESS").value_or(""), "arcs") << run;
    EXPECT_GT(r.spectra.header.get_double("FCALFWHM").value_or(0.0), 0.0) << run;
  }
  // The vectors and per-star diagnostics beside the calibrated files, one exposure group per RED.
  const fs::path cal_file = rc.out_dir / "fcal" / "fluxcal_cal.h5";
  ASSERT_TRUE(fs::exists(cal_file));
  std::set<std::string> conditional;
  check_cal_file_layout(cal_file, conditional);
  EXPECT_EQ(h5::File::open(cal_file).root().open_group("exposures").members().size(), n.reds.size());
  // The time series in flux units beside the electron cube.
  EXPECT_TRUE(fs::exists(rc.out_dir / "night.rainbow.h5"));
  EXPECT_TRUE(fs::exists(rc.out_dir / "night.fcal.rainbow.h5"));
}
