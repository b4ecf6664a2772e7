#include "kspecdr/cli/options.hpp"

#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/log.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::cli {
namespace fs = std::filesystem;

ParsedOptions parse_options(const std::string& command, const std::string& usage, int argc, char** argv,
                            po::options_description desc, const po::positional_options_description& positional) {
  po::options_description common("Common options");
  common.add_options()("help,h", "show this help and exit")(
      "config", po::value<std::string>(), "INI file with any of these options (the command line wins)")(
      "log-level", po::value<std::string>()->default_value("info"), "trace, debug, info, warn, error");
  po::options_description all;
  all.add(desc).add(common);

  ParsedOptions out;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), out.vm);
    if (out.vm.count("help")) {
      out.help = true;
      if (!mpi::initialized() || mpi::world().is_root())
        std::cout << fmt::format("kspecdr {} — {}\n\nUsage: {}\n\n", version(), command, usage) << all << "\n";
      return out;
    }
    if (out.vm.count("config")) {
      fs::path cfg = out.vm["config"].as<std::string>();
      std::ifstream f(cfg);
      if (!f)
        throw ConfigError(fmt::format("cannot open config file {}", cfg.string()), ErrorContext{.file = cfg.string()});
      // Options already stored from the command line are not overwritten: the command line wins.
      po::store(po::parse_config_file(f, all, /*allow_unregistered=*/false), out.vm);
    }
    po::notify(out.vm);
    // The level from the command line in any spelling or from the --config file (main() could only look for
    // "--log-level X" on the command line, before the options were parsed).
    set_log_level(out.vm["log-level"].as<std::string>());
  } catch (const po::error& e) {
    throw ConfigError(fmt::format("{}: {} (see 'kspecdr {} --help')", command, e.what(), command));
  }
  return out;
}

namespace {
std::string any_to_string(const boost::any& v) {
  if (v.type() == typeid(std::string)) return boost::any_cast<std::string>(v);
  if (v.type() == typeid(int)) return std::to_string(boost::any_cast<int>(v));
  if (v.type() == typeid(long)) return std::to_string(boost::any_cast<long>(v));
  if (v.type() == typeid(unsigned)) return std::to_string(boost::any_cast<unsigned>(v));
  if (v.type() == typeid(unsigned long)) return std::to_string(boost::any_cast<unsigned long>(v));
  if (v.type() == typeid(double)) return fmt::format("{}", boost::any_cast<double>(v));
  if (v.type() == typeid(bool)) return boost::any_cast<bool>(v) ? "true" : "false";
  return "?";
}
}  // namespace

std::string resolved_config_ini(const std::string& command, const po::variables_map& vm) {
  std::ostringstream os;
  os << "# kspecdr " << version() << " (git " << git_sha() << "), command '" << command << "'\n";
  os << "# the configuration this run used: options from the command line, the --config file and defaults\n";
  // A repeatable option (e.g. trace.reference x,y) gets one line per value, as --config reads it back.
  std::map<std::string, std::vector<std::string>> sorted;
  for (const auto& [k, v] : vm) {
    if (k == "help" || k == "config") continue;
    if (v.value().type() == typeid(std::vector<std::string>))
      sorted[k] = boost::any_cast<std::vector<std::string>>(v.value());
    else
      sorted[k] = {any_to_string(v.value())};
  }
  for (const auto& [k, values] : sorted)
    for (const auto& x : values) os << k << " = " << x << "\n";
  return os.str();
}

std::vector<double> parse_number_list(const std::string& text, const std::string& command, const std::string& option) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || std::string(end).find_first_not_of(" \t") != std::string::npos)
      throw ConfigError(fmt::format("{}: --{} = '{}' is not a comma-separated list of numbers", command, option, text),
                        ErrorContext{.keyword = option});
    out.push_back(v);
  }
  return out;
}

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"simulate", "write a simulated night of raw frames and its truth (going backward)", run_simulate},
      {"log", "classify raw frames from their headers into an observing table", run_log},
      {"reduce", "reduce a night: raw -> IM (detector calibration) and later stages", run_reduce},
      {"extract", "one IM frame -> EX: trace its stars, fit the sky, extract (timed)", run_extract},
      {"templates", "model-spectrum grids: import-bosz DIR OUT.h5, synth --out grid.h5", run_templates},
      {"fluxcal", "RED -> flux-calibrated RED with a tabulated standard star (long slit)", run_fluxcal},
  };
  return list;
}

}  // namespace kspecdr::cli
