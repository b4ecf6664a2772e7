// kspecdr reduce: options → ReduceConfig (plain structs), then the night.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/cli/stage_options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"

namespace kspecdr::cli {

int run_reduce(int argc, char** argv) {
  detector::DetectorConfig d;  // defaults shown in --help come from the struct itself
  po::options_description desc("reduce options");
  desc.add_options()("raw", po::value<std::string>()->required(), "folder of raw FITS frames")(
      "instrument", po::value<std::string>()->required(), "instrument profile name or .ini path")(
      "out", po::value<std::string>()->required(), "output folder (calib/, im/, ex/, red/, log.ecsv, config-used.ini)")(
      "stage", po::value<std::string>()->default_value("im"),
      "last stage to run: im (detector calibration) | ex (traces, sky, extraction) | red (wavelength calibration, "
      "resampling, fiber master sky, time-series cubes) | all (every stage: red)")(
      "night", po::value<std::string>()->default_value(""),
      "night name for <night>.rainbow.h5 (default: the raw folder's name, its parent's if it is 'raw')")(
      "overwrite", po::bool_switch(), "replace existing outputs (otherwise they are kept and skipped)")(
      "fsync", po::value<bool>()->default_value(false),
      "flush every output to stable storage before renaming it into place (survives a machine crash, not only a "
      "killed run; costs a disk flush per file)");
  po::options_description det("detector options ([detector] section of a --config file)");
  det.add_options()("detector.bias-combine", po::value<std::string>()->default_value(to_string(d.bias_combine)),
                    "master bias: median | mean (sigma-clipped)")(
      "detector.flat-combine", po::value<std::string>()->default_value(to_string(d.flat_combine)),
      "master flat: median | mean (sigma-clipped)")(
      "detector.clip-sigma", po::value<double>()->default_value(d.combine_clip_sigma), "clipping threshold of mean combines")(
      "detector.overscan-method", po::value<std::string>()->default_value(""),
      "median | poly (empty: the instrument profile's)")(
      "detector.overscan-order", po::value<int>()->default_value(d.overscan_order),
      "polynomial order along the readout direction (-1: the profile's)")(
      "detector.flat-smooth-px", po::value<double>()->default_value(d.flat_smooth_px),
      "scale (px along dispersion) of the flat's large-scale model")(
      "detector.illumination-threshold", po::value<double>()->default_value(d.illumination_threshold),
      "illuminated where the flat model exceeds this fraction of its local maximum")(
      "detector.illumination-min-snr", po::value<double>()->default_value(d.illumination_min_snr),
      "... and this many times its own noise")(
      "detector.cosmics", po::value<bool>()->default_value(d.cosmic_enable), "flag cosmic rays (L.A.Cosmic)")(
      "detector.cr-sigclip", po::value<double>()->default_value(d.cosmic_sigclip), "L.A.Cosmic detection threshold")(
      "detector.cr-objlim", po::value<double>()->default_value(d.cosmic_objlim), "L.A.Cosmic contrast limit")(
      "detector.cr-niter", po::value<int>()->default_value(d.cosmic_niter), "L.A.Cosmic passes");
  desc.add(det);
  desc.add(stage_options());
  const RedStageConfig r;  // defaults shown in --help
  po::options_description red("wavelength and resampling options ([wavecal], [resample], [red] sections)");
  red.add_options()("wavecal.order", po::value<int>()->default_value(r.wavecal.order), "Legendre order of lambda(x)")(
      "wavecal.clip-sigma", po::value<double>()->default_value(r.wavecal.clip_sigma),
      "reject arc lines beyond this many robust rms")(
      "wavecal.min-snr", po::value<double>()->default_value(r.wavecal.peaks.min_snr), "arc line detection threshold")(
      "wavecal.dispersion-tolerance", po::value<double>()->default_value(r.wavecal.dispersion_tolerance),
      "relative error of the profile's dispersion hint searched")(
      "wavecal.shift-tolerance-px", po::value<double>()->default_value(r.wavecal.shift_tolerance_px),
      "offset (px) of the profile's central wavelength searched")(
      "wavecal.medium", po::value<std::string>()->default_value(wavecal::to_string(r.wavecal.output_medium)),
      "medium of the output wavelengths: air | vacuum (Morton 2000)")(
      "wavecal.fiber-smooth-order", po::value<int>()->default_value(r.wavecal.fiber_smooth_order),
      "fiber mode: polynomial degree of each coefficient across the fibers")(
      "resample.spacing", po::value<std::string>()->default_value("linear"), "output grid: linear | log")(
      "resample.start", po::value<double>(), "first output wavelength (A; default: the range every aperture covers)")(
      "resample.end", po::value<double>(), "last output wavelength (A)")(
      "resample.step", po::value<double>()->default_value(r.resample.step_angstrom),
      "linear step (A; <= 0: the median dispersion)")(
      "resample.step-km-s", po::value<double>()->default_value(r.resample.step_km_s),
      "log step (km/s per pixel; <= 0: the median dispersion)")(
      "red.flexure", po::value<std::string>()->default_value(to_string(r.flexure)),
      "flexure per science exposure: auto | sky-lines | cross-correlation | none")(
      "red.sky-linelist", po::value<std::string>()->default_value(r.sky_linelist),
      "night-sky line list (IRAF format, air) for the flexure")(
      "red.master-sky-clip", po::value<double>()->default_value(r.master_sky_clip_sigma),
      "fiber master sky: reject a sky fiber's pixel this many sigma off the median")(
      "red.master-sky-min-fibers", po::value<int>()->default_value(r.master_sky_min_fibers),
      "fiber master sky: fewest usable sky fibers");
  desc.add(red);
  po::options_description flux("in-field flux calibration after the RED stage ([fluxcal] section; fiber mode)");
  flux.add_options()("fluxcal.catalog", po::value<std::string>()->default_value(""),
                     "photometric catalog CSV of the standard (C) fibers: turns the flux calibration on")(
      "fluxcal.templates", po::value<std::string>()->default_value(""), "template grid (HDF5, docs/templates.md)")(
      "fluxcal.filters", po::value<std::string>()->default_value(""), "folder of <band>.dat filter curves")(
      "fluxcal.filter-unit", po::value<std::string>()->default_value("um"), "wavelength unit of the filter files")(
      "fluxcal.extinction", po::value<std::string>()->default_value(""),
      "extinction curve [A, mag/airmass] (default: the profile's [site] extinction_file)")(
      "fluxcal.mask", po::value<std::string>()->default_value(""), "telluric/bad band mask [A]")(
      "fluxcal.fwhm-angstrom", po::value<double>()->default_value(0.0),
      "instrument resolution for the template fit (FWHM, A); 0: measured from the arc lines of the setup's arc "
      "solution")(
      "fluxcal.mode", po::value<std::string>()->default_value("exposure"), "exposure | nightly")(
      "fluxcal.min-standards", po::value<int>()->default_value(2),
      "nightly mode: an exposure with fewer usable stars gets the nightly vector");
  desc.add(flux);
  auto opts = parse_options("reduce",
                            "kspecdr reduce --raw RAWDIR --instrument NAME|FILE --out OUTDIR [--stage im|ex|red] "
                            "[--config FILE] [--overwrite]",
                            argc, argv, desc);
  if (opts.help) return 0;
  const auto& vm = opts.vm;

  ReduceConfig cfg;
  cfg.raw_dir = vm["raw"].as<std::string>();
  cfg.out_dir = vm["out"].as<std::string>();
  cfg.instrument = vm["instrument"].as<std::string>();
  cfg.overwrite = vm["overwrite"].as<bool>();
  io::set_sync_outputs(vm["fsync"].as<bool>());
  cfg.night_name = vm["night"].as<std::string>();
  const std::string stage = vm["stage"].as<std::string>();
  if (stage == "im")
    cfg.stage = ReduceStage::Im;
  else if (stage == "ex")
    cfg.stage = ReduceStage::Ex;
  else if (stage == "red" || stage == "all")  // all: every stage this build runs
    cfg.stage = ReduceStage::Red;
  else
    throw ConfigError(fmt::format("--stage {}: use im, ex or red (flux calibration is not part of this build yet)",
                                  stage));
  cfg.detector.bias_combine = detector::combine_method_from_string(vm["detector.bias-combine"].as<std::string>());
  cfg.detector.flat_combine = detector::combine_method_from_string(vm["detector.flat-combine"].as<std::string>());
  cfg.detector.combine_clip_sigma = vm["detector.clip-sigma"].as<double>();
  cfg.detector.overscan_method = vm["detector.overscan-method"].as<std::string>();
  if (!cfg.detector.overscan_method.empty() && cfg.detector.overscan_method != "median" &&
      cfg.detector.overscan_method != "poly")
    throw ConfigError(fmt::format("--detector.overscan-method {}: use median or poly", cfg.detector.overscan_method));
  cfg.detector.overscan_order = vm["detector.overscan-order"].as<int>();
  cfg.detector.flat_smooth_px = vm["detector.flat-smooth-px"].as<double>();
  cfg.detector.illumination_threshold = vm["detector.illumination-threshold"].as<double>();
  cfg.detector.illumination_min_snr = vm["detector.illumination-min-snr"].as<double>();
  cfg.detector.cosmic_enable = vm["detector.cosmics"].as<bool>();
  cfg.detector.cosmic_sigclip = vm["detector.cr-sigclip"].as<double>();
  cfg.detector.cosmic_objlim = vm["detector.cr-objlim"].as<double>();
  cfg.detector.cosmic_niter = vm["detector.cr-niter"].as<int>();
  read_stage_options(vm, "reduce", cfg.ex);
  cfg.red.wavecal.order = vm["wavecal.order"].as<int>();
  cfg.red.wavecal.clip_sigma = vm["wavecal.clip-sigma"].as<double>();
  cfg.red.wavecal.peaks.min_snr = vm["wavecal.min-snr"].as<double>();
  cfg.red.wavecal.dispersion_tolerance = vm["wavecal.dispersion-tolerance"].as<double>();
  cfg.red.wavecal.shift_tolerance_px = vm["wavecal.shift-tolerance-px"].as<double>();
  cfg.red.wavecal.output_medium = wavecal::medium_from_string(vm["wavecal.medium"].as<std::string>());
  cfg.red.wavecal.fiber_smooth_order = vm["wavecal.fiber-smooth-order"].as<int>();
  const std::string spacing = vm["resample.spacing"].as<std::string>();
  if (spacing != "linear" && spacing != "log")
    throw ConfigError(fmt::format("--resample.spacing {}: use linear or log", spacing));
  cfg.red.resample.spacing = spacing == "log" ? wavecal::ResampleConfig::Spacing::Log
                                              : wavecal::ResampleConfig::Spacing::Linear;
  if (vm.count("resample.start")) cfg.red.resample.start_angstrom = vm["resample.start"].as<double>();
  if (vm.count("resample.end")) cfg.red.resample.end_angstrom = vm["resample.end"].as<double>();
  cfg.red.resample.step_angstrom = vm["resample.step"].as<double>();
  cfg.red.resample.step_km_s = vm["resample.step-km-s"].as<double>();
  cfg.red.flexure = flexure_method_from_string(vm["red.flexure"].as<std::string>());
  cfg.red.sky_linelist = vm["red.sky-linelist"].as<std::string>();
  cfg.red.master_sky_clip_sigma = vm["red.master-sky-clip"].as<double>();
  cfg.red.master_sky_min_fibers = vm["red.master-sky-min-fibers"].as<int>();
  if (!vm["fluxcal.catalog"].as<std::string>().empty()) {
    auto& f = cfg.infield;
    f.catalog_file = vm["fluxcal.catalog"].as<std::string>();
    f.templates_file = vm["fluxcal.templates"].as<std::string>();
    f.filters_dir = vm["fluxcal.filters"].as<std::string>();
    f.filter_unit = vm["fluxcal.filter-unit"].as<std::string>();
    f.extinction_file = vm["fluxcal.extinction"].as<std::string>();
    f.mask_file = vm["fluxcal.mask"].as<std::string>();
    const double fwhm = vm["fluxcal.fwhm-angstrom"].as<double>();
    if (fwhm > 0) {
      f.fit.resolution.fwhm_poly_angstrom = {fwhm};
      f.fwhm_explicit = true;
    }
    f.mode = vm["fluxcal.mode"].as<std::string>();
    f.min_standards = vm["fluxcal.min-standards"].as<int>();
    if (f.templates_file.empty() || f.filters_dir.empty())
      throw ConfigError("--fluxcal.catalog needs --fluxcal.templates and --fluxcal.filters");
    if (f.mode != "exposure" && f.mode != "nightly")
      throw ConfigError(fmt::format("--fluxcal.mode {}: give exposure or nightly", f.mode));
    if (vm["fluxcal.fwhm-angstrom"].as<double>() < 0)
      throw ConfigError("--fluxcal.fwhm-angstrom must be positive (or 0: measured from the arcs)");
  }
  if (cfg.red.wavecal.order < 1 || cfg.red.master_sky_min_fibers < 1)
    throw ConfigError("--wavecal.order and --red.master-sky-min-fibers must be at least 1");
  cfg.resolved_config = resolved_config_ini("reduce", vm);

  ReduceSummary s = reduce_night(cfg, mpi::world());
  return s.exit_code();
}

}  // namespace kspecdr::cli
