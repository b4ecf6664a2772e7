#pragma once
// The in-field flux calibration of fiber exposures: the standard stars (fibers of type C) observed in the
// same exposure as the science give the calibration vector.
//
//   RED exposure → C fibers → positional match to the photometric catalog → template fit per star
//     (radial velocity, Teff, log g, [M/H], [α/M]; the instrument FWHM from the config)
//     → the model scaled to the catalog magnitudes by synthetic photometry
//     → F_model on the RED grid → Cal_star = F_model t Δλ / C            [erg cm⁻² e⁻¹] (sensitivity.hpp),
//       Var(F_model) from the scale's error and the fit's template uncertainty (template_fit.hpp)
//     → moved to airmass 0 with the extinction curve → quality gates and combination (combine.hpp: one curve
//       × a grey factor per star, the factors at geometric mean 1)
//     → applied to every aperture of the exposure (apply.hpp).
//
// Modes: "exposure" (each exposure with its own stars) or "nightly" (the airmass-0 vectors of all
// exposures are averaged; an exposure whose own stars give fewer than `min_standards` usable vectors is
// calibrated with that nightly vector, the others with their own).
//
// MPI: every rank reads the inputs; the stars of an exposure are spread over the ranks (star s on ranks
// r ≡ s mod n_stars when there are more ranks than stars, the star's candidate templates then split
// between those ranks; otherwise star s on rank s mod size). The template scores are gathered to every rank
// (allgatherv), the star's owner finishes the fit, scales the model and forms its vector; the vectors are
// gathered, the root combines them and broadcasts the result. Only the root writes files. Every collective
// is called by every rank in the same order, whatever fails.
//
// Outputs per RED: <run>.fcal.fits (or, when the calibration fails, the RED unchanged but for FLUXCAL = F,
// FCALERR and a HISTORY line) and the per-star sidecar <run>.fcalstars.csv (one row per standard fiber:
// see `write_star_table`).
#include <array>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/apply.hpp"
#include "kspecdr/fluxcal/catalog.hpp"
#include "kspecdr/fluxcal/combine.hpp"
#include "kspecdr/fluxcal/extinction.hpp"
#include "kspecdr/fluxcal/resolution.hpp"
#include "kspecdr/fluxcal/template_fit.hpp"
#include "kspecdr/fluxcal/templates.hpp"
#include "kspecdr/io/format.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr::fluxcal {

struct InFieldConfig {
  std::vector<std::filesystem::path> red_files;
  std::filesystem::path catalog_file;     ///< CSV (catalog.hpp)
  std::filesystem::path templates_file;   ///< HDF5 template grid (templates.hpp)
  std::filesystem::path filters_dir;      ///< <band>.dat filter curves
  std::string filter_unit = "um";         ///< wavelength unit of the filter files: um | nm | Angstrom
  std::vector<std::string> bands;         ///< catalog bands to use; empty: every band with a filter file
  std::map<std::string, double> ab_offsets;  ///< m_AB − m_catalog per band; default_ab_offset otherwise
  double match_radius_arcsec = 2.0;
  std::filesystem::path extinction_file;  ///< [Å, mag/airmass]
  std::filesystem::path mask_file;        ///< band mask (telluric); empty: none
  std::filesystem::path out_dir;          ///< empty: beside each input
  std::string mode = "exposure";          ///< exposure | nightly
  int min_standards = 2;                  ///< nightly: fewer usable stars than this → the nightly vector
  bool overwrite = false;
  FitConfig fit;                          ///< resolution (FWHM, Å), metric, continuum, RV range
  /// Arc-solution files (calib/arcsol_*.fits) for the instrument resolution: one per RED file (same order) or
  /// one for all. When given and `fwhm_explicit` is false, each exposure's FWHM(λ) is measured from the arc
  /// lines (resolution.hpp) and replaces fit.resolution; otherwise fit.resolution is used as configured.
  std::vector<std::filesystem::path> arcsol_files;
  bool fwhm_explicit = false;             ///< fit.resolution was given explicitly: it wins over the arcs
  CombineConfig combine;                  ///< gates and combination
};

/// One standard fiber of one exposure.
struct StarResult {
  static constexpr double kNaN = CalVector::kNaN;
  std::string run, fiber, name;  ///< exposure, fiber (aperture) name, catalog name ("" when unmatched)
  double separation_arcsec = kNaN;
  TemplateParams params{kNaN, kNaN, kNaN, kNaN};
  double rv_km_s = kNaN, rv_err_km_s = kNaN;
  double scale = kNaN, scale_err = kNaN;  ///< model surface flux × scale = flux above the atmosphere
  double chi2_dof = kNaN;
  double model_mismatch = kNaN;           ///< per-pixel fractional σ of the template mismatch (χ² excess)
  double model_neighbours = kNaN;         ///< median fractional σ of the model from its neighbouring grid models
  double snr = kNaN;                      ///< median per-pixel S/N of the spectrum
  double factor = kNaN;                   ///< grey factor of the combination (fiber throughput relative)
  double log_level = kNaN;                ///< ln(level / median level) of the level gate
  bool used = false;
  std::string reason;                     ///< why rejected (or kept despite a failed gate); "" when clean
  CalVector cal;                          ///< at airmass 0 (empty when no vector could be formed)
  /// The fitted model × scale on the RED grid (cal.wavelength_angstrom), erg s⁻¹ cm⁻² Å⁻¹ above the atmosphere:
  /// convolved to the instrument resolution, shifted by the RV, resampled flux-conservingly — the F_model of
  /// Cal_star = F_model t Δλ / C. NaN where the model is undefined; empty when no vector was formed.
  std::vector<double> model;
  /// The photometric scale: per catalog band (in the catalog's order) the catalog and synthetic magnitudes and
  /// the residual after scaling, with the reason of every band not used. Empty `bands` when not scaled.
  PhotometricScale photometry;
};

/// The calibration of one exposure from its own stars.
struct ExposureCalibration {
  std::filesystem::path input, output;
  std::string run;
  double airmass = CalVector::kNaN, exptime_s = CalVector::kNaN;
  std::vector<StarResult> stars;
  CalVector cal;                  ///< combined, airmass 0 (empty when none could be formed)
  double rms = CalVector::kNaN;   ///< median fractional rms of the stars about it
  /// Per pixel the rms fractional scatter of the used stars about the combined vector, cal_s / (a_s cal) − 1
  /// over the stars kept at that pixel (NaN where fewer than two; empty when no vector was formed).
  std::vector<double> rms_frac;
  /// Fractional σ of the vector's overall level, fully correlated across λ (part of `cal.variance`): the
  /// photometric scales of the stars used.
  double level_rel_err = CalVector::kNaN;
  int n_used = 0;
  Resolution resolution;          ///< the instrument FWHM(λ) the template fit used
  std::string resolution_source;  ///< how it was obtained: the arc measurement's summary, or "configured …"
  std::string error;              ///< why no vector could be formed
  std::string applied;            ///< "own" | "nightly" | "" (not calibrated)
  bool ok = false;                ///< written calibrated
  std::string message;            ///< why the file was not calibrated
};

struct InFieldResult {
  std::vector<ExposureCalibration> exposures;
  CalVector nightly;                    ///< nightly mode: the mean of the exposures' vectors (airmass 0)
  double nightly_rms = CalVector::kNaN;
};

/// Everything that does not depend on the exposure, read once.
struct InFieldInputs {
  Catalog catalog;
  TemplateGrid grid;
  std::map<std::string, FilterCurve> filters;  ///< by catalog band name
  std::map<std::string, double> ab_offsets;    ///< by catalog band name
  ExtinctionCurve extinction;
  BandMask mask;
};

/// Reads the catalog, the filter curves of its bands (`<filters_dir>/<band>.dat`; a requested band without
/// a catalog column or a filter file is an error, an unrequested catalog band without a filter file is
/// skipped), the extinction curve, the mask and the template grid (only [lambda_min, lambda_max] Å when
/// given). Throws DataError/ConfigError naming the file.
InFieldInputs read_infield_inputs(const InFieldConfig& cfg, double lambda_min = 0.0, double lambda_max = 0.0);

/// The calibration of one RED exposure from its C fibers (collective over `comm`; see above). Never throws
/// for a problem of the data: `error` says why no vector was formed (no C fiber, no star matched, the grid
/// not covering the data, every star rejected) and every star's record carries its own reason.
ExposureCalibration calibrate_exposure(const wavecal::RedSpectra& red, const std::string& run, const InFieldInputs& in,
                                       const InFieldConfig& cfg, const mpi::Comm& comm);

/// The per-star sidecar (CSV, one header row): run, fiber, name, sep_arcsec, teff_k, logg, mh, alpha,
/// rv_km_s, rv_err_km_s, scale, scale_err, chi2_dof, model_mismatch, model_neighbours, snr, factor, log_level,
/// used (1/0), reason.
void write_star_table(const std::filesystem::path& path, const std::vector<StarResult>& stars);

/// The calibration vectors and the per-star diagnostics of a run (HDF5, all vectors at airmass 0; the layout is
/// `infield_cal_format()`): per exposure `exposures/NNN` its combined vector, the FWHM used and its attributes;
/// `exposures/NNN/stars/MMM` every star that gave a vector (used or rejected by the gates) with its own vector,
/// the fit's parameters, the scaled model and the photometry per band; `nightly` in the nightly mode. Written
/// through a temporary file; refuses an existing file unless `overwrite`. Call on one rank only.
void write_infield_cal_file(const std::filesystem::path& path, const InFieldResult& result, bool overwrite);

/// The layout of the file `write_infield_cal_file` writes (docs/formats.md lists the same items).
const std::vector<io::FormatItem>& infield_cal_format();

/// "<run>.fcalstars.csv" beside the calibrated file.
std::filesystem::path star_table_path(const std::filesystem::path& calibrated);

/// The HISTORY lines of one star (two lines: parameters; RV, scale, χ²/dof and the decision).
std::vector<std::string> star_history(const StarResult& s);

/// Runs the in-field mode over every RED (collective). Inputs are never modified; every RED is written to its
/// output name (calibrated, or with FLUXCAL = F and FCALERR when it could not be). Throws ConfigError for a
/// bad configuration; a catalog, grid or filter that cannot be read makes every output FLUXCAL = F.
InFieldResult run_infield(const InFieldConfig& cfg, const mpi::Comm& comm);

}  // namespace kspecdr::fluxcal
