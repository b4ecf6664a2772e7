#pragma once
// Logging: spdlog's default logger, with the MPI rank in every line. Stage code
// calls spdlog::info/warn/error directly; the command line sets level and rank once.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace kspecdr {

/// Configures the default logger: "2026-11-21T10:00:00.123 [rank 1/4] info  message".
/// `level` is one of trace, debug, info, warn, error, off.
void init_logging(int rank, int size, const std::string& level = "info");
/// Sets the level of the default logger: trace, debug, info, warn (warning), error, critical or off; anything else
/// is a ConfigError naming the option, so that a misspelt level never silences the log.
void set_log_level(const std::string& level);

/// Progress of a long loop: a bar redrawn in place on a terminal, or a line every
/// `interval` (and at 100 %) in a batch log. Only the instance that is `enabled` prints
/// (typically rank 0).
class Progress {
 public:
  Progress(std::string label, std::size_t total, bool enabled = true,
           std::chrono::seconds interval = std::chrono::seconds(10));
  /// Marks `n` more items done.
  void advance(std::size_t n = 1);
  /// Sets the done count (e.g. gathered from all ranks).
  void set(std::size_t done, std::size_t failed = 0);
  void finish();
  ~Progress();

 private:
  void draw(bool force);
  std::string label_;
  std::size_t total_, done_ = 0, failed_ = 0;
  bool enabled_, tty_, finished_ = false;
  std::chrono::seconds interval_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace kspecdr
