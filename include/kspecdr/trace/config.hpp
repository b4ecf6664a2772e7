#pragma once
// Every knob of the trace stage in one plain struct with documented defaults.
// cli/ fills it; trace code never looks options up anywhere else. Pixel units
// are detector pixels of the pipeline image (x = dispersion, y = spatial).
#include <string>
#include <utility>
#include <vector>

namespace kspecdr::trace {

/// How the centre and width of the spatial profile are measured in each bin.
enum class ProfileMeasure {
  Moments,   ///< background-subtracted flux-weighted first and second moments (fast, model-free)
  Gaussian,  ///< least-squares fit of a pixel-integrated Gaussian plus a constant (unbiased for Gaussian profiles)
};
std::string to_string(ProfileMeasure m);
/// "moments" or "gaussian"; throws ConfigError naming the text otherwise.
ProfileMeasure profile_measure_from_string(const std::string& s);

struct TraceConfig {
  // ---- reference points (slit mode)
  /// Reference points (x, y) in px, one per star; empty = find `n_stars` automatically.
  std::vector<std::pair<double, double>> references;
  /// Stars to find when `references` is empty: the N brightest peaks of the collapsed frame.
  int n_stars = 0;  ///< 0 = every star standing 5 sigma above the noise and at least 2 % of the brightest
  /// Minimum distance (px) between two automatically found stars.
  double min_separation_px = 5.0;

  // ---- measurement along the dispersion axis
  ProfileMeasure measure = ProfileMeasure::Gaussian;
  /// Columns summed into one bin; more columns = more S/N per bin, less detail along x.
  int bin_px = 16;
  /// Starting guess of the profile σ (px) before the first bin is measured.
  double initial_sigma_px = 2.0;
  /// Half-width of the measurement window, in units of the current σ estimate.
  double window_sigma = 4.0;
  /// The window is never narrower than this half-width (px), so a bad σ guess can recover.
  double min_window_half_px = 3.0;
  /// The window is never wider than this half-width (px); 0 = no limit. Fiber mode sets it to just under
  /// half the fiber spacing when it is 0, so a neighbour never enters the window.
  double max_window_half_px = 0.0;
  /// A bin whose peak S/N (peak / sqrt(variance) at the peak) is below this is not used.
  double min_bin_snr = 5.0;
  /// Largest jump (px) of a bin's centre from the prediction of its neighbours before it is dropped.
  double max_jump_px = 2.0;

  // ---- smooth fits along x
  int centre_order = 3;        ///< Legendre order of y(x)
  /// The order is raised (up to this) while the fit rejects `misfit_run_bins` or more neighbouring bins
  /// on one side: such a run is a bend the order cannot follow, not a set of outliers.
  int max_centre_order = 9;
  int misfit_run_bins = 4;
  int sigma_order = 2;         ///< Legendre order of σ(x)
  double clip_sigma = 3.5;     ///< reject bins beyond this many (robust) standard deviations
  int clip_iterations = 5;     ///< at most this many fit-reject rounds
  /// Fraction of bins that must survive for the trace to be accepted.
  double min_good_fraction = 0.3;

  // ---- fiber mode
  /// Columns (as fractions of nx) at which fibers are searched; the first is where they are matched to
  /// the FIBRES table, the others only check that the same number is seen.
  std::vector<double> find_columns = {0.5, 0.3, 0.7};
  /// A peak is a fiber when it is above this fraction of the median peak height of the brightest half.
  double fiber_threshold = 0.1;
  /// Cost of leaving a lit (non-'N') table fiber without a detected peak in the order match.
  double fiber_missing_cost = 3.0;
  /// Cost of a detected peak that matches no table fiber (a spurious peak).
  double fiber_spurious_cost = 3.0;
  /// Cost of a spacing wider than the table order implies (a gap between fiber blocks).
  double fiber_gap_cost = 1.0;

  // ---- per-exposure shift
  /// Clipping threshold (sigma) of the per-bin offsets when the shift is averaged.
  double shift_clip_sigma = 3.0;
};

}  // namespace kspecdr::trace
