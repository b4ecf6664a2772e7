#pragma once
// The trace.*, sky.* and extract.* options shared by `kspecdr reduce` and
// `kspecdr extract`: one option table with the config structs' defaults, and
// one function that turns the parsed values into the stage's config.
#include <string>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/pipeline/extract_stage.hpp"

namespace kspecdr::cli {

/// The trace, sky and extraction options ([trace], [sky], [extract] sections of a --config file), their
/// defaults taken from a default-constructed ExStageConfig.
po::options_description stage_options();

/// Fills the trace, sky and extract parts of `cfg` from options parsed with stage_options(). Throws
/// ConfigError naming `command` and the option for a value that cannot be used.
void read_stage_options(const po::variables_map& vm, const std::string& command, ExStageConfig& cfg);

}  // namespace kspecdr::cli
