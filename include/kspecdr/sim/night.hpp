#pragma once
// A whole simulated night: the plan (biases, flats, arcs, science), the raw
// FITS frames written to DIR/raw/, and DIR/truth.h5 with everything each
// stage needs to be checked. docs/simulator.md describes every dataset.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/io/instrument.hpp"
#include "kspecdr/sim/config.hpp"

namespace kspecdr::sim {

/// One exposure of the night plan.
struct PlannedFrame {
  std::string name;  ///< file stem and /frames/<name> in the truth
  FrameClass frame_class = FrameClass::Unknown;
  std::string obstype, object, lamp;
  double exptime_s = 0.0;
  double mjd_start = 0.0;
};

/// The frames of a night in time order, from a resolved configuration.
std::vector<PlannedFrame> plan_night(const SimConfig& c);

struct NightResult {
  std::vector<std::filesystem::path> raw_files;
  std::filesystem::path truth_file;
  std::filesystem::path profile_file;  ///< the profile describing the frames (a copy in DIR)
};

/// Simulates the night of `c` (mode defaults resolved, validated). Throws ConfigError for an
/// unusable configuration or output folder before anything is written.
NightResult simulate_night(SimConfig c);

}  // namespace kspecdr::sim
