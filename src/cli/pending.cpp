// Commands whose stages are not yet in the library.
#include "kspecdr/cli/options.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::cli {
int run_reduce(int, char**) { throw ConfigError("reduce: not available in this build"); }
}  // namespace kspecdr::cli
