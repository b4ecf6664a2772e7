// kspecdr fluxcal: flux calibration of RED files, in one of two modes:
//   known standard (--standard): the RED exposures of a spectrophotometric standard with a tabulated
//     spectrum give the calibration vector (long slit);
//   in-field (--catalog): the standard-star fibers (TYPE = C) of each exposure, fitted with templates and
//     scaled to their catalog magnitudes, give it (fiber, MPI-parallel over the stars).
// Every RED given is written calibrated to OUT/<run>.fcal.fits (default: beside its input). Inputs are
// never modified.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/apply.hpp"
#include "kspecdr/fluxcal/infield.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::cli {
namespace fs = std::filesystem;

namespace {

/// The options both modes share: extinction curve, band mask, output folder, mode, overwrite and the Cal
/// vectors file (default OUT/fluxcal_cal.h5 when --out is given).
struct CommonOptions {
  fs::path extinction_file, mask_file, out_dir, cal_file;
  std::string mode;
  bool overwrite = false;
};

CommonOptions read_common_options(const po::variables_map& vm, const std::string& default_mode) {
  CommonOptions c;
  c.extinction_file = vm["extinction"].as<std::string>();
  if (!fs::is_regular_file(c.extinction_file))
    throw ConfigError(fmt::format("fluxcal: extinction curve {} does not exist", c.extinction_file.string()));
  c.mask_file = vm["mask"].as<std::string>();
  if (!c.mask_file.empty() && !fs::is_regular_file(c.mask_file))
    throw ConfigError(fmt::format("fluxcal: mask file {} does not exist", c.mask_file.string()));
  c.out_dir = vm["out"].as<std::string>();
  c.mode = vm["mode"].as<std::string>();
  if (c.mode.empty()) c.mode = default_mode;
  if (c.mode != "exposure" && c.mode != "nightly")
    throw ConfigError(fmt::format("fluxcal: --mode {}: give exposure or nightly", c.mode));
  c.overwrite = vm["overwrite"].as<bool>();
  c.cal_file = vm["cal-file"].as<std::string>();
  if (c.cal_file.empty() && !c.out_dir.empty()) c.cal_file = c.out_dir / "fluxcal_cal.h5";
  return c;
}

int run_fluxcal_infield(const po::variables_map& vm) {
  fluxcal::InFieldConfig cfg;
  for (const auto& f : vm["red"].as<std::vector<std::string>>()) {
    if (!fs::is_regular_file(f))
      throw ConfigError(fmt::format("fluxcal: RED file {} does not exist", f), ErrorContext{.file = f});
    cfg.red_files.emplace_back(f);
  }
  for (const char* k : {"templates", "filters"})
    if (!vm.count(k)) throw ConfigError(fmt::format("fluxcal: the in-field mode (--catalog) needs --{}", k));
  cfg.catalog_file = vm["catalog"].as<std::string>();
  cfg.templates_file = vm["templates"].as<std::string>();
  cfg.filters_dir = vm["filters"].as<std::string>();
  for (const auto& [what, p] : {std::pair{"catalog", cfg.catalog_file}, std::pair{"template grid", cfg.templates_file}})
    if (!fs::is_regular_file(p)) throw ConfigError(fmt::format("fluxcal: {} {} does not exist", what, p.string()));
  if (!fs::is_directory(cfg.filters_dir))
    throw ConfigError(fmt::format("fluxcal: filter folder {} does not exist", cfg.filters_dir.string()));
  cfg.filter_unit = vm["filter-unit"].as<std::string>();
  if (vm.count("bands")) cfg.bands = vm["bands"].as<std::vector<std::string>>();
  cfg.match_radius_arcsec = vm["match-radius-arcsec"].as<double>();
  // The instrument resolution: an explicit --fwhm-angstrom, else measured from the arc lines of --arcsol, else
  // of the arc solution the RED was made with (OUT/calib/arcsol_<ARCSETUP>[_<ARCTRSET>].fits beside OUT/red/).
  if (vm.count("fwhm-angstrom")) {
    const double fwhm = vm["fwhm-angstrom"].as<double>();
    if (!(fwhm > 0)) throw ConfigError("fluxcal: --fwhm-angstrom must be positive");
    cfg.fit.resolution.fwhm_poly_angstrom = {fwhm};
    cfg.fwhm_explicit = true;
  } else if (vm.count("arcsol")) {
    for (const auto& f : vm["arcsol"].as<std::vector<std::string>>()) {
      if (!fs::is_regular_file(f)) throw ConfigError(fmt::format("fluxcal: arc-solution file {} does not exist", f));
      cfg.arcsol_files.emplace_back(f);
    }
  } else {
    for (const auto& red : cfg.red_files) {
      auto fr = fits::Fits::open(red.string());
      const Header h = fr.read_header();
      const auto setup = h.get_string("ARCSETUP");
      if (!setup)
        throw ConfigError(fmt::format("fluxcal: {} has no ARCSETUP keyword: give --arcsol FILE or --fwhm-angstrom W for "
                                      "the instrument resolution",
                                      red.string()));
      const auto trset = h.get_string("ARCTRSET").value_or("");
      const fs::path arc = fs::absolute(red).parent_path().parent_path() / "calib" /
                           (trset.empty() ? fmt::format("arcsol_{}.fits", setup_slug(*setup))
                                          : fmt::format("arcsol_{}_{}.fits", setup_slug(*setup), setup_slug(trset)));
      if (!fs::is_regular_file(arc))
        throw ConfigError(fmt::format("fluxcal: the arc solution of {} ({}) does not exist: give --arcsol FILE or "
                                      "--fwhm-angstrom W for the instrument resolution",
                                      red.string(), arc.string()));
      cfg.arcsol_files.push_back(arc);
    }
  }
  cfg.min_standards = vm["min-standards"].as<int>();
  const CommonOptions common = read_common_options(vm, "exposure");
  cfg.extinction_file = common.extinction_file;
  cfg.mask_file = common.mask_file;
  cfg.out_dir = common.out_dir;
  cfg.mode = common.mode;
  cfg.overwrite = common.overwrite;
  const fs::path cal_file = common.cal_file;
  auto& comm = mpi::world();
  if (comm.is_root() && !cfg.out_dir.empty()) fs::create_directories(cfg.out_dir);
  comm.barrier();
  const auto result = fluxcal::run_infield(cfg, comm);
  if (!comm.is_root()) return 0;
  if (!cal_file.empty()) fluxcal::write_infield_cal_file(cal_file, result, cfg.overwrite);
  int failed = 0;
  for (const auto& e : result.exposures) {
    for (const auto& s : e.stars)
      spdlog::info("fluxcal: {} {} {}: Teff {:.0f} K, log g {:.2f}, [M/H] {:+.2f}, RV {:.1f} ± {:.1f} km/s, "
                   "chi2/dof {:.2f}: {}{}",
                   e.run, s.fiber, s.name, s.params.teff_k, s.params.logg, s.params.mh, s.rv_km_s, s.rv_err_km_s,
                   s.chi2_dof, s.used ? "used" : "rejected", s.reason.empty() ? "" : " (" + s.reason + ")");
    if (!e.ok) ++failed;
  }
  if (failed) {
    spdlog::error("fluxcal: {} of {} RED files not calibrated (written with FLUXCAL = F)", failed,
                  result.exposures.size());
    for (const auto& e : result.exposures)
      if (!e.ok) spdlog::error("  {}: {}", e.input.string(), e.message.empty() ? e.error : e.message);
    return 3;
  }
  spdlog::info("fluxcal: {} RED files calibrated from in-field standards", result.exposures.size());
  return 0;
}

}  // namespace

int run_fluxcal(int argc, char** argv) {
  po::options_description desc("fluxcal options");
  desc.add_options()("red", po::value<std::vector<std::string>>()->multitoken()->required(),
                     "RED files to calibrate, the standard's exposures included (also positional)")(
      "standard", po::value<std::string>(),
      "the standard star: a name looked up in --standards-dir (e.g. feige110, 'G93-48') or a table file "
      "(wavelength [A], AB mag, bandwidth [A])")(
      "standard-exposure", po::value<std::vector<std::string>>()->multitoken(),
      "run names (RED file names without .red.fits) of the standard's exposures")(
      "standard-aperture", po::value<std::string>()->default_value(""),
      "the standard's aperture name when its exposures hold several")(
      "standard-error", po::value<double>()->default_value(0.02),
      "fractional uncertainty of the standard's tabulated spectrum per band (added to the Cal variance after "
      "the standard's exposures are combined)")(
      "standards-dir", po::value<std::vector<std::string>>()->multitoken(),
      "folders of tabulated standards searched by name (default: $KSPECDR_SHARED_DIR/data/standards/iraf, "
      "then <data>/standards)")(
      "extinction", po::value<std::string>()->required(), "extinction curve [A, mag/airmass]")(
      "mask", po::value<std::string>()->default_value(""),
      "band mask (lam_lo lam_hi [A] rows) of telluric or bad regions (default: none)")(
      "out", po::value<std::string>()->default_value(""), "output folder (default: beside each input)")(
      "mode", po::value<std::string>()->default_value(""),
      "exposure | nightly. Known standard (default nightly): each RED gets the standard exposure nearest in "
      "time, or the mean of all of them. In-field (default exposure): each exposure its own stars, or (nightly) "
      "the mean of all exposures' vectors where an exposure has fewer than --min-standards usable stars")(
      "catalog", po::value<std::string>(),
      "in-field mode: photometric catalog CSV (name, ra, dec [deg], magnitudes with errors)")(
      "templates", po::value<std::string>(), "in-field mode: template grid (HDF5, docs/templates.md)")(
      "filters", po::value<std::string>(), "in-field mode: folder of <band>.dat filter curves")(
      "filter-unit", po::value<std::string>()->default_value("um"), "wavelength unit of the filter files: um | nm | Angstrom")(
      "bands", po::value<std::vector<std::string>>()->multitoken(),
      "catalog bands to use (default: every band with a filter curve)")(
      "match-radius-arcsec", po::value<double>()->default_value(2.0), "fiber-to-catalog match radius [arcsec]")(
      "fwhm-angstrom", po::value<double>(),
      "instrument resolution for the template fit, FWHM [Angstrom]; wins over --arcsol (default: measured from the "
      "arc lines)")(
      "arcsol", po::value<std::vector<std::string>>()->multitoken(),
      "arc-solution file(s) (calib/arcsol_*.fits; one, or one per RED) whose line widths give the resolution "
      "(default: the one each RED was made with, ../calib/ beside its red/ folder)")(
      "min-standards", po::value<int>()->default_value(2),
      "in-field nightly mode: an exposure with fewer usable stars gets the nightly vector")(
      "cal-file", po::value<std::string>()->default_value(""),
      "also write the calibration vectors (HDF5) here (default: OUT/fluxcal_cal.h5 when --out is given)")(
      "overwrite", po::bool_switch(), "replace existing output files");
  po::positional_options_description pos;
  pos.add("red", -1);
  auto opts = parse_options(
      "fluxcal",
      "kspecdr fluxcal --red FILE... --standard NAME|FILE --standard-exposure RUN... --extinction FILE "
      "[--mask FILE] [--out DIR] [--mode exposure|nightly] [--standard-aperture NAME] [--overwrite]\n"
      "kspecdr fluxcal --red FILE... --catalog CSV --templates H5 --filters DIR --extinction FILE [--filter-unit um] "
      "[--bands B...] [--match-radius-arcsec R] [--arcsol FILE... | --fwhm-angstrom W] [--mode exposure|nightly] [--mask FILE] "
      "[--out DIR]\n\n"
      "In-field mode: per exposure, the C fibers matched to the catalog by position, fitted with templates, "
      "scaled by synthetic photometry; their Cal vectors gated and combined, applied to every aperture. A "
      "per-star table <run>.fcalstars.csv is written beside each output.\n"
      "Known-standard mode: Cal(lambda) = F_table t dlambda / C from the standard's exposures, moved to airmass 0 "
      "with the extinction curve, applied to every RED at its own airmass and exposure time. Writes "
      "<run>.fcal.fits per RED (BUNIT = 'erg/cm2/s/A', FLUXCAL = T). A RED that cannot be calibrated is "
      "written unchanged with FLUXCAL = F and FCALERR; the exit code is then 3.",
      argc, argv, desc, pos);
  if (opts.help) return 0;
  const auto& vm = opts.vm;

  const auto& vm0 = vm;
  if (vm0.count("catalog")) return run_fluxcal_infield(vm0);
  if (!vm0.count("standard") || !vm0.count("standard-exposure"))
    throw ConfigError("fluxcal: give --standard and --standard-exposure (known standard) or --catalog, --templates "
                      "and --filters (in-field)");
  fluxcal::KnownStandardConfig cfg;
  for (const auto& f : vm["red"].as<std::vector<std::string>>()) {
    if (!fs::is_regular_file(f))
      throw ConfigError(fmt::format("fluxcal: RED file {} does not exist", f), ErrorContext{.file = f});
    cfg.red_files.emplace_back(f);
  }
  cfg.standard = vm["standard"].as<std::string>();
  cfg.standard_exposures = vm["standard-exposure"].as<std::vector<std::string>>();
  cfg.standard_aperture = vm["standard-aperture"].as<std::string>();
  cfg.standard_rel_err = vm["standard-error"].as<double>();
  if (vm.count("standards-dir")) {
    for (const auto& d : vm["standards-dir"].as<std::vector<std::string>>()) cfg.standard_dirs.emplace_back(d);
  } else {
    if (const char* s = std::getenv("KSPECDR_SHARED_DIR")) cfg.standard_dirs.push_back(fs::path(s) / "data/standards/iraf");
    cfg.standard_dirs.push_back(data_dir() / "standards");
  }
  const CommonOptions common = read_common_options(vm, "nightly");
  cfg.extinction_file = common.extinction_file;
  cfg.mask_file = common.mask_file;
  cfg.out_dir = common.out_dir;
  cfg.mode = common.mode;
  cfg.overwrite = common.overwrite;
  cfg.cal_file = common.cal_file;
  // Serial work: one rank writes.
  if (!mpi::world().is_root()) return 0;
  if (!cfg.out_dir.empty()) fs::create_directories(cfg.out_dir);

  const auto result = fluxcal::run_known_standard(cfg);
  int failed = 0;
  for (const auto& f : result.files)
    if (!f.ok) ++failed;
  if (failed) {
    spdlog::error("fluxcal: {} of {} RED files not calibrated (written with FLUXCAL = F)", failed, result.files.size());
    for (const auto& f : result.files)
      if (!f.ok) spdlog::error("  {}: {}", f.input.string(), f.message);
    return 3;
  }
  spdlog::info("fluxcal: {} RED files calibrated with {} standard spectra{}", result.files.size(),
               result.per_exposure.size(),
               std::isfinite(result.rms) ? fmt::format(" (rms between them {:.2f} %)", 100 * result.rms) : "");
  return 0;
}

}  // namespace kspecdr::cli
