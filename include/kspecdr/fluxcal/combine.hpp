#pragma once
// Combining the calibration vectors of several standard stars into one, after star-level quality gates:
//   gates  χ²/dof of the template fit, fraction of good pixels, S/N, and the star's overall level against
//          the others (a star with wrong catalog magnitudes or a bad match is off by a constant factor):
//          ln(level) more than k robust σ (1.4826 MAD, with a floor and the star's own scale error) from the
//          median. At most half of the stars are rejected (the worst first); every decision is recorded.
//   model  optionally every star is a grey factor a_s (fiber throughput, aperture loss) times one common
//          curve; the factors are normalised to a geometric mean of 1 over the stars used;
//   combine per pixel, the inverse-variance weighted mean with iterative sigma clipping (each star against
//          its own σ; only with three or more stars), or the median; with grey factors the weights and the
//          clipping use each star's variance without its fully correlated part (StarCal::correlated_rel_var,
//          absorbed by the factor), which comes back as the error of the common level;
//   smooth  optionally Savitzky–Golay over the good pixels;
//   QC      the rms fractional scatter of the stars about the result at every λ, and its median (undefined,
//          NaN, when one star passes: never 0).
#include <string>
#include <vector>

namespace kspecdr::fluxcal {

struct CombineConfig {
  std::string method = "wmean";  ///< wmean | median
  double clip_sigma = 3.0;
  int clip_iterations = 5;
  bool per_star_scale = true;    ///< grey factor per star × common curve
  std::string smooth = "none";   ///< none | savgol
  int savgol_window = 51;        ///< pixels, odd
  int savgol_order = 3;
  // gates
  double max_chi2_dof = 5.0;
  double min_good_fraction = 0.5;
  double min_snr = 10.0;
  double scale_clip = 5.0;       ///< k of the level gate
  double scale_floor = 0.03;     ///< smallest robust σ of ln(level) used by the gate
};

/// One star's calibration vector (on the common wavelength grid) and what the gates need.
struct StarCal {
  std::string name;
  std::vector<double> cal, variance;  ///< NaN where masked
  std::vector<unsigned char> good;
  double chi2_dof = 0.0;
  double snr = 0.0;                   ///< median S/N per pixel of its spectrum
  double scale_rel_err = 0.0;         ///< relative error of its photometric scale
  /// The part of `variance` that is fully correlated across λ, as a fractional variance (variance_j contains
  /// correlated_rel_var × cal_j²): the error of the photometric scale. A grey factor per star absorbs it, so
  /// the combination weights and clips with the rest and adds it back as the error of the common level.
  double correlated_rel_var = 0.0;
};

struct StarQC {
  std::string name;
  double chi2_dof = 0, good_fraction = 0, snr = 0;
  double log_level = 0;  ///< ln(level / median level of the stars)
  double factor = 1.0;   ///< grey factor a_s of the common-curve model (1 without it)
  bool rejected = false;
  std::string reason;    ///< why rejected, or why kept although a gate failed; "" when every gate passed
};

struct CombinedCal {
  std::vector<double> cal, variance;
  std::vector<unsigned char> good;
  std::vector<int> n_used;        ///< stars behind each pixel after clipping
  std::vector<double> rms_frac;   ///< rms fractional scatter of the stars about cal (NaN with < 2 stars)
  double rms_median = 0.0;        ///< median of rms_frac over good pixels; NaN when one star passed
  /// Fractional variance of the result's overall level that is fully correlated across λ (included in
  /// `variance`): with grey factors, the geometric mean of the stars' scale errors, (1/N²) Σ correlated_rel_var.
  double level_rel_var = 0.0;
  int n_stars = 0;                ///< stars used
  std::vector<StarQC> qc;         ///< every star, in input order
};

/// Applies the gates (see above) and returns the decision for every star.
std::vector<StarQC> quality_gates(const std::vector<StarCal>& stars, const CombineConfig& cfg);

/// Gates, then combines. Throws DataError when no star is given, vectors differ in length, or no star passes
/// (the message lists every star's reason); ConfigError for an unknown method or smoothing.
CombinedCal combine_calibrations(const std::vector<StarCal>& stars, const CombineConfig& cfg);

/// Savitzky–Golay smoothing (least-squares polynomial of `order` over `window` pixels) of the good pixels;
/// masked pixels are bridged linearly first and stay masked.
std::vector<double> savitzky_golay(const std::vector<double>& y, const std::vector<unsigned char>& good, int window,
                                   int order);

}  // namespace kspecdr::fluxcal
