// kspecdr log RAWDIR: the observing table, from headers only.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/obslog.hpp"

namespace kspecdr::cli {
namespace fs = std::filesystem;

int run_log(int argc, char** argv) {
  po::options_description desc("log options");
  desc.add_options()("raw", po::value<std::string>()->required(), "folder of raw FITS frames")(
      "instrument", po::value<std::string>()->required(), "instrument profile name or .ini path")(
      "out", po::value<std::string>(), "output table (.ecsv; a .csv is written beside it); default: print a summary");
  po::positional_options_description pos;
  pos.add("raw", 1);
  auto opts = parse_options("log", "kspecdr log RAWDIR --instrument NAME|FILE [--out FILE.ecsv]", argc, argv, desc, pos);
  if (opts.help) return 0;
  // Reading headers is fast and serial; under mpirun only rank 0 works.
  if (!mpi::world().is_root()) return 0;

  InstrumentProfile profile = load_instrument(opts.vm["instrument"].as<std::string>());
  ObservingLog log = build_observing_log(opts.vm["raw"].as<std::string>(), profile);

  std::cout << fmt::format("{:<22} {:<8} {:<16} {:>9} {:<24} {:>8} {}\n", "exposure", "class", "object", "exptime",
                           "date_obs", "airmass", "setup");
  for (const auto& f : log.frames)
    std::cout << fmt::format("{:<22} {:<8} {:<16} {:>9.2f} {:<24} {:>8.4f} {}\n", f.name, to_string(f.frame_class),
                             f.object, f.exptime_s, f.date_obs, f.airmass, f.setup);
  for (const auto& [setup, set] : log.sets)
    std::cout << fmt::format("setup '{}': {} bias, {} flat, {} arc, {} science, {} imaging, {} unknown\n", setup,
                             set.bias.size(), set.flat.size(), set.arc.size(), set.science.size(), set.imaging.size(),
                             set.unknown.size());
  for (const auto& u : log.unreadable) std::cout << fmt::format("unreadable: {}: {}\n", u.file.string(), u.reason);

  if (opts.vm.count("out")) {
    fs::path out = opts.vm["out"].as<std::string>();
    fs::path csv = out;
    csv.replace_extension(".csv");
    if (out.extension() != ".ecsv") out.replace_extension(".ecsv");
    write_log_ecsv(log, out);
    write_log_csv(log, csv);
    spdlog::info("wrote {} and {} ({} frames, {} unreadable)", out.string(), csv.string(), log.frames.size(),
                 log.unreadable.size());
  }
  return 0;
}

}  // namespace kspecdr::cli
