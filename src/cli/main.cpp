// kspecdr <command> [options]: the one program. MPI is initialised here so that
// every command runs alike on one rank or under mpirun.
#include <fmt/format.h>

#include <cstring>
#include <exception>
#include <iostream>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/core/log.hpp"
#include "kspecdr/core/memory.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace {
void usage() {
  std::cout << fmt::format("kspecdr {} (git {}) — raw spectrograph frames to calibrated spectra\n\n", kspecdr::version(),
                           kspecdr::git_sha())
            << "Usage: kspecdr <command> [options]      (kspecdr <command> --help for its options)\n\nCommands:\n";
  for (const auto& c : kspecdr::cli::commands()) std::cout << fmt::format("  {:<10} {}\n", c.name, c.summary);
  std::cout << "\nExit codes: 0 success; 1 fatal error; 2 usage or configuration error (nothing done);\n"
               "            3 the night ran but some exposures failed.\n";
}
}  // namespace

int main(int argc, char** argv) {
  kspecdr::keep_freed_memory();
  kspecdr::mpi::Environment env(argc, argv);
  auto& world = kspecdr::mpi::world();
  std::string level = "info";
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--log-level") == 0) level = argv[i + 1];
  try {
    kspecdr::init_logging(world.rank(), world.size(), level);
  } catch (const std::exception&) {
    kspecdr::init_logging(world.rank(), world.size(), "info");
  }

  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    if (world.is_root()) usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    if (world.is_root()) std::cout << "kspecdr " << kspecdr::version() << " (git " << kspecdr::git_sha() << ")\n";
    return 0;
  }
  for (const auto& c : kspecdr::cli::commands()) {
    if (c.name != std::string(argv[1])) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const kspecdr::ConfigError& e) {
      spdlog::error("{}", e.what());
      return 2;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      return 1;
    }
  }
  if (world.is_root()) {
    std::cerr << fmt::format("kspecdr: unknown command '{}'\n\n", argv[1]);
    usage();
  }
  return 2;
}
