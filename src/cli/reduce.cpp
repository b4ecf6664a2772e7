// kspecdr reduce: options → ReduceConfig (plain structs), then the night.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/trace/config.hpp"
#include "kspecdr/extract/config.hpp"

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
  ExStageConfig e;
  po::options_description ex("trace, sky and extraction options ([trace], [sky], [extract] sections)");
  ex.add_options()("trace.measure", po::value<std::string>()->default_value(trace::to_string(e.trace.measure)),
                   "centroid and width by: gaussian | moments")(
      "trace.stars", po::value<int>()->default_value(e.trace.n_stars),
      "slit mode: number of stars found automatically, the brightest first (0 = every significant star)")(
      "trace.reference", po::value<std::vector<std::string>>()->composing(),
      "slit mode: a star's reference point 'x,y' in IM pixels (repeatable; replaces automatic finding)")(
      "trace.bin-px", po::value<int>()->default_value(e.trace.bin_px), "bin width along dispersion for centroids")(
      "trace.centre-order", po::value<int>()->default_value(e.trace.centre_order), "Legendre order of the centre y(x)")(
      "trace.width-order", po::value<int>()->default_value(e.trace.sigma_order), "Legendre order of the width")(
      "sky.method", po::value<std::string>()->default_value(extract::to_string(e.sky.method)),
      "slit sky per column: median | poly (clipped polynomial) | none")(
      "sky.distance-sigma", po::value<double>()->default_value(e.sky.distance_sigma),
      "sky windows start this many trace widths from the centre")(
      "sky.width-px", po::value<double>()->default_value(e.sky.width_px), "width of each sky window")(
      "sky.order", po::value<int>()->default_value(e.sky.poly_order), "polynomial order for sky.method = poly")(
      "extract.method", po::value<std::string>()->default_value(extract::to_string(e.extract.method)),
      "optimal (Horne 1986) | boxcar")(
      "extract.profile", po::value<std::string>()->default_value(extract::to_string(e.extract.profile)),
      "optimal-extraction profile: gaussian (from the trace width) | data (smoothed data)")(
      "extract.boxcar-sigma", po::value<double>()->default_value(e.extract.boxcar_halfwidth_sigma),
      "boxcar half-width in trace widths")(
      "extract.reject-sigma", po::value<double>()->default_value(e.extract.reject_sigma),
      "optimal extraction: reject pixels this many sigma off the profile model");
  desc.add(ex);
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
  try {
    cfg.ex.trace.measure = trace::profile_measure_from_string(vm["trace.measure"].as<std::string>());
    cfg.ex.trace.n_stars = vm["trace.stars"].as<int>();
    if (vm.count("trace.reference"))
      for (const auto& r : vm["trace.reference"].as<std::vector<std::string>>()) {
        auto comma = r.find(',');
        if (comma == std::string::npos)
          throw ConfigError(fmt::format("--trace.reference '{}': write x,y in IM pixels", r));
        cfg.ex.trace.references.emplace_back(std::stod(r.substr(0, comma)), std::stod(r.substr(comma + 1)));
      }
    cfg.ex.trace.bin_px = vm["trace.bin-px"].as<int>();
    cfg.ex.trace.centre_order = vm["trace.centre-order"].as<int>();
    cfg.ex.trace.sigma_order = vm["trace.width-order"].as<int>();
    cfg.ex.sky.method = extract::sky_method_from_string(vm["sky.method"].as<std::string>());
    cfg.ex.sky.distance_sigma = vm["sky.distance-sigma"].as<double>();
    cfg.ex.sky.width_px = vm["sky.width-px"].as<double>();
    cfg.ex.sky.poly_order = vm["sky.order"].as<int>();
    cfg.ex.extract.method = extract::extract_method_from_string(vm["extract.method"].as<std::string>());
    cfg.ex.extract.profile = extract::profile_source_from_string(vm["extract.profile"].as<std::string>());
    cfg.ex.extract.boxcar_halfwidth_sigma = vm["extract.boxcar-sigma"].as<double>();
    cfg.ex.extract.reject_sigma = vm["extract.reject-sigma"].as<double>();
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& ex_error) {
    throw ConfigError(fmt::format("reduce: {}", ex_error.what()));
  }
  cfg.resolved_config = resolved_config_ini("reduce", vm);

  ReduceSummary s = reduce_night(cfg, mpi::world());
  return s.exit_code();
}

}  // namespace kspecdr::cli
