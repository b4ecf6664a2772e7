#pragma once
// Outputs are written under a temporary name in the destination folder and
// renamed over the final name only when complete, so a kill never leaves a
// half-written file under a final name.
#include <filesystem>
#include <string>

namespace kspecdr::io {

class AtomicOutput {
 public:
  /// Prepares to write `final_path`. Throws Error if it exists and `overwrite` is false
  /// (the message names the file and says to pass --overwrite).
  explicit AtomicOutput(std::filesystem::path final_path, bool overwrite = false);
  ~AtomicOutput();  ///< removes the temporary file unless commit() was called
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  /// Where to write: same folder, hidden name, same suffix (CFITSIO picks compression by suffix).
  const std::filesystem::path& temp_path() const { return temp_; }
  const std::filesystem::path& final_path() const { return final_; }
  /// Renames the temporary file onto the final name (the file and its folder fsync'd when sync_outputs()).
  void commit();

 private:
  std::filesystem::path final_, temp_;
  bool committed_ = false;
};

/// Whether commit() flushes each output to stable storage (fsync of the file before the rename and of the
/// folder after it). Off by default (`kspecdr reduce --fsync true` turns it on). Without it an output is still complete or absent after a kill of the
/// process (the rename is atomic and the page cache outlives the process); only a crash of the machine
/// itself can then leave a renamed file short, which the checksum check on resume catches for FITS outputs.
void set_sync_outputs(bool sync);
bool sync_outputs();

/// Writes a small text file atomically.
void write_text_atomic(const std::filesystem::path& path, const std::string& text, bool overwrite = true);

}  // namespace kspecdr::io
