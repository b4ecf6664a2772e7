// kspecdr reduce: options → ReduceConfig (plain structs), then the night.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/cli/stage_options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"

namespace kspecdr::cli {

int run_reduce(int argc, char** argv) {
  detector::DetectorConfig d;  // defaults shown in --help come from the struct itself
  po::options_description desc("reduce options");
  desc.add_options()("raw", po::value<std::string>()->required(), "folder of raw FITS frames")(
      "instrument", po::value<std::string>()->required(), "instrument profile name or .ini path")(
      "out", po::value<std::string>()->required(), "output folder (calib/, im/, log.ecsv, config-used.ini)")(
      "stage", po::value<std::string>()->default_value("im"), "last stage to run: im (detector calibration) | ex (traces, sky, extraction)")(
      "overwrite", po::bool_switch(), "replace existing outputs (otherwise they are kept and skipped)");
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
      "detector.cosmics", po::value<bool>()->default_value(d.cosmic_enable), "flag cosmic rays (L.A.Cosmic)")(
      "detector.cr-sigclip", po::value<double>()->default_value(d.cosmic_sigclip), "L.A.Cosmic detection threshold")(
      "detector.cr-objlim", po::value<double>()->default_value(d.cosmic_objlim), "L.A.Cosmic contrast limit")(
      "detector.cr-niter", po::value<int>()->default_value(d.cosmic_niter), "L.A.Cosmic passes");
  desc.add(det);
  desc.add(stage_options());
  auto opts = parse_options("reduce",
                            "kspecdr reduce --raw RAWDIR --instrument NAME|FILE --out OUTDIR [--stage im] "
                            "[--config FILE] [--overwrite]",
                            argc, argv, desc);
  if (opts.help) return 0;
  const auto& vm = opts.vm;

  ReduceConfig cfg;
  cfg.raw_dir = vm["raw"].as<std::string>();
  cfg.out_dir = vm["out"].as<std::string>();
  cfg.instrument = vm["instrument"].as<std::string>();
  cfg.overwrite = vm["overwrite"].as<bool>();
  const std::string stage = vm["stage"].as<std::string>();
  if (stage == "im")
    cfg.stage = ReduceStage::Im;
  else if (stage == "ex")
    cfg.stage = ReduceStage::Ex;
  else
    throw ConfigError(fmt::format("--stage {}: this build runs the stages im and ex; the wavelength (red) and flux "
                                  "stages are not part of it yet",
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
  cfg.detector.cosmic_enable = vm["detector.cosmics"].as<bool>();
  cfg.detector.cosmic_sigclip = vm["detector.cr-sigclip"].as<double>();
  cfg.detector.cosmic_objlim = vm["detector.cr-objlim"].as<double>();
  cfg.detector.cosmic_niter = vm["detector.cr-niter"].as<int>();
  read_stage_options(vm, "reduce", cfg.ex);
  cfg.resolved_config = resolved_config_ini("reduce", vm);

  ReduceSummary s = reduce_night(cfg, mpi::world());
  return s.exit_code();
}

}  // namespace kspecdr::cli
