#pragma once
// The observing log: one row per raw frame, read from headers only, with the
// frame class from the instrument profile's rules, and the frames grouped into
// calibration sets per instrument setup.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kspecdr/io/format.hpp"
#include "kspecdr/io/instrument.hpp"

namespace kspecdr {

struct FrameInfo {
  std::filesystem::path file;
  std::string name;            ///< file name without folder and FITS suffixes (the exposure name)
  FrameClass frame_class = FrameClass::Unknown;
  std::string object;
  double exptime_s = 0.0;      ///< exposure time, seconds
  std::string date_obs;        ///< start of exposure, ISO 8601 UTC
  double mjd_start = 0.0;      ///< MJD (UTC) at the start of the exposure
  double mjd_mid = 0.0;        ///< MJD (UTC) at mid-exposure
  double airmass = 0.0;        ///< 0 when the header has none
  double ra_deg = 0.0, dec_deg = 0.0;  ///< pointing (NaN when absent)
  std::string disperser;
  std::string lamps;
  std::string setup;           ///< setup key (profile setup_keywords)
  long ny = 0, nx = 0;         ///< raw image shape (NAXIS2, NAXIS1)
  std::vector<std::string> warnings;  ///< missing optional keywords etc.
};

struct UnreadableFrame {
  std::filesystem::path file;
  std::string reason;
};

/// The frames of one setup, by class (indices into ObservingLog::frames, in time order).
struct CalibrationSet {
  std::string setup;
  std::vector<std::size_t> bias, dark, flat, arc, science, imaging, unknown;
};

struct ObservingLog {
  std::string instrument;
  std::vector<FrameInfo> frames;          ///< sorted by mjd_start, then name
  std::vector<UnreadableFrame> unreadable;
  std::map<std::string, CalibrationSet> sets;
};

/// Reads one frame's headers (primary merged with the image HDU) and fills a FrameInfo.
/// Throws Error with the file named when the file is unreadable or lacks a required keyword.
FrameInfo read_frame_info(const std::filesystem::path& file, const InstrumentProfile& profile);

/// Scans `rawdir` for FITS files (.fits .fit .fts, optionally .gz or .fz). Unreadable files are
/// listed with the reason and never stop the scan.
ObservingLog build_observing_log(const std::filesystem::path& rawdir, const InstrumentProfile& profile);

/// The columns of log.csv and log.ecsv (hdu "log"), in file order.
const std::vector<io::FormatItem>& obslog_format();

/// CSV (plain) and ECSV (astropy reads it with units and dtypes) tables of the log; atomic.
void write_log_csv(const ObservingLog& log, const std::filesystem::path& path, bool overwrite = true);
void write_log_ecsv(const ObservingLog& log, const std::filesystem::path& path, bool overwrite = true);

/// Parses "YYYY-MM-DD[THH:MM:SS.sss]" (plus a separate "HH:MM:SS" time when the date has none)
/// into MJD (UTC) with ERFA. Throws DataError naming the text.
double iso_to_mjd(const std::string& date, const std::string& time = "");
/// Sexagesimal "hh:mm:ss.s" (hours=true) or "sdd:mm:ss" → degrees; plain numbers pass through.
double parse_angle_deg(const std::string& text, bool hours);

}  // namespace kspecdr
