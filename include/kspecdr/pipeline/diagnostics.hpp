#pragma once
// The night's diagnostics file (OUTDIR/diagnostics.h5): every per-exposure and per-aperture number the
// stages measured, gathered from the EX, RED and arc-solution files after the night, for figures and
// systematics studies. h5py reads it without help:
//   /exposures/<run>            attrs class, setup, object, mjd_utc, exptime_s, airmass, status
//                               ("ok" | "failed: <reason>" | "not reduced"), stage (last file made),
//                               with a RED file flexure_px, flexure_err_px, flexure_method
//   /exposures/<run>/apertures  name, type (strings); trace_offset_px, shift_px, shift_err_px,
//                               width_scale, width_px, peak_e, masked_fraction, snr_median,
//                               sky_median_e (float64), rejected, bad_columns (int64), status (strings)
//                               — from the EX file; with a RED file also wave_rms_px, wave_lines
//   /calibration/<arc file stem> per aperture: name, status, rms_px, rms_angstrom, n_used, n_rejected,
//                               predicted_error_px
//   /failures                   exposure, file, reason (strings)
// Every numeric dataset has an attribute units. The layout is the table diagnostics_format().
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/io/format.hpp"

namespace kspecdr {

struct DiagnosticsExposure {
  std::string name, frame_class, setup, object;
  double mjd_utc = 0.0, exptime_s = 0.0, airmass = 0.0;
  std::string status;  ///< "ok", "failed: …" or "not reduced"
};

/// The layout of diagnostics.h5: groups, datasets and attributes.
const std::vector<io::FormatItem>& diagnostics_format();

/// Writes `path` atomically (replacing it) from the files in `out_dir` (ex/, red/, calib/arcsol_*).
/// Unreadable files are noted in the exposure's status, never fatal.
void write_night_diagnostics(const std::filesystem::path& path, const std::filesystem::path& out_dir,
                             const std::vector<DiagnosticsExposure>& exposures,
                             const std::vector<std::vector<std::string>>& failures);

}  // namespace kspecdr
