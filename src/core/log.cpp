#include "kspecdr/core/log.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <unistd.h>

#include <cstdio>

#include "kspecdr/core/error.hpp"

namespace kspecdr {

void init_logging(int rank, int size, const std::string& level) {
  auto logger = spdlog::stderr_color_mt("kspecdr");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern(fmt::format("%Y-%m-%dT%H:%M:%S.%e [rank {}/{}] %^%-5l%$ %v", rank, size));
  set_log_level(level);
}

void set_log_level(const std::string& level) {
  static const std::pair<const char*, spdlog::level::level_enum> names[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug}, {"info", spdlog::level::info},
      {"warn", spdlog::level::warn},   {"warning", spdlog::level::warn}, {"error", spdlog::level::err},
      {"critical", spdlog::level::critical}, {"off", spdlog::level::off}};
  for (const auto& [name, l] : names)
    if (level == name) {
      spdlog::set_level(l);
      return;
    }
  throw ConfigError(fmt::format("--log-level '{}': use trace, debug, info, warn, error, critical or off", level),
                    ErrorContext{.keyword = "log-level"});
}

Progress::Progress(std::string label, std::size_t total, bool enabled, std::chrono::seconds interval)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      interval_(interval),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::advance(std::size_t n) {
  done_ += n;
  draw(done_ >= total_);
}

void Progress::set(std::size_t done, std::size_t failed) {
  done_ = done;
  failed_ = failed;
  draw(done_ >= total_);
}

void Progress::draw(bool force) {
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  double left = done_ ? elapsed * (1.0 - frac) / frac : 0.0;
  std::string failed = failed_ ? fmt::format(", {} failed", failed_) : "";
  if (tty_) {
    const int width = 30;
    int filled = static_cast<int>(frac * width);
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu%s, %.0f s left   ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done_, total_, failed.c_str(), left);
    if (done_ >= total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
    if (done_ >= total_) finished_ = true;
    return;
  }
  if (force || now - last_ >= interval_) {
    spdlog::info("{}: {}/{} done ({:.0f} %){}, {:.0f} s elapsed, {:.0f} s left", label_, done_, total_, 100 * frac,
                 failed, elapsed, left);
    last_ = now;
    if (done_ >= total_) finished_ = true;
  }
}

void Progress::finish() {
  if (done_ < total_) done_ = total_;
  draw(true);
}

Progress::~Progress() = default;

}  // namespace kspecdr
