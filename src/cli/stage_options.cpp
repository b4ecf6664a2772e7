// The trace/sky/extract option table of `reduce` and `extract`, and its parsing into ExStageConfig.
#include "kspecdr/cli/stage_options.hpp"

#include <fmt/format.h>

#include <exception>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/config.hpp"
#include "kspecdr/trace/config.hpp"

namespace kspecdr::cli {

po::options_description stage_options() {
  const ExStageConfig e;  // defaults shown in --help come from the structs themselves
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
      "sky.write-image", po::value<bool>()->default_value(e.write_sky_image),
      "slit mode: also write the 2D sky model, its variance and the sky windows into each EX file")(
      "extract.method", po::value<std::string>()->default_value(extract::to_string(e.extract.method)),
      "optimal (Horne 1986) | boxcar | joint (all apertures of a column fitted at once)")(
      "extract.deblend", po::value<std::string>()->default_value(extract::to_string(e.extract.deblend)),
      "fit overlapping neighbours jointly: auto (fiber mode, when the apertures overlap) | on | off")(
      "extract.profile", po::value<std::string>()->default_value(extract::to_string(e.extract.profile)),
      "optimal-extraction profile: gaussian (from the trace width) | data (smoothed data)")(
      "extract.boxcar-sigma", po::value<double>()->default_value(e.extract.boxcar_halfwidth_sigma),
      "boxcar half-width in trace widths")(
      "extract.reject-sigma", po::value<double>()->default_value(e.extract.reject_sigma),
      "optimal extraction: reject pixels this many sigma off the profile model");
  return ex;
}

void read_stage_options(const po::variables_map& vm, const std::string& command, ExStageConfig& cfg) {
  try {
    cfg.trace.measure = trace::profile_measure_from_string(vm["trace.measure"].as<std::string>());
    cfg.trace.n_stars = vm["trace.stars"].as<int>();
    if (vm.count("trace.reference"))
      for (const auto& r : vm["trace.reference"].as<std::vector<std::string>>()) {
        auto comma = r.find(',');
        if (comma == std::string::npos)
          throw ConfigError(fmt::format("--trace.reference '{}': write x,y in IM pixels", r));
        cfg.trace.references.emplace_back(std::stod(r.substr(0, comma)), std::stod(r.substr(comma + 1)));
      }
    cfg.trace.bin_px = vm["trace.bin-px"].as<int>();
    cfg.trace.centre_order = vm["trace.centre-order"].as<int>();
    cfg.trace.sigma_order = vm["trace.width-order"].as<int>();
    cfg.sky.method = extract::sky_method_from_string(vm["sky.method"].as<std::string>());
    cfg.sky.distance_sigma = vm["sky.distance-sigma"].as<double>();
    cfg.sky.width_px = vm["sky.width-px"].as<double>();
    cfg.sky.poly_order = vm["sky.order"].as<int>();
    cfg.write_sky_image = vm["sky.write-image"].as<bool>();
    cfg.extract.method = extract::extract_method_from_string(vm["extract.method"].as<std::string>());
    cfg.extract.deblend = extract::deblend_from_string(vm["extract.deblend"].as<std::string>());
    cfg.extract.profile = extract::profile_source_from_string(vm["extract.profile"].as<std::string>());
    cfg.extract.boxcar_halfwidth_sigma = vm["extract.boxcar-sigma"].as<double>();
    cfg.extract.reject_sigma = vm["extract.reject-sigma"].as<double>();
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& error) {
    throw ConfigError(fmt::format("{}: {}", command, error.what()));
  }
}

}  // namespace kspecdr::cli
