#pragma once
// The arc solution: a calibration product in calib/ (one file per setup, and
// in slit mode per set of traces). It holds the combined arc spectrum of every
// aperture, its wavelength solution (Legendre coefficients of λ(x), status,
// rms, line counts) and every identified line with its residual — what the
// RED stage applies and what the figures of docs/wavelength.md are drawn from.
//
// Layout: PRIMARY empty (keywords SETUP, TRACESET, MEDIUM, NPIX, LINELIST,
// NARCS, ARCn); ARC, ARC_VAR (NAPER × NPIX float32, e-; +inf = no data),
// ARC_MASK (uint16); SOLUTIONS (one row per aperture: NAME, TYPE, STATUS,
// MESSAGE, ORDER, COEFFS, XMIN, XMAX, RMS_PX, RMS_A, …); LINES (one row per
// identified line: APERTURE, X, X_ERR, WAVE, WAVE_FIT, RESID_PX, SNR, FLUX,
// SIGMA, USED, ID).
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/io/format.hpp"
#include "kspecdr/wavecal/solution.hpp"

namespace kspecdr::wavecal {

struct ArcCalibration {
  std::vector<ApertureInfo> apertures;
  ImageArray arc_flux;      ///< combined arc spectra, NAPER × NPIX (e- per column)
  ImageArray arc_variance;  ///< their variance (e-²), +inf where no input had data
  MaskArray arc_mask;
  std::vector<WavelengthSolution> solutions;  ///< one per aperture (status Failed where none)
  std::vector<std::string> arc_exposures;     ///< the arc exposures combined
  std::string setup;
  std::string traceset;  ///< slit mode: the object whose traces the arcs were extracted along
  std::string linelist;  ///< the line lists used
  Medium medium = Medium::Air;
  Header header;         ///< extra provenance (CALHASH, CFGHASH, DATE …)

  std::size_t naper() const { return solutions.size(); }
  long npix() const { return static_cast<long>(arc_flux.cols()); }
  int n_ok() const;  ///< solutions that are not Failed
};

/// The arc-solution layout: every HDU, column and keyword.
const std::vector<io::FormatItem>& arc_format();

/// Writes the arc solution file atomically. Throws Error if it exists and `overwrite` is false.
void write_arc_file(const std::filesystem::path& path, const ArcCalibration& arc, bool overwrite);
/// Reads an arc solution file. Throws FitsError/DataError naming the file and HDU.
ArcCalibration read_arc_file(const std::filesystem::path& path);

}  // namespace kspecdr::wavecal
