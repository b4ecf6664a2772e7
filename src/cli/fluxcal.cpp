// kspecdr fluxcal: the known-standard (long-slit) mode of flux calibration. The
// RED exposures of a spectrophotometric standard with a tabulated spectrum give
// the calibration vector; every RED given is written calibrated to
// OUT/<run>.fcal.fits (default: beside its input). Inputs are never modified.
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
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::cli {
namespace fs = std::filesystem;

int run_fluxcal(int argc, char** argv) {
  po::options_description desc("fluxcal options");
  desc.add_options()("red", po::value<std::vector<std::string>>()->multitoken()->required(),
                     "RED files to calibrate, the standard's exposures included (also positional)")(
      "standard", po::value<std::string>()->required(),
      "the standard star: a name looked up in --standards-dir (e.g. feige110, 'G93-48') or a table file "
      "(wavelength [A], AB mag, bandwidth [A])")(
      "standard-exposure", po::value<std::vector<std::string>>()->multitoken()->required(),
      "run names (RED file names without .red.fits) of the standard's exposures")(
      "standard-aperture", po::value<std::string>()->default_value(""),
      "the standard's aperture name when its exposures hold several")(
      "standards-dir", po::value<std::vector<std::string>>()->multitoken(),
      "folders of tabulated standards searched by name (default: $KSPECDR_SHARED_DIR/data/standards/iraf, "
      "then <data>/standards)")(
      "extinction", po::value<std::string>()->required(), "extinction curve [A, mag/airmass]")(
      "mask", po::value<std::string>()->default_value(""),
      "band mask (lam_lo lam_hi [A] rows) of telluric or bad regions (default: none)")(
      "out", po::value<std::string>()->default_value(""), "output folder (default: beside each input)")(
      "mode", po::value<std::string>()->default_value("nightly"),
      "exposure: each RED gets the standard exposure nearest in time; nightly: the mean of all of them")(
      "cal-file", po::value<std::string>()->default_value(""),
      "also write the calibration vectors (HDF5) here (default: OUT/fluxcal_cal.h5 when --out is given)")(
      "overwrite", po::bool_switch(), "replace existing output files");
  po::positional_options_description pos;
  pos.add("red", -1);
  auto opts = parse_options(
      "fluxcal",
      "kspecdr fluxcal --red FILE... --standard NAME|FILE --standard-exposure RUN... --extinction FILE "
      "[--mask FILE] [--out DIR] [--mode exposure|nightly] [--standard-aperture NAME] [--overwrite]\n\n"
      "Known-standard mode: Cal(lambda) = F_table t dlambda / C from the standard's exposures, moved to airmass 0 "
      "with the extinction curve, applied to every RED at its own airmass and exposure time. Writes "
      "<run>.fcal.fits per RED (BUNIT = 'erg/cm2/s/A', FLUXCAL = T). A RED that cannot be calibrated is "
      "written unchanged with FLUXCAL = F and FCALERR; the exit code is then 3.",
      argc, argv, desc, pos);
  if (opts.help) return 0;
  const auto& vm = opts.vm;

  fluxcal::KnownStandardConfig cfg;
  for (const auto& f : vm["red"].as<std::vector<std::string>>()) {
    if (!fs::is_regular_file(f))
      throw ConfigError(fmt::format("fluxcal: RED file {} does not exist", f), ErrorContext{.file = f});
    cfg.red_files.emplace_back(f);
  }
  cfg.standard = vm["standard"].as<std::string>();
  cfg.standard_exposures = vm["standard-exposure"].as<std::vector<std::string>>();
  cfg.standard_aperture = vm["standard-aperture"].as<std::string>();
  if (vm.count("standards-dir")) {
    for (const auto& d : vm["standards-dir"].as<std::vector<std::string>>()) cfg.standard_dirs.emplace_back(d);
  } else {
    if (const char* s = std::getenv("KSPECDR_SHARED_DIR")) cfg.standard_dirs.push_back(fs::path(s) / "data/standards/iraf");
    cfg.standard_dirs.push_back(data_dir() / "standards");
  }
  cfg.extinction_file = vm["extinction"].as<std::string>();
  if (!fs::is_regular_file(cfg.extinction_file))
    throw ConfigError(fmt::format("fluxcal: extinction curve {} does not exist", cfg.extinction_file.string()));
  cfg.mask_file = vm["mask"].as<std::string>();
  if (!cfg.mask_file.empty() && !fs::is_regular_file(cfg.mask_file))
    throw ConfigError(fmt::format("fluxcal: mask file {} does not exist", cfg.mask_file.string()));
  cfg.out_dir = vm["out"].as<std::string>();
  cfg.mode = vm["mode"].as<std::string>();
  if (cfg.mode != "exposure" && cfg.mode != "nightly")
    throw ConfigError(fmt::format("fluxcal: --mode {}: give exposure or nightly", cfg.mode));
  cfg.overwrite = vm["overwrite"].as<bool>();
  cfg.cal_file = vm["cal-file"].as<std::string>();
  if (cfg.cal_file.empty() && !cfg.out_dir.empty()) cfg.cal_file = cfg.out_dir / "fluxcal_cal.h5";
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
