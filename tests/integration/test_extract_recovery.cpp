// Recovery of the EX stage (IM -> traces, sky, spectra) through `reduce_night`
// on simulated nights, against the simulator's truth (DIR/truth.h5):
//   traces:  the trace map's master traces moved by each exposure's measured
//            shift against the true centre and width of that exposure;
//   spectra: extracted flux against the true star electrons per column, in
//            units of the stated uncertainty (pulls), for optimal and boxcar
//            extraction, with the simulator's sky lines and cosmic rays;
//   variance: the components star + sky + read + calibration add up to the total.
// One process, one rank: MPI is initialised by a test environment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kspecdr/core/mask.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/trace/trace_file.hpp"
#include "support/mpi_environment.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {


/// The per-bin S/N above which a trace must be recovered to 0.05 px (the stage's own requirement).
constexpr double kTraceSnr = 50.0;
constexpr int kBinPx = 16;  // TraceConfig::bin_px default, for the truth-side S/N per bin

/// A reduced night: its truth, the trace map, and the EX files of two extraction methods.
struct ReducedNight {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  sim::SimConfig config;
  sim::NightResult result;
  h5::File truth;
  std::vector<std::string> science;                 ///< science runs in time order
  fs::path optimal_dir, boxcar_dir;                 ///< reduced outputs (out/ex, out/calib inside)
  ReduceSummary optimal_summary, boxcar_summary;
  TraceSet master;                                  ///< from calib/traces_*.fits
  double read_noise_e = 0.0;                        ///< largest amplifier read noise (truth)

  std::vector<double> truth_vector(const std::string& path) const { return truth.root().read<double>(path); }
  fs::path ex_file(const fs::path& out, const std::string& run) const { return out / "ex" / (run + ".ex.fits"); }
};

ReduceSummary reduce(const ReducedNight& n, const fs::path& out, extract::ExtractMethod method) {
  ReduceConfig cfg;
  cfg.raw_dir = n.config.out_dir / "raw";
  cfg.out_dir = out;
  cfg.instrument = n.result.profile_file.string();
  cfg.stage = ReduceStage::Ex;
  cfg.ex.extract.method = method;
  cfg.ex.write_sky_image = true;
  cfg.resolved_config = "[reduce]\nstage = ex\n[extract]\nmethod = " + extract::to_string(method) + "\n";
  return reduce_night(cfg, mpi::world());
}

std::unique_ptr<ReducedNight> make_night(SpectroMode mode) {
  auto n = std::make_unique<ReducedNight>();
  n->dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-extract-recovery");
  n->config.mode = mode;
  n->config.out_dir = n->dir->path() / "night";
  n->config.seed = 20240612;
  n->config.n_bias = 3;
  n->config.n_flat = 3;
  n->config.n_arc = 1;
  n->config.n_science = mode == SpectroMode::Slit ? 4 : 2;
  n->result = sim::simulate_night(n->config);
  n->truth = h5::File::open(n->result.truth_file);
  const auto& root = n->truth.root();
  for (const auto& run : root.read_strings("night/frames"))
    if (root.open_group("frames/" + run).attr_string("class") == "science") n->science.push_back(run);
  for (const auto& amp : root.open_group("detector/amplifiers").members())
    n->read_noise_e =
        std::max(n->read_noise_e, root.open_group("detector/amplifiers/" + amp).attr_double("read_noise_e"));

  n->optimal_dir = n->dir->path() / "optimal";
  n->optimal_summary = reduce(*n, n->optimal_dir, extract::ExtractMethod::Optimal);
  // The boxcar run starts from the same IM files and master calibrations (kept, not rebuilt).
  n->boxcar_dir = n->dir->path() / "boxcar";
  fs::create_directories(n->boxcar_dir);
  for (const char* sub : {"im", "calib"})
    fs::copy(n->optimal_dir / sub, n->boxcar_dir / sub, fs::copy_options::recursive);
  n->boxcar_summary = reduce(*n, n->boxcar_dir, extract::ExtractMethod::Boxcar);

  for (const auto& e : fs::directory_iterator(n->optimal_dir / "calib"))
    if (e.path().filename().string().rfind("traces_", 0) == 0) n->master = trace::read_trace_file(e.path()).traces;
  return n;
}

/// Truth aperture nearest in y (at the middle column) to each trace, or "" when none is within 2 px.
std::vector<std::string> match_apertures(const ReducedNight& n, const TraceSet& traces) {
  const auto& root = n.truth.root();
  std::vector<std::string> out;
  for (const auto& t : traces.traces) {
    std::string best;
    if (!t.info.name.empty() && root.exists("apertures/" + t.info.name)) {
      best = t.info.name;  // fiber mode: the FIBRES table names the truth apertures
    } else if (!t.centre.coeffs.empty()) {
      const double xm = 0.5 * static_cast<double>(traces.nx - 1);
      double dy = 2.0;
      for (const auto& name : root.open_group("apertures").members()) {
        const auto cy = n.truth_vector("apertures/" + name + "/centre_y");
        const double d = std::abs(cy[static_cast<std::size_t>(xm)] - t.y(xm));
        if (d < dy) dy = d, best = name;
      }
    }
    out.push_back(best);
  }
  return out;
}

/// Median over bins of a truth-side S/N per bin: star electrons in a bin of columns over the noise of
/// the star, the sky and the read noise of the rows within ±2σ.
double truth_bin_snr(const std::vector<double>& star_e, const std::vector<double>& sky_e_per_px,
                     const std::vector<double>& sigma, double read_noise_e) {
  std::vector<double> snr;
  for (std::size_t x0 = 0; x0 + kBinPx <= star_e.size(); x0 += kBinPx) {
    double s = 0, b = 0;
    for (std::size_t x = x0; x < x0 + kBinPx; ++x) {
      const double rows = 4.0 * sigma[x];
      s += 0.954 * star_e[x];
      b += rows * ((sky_e_per_px.empty() ? 0.0 : sky_e_per_px[x]) + read_noise_e * read_noise_e);
    }
    snr.push_back(s / std::sqrt(s + b));
  }
  std::nth_element(snr.begin(), snr.begin() + static_cast<long>(snr.size() / 2), snr.end());
  return snr.empty() ? 0.0 : snr[snr.size() / 2];
}

struct TraceErrors {
  double centre_rms_px = 0;     ///< rms over the detector columns of (measured − true) centre
  double width_rms_frac = 0;    ///< rms over the columns of measured σ / true σ − 1
  double width_mean_frac = 0;   ///< mean of measured σ / true σ − 1
};

TraceErrors compare_trace(const Trace& t, double offset, double scale, const std::vector<double>& cy,
                          const std::vector<double>& sg, double true_offset, double true_scale) {
  TraceErrors e;
  double sc = 0, sw = 0, sm = 0;
  const std::size_t nx = cy.size();
  for (std::size_t x = 0; x < nx; ++x) {
    const double xd = static_cast<double>(x);
    const double dc = t.y(xd) + offset - (cy[x] + true_offset);
    const double dw = t.width(xd) * scale / (sg[x] * true_scale) - 1.0;
    sc += dc * dc, sw += dw * dw, sm += dw;
  }
  e.centre_rms_px = std::sqrt(sc / static_cast<double>(nx));
  e.width_rms_frac = std::sqrt(sw / static_cast<double>(nx));
  e.width_mean_frac = sm / static_cast<double>(nx);
  return e;
}

/// Pulls (flux − truth) / σ over the good pixels of the science exposures, and the largest relative
/// mismatch of variance against the sum of its components.
struct FluxCheck {
  kspecdr::testing::PullStats pulls;
  double worst_component_mismatch = 0;
  long nodata = 0;
};

FluxCheck check_flux(const ReducedNight& n, const fs::path& out, bool add_sky_to_truth) {
  FluxCheck c;
  std::vector<double> pulls;
  for (const auto& run : n.science) {
    const SpectrumSet s = extract::read_ex_file(n.ex_file(out, run));
    TraceSet ts;
    ts.nx = s.npix();
    for (const auto& a : s.apertures) {
      Trace t;
      t.info = a;
      ts.traces.push_back(t);
    }
    // Slit apertures are matched through the master traces (same order); fibers by name.
    const auto names = add_sky_to_truth ? match_apertures(n, ts) : match_apertures(n, n.master);
    for (Eigen::Index a = 0; a < s.naper(); ++a) {
      const std::string& name = names[static_cast<std::size_t>(a)];
      const std::string g = "frames/" + run + "/apertures/" + name;
      if (name.empty() || !n.truth.root().exists(g)) continue;
      std::vector<double> truth(static_cast<std::size_t>(s.npix()), 0.0);
      if (n.truth.root().exists(g + "/star_e")) truth = n.truth_vector(g + "/star_e");
      if (add_sky_to_truth && n.truth.root().exists(g + "/sky_e")) {
        const auto sky = n.truth_vector(g + "/sky_e");
        for (std::size_t x = 0; x < truth.size(); ++x) truth[x] += sky[x];
      }
      for (Eigen::Index x = 0; x < s.npix(); ++x) {
        const double v = s.variance(a, x);
        if (s.mask(a, x) & kMaskNoData) {
          ++c.nodata;
          continue;
        }
        if (!(v > 0) || !std::isfinite(v)) continue;
        pulls.push_back((s.flux(a, x) - truth[static_cast<std::size_t>(x)]) / std::sqrt(v));
        const double sum =
            static_cast<double>(s.var_star(a, x)) + s.var_sky(a, x) + s.var_read(a, x) + s.var_cal(a, x);
        c.worst_component_mismatch = std::max(c.worst_component_mismatch, std::abs(sum - v) / v);
      }
    }
  }
  c.pulls = kspecdr::testing::pull_stats(pulls);
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------- slit night

class ExtractRecoverySlit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Slit); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<ReducedNight> night_;
};
std::unique_ptr<ReducedNight> ExtractRecoverySlit::night_;

TEST_F(ExtractRecoverySlit, EveryExposureIsExtractedAndTheTraceMapWritten) {
  const ReducedNight& n = *night_;
  for (const auto* s : {&n.optimal_summary, &n.boxcar_summary}) {
    EXPECT_EQ(s->exit_code(), 0);
    EXPECT_TRUE(s->failures.empty());
  }
  ASSERT_EQ(n.master.size(), 3u) << "the simulated slit holds three stars";
  for (const auto& t : n.master.traces) EXPECT_TRUE(t.usable()) << t.info.name << ": " << t.message;
  // The optional sky images travel with the spectra and have the IM's shape.
  const SpectrumSet s = extract::read_ex_file(n.ex_file(n.optimal_dir, n.science.front()));
  ASSERT_EQ(s.extra_images.size(), 3u);
  EXPECT_EQ(s.extra_images[0].name, "SKYMODEL");
  EXPECT_EQ(s.extra_images[1].name, "SKYMODEL_VAR");
  EXPECT_EQ(s.extra_images[2].name, "SKYWIN");
  EXPECT_EQ(s.extra_images[0].data.rows(), n.master.ny);
  EXPECT_EQ(s.extra_images[0].data.cols(), n.master.nx);
}

TEST_F(ExtractRecoverySlit, TracesFollowTheTrueCentreAndWidthOfEachExposure) {
  const ReducedNight& n = *night_;
  const auto names = match_apertures(n, n.master);
  for (std::size_t a = 0; a < n.master.size(); ++a) {
    const Trace& t = n.master[a];
    ASSERT_FALSE(names[a].empty()) << t.info.name << " matches no simulated star";
    const auto cy = n.truth_vector("apertures/" + names[a] + "/centre_y");
    const auto sg = n.truth_vector("apertures/" + names[a] + "/sigma");
    for (const auto& run : n.science) {
      const SpectrumSet s = extract::read_ex_file(n.ex_file(n.optimal_dir, run));
      const auto& d = s.diagnostics[a];
      const h5::Group g = n.truth.root().open_group("frames/" + run + "/apertures/" + names[a]);
      const double snr = truth_bin_snr(n.truth_vector(g.path() + "/star_e"),
                                       n.truth_vector(g.path() + "/sky_e_per_px"), sg, n.read_noise_e);
      ASSERT_TRUE(std::isfinite(d.shift_px)) << run << " " << t.info.name << ": no trace shift measured";
      const TraceErrors e = compare_trace(t, d.shift_px, d.width_scale, cy, sg, g.attr_double("trace_offset_px"),
                                          g.attr_double("sigma_scale"));
      std::cout << run << " " << t.info.name << " (" << names[a] << "): bin S/N " << snr << ", centre rms "
                << e.centre_rms_px << " px (shift " << d.shift_px << " +- " << d.shift_err_px << ", true "
                << g.attr_double("trace_offset_px") << "), width rms " << 100 * e.width_rms_frac << " % (mean "
                << 100 * e.width_mean_frac << " %)\n";
      if (snr > kTraceSnr) {
        EXPECT_LT(e.centre_rms_px, 0.05) << run << " " << t.info.name;
        EXPECT_LT(e.width_rms_frac, 0.02) << run << " " << t.info.name;
      }
    }
  }
}

TEST_F(ExtractRecoverySlit, FluxPullsAreUnitNormalForOptimalAndBoxcar) {
  const ReducedNight& n = *night_;
  for (const auto& [label, out] : {std::pair{"optimal", n.optimal_dir}, std::pair{"boxcar", n.boxcar_dir}}) {
    const FluxCheck c = check_flux(n, out, false);
    std::cout << label << ": " << c.pulls.n << " pixels, pull mean " << c.pulls.mean << ", width " << c.pulls.stddev
              << ", NODATA " << c.nodata << ", variance components off by at most " << c.worst_component_mismatch
              << "\n";
    ASSERT_GT(c.pulls.n, 3u * 1000u) << label;
    EXPECT_LT(std::abs(c.pulls.mean), 0.05) << label;
    // The master flat's noise (3 flats here) and the master bias's are in the IM pixels: the model
    // variance must carry them (VAR_CAL), or bright stars scatter more than stated.
    EXPECT_NEAR(c.pulls.stddev, 1.0, 0.05) << label << ": is the master flat's noise in the flux variance?";
    EXPECT_LT(c.worst_component_mismatch, 1e-4) << label << ": var_star + var_sky + var_read + var_cal != variance";
    const SpectrumSet s = extract::read_ex_file(n.ex_file(out, n.science.front()));
    EXPECT_EQ(s.header.get_string("CALNOISE").value_or(""), "BIAS+FLAT") << label;
  }
}

// --------------------------------------------------------------------------------------- fiber night

class ExtractRecoveryFiber : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { night_ = make_night(SpectroMode::Fiber); }
  static void TearDownTestSuite() { night_.reset(); }
  static std::unique_ptr<ReducedNight> night_;
};
std::unique_ptr<ReducedNight> ExtractRecoveryFiber::night_;

// The fibers are packed closely (9 px apart, σ ≈ 1.5 px): extracted alone, a bright neighbour's wings
// inside a faint fiber's window count as its light (up to 3 % high with optimal weights, far more in the
// ±4σ boxcar). The stage fits all fibers of a column jointly (extract/joint.cpp).
TEST_F(ExtractRecoveryFiber, TracesAndFluxes) {
  const ReducedNight& n = *night_;
  EXPECT_EQ(n.optimal_summary.exit_code(), 0);
  ASSERT_GT(n.master.size(), 0u);
  const auto names = match_apertures(n, n.master);
  std::vector<double> width_bias;
  for (std::size_t a = 0; a < n.master.size(); ++a) {
    const Trace& t = n.master[a];
    if (!t.usable()) {
      EXPECT_EQ(t.info.type, aperture_type::kUnused) << t.info.name << ": " << t.message;
      continue;
    }
    ASSERT_FALSE(names[a].empty()) << t.info.name;
    const auto cy = n.truth_vector("apertures/" + names[a] + "/centre_y");
    const auto sg = n.truth_vector("apertures/" + names[a] + "/sigma");
    const TraceErrors e = compare_trace(t, 0.0, 1.0, cy, sg, 0.0, 1.0);
    width_bias.push_back(e.width_mean_frac);
    EXPECT_LT(e.centre_rms_px, 0.05) << t.info.name;
    std::cout << t.info.name << ": centre rms " << e.centre_rms_px << " px, width rms " << 100 * e.width_rms_frac
              << " % (mean " << 100 * e.width_mean_frac << " %)\n";
  }
  double mean_bias = 0;
  for (double b : width_bias) mean_bias += b;
  mean_bias /= static_cast<double>(std::max<std::size_t>(1, width_bias.size()));
  std::cout << "fiber widths: mean bias " << 100 * mean_bias << " % over " << width_bias.size() << " fibers\n";
  EXPECT_LT(std::abs(mean_bias), 0.02) << "fiber widths are biased (neighbours' wings in the window)";

  // Fiber profiles are set by the fibers and the spectrograph, the same in flats and science frames
  // (the simulator's sigma_scale): each exposure's width scale must say so, or the optimal profile is
  // too narrow and the flux comes out low. The stage keeps the flat's widths and says so (TRWIDFIX).
  std::vector<double> scales;
  for (const auto& run : n.science) {
    const SpectrumSet s = extract::read_ex_file(n.ex_file(n.optimal_dir, run));
    EXPECT_TRUE(s.header.get_bool("TRWIDFIX").value_or(false)) << run;
    const double truth_scale = n.truth.root().open_group("frames/" + run).attr_double("sigma_scale");
    for (std::size_t a = 0; a < s.diagnostics.size(); ++a)
      if (std::isfinite(s.diagnostics[a].width_scale)) scales.push_back(s.diagnostics[a].width_scale / truth_scale);
  }
  std::sort(scales.begin(), scales.end());
  ASSERT_FALSE(scales.empty());
  std::cout << "fiber width scale / true: min " << scales.front() << ", median " << scales[scales.size() / 2]
            << ", max " << scales.back() << " over " << scales.size() << " fiber-exposures\n";
  EXPECT_GT(scales.front(), 0.98) << "per-exposure fiber widths are measured too narrow";
  EXPECT_LT(scales.back(), 1.02);

  // The fibers' extraction windows overlap, so the stage fits all fibers of a column jointly: "optimal"
  // becomes the joint fit, and the boxcar subtracts the neighbours' fitted light from its box. Both then
  // estimate the fiber's own light (star + sky): the truth of both. (The boxcar's ±4σ box holds all but
  // 6e-5 of it, far below the noise.)
  for (const auto& [label, out, method] : {std::tuple{"joint", n.optimal_dir, "joint"},
                                           std::tuple{"boxcar", n.boxcar_dir, "boxcar"}}) {
    const SpectrumSet s = extract::read_ex_file(n.ex_file(out, n.science.front()));
    EXPECT_EQ(s.header.get_string("EXTMETH").value_or(""), method) << label;
    EXPECT_TRUE(s.header.get_bool("DEBLEND").value_or(false)) << label;
    const FluxCheck c = check_flux(n, out, true);
    std::cout << "fiber " << label << " (star + sky, no sky subtracted in fiber mode): " << c.pulls.n
              << " pixels, pull mean " << c.pulls.mean << ", width " << c.pulls.stddev << "\n";
    ASSERT_GT(c.pulls.n, 30u * 1000u) << label;
    EXPECT_LT(c.worst_component_mismatch, 1e-4) << label;
    EXPECT_LT(std::abs(c.pulls.mean), 0.05) << label;
    EXPECT_NEAR(c.pulls.stddev, 1.0, 0.05) << label;
  }
}
