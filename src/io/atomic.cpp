#include "kspecdr/io/atomic.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::io {
namespace fs = std::filesystem;

namespace {
std::atomic<unsigned> g_counter{0};
std::atomic<bool> g_sync{false};

void fsync_path(const fs::path& p) {
  if (!g_sync.load()) return;
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

void set_sync_outputs(bool sync) { g_sync.store(sync); }
bool sync_outputs() { return g_sync.load(); }

AtomicOutput::AtomicOutput(fs::path final_path, bool overwrite) : final_(std::move(final_path)) {
  if (!overwrite && fs::exists(final_))
    throw Error(fmt::format("output {} exists already; pass --overwrite to replace it", final_.string()),
                ErrorContext{.file = final_.string()});
  fs::path dir = final_.parent_path();
  if (!dir.empty()) fs::create_directories(dir);
  // Keep the full file name (and so its suffix, e.g. .fits.gz) at the end of the temporary name.
  temp_ = dir / fmt::format(".tmp-{}-{}-{}", ::getpid(), g_counter++, final_.filename().string());
  std::error_code ec;
  fs::remove(temp_, ec);
}

AtomicOutput::~AtomicOutput() {
  if (!committed_) {
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicOutput::commit() {
  if (!fs::exists(temp_))
    throw Error(fmt::format("temporary output {} was never written", temp_.string()),
                ErrorContext{.file = final_.string()});
  fsync_path(temp_);
  std::error_code ec;
  fs::rename(temp_, final_, ec);
  if (ec)
    throw Error(fmt::format("cannot rename {} to {}: {}", temp_.string(), final_.string(), ec.message()),
                ErrorContext{.file = final_.string()});
  committed_ = true;
  if (!final_.parent_path().empty()) fsync_path(final_.parent_path());
}

void write_text_atomic(const fs::path& path, const std::string& text, bool overwrite) {
  AtomicOutput out(path, overwrite);
  {
    std::ofstream f(out.temp_path());
    f << text;
    if (!f) throw Error(fmt::format("cannot write {}", out.temp_path().string()), ErrorContext{.file = path.string()});
  }
  out.commit();
}

}  // namespace kspecdr::io
