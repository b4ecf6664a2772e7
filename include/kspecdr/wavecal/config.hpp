#pragma once
// Every knob of the wavelength calibration in plain structs with documented
// defaults. cli/ fills them; wavecal code looks nothing up anywhere else.
// Positions are detector pixels along the dispersion axis (px, pixel centres
// at integers), wavelengths Ångström (Å).
#include <limits>
#include <string>

#include "kspecdr/wavecal/linelist.hpp"

namespace kspecdr::wavecal {

/// Finding and measuring arc (or sky) emission lines in a 1D spectrum.
struct PeakConfig {
  /// Detection threshold: signal in 3 pixels around a local maximum over its noise.
  double min_snr = 8.0;
  /// Line σ (px) used to start the fits; ≤ 0 = measured from the brightest lines.
  double sigma_guess_px = 0.0;
  /// Window (px) of the running lower-quartile background under the lines.
  int background_window_px = 61;
  /// Two detected lines closer than this many σ are both flagged blended.
  double blend_separation_sigma = 3.0;
  /// A fitted σ above this factor × the median σ flags an unresolved blend.
  double blend_width_factor = 1.6;
  /// Lines kept after sorting by signal (the faintest are dropped beyond this).
  int max_peaks = 400;
};

/// Automatic identification and the Legendre fit of λ(x).
struct WavecalConfig {
  PeakConfig peaks;
  /// Legendre order of λ(x) (degree); lowered automatically while too few lines are matched.
  int order = 4;
  /// Iterative clipping of the fit: residuals beyond `clip_sigma` × robust rms are rejected.
  double clip_sigma = 3.0;
  int clip_iterations = 10;
  /// Added in quadrature to each centroid error in the fit weights (px): list wavelengths
  /// and line profiles are never perfect, and without it the brightest lines dictate the fit.
  double centroid_floor_px = 0.02;
  /// Search range of the identification around the hints: relative dispersion error and
  /// offset (px) of the central wavelength.
  double dispersion_tolerance = 0.12;
  double shift_tolerance_px = 150.0;
  /// Also try λ decreasing where the hint says increasing (reported in the result).
  bool allow_reversed = true;
  /// Pattern matching: a triplet of lines uses up to this many neighbours on each step.
  int triplet_neighbours = 4;
  /// Position tolerance (px) of the ratio test between line and peak triplets, added to 3σ of the
  /// centroids and the list precision.
  double triplet_tolerance_px = 0.1;
  /// Brightest peaks used for pattern matching (all usable peaks enter the final fit).
  int pattern_peaks = 80;
  /// Candidate solutions from the pattern vote refined and compared.
  int candidates = 10;
  /// Final matching tolerance (px) between a peak and the predicted position of a list line.
  double match_tolerance_px = 1.0;
  /// Once the fit has settled the window shrinks to this many robust rms of the residuals, but not below
  /// `min_match_tolerance_px`: in dense lists (CuAr, ThAr) a 1 px window admits many chance matches.
  double match_tolerance_sigma = 5.0;
  double min_match_tolerance_px = 0.2;
  /// List lines closer together than this (px) are unresolved here and left out of the fit.
  double list_blend_px = 2.5;
  /// Validation: a solution needs at least this many lines in the fit ...
  int min_lines = 8;
  /// ... this many times more matches than chance coincidences at the final matching window ...
  double min_match_significance = 3.0;
  /// ... an rms below the largest of `max_rms_factor` × the rms the centroid errors predict,
  /// `max_rms_floor_px`, and `list_precision_angstrom` / |dλ/dx| (the lists' own rounding and errors) ...
  double max_rms_factor = 2.5;
  double max_rms_floor_px = 0.1;
  double list_precision_angstrom = 0.03;
  /// ... a fit error from the centroid errors below this anywhere on the detector (px): a solution
  /// extrapolated far beyond its lines is not a solution there ...
  double max_predicted_error_px = 0.3;
  /// ... the lines in each outer fifth of the detector within this (px, or 5 σ of the prediction)
  /// of the solution fitted without them: a wrong sequence of lines at one end bends the fit to it.
  double edge_consistency_px = 1.0;
  /// ... and no other valid candidate, with mostly different identifications, that fits this fraction
  /// of its number of lines (ambiguity).
  double ambiguity_fraction = 0.8;
  /// Medium of the output wavelengths (the line lists are converted to it).
  Medium output_medium = Medium::Air;

  // ---- fiber mode
  /// Polynomial degree of each Legendre coefficient as a function of fiber index.
  int fiber_smooth_order = 2;
  double fiber_clip_sigma = 3.0;
  /// A fiber whose own fit has fewer lines than this is refitted as a correction of the smooth model.
  int fiber_min_own_lines = 12;
  /// Every fiber's solution is the smooth model corrected with its own lines (a shift, and a scale with six
  /// or more lines): the higher orders come from all fibers together, which averages the line noise of
  /// single fibers down. false: only fibers without a good solution of their own are refitted.
  bool fiber_refit_all = true;

  // ---- flexure (per exposure)
  /// Search range (px) of the shift against the arc epoch.
  double flexure_max_shift_px = 10.0;
  /// Also fit a linear stretch of the pixel scale from the sky lines (needs lines spread along the spectrum).
  bool flexure_stretch = false;
};

/// Output grid and behaviour of flux-conserving resampling.
struct ResampleConfig {
  enum class Spacing { Linear, Log };
  Spacing spacing = Spacing::Linear;
  /// First and last pixel centres (Å); NaN = the range covered by every input spectrum.
  double start_angstrom = std::numeric_limits<double>::quiet_NaN();
  double end_angstrom = std::numeric_limits<double>::quiet_NaN();
  /// Linear step (Å); ≤ 0 = the median input dispersion.
  double step_angstrom = 0.0;
  /// Log step in velocity (km/s per pixel); ≤ 0 = the median input dispersion at the centre.
  double step_km_s = 0.0;
  /// true: flux is a density (per Å) and the output is the overlap-weighted mean (SpectRes);
  /// false: flux is counts per pixel (EX e- per column) and the output sums the overlapping shares.
  bool flux_is_density = false;
};

}  // namespace kspecdr::wavecal
