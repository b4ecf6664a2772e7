// Commands whose stages are being written; each moves to its own file.
#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::cli {
int run_simulate(int, char**) { throw ConfigError("simulate: not available in this build"); }
int run_reduce(int, char**) { throw ConfigError("reduce: not available in this build"); }
}  // namespace kspecdr::cli
