#include "support/testing.hpp"

#include <hdf5.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <regex>
#include <stdexcept>
#include <sys/wait.h>

#include "kspecdr/io/hdf5.hpp"

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

namespace {
std::string h5_type(hid_t type) {
  const auto size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: return size == 4 ? "float32" : size == 8 ? "float64" : "float?";
    case H5T_INTEGER:
      if (size == 1 && H5Tget_sign(type) == H5T_SGN_NONE) return "uint8";
      return size == 8 ? "int64" : "int" + std::to_string(8 * size);
    case H5T_STRING: return "string";
    default: return "?";
  }
}

herr_t collect_attr(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

void attributes_of(hid_t obj, const std::string& path, std::vector<H5Item>& out) {
  std::vector<std::string> names;
  H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr, &names);
  for (const auto& a : names) {
    const hid_t at = H5Aopen(obj, a.c_str(), H5P_DEFAULT);
    const hid_t ty = H5Aget_type(at);
    out.push_back({path, a, h5_type(ty), "", io::FormatItem::Kind::Attribute});
    H5Tclose(ty);
    H5Aclose(at);
  }
}

void walk_h5(hid_t file, const h5::Group& g, const std::string& prefix, std::vector<H5Item>& out) {
  for (const auto& m : g.members()) {
    const std::string path = prefix.empty() ? m : prefix + "/" + m;
    const hid_t o = H5Oopen(file, path.c_str(), H5P_DEFAULT);
    if (o < 0) throw std::runtime_error("cannot open HDF5 object " + path);
    attributes_of(o, path, out);
    if (H5Iget_type(o) == H5I_DATASET) {
      const hid_t ty = H5Dget_type(o);
      const h5::Dataset d = g.open_dataset(m);
      const std::string unit = d.has_attr("units") ? d.attr_string("units") : std::string("(none)");
      out.push_back({prefix, m, h5_type(ty), unit, io::FormatItem::Kind::Dataset});
      H5Tclose(ty);
      H5Oclose(o);
    } else {
      H5Oclose(o);
      walk_h5(file, g.open_group(m), path, out);
    }
  }
}
}  // namespace

std::vector<H5Item> h5_items(const fs::path& file, bool root_attributes) {
  std::vector<H5Item> out;
  const h5::File f = h5::File::open(file);
  const h5::Group& root = f.root();
  if (root_attributes) attributes_of(root.id(), "/", out);
  walk_h5(root.id(), root, "", out);
  return out;
}

bool h5_path_matches(const std::string& pattern, const std::string& path) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string re;
  for (std::size_t i = 0; i < pattern.size();) {
    if (pattern[i] == '<') {
      i = pattern.find('>', i) + 1;
      re += ".+";
    } else if (pattern[i] == '*') {
      re += "[^/]+";
      ++i;
    } else {
      if (special.find(pattern[i]) != std::string::npos) re += '\\';
      re += pattern[i++];
    }
  }
  return std::regex_match(path, std::regex(re));
}

}  // namespace kspecdr::testing
