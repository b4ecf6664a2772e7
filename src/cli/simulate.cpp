// kspecdr simulate --mode fiber|slit --out DIR: a night of raw frames and its truth.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sstream>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"

namespace kspecdr::cli {
namespace {

}  // namespace

int run_simulate(int argc, char** argv) {
  sim::SimConfig d;  // the defaults shown by --help
  po::options_description what("What and where");
  what.add_options()("mode", po::value<std::string>()->required(), "fiber or slit")(
      "out", po::value<std::string>()->required(), "output folder: DIR/raw/*.fits, DIR/truth.h5")(
      "seed", po::value<std::uint64_t>()->default_value(d.seed), "random seed (same seed, same bytes)")(
      "instrument", po::value<std::string>()->default_value(""), "profile name or path (default sim-fiber / sim-slit)")(
      "overwrite", po::bool_switch(), "replace an existing simulated night in DIR");
  po::options_description size("Image size (pipeline orientation: dispersion along x)");
  size.add_options()("nx", po::value<long>()->default_value(d.nx), "pixels along dispersion")(
      "ny", po::value<long>()->default_value(d.ny), "pixels along the slit / across fibers (0: fiber 400, slit 200)")(
      "overscan-px", po::value<long>()->default_value(d.overscan_px),
      "overscan width of amplifiers whose sections are in header keywords");
  po::options_description night("Night plan");
  night.add_options()("n-bias", po::value<int>()->default_value(d.n_bias), "bias frames")(
      "n-flat", po::value<int>()->default_value(d.n_flat), "quartz flats")(
      "n-arc", po::value<int>()->default_value(d.n_arc), "arcs (first OBSTYPE=ARC, others OBJECT with the lamp on)")(
      "n-science", po::value<int>()->default_value(d.n_science), "science exposures (0: fiber 3, slit 12)")(
      "flat-exptime-s", po::value<double>()->default_value(d.flat_exptime_s), "flat exposure time [s]")(
      "arc-exptime-s", po::value<double>()->default_value(d.arc_exptime_s),
      "first arc exposure time [s]; later arcs are 3x longer")(
      "science-exptime-s", po::value<double>()->default_value(d.science_exptime_s),
      "science exposure time [s] (0: fiber 600, slit 240)")(
      "overhead-s", po::value<double>()->default_value(d.overhead_s), "readout and set-up between exposures [s]")(
      "flexure-px", po::value<double>()->default_value(d.flexure_px),
      "science spectra drift along dispersion from -flexure-px to +flexure-px over the night [px]")(
      "mjd-start", po::value<double>()->default_value(d.mjd_start), "MJD of the first bias (0: the mode's default)");
  po::options_description detector("Detector");
  detector.add_options()("bias-level-dn", po::value<std::string>()->default_value(""),
                         "bias levels per amplifier, comma-separated [DN] (default 412,587,803,951)")(
      "bias-gradient-dn", po::value<double>()->default_value(d.bias_gradient_dn),
      "bias change along each amplifier's rows [DN]")(
      "bias-edge-dn", po::value<double>()->default_value(d.bias_edge_dn),
      "extra bias of the data columns next to the serial register [DN]")(
      "pixel-flat-rms", po::value<double>()->default_value(d.pixel_flat_rms), "pixel-to-pixel sensitivity rms")(
      "hot-column-e-per-s", po::value<double>()->default_value(d.hot_column_e_per_s), "dark current of the hot column")(
      "cosmic-rate-per-px-s", po::value<double>()->default_value(d.cosmic_rate_per_px_s),
      "cosmic-ray events per pixel per second")(
      "cosmic-extra-s", po::value<double>()->default_value(d.cosmic_extra_s),
      "seconds of cosmic rays added for readout and set-up");
  po::options_description light("Light");
  light.add_options()("flat-peak-e", po::value<double>()->default_value(d.flat_peak_e), "brightest flat pixel [e-]")(
      "arc-peak-e-per-s", po::value<double>()->default_value(d.arc_peak_e_per_s),
      "brightest arc-line pixel per second of exposure [e-/s]")(
      "arc-linelist", po::value<std::string>()->default_value(""), "arc line list (default: the profile's first)")(
      "lsf-sigma-px", po::value<double>()->default_value(d.lsf_sigma_px), "line-spread sigma at the centre [px]")(
      "telescope-area-cm2", po::value<double>()->default_value(d.telescope_area_cm2), "collecting area [cm2]")(
      "throughput-peak", po::value<double>()->default_value(d.throughput_peak), "peak system throughput")(
      "sky-continuum-photons", po::value<double>()->default_value(d.sky_continuum_photons),
      "sky photons /s /Angstrom per spatial pixel or fiber at 5500 Angstrom (0: fiber 1.2, slit 0.4)")(
      "sky-line-scale", po::value<double>()->default_value(d.sky_line_scale), "multiplies every sky-line flux");
  po::options_description fibers("Fiber mode");
  fibers.add_options()("n-fibers", po::value<int>()->default_value(d.n_fibers), "fibers")(
      "n-sky-fibers", po::value<int>()->default_value(d.n_sky_fibers), "sky fibers (TYPE S)")(
      "n-standard-fibers", po::value<int>()->default_value(d.n_standard_fibers), "standard-star fibers (TYPE C)")(
      "n-fiber-blocks", po::value<int>()->default_value(d.n_fiber_blocks), "blocks of fibers with gaps between")(
      "fiber-gap-px", po::value<double>()->default_value(d.fiber_gap_px), "extra space between blocks [px]")(
      "fiber-sigma-px", po::value<double>()->default_value(d.fiber_sigma_px), "spatial sigma of a fiber [px]");
  po::options_description slit("Slit mode");
  slit.add_options()("n-stars", po::value<int>()->default_value(d.n_stars), "stars on the slit (first transits)")(
      "transit-depth", po::value<double>()->default_value(d.transit_depth), "fractional transit depth")(
      "seeing-fwhm-arcsec", po::value<double>()->default_value(d.seeing_fwhm_arcsec), "median seeing [arcsec]")(
      "plate-scale-arcsec-per-px", po::value<double>()->default_value(d.plate_scale_arcsec_per_px),
      "plate scale along the slit")(
      "slit-width-arcsec", po::value<double>()->default_value(d.slit_width_arcsec), "slit width [arcsec]")(
      "drift-px", po::value<double>()->default_value(d.drift_px), "trace drift over the series [px]")(
      "catalog-filters-dir", po::value<std::string>()->default_value(""),
      "fiber mode: write DIR/catalog.csv with magnitudes through these filter curves (e.g. ../shared/data/filters)")(
      "catalog-bands", po::value<std::string>()->default_value("ps1_g,ps1_r,ps1_i,gaia_g"),
      "filter-file stems of the catalog bands (gaia_* are written as Vega magnitudes)");
  po::options_description all("simulate options");
  all.add(what).add(size).add(night).add(detector).add(light).add(fibers).add(slit);

  auto opts = parse_options("simulate",
                            "kspecdr simulate --mode fiber|slit --out DIR [--seed N] [--config FILE] [options]",
                            argc, argv, all);
  if (opts.help) return 0;
  if (mpi::initialized() && !mpi::world().is_root()) return 0;
  const auto& vm = opts.vm;

  sim::SimConfig c;
  const std::string mode = vm["mode"].as<std::string>();
  if (mode == "fiber" || mode == "fibre")
    c.mode = SpectroMode::Fiber;
  else if (mode == "slit")
    c.mode = SpectroMode::Slit;
  else
    throw ConfigError(fmt::format("simulate: --mode '{}' must be fiber or slit", mode), ErrorContext{.keyword = "mode"});
  c.out_dir = vm["out"].as<std::string>();
  c.seed = vm["seed"].as<std::uint64_t>();
  c.instrument = vm["instrument"].as<std::string>();
  c.overwrite = vm["overwrite"].as<bool>();
  c.nx = vm["nx"].as<long>();
  c.ny = vm["ny"].as<long>();
  c.overscan_px = vm["overscan-px"].as<long>();
  c.n_bias = vm["n-bias"].as<int>();
  c.n_flat = vm["n-flat"].as<int>();
  c.n_arc = vm["n-arc"].as<int>();
  c.n_science = vm["n-science"].as<int>();
  c.flat_exptime_s = vm["flat-exptime-s"].as<double>();
  c.arc_exptime_s = vm["arc-exptime-s"].as<double>();
  c.science_exptime_s = vm["science-exptime-s"].as<double>();
  c.overhead_s = vm["overhead-s"].as<double>();
  c.mjd_start = vm["mjd-start"].as<double>();
  c.bias_level_dn = parse_number_list(vm["bias-level-dn"].as<std::string>(), "simulate", "bias-level-dn");
  c.bias_gradient_dn = vm["bias-gradient-dn"].as<double>();
  c.bias_edge_dn = vm["bias-edge-dn"].as<double>();
  c.pixel_flat_rms = vm["pixel-flat-rms"].as<double>();
  c.hot_column_e_per_s = vm["hot-column-e-per-s"].as<double>();
  c.cosmic_rate_per_px_s = vm["cosmic-rate-per-px-s"].as<double>();
  c.cosmic_extra_s = vm["cosmic-extra-s"].as<double>();
  c.flat_peak_e = vm["flat-peak-e"].as<double>();
  c.arc_peak_e_per_s = vm["arc-peak-e-per-s"].as<double>();
  c.arc_linelist = vm["arc-linelist"].as<std::string>();
  c.lsf_sigma_px = vm["lsf-sigma-px"].as<double>();
  c.telescope_area_cm2 = vm["telescope-area-cm2"].as<double>();
  c.throughput_peak = vm["throughput-peak"].as<double>();
  c.sky_continuum_photons = vm["sky-continuum-photons"].as<double>();
  c.sky_line_scale = vm["sky-line-scale"].as<double>();
  c.n_fibers = vm["n-fibers"].as<int>();
  c.n_sky_fibers = vm["n-sky-fibers"].as<int>();
  c.n_standard_fibers = vm["n-standard-fibers"].as<int>();
  c.n_fiber_blocks = vm["n-fiber-blocks"].as<int>();
  c.fiber_gap_px = vm["fiber-gap-px"].as<double>();
  c.fiber_sigma_px = vm["fiber-sigma-px"].as<double>();
  c.n_stars = vm["n-stars"].as<int>();
  c.transit_depth = vm["transit-depth"].as<double>();
  c.seeing_fwhm_arcsec = vm["seeing-fwhm-arcsec"].as<double>();
  c.plate_scale_arcsec_per_px = vm["plate-scale-arcsec-per-px"].as<double>();
  c.slit_width_arcsec = vm["slit-width-arcsec"].as<double>();
  c.drift_px = vm["drift-px"].as<double>();
  c.flexure_px = vm["flexure-px"].as<double>();
  c.catalog_filters_dir = vm["catalog-filters-dir"].as<std::string>();
  {
    c.catalog_bands.clear();
    std::stringstream ss(vm["catalog-bands"].as<std::string>());
    std::string b;
    while (std::getline(ss, b, ','))
      if (!b.empty()) c.catalog_bands.push_back(b);
  }

  const sim::NightResult r = sim::simulate_night(c);
  io::write_text_atomic(c.out_dir / "config-used.ini", resolved_config_ini("simulate", vm), true);
  spdlog::info("simulate: wrote {} raw frames to {}, the truth to {}, the profile to {}", r.raw_files.size(),
               (c.out_dir / "raw").string(), r.truth_file.string(), r.profile_file.string());
  return 0;
}

}  // namespace kspecdr::cli
