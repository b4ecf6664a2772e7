#include "support/testing.hpp"

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sys/wait.h>

namespace kspecdr::testing {
namespace fs = std::filesystem;

TempDir::TempDir(const std::string& tag) {
  std::random_device rd;
  path_ = fs::temp_directory_path() / (tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  fs::create_directories(path_);
}
TempDir::~TempDir() {
  std::error_code ec;
  if (!std::getenv("KSPECDR_KEEP_TEST_FILES")) fs::remove_all(path_, ec);
}

std::optional<fs::path> shared_dir() {
  const char* env = std::getenv("KSPECDR_SHARED_DIR");
  fs::path p = env ? env : KSPECDR_TEST_SHARED_DIR;
  if (fs::exists(p / "data")) return fs::canonical(p);
  return std::nullopt;
}

fs::path kspecdr_bin() {
  const char* env = std::getenv("KSPECDR_BIN");
  return env ? env : KSPECDR_TEST_BIN;
}

std::string mpiexec_command(int np) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + std::string(KSPECDR_TEST_MPIEXEC) + " -n " +
         std::to_string(np) + " --oversubscribe";
}

PullStats pull_stats(const std::vector<double>& pulls) {
  PullStats s;
  s.n = pulls.size();
  if (s.n == 0) return s;
  double sum = 0;
  for (double p : pulls) sum += p;
  s.mean = sum / static_cast<double>(s.n);
  double ss = 0;
  for (double p : pulls) ss += (p - s.mean) * (p - s.mean);
  s.stddev = std::sqrt(ss / static_cast<double>(s.n > 1 ? s.n - 1 : 1));
  return s;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf{};
  std::string out;
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), p)) out += buf.data();
  int rc = ::pclose(p);
  if (output) *output = out;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace kspecdr::testing
