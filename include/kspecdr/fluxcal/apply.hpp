#pragma once
// Applying a calibration vector to RED spectra, combining the vectors of a
// night, and the known-standard (long-slit) mode that strings them together:
//
//   standard RED(s) + tabulated spectrum → Cal per standard exposure (at its airmass)
//     → moved to airmass 0 with the extinction curve (per second by construction)
//     → per exposure, or combined over the night
//     → for every RED: moved to its airmass, interpolated onto its grid, applied:
//          F = C × m,  Var_F = Var_C m² + C² Var_m,  m = Cal / (t Δλ)   [erg s⁻¹ cm⁻² Å⁻¹ per e⁻]
//
// Pixels where Cal is masked come out as "no data" (flux 0, variance +inf, MASK bit NODATA), never as a
// calibrated 0 with variance 0.
#include <Eigen/Core>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/fluxcal/extinction.hpp"
#include "kspecdr/fluxcal/sensitivity.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr::fluxcal {

/// The flux unit written to BUNIT of calibrated spectra.
inline constexpr const char* kFluxUnit = "erg/cm2/s/A";

/// How the spectra are laid out in a 2D array: apertures along rows (NAPER × NWAVE, wavelength on FITS axis 1,
/// the RED layout) or along columns (NWAVE × NAPER, wavelength on FITS axis 2).
enum class SpectrumAxes { ApertureRows, ApertureColumns };

/// The layout declared by the header: the one axis n ∈ {1, 2} whose CTYPEn is 'WAVE' or 'WAVE-LOG' is the
/// wavelength axis (FITS axis 1 = array columns). Throws DataError when neither or both axes are declared,
/// or when that axis of the rows × cols array does not have `nwave` pixels. The lengths are never used to
/// guess the layout.
SpectrumAxes declared_axes(const Header& header, Eigen::Index rows, Eigen::Index cols, std::size_t nwave,
                           const std::string& file = "");

/// Multiplies the spectra C in place by m(λ) (length NWAVE, along the declared axis) with variance var_m:
/// flux ← C m and every array in `variances` ← Var m² + C² var_m. Pixels where m or var_m is not finite
/// become no data: flux 0, variances +inf, mask |= NODATA.
void apply_factor(ImageArray& flux, std::vector<ImageArray*> variances, MaskArray& mask,
                  SpectrumAxes axes, const std::vector<double>& m, const std::vector<double>& var_m);

/// What the header of a calibrated file records.
struct CalibrationRecord {
  int n_standards = 0;            ///< standard spectra (star × exposure) used: FCALNSTR
  double rms = CalVector::kNaN;   ///< FCALRMS: median fractional rms of the per-standard vectors about the
                                  ///< combined one; NaN (keyword left out) when one standard
  std::string mode;               ///< "exposure" or "nightly": FCALMODE
  std::string extinction;         ///< extinction curve name: FCALEXT
  std::vector<std::string> history;  ///< one line per standard (used or rejected and why)
};

/// Calibrates a RED exposure in place: `cal_airmass0` (airmass 0, see sensitivity.hpp) is moved to the
/// exposure's AIRMASS with `curve`, interpolated onto the RED grid and applied with the exposure's EXPTIME to
/// every aperture (flux, variance and components, SKY, COVAR). Sets BUNIT, FLUXCAL = T, FCALNSTR, FCALRMS,
/// FCALMODE, FCALEXT, FCALAIRM and the HISTORY lines. Throws DataError when the file is already calibrated
/// (FLUXCAL = T), lacks EXPTIME or AIRMASS, or its layout is not declared.
void apply_to_red(wavecal::RedSpectra& red, const CalVector& cal_airmass0, const ExtinctionCurve& curve,
                  const CalibrationRecord& record, const std::string& file = "");

/// Inverse-variance mean of vectors on one wavelength grid (others are interpolated onto the first's), pixel by
/// pixel with iterative clipping at `clip_sigma` (never more than half the vectors at a pixel). The variance is
/// 1/Σw scaled up by the reduced χ² of the vectors about the mean when that exceeds 1 (the vectors of one
/// star differ by more than their noise, e.g. by slit losses). `rms` (if given) receives the median over
/// pixels of the fractional rms of the vectors about the mean (NaN for one vector).
CalVector combine_mean(const std::vector<CalVector>& vectors, double clip_sigma = 3.0, double* rms = nullptr);

/// The known-standard (long-slit) mode.
struct KnownStandardConfig {
  std::vector<std::filesystem::path> red_files;          ///< every RED to calibrate (standards included)
  std::string standard;                                  ///< star name (looked up) or table file
  std::vector<std::filesystem::path> standard_dirs;      ///< catalogs for the name lookup
  std::vector<std::string> standard_exposures;           ///< runs (RED file stems) of the standard
  std::string standard_aperture;                         ///< aperture name, or "" for the only one
  std::filesystem::path extinction_file;                 ///< [Å, mag/airmass]
  std::filesystem::path mask_file;                       ///< band mask; empty: no bands
  std::filesystem::path out_dir;                         ///< empty: beside each input
  std::string mode = "nightly";                          ///< exposure | nightly
  /// Fractional uncertainty of the tabulated spectrum (per band; the same in every exposure of the star, so
  /// it is added after the exposures are combined, not averaged down with them).
  double standard_rel_err = 0.02;
  bool overwrite = false;
  std::filesystem::path cal_file;                        ///< where to write the Cal vectors (HDF5); empty: none
};

struct CalibratedFile {
  std::filesystem::path input, output;
  bool ok = false;
  std::string message;  ///< why it failed (output then holds the uncalibrated RED with FLUXCAL = F)
};

struct KnownStandardResult {
  std::vector<CalVector> per_exposure;  ///< per standard exposure, at airmass 0
  CalVector combined;                   ///< the nightly vector (airmass 0); = the one vector when one
  double rms = CalVector::kNaN;
  std::vector<CalibratedFile> files;
  std::string error;                    ///< set when no Cal could be formed (every file then failed)
};

/// The output name of a RED: "<run>.red.fits" → "<run>.fcal.fits" in out_dir (or beside the input).
std::filesystem::path calibrated_path(const std::filesystem::path& red, const std::filesystem::path& out_dir);

/// Runs the known-standard mode. Never modifies an input. A RED whose calibration fails (or every RED, when no
/// Cal can be formed: no standard exposure among the inputs, star not in the catalogs, table or extinction
/// curve not covering the spectrum) is written to its output name unchanged but for FLUXCAL = F and FCALERR
/// (the reason). Each output is written atomically.
KnownStandardResult run_known_standard(const KnownStandardConfig& cfg);

/// "r2701253.red.fits" → "r2701253".
std::string run_name(const std::filesystem::path& red);

}  // namespace kspecdr::fluxcal
