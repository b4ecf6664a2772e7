#pragma once
// Helpers shared by the test suites: temporary folders, the reference data
// folder, and pull statistics.
#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kspecdr/io/format.hpp"

namespace kspecdr::testing {

/// A fresh folder under the system temp dir, removed with the object.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "kspecdr-test");
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// ../shared beside the clone (KSPECDR_SHARED_DIR), or nullopt when it is absent.
std::optional<std::filesystem::path> shared_dir();
/// The path of the kspecdr program built with the tests.
std::filesystem::path kspecdr_bin();
/// The MPI launcher CMake found, with the flags a container needs: "ENV... mpiexec -n <np> --oversubscribe".
std::string mpiexec_command(int np);

struct PullStats {
  double mean = 0, stddev = 0;
  std::size_t n = 0;
};
PullStats pull_stats(const std::vector<double>& pulls);

/// Runs a shell command, returns its exit code; stdout+stderr go to `output` when given.
int run_command(const std::string& cmd, std::string* output = nullptr);

/// One attribute or dataset of an HDF5 file, named as the format tables name it: `path` is the group of a dataset
/// ("" at the top) or the object an attribute sits on ("/" for the root group's), `type` the stored type
/// (float32, float64, uint8, int32, int64, string), `unit` a dataset's `units` attribute ("(none)" without one;
/// "" for attributes).
struct H5Item {
  std::string path, name, type, unit;
  io::FormatItem::Kind kind;
};
/// Every attribute and dataset of an HDF5 file, the root group's attributes included when asked.
std::vector<H5Item> h5_items(const std::filesystem::path& file, bool root_attributes);
/// HDF5 path patterns of the format tables: <placeholder> = one or more components, '*' = one component.
bool h5_path_matches(const std::string& pattern, const std::string& path);

}  // namespace kspecdr::testing

/// Skips the current test with a message naming the missing reference data.
#define KSPECDR_REQUIRE_SHARED(var)                                                                 \
  auto var##_opt = ::kspecdr::testing::shared_dir();                                                \
  if (!var##_opt) GTEST_SKIP() << "reference data folder ../shared (KSPECDR_SHARED_DIR) is absent"; \
  const std::filesystem::path var = *var##_opt
