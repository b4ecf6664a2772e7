#pragma once
// The RED file: the spectra of one exposure on a common wavelength grid. It is
// the EX layout (flux, variance and its components, SKY, MASK, per-pixel
// diagnostics, FIBRES, DIAGNOSTICS) with NAPER × NWAVE images, a wavelength
// WCS on axis 1 (CTYPE1 'WAVE' or 'WAVE-LOG', CUNIT1 'Angstrom', CRVAL1,
// CDELT1, CRPIX1; Greisen et al. 2006), and its own HDUs:
//   WAVELA  (NAPER × NPIX float64, Å) wavelength of each detector pixel of each
//           aperture before resampling, flexure included; NaN = no solution;
//   COVAR   (NAPER × NWAVE float32, e-²) covariance of the flux of output pixels
//           j and j + 1 that resampling introduces (0 in the last pixel);
//   WAVECAL (table) per aperture: the solution's status, rms and lines, and the
//           exposure's flexure shift.
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/io/format.hpp"
#include "kspecdr/wavecal/resample.hpp"

namespace kspecdr::wavecal {

/// What the wavelength calibration did to one aperture of one exposure.
struct ApertureWavelength {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::string status = "failed";  ///< the arc solution's status: ok | smoothed | failed
  double rms_px = kNaN;           ///< rms of the arc lines about the solution (px)
  double rms_angstrom = kNaN;
  int n_lines = 0;                ///< arc lines in the solution
  double flexure_px = 0.0;        ///< shift applied: a feature at x_arc is at x_arc + flexure_px here
  double flexure_err_px = kNaN;
  double flexure_own_px = kNaN;   ///< this aperture's own measurement (NaN when none)
  double flexure_own_err_px = kNaN;
  int flexure_lines = 0;          ///< sky lines this aperture's measurement used
};

struct RedSpectra {
  SpectrumSet spectra;          ///< on `grid`: NAPER × NWAVE; the header carries the WCS
  WavelengthGrid grid;
  ImageArrayD wavela;           ///< NAPER × NPIX (Å)
  ImageArray covariance_next;   ///< NAPER × NWAVE (e-²)
  std::vector<ApertureWavelength> wave;  ///< per aperture
};

/// The RED layout: the EX layout (extract::ex_format()) on the grid, the WCS and RED-stage keywords,
/// WAVELA, COVAR and WAVECAL.
const std::vector<io::FormatItem>& red_format();

/// Writes a RED file atomically. Throws Error if it exists and `overwrite` is false.
void write_red_file(const std::filesystem::path& path, const RedSpectra& red, bool overwrite);
/// Reads a RED file. Throws FitsError/DataError naming the file and HDU.
RedSpectra read_red_file(const std::filesystem::path& path);
/// The primary header, wavelength grid, apertures, per-aperture diagnostics and WAVECAL table of a RED file,
/// without its pixels (the images, WAVELA and COVAR stay empty).
RedSpectra read_red_tables(const std::filesystem::path& path);

}  // namespace kspecdr::wavecal
