// kspecdr templates import-bosz DIR OUT.h5 | templates synth --out grid.h5: model-spectrum grids for the
// template fit of in-field standard stars (docs/templates.md).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <iostream>
#include <sstream>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/templates.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/sim/template_grid.hpp"

namespace kspecdr::cli {
namespace {

std::vector<double> number_list(const std::string& text, const std::string& option) {
  auto out = parse_number_list(text, "templates", option);
  if (out.empty()) throw ConfigError(fmt::format("templates: --{} is empty", option), ErrorContext{.keyword = option});
  return out;
}

/// "lo:hi:step" or a comma-separated list.
std::vector<double> values(const std::string& text, const std::string& option) {
  if (text.find(':') == std::string::npos) return number_list(text, option);
  std::string t = text;
  for (auto& ch : t)
    if (ch == ':') ch = ',';
  const auto v = number_list(t, option);
  if (v.size() != 3 || !(v[2] > 0) || v[1] < v[0])
    throw ConfigError(fmt::format("templates: --{} = '{}': use lo:hi:step", option, text), ErrorContext{.keyword = option});
  std::vector<double> out;
  for (double x = v[0]; x <= v[1] + 1e-9 * std::abs(v[1]); x += v[2]) out.push_back(x);
  return out;
}

int run_import_bosz(int argc, char** argv) {
  fluxcal::BoszImportOptions d;
  po::options_description desc("templates import-bosz options");
  desc.add_options()("dir", po::value<std::string>()->required(), "folder of BOSZ 2024 text files")(
      "out", po::value<std::string>()->required(), "template grid to write (HDF5)")(
      "lambda-min", po::value<double>()->default_value(d.lambda_min), "shortest wavelength kept [Å, vacuum]")(
      "lambda-max", po::value<double>()->default_value(d.lambda_max), "longest wavelength kept [Å, vacuum]")(
      "carbon", po::value<double>()->default_value(d.carbon), "[C/M] of the files to read")(
      "vturb", po::value<double>()->default_value(d.vturb), "microturbulence of the files to read [km/s]")(
      "flux-factor", po::value<double>()->default_value(d.flux_factor),
      "factor from the files' H_lambda to surface flux F_lambda (4 pi)")(
      "overwrite", po::bool_switch(), "replace OUT.h5");
  po::positional_options_description pos;
  pos.add("dir", 1).add("out", 1);
  auto opts = parse_options("templates import-bosz", "kspecdr templates import-bosz DIR OUT.h5 [options]", argc, argv,
                            desc, pos);
  if (opts.help) return 0;
  if (mpi::initialized() && !mpi::world().is_root()) return 0;
  const auto& vm = opts.vm;
  fluxcal::BoszImportOptions o;
  o.lambda_min = vm["lambda-min"].as<double>();
  o.lambda_max = vm["lambda-max"].as<double>();
  o.carbon = vm["carbon"].as<double>();
  o.vturb = vm["vturb"].as<double>();
  o.flux_factor = vm["flux-factor"].as<double>();
  const auto g = fluxcal::import_bosz(vm["dir"].as<std::string>(), o);
  fluxcal::write_template_grid(vm["out"].as<std::string>(), g, vm["overwrite"].as<bool>());
  spdlog::info("templates import-bosz: {} models, {} wavelengths -> {}", g.size(), g.wavelength_angstrom.size(),
               vm["out"].as<std::string>());
  return 0;
}

int run_synth(int argc, char** argv) {
  po::options_description desc("templates synth options");
  desc.add_options()("out", po::value<std::string>()->required(), "template grid to write (HDF5)")(
      "teff", po::value<std::string>()->default_value("4000:9000:250"), "Teff values [K]: lo:hi:step or a list")(
      "logg", po::value<std::string>()->default_value("3.5,4.0,4.5,5.0"), "log g values")(
      "mh", po::value<std::string>()->default_value("-1.0,-0.5,0.0,0.5"), "[M/H] values")(
      "alpha", po::value<std::string>()->default_value("0.0,0.4"), "[alpha/M] values")(
      "lambda-min", po::value<double>()->default_value(3000.0), "shortest wavelength [Å, air]")(
      "lambda-max", po::value<double>()->default_value(11000.0), "longest wavelength [Å, air]")(
      "step", po::value<double>()->default_value(0.5), "wavelength step [Å]")(
      "overwrite", po::bool_switch(), "replace OUT.h5");
  auto opts = parse_options("templates synth", "kspecdr templates synth --out grid.h5 [--teff lo:hi:step] [options]",
                            argc, argv, desc);
  if (opts.help) return 0;
  if (mpi::initialized() && !mpi::world().is_root()) return 0;
  const auto& vm = opts.vm;
  sim::SynthGridSpec s;
  s.teff_k = values(vm["teff"].as<std::string>(), "teff");
  s.logg = values(vm["logg"].as<std::string>(), "logg");
  s.mh = values(vm["mh"].as<std::string>(), "mh");
  s.alpha = values(vm["alpha"].as<std::string>(), "alpha");
  s.lambda_min = vm["lambda-min"].as<double>();
  s.lambda_max = vm["lambda-max"].as<double>();
  s.step_angstrom = vm["step"].as<double>();
  const auto g = sim::make_synthetic_template_grid(s);
  fluxcal::write_template_grid(vm["out"].as<std::string>(), g, vm["overwrite"].as<bool>());
  spdlog::info("templates synth: {} SYNTHETIC models, {} wavelengths -> {}", g.size(), g.wavelength_angstrom.size(),
               vm["out"].as<std::string>());
  return 0;
}

}  // namespace

int run_templates(int argc, char** argv) {
  const char* usage =
      "kspecdr templates import-bosz DIR OUT.h5 [options]   BOSZ 2024 text files -> template grid\n"
      "kspecdr templates synth --out grid.h5 [options]        labelled-synthetic parametric grid (demo, tests)\n";
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    if (!mpi::initialized() || mpi::world().is_root()) std::cout << usage;
    if (argc < 2) throw ConfigError("templates: give a subcommand (import-bosz or synth)");
    return 0;
  }
  const std::string sub = argv[1];
  if (sub == "import-bosz") return run_import_bosz(argc - 1, argv + 1);
  if (sub == "synth") return run_synth(argc - 1, argv + 1);
  throw ConfigError(fmt::format("templates: unknown subcommand '{}' (import-bosz or synth)", sub));
}

}  // namespace kspecdr::cli
