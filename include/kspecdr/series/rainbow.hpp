#pragma once
// Per star a time series of spectra on one wavelength grid — a "Rainbow" in the
// sense of chromatic (Berta-Thompson et al.): fluxlike arrays shaped
// (nwave, ntime), wavelike arrays (nwave) and timelike arrays (ntime).
//
// `<night>.rainbow.h5`: one group per star (fiber mode: the aperture name; slit
// mode: "<object>/<aperture>"), each with
//   wavelike/wavelength            float64 (nwave), attrs units = "Angstrom", medium
//   timelike/time                  float64 (ntime), BJD_TDB (JD, days), attrs units = "d", scale
//   timelike/mjd_utc, exptime_s, airmass, trace_offset_px, trace_width_px,
//            wavelength_shift_px, sky_median_e, snr_median     float64 (ntime)
//   timelike/ok                    uint8 (ntime): 1 = the exposure was reduced and the aperture is usable
//   fluxlike/flux, uncertainty, sky, var_star, var_sky, var_read, var_cal   float32 (nwave, ntime), e-
//            (erg/cm2/s/A and its square in the flux-calibrated cube <night>.fcal.rainbow.h5)
//   fluxlike/ok                    uint8 (nwave, ntime): 1 = good pixel
// chunked (nwave, k) with an unlimited time axis, and the group attrs name, type, ra_deg, dec_deg, setup,
// traceset, n_time and exposures (the exposure names in time order, comma-separated). The file root
// carries the attrs provenance and format. The datasets are written collectively over MPI-IO: every rank creates every dataset
// with the same arguments and writes the time slices of its own exposures; ranks with nothing to write
// take part with an empty selection.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/io/format.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/series/time.hpp"

namespace kspecdr::series {

/// The layout of <night>.rainbow.h5 (groups <star>, datasets and attributes) and of the chromatic FITS
/// file <star>.rainbow.fits made from one of its groups.
const std::vector<io::FormatItem>& rainbow_format();
/// The flux-calibrated cube <night>.fcal.rainbow.h5: the same layout, the fluxlike arrays in erg/cm2/s/A
/// (variances in its square).
const std::vector<io::FormatItem>& rainbow_fcal_format();
const std::vector<io::FormatItem>& rainbow_fits_format();

/// One exposure of a time series.
struct SeriesExposure {
  std::string name;
  std::filesystem::path red;  ///< its RED file; missing or unreadable = a failed exposure (ok = 0)
  double mjd_mid_utc = 0.0;   ///< MJD (UTC) at mid-exposure
  double exptime_s = 0.0;
  double airmass = 0.0;
  double ra_deg = 0.0, dec_deg = 0.0;  ///< pointing (used for apertures without their own RA/Dec)
};

/// The exposures of one setup and trace set, on one wavelength grid, in time order.
struct SeriesSet {
  std::string setup;
  std::string traceset;  ///< slit mode: the object (group prefix); "" in fiber mode
  std::vector<SeriesExposure> exposures;
};

struct RainbowSummary {
  std::vector<std::string> groups;  ///< star groups written
  std::size_t failed_exposures = 0;  ///< exposures without a usable RED (ok = 0)
  std::uint32_t no_collective_cause = 0;  ///< OR of H5Pget_mpio_no_collective_cause over the writes (0 = all collective)
};

/// Writes `path` (atomically: a temporary name renamed when complete) collectively over `comm`: every rank
/// must call it with the same `sets`. Apertures of type 'N' (unused) get no group. Throws Error on every rank
/// when no set has a readable RED file or the file cannot be written.
/// `flux_calibrated`: the exposures' files are fluxcal's <run>.fcal.fits; the fluxlike arrays are then in
/// erg/cm2/s/A (rainbow_fcal_format) and a file that is not FLUXCAL = T (its calibration failed) is a failed
/// exposure, ok = 0.
RainbowSummary write_rainbow_file(const std::filesystem::path& path, const std::vector<SeriesSet>& sets,
                                  const Site& site, const std::string& provenance, const mpi::Comm& comm,
                                  bool overwrite, bool flux_calibrated = false);

/// Rank-local: one star group of a Rainbow HDF5 file as chromatic's own FITS layout (primary header
/// metadata; binary tables FLUXLIKE with one (ntime)-vector per wavelength row, WAVELIKE and TIMELIKE, each
/// column with its unit), so that `chromatic.read_rainbow(path)` loads it.
void write_chromatic_fits(const std::filesystem::path& h5, const std::string& group,
                          const std::filesystem::path& out, bool overwrite);

/// The star-group name for a set and an aperture ("star1", or "OBJECT/star1" in slit mode), HDF5-safe.
std::string star_group(const std::string& traceset, const std::string& aperture);

}  // namespace kspecdr::series
