#pragma once
// The trace map product (calib/traces_<setup>[_<object>].fits): the master
// traces of a setup, one TRACES table row per aperture (identity, status, the
// Legendre series of centre and width, fit scatter) and a BINS table of the
// per-bin measurements behind the fits, so the figures and later checks read
// what the trace stage measured instead of measuring it again. Its layout is
// the one table `trace_file_format()`, which the writer and reader follow.
#include <filesystem>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/trace/config.hpp"

namespace kspecdr::trace {

/// The trace-map layout: an empty PRIMARY with the image size and the settings of the measurement
/// window; TRACES (one row per aperture, detector order) and BINS (one row per bin of every aperture).
const std::vector<extract::FormatItem>& trace_file_format();

/// A trace map as read back: the traces and the primary header (settings, provenance).
struct TraceFile {
  TraceSet traces;
  Header header;
};

/// Writes `traces` to `path` atomically (temporary name, renamed when complete), with checksums in every
/// HDU. `config` is the trace configuration the traces were measured with (its window settings go to the
/// primary header); `header` adds provenance cards (setup, object, configuration hash). Throws Error if the
/// file exists and `overwrite` is false, FitsError on write failures.
void write_trace_file(const std::filesystem::path& path, const TraceSet& traces, const TraceConfig& config,
                      const Header& header, bool overwrite);

/// Reads a file written by write_trace_file. Throws FitsError/DataError naming the file, HDU and column.
TraceFile read_trace_file(const std::filesystem::path& path);

}  // namespace kspecdr::trace
