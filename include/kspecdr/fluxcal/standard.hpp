#pragma once
// Spectrophotometric standard stars with a tabulated spectrum (IRAF onedstds /
// ESO format): one row per band, "wavelength [Å]  AB magnitude  bandwidth [Å]",
// where m_AB = −2.5 log10 f_ν − 48.60 is the mean over the band. Used by the
// known-standard (long-slit) mode: the table is the model F_model and no
// template is fitted.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/sensitivity.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr::fluxcal {

struct StandardSpectrum {
  std::string name;                         ///< from the file's "# NAME" first line, else the file stem
  std::filesystem::path file;
  std::vector<double> wavelength_angstrom;  ///< band centres, increasing (Å)
  std::vector<double> ab_mag;               ///< AB magnitude of each band
  std::vector<double> bandwidth_angstrom;   ///< full width of each band (Å)
  std::vector<double> flambda;              ///< f_λ (erg s⁻¹ cm⁻² Å⁻¹) of each band from ab_mag
};

/// Reads a tabulated standard. Rows with magnitude exactly 0.00 are IRAF's "no data" placeholders and are
/// dropped. Throws DataError naming the file and line for unreadable rows, non-positive bandwidths or
/// wavelengths that do not increase, and when fewer than 2 rows remain.
StandardSpectrum read_standard_file(const std::filesystem::path& path);

/// The table of star `name` in `search_dirs` (each searched with its sub-folders, e.g. ../shared/data/
/// standards/iraf): a file "<key>.dat" whose key equals the name lower-cased with everything but letters and
/// digits removed ("G93-48" → "g9348", "Feige 110" → "feige110"), or an alias from a "names.men" table in
/// the same folder. Throws DataError listing the folders searched when no table is found.
std::filesystem::path find_standard(const std::string& name, const std::vector<std::filesystem::path>& search_dirs);

/// `name_or_file` is read directly when it names an existing file, otherwise looked up with find_standard.
StandardSpectrum load_standard(const std::string& name_or_file,
                               const std::vector<std::filesystem::path>& search_dirs);

/// The calibration vector of one aperture of a RED exposure of the standard, on the table's bands: the
/// electrons inside each band [λ − w/2, λ + w/2] (pixels weighted by their overlap with the band; variance
/// with the squared weights and the neighbour covariance of COVAR) give Cal = f_λ t w / C_band through
/// make_cal_vector. A band is masked when it touches a mask band, a pixel with MASK ≠ 0 or lies partly
/// outside the RED grid. `exptime_s` and `airmass` are the exposure's (the result refers to `airmass`).
/// `model_rel_err` is the table's fractional uncertainty per band: Var(model) = (model_rel_err × f_λ)².
/// Throws DataError when the table does not overlap the RED grid or no band is usable.
CalVector cal_from_tabulated(const StandardSpectrum& star, const wavecal::RedSpectra& red, long aperture,
                             double exptime_s, double airmass, const BandMask& mask, const std::string& source,
                             double model_rel_err = 0.0);

}  // namespace kspecdr::fluxcal
