#pragma once
// Fitting one standard star's spectrum with a grid of model spectra:
//   1. each candidate model is convolved to the instrument resolution on an even log λ grid
//      (a Gaussian whose FWHM may change with λ, minus the model's own resolution in quadrature);
//   2. it is resampled flux-conservingly (bin averages of the piecewise-linear model) onto the
//      observed pixels, at any trial radial velocity (λ_obs = λ_rest (1 + v/c));
//   3. data and model are continuum-normalised the same way: one Legendre polynomial fitted to
//      each with the same pixels (those where the model is not in a line, found by asymmetric
//      clipping of the model) and the same weights (the data's inverse variance);
//   4. the radial velocity comes from the cross-correlation of the normalised spectra on an even
//      log λ grid (parabolic sub-pixel peak, error of Zucker 2003), refined by the minimum of χ²(v)
//      whose curvature gives the error (Δχ² = 1, inflated by √(χ²/dof) when that exceeds 1, and for the
//      correlation of neighbouring pixels' noise);
//   5. each candidate is scored by χ² or the Huber loss of the normalised residuals; optionally the
//      fit is then refined between the grid points: from each of the best local minima of the grid's
//      scores, a Levenberg–Marquardt minimisation over the four parameters of the interpolated model
//      (log-flux multilinear), the best of those minima kept only when it scores better than the best
//      grid point; the curvature of the scores there gives the parameters' covariance, and the minima
//      found from the other starts are kept as the fit's other modes.
#include <array>
#include <limits>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/photometry.hpp"
#include "kspecdr/fluxcal/templates.hpp"

namespace kspecdr::fluxcal {

inline constexpr double kSpeedOfLightKmS = 299792.458;

/// Instrument resolution: FWHM(λ) = Σ_k c_k λ^k (Å, λ in Å); one coefficient is a constant FWHM. Outside
/// [lambda_lo, lambda_hi] the polynomial is evaluated at the nearer end (held, never extrapolated).
struct Resolution {
  std::vector<double> fwhm_poly_angstrom = {5.0};
  double lambda_lo = -std::numeric_limits<double>::infinity();
  double lambda_hi = std::numeric_limits<double>::infinity();
  double fwhm(double lambda_angstrom) const;
};

struct FitConfig {
  Resolution resolution;
  std::string metric = "chi2";    ///< chi2 | huber
  double huber_k = 1.345;         ///< Huber threshold in units of σ
  int continuum_degree = 6;       ///< Legendre degree of the continuum (data and model alike)
  double continuum_clip_low = 1.0, continuum_clip_high = 4.0;  ///< asymmetric clipping of the model (robust σ)
  int continuum_iterations = 8;
  double rv_max_km_s = 600.0;     ///< cross-correlation search range ±
  bool interpolate = true;        ///< refine between grid points
  int refine_starts = 3;          ///< local minima of the grid's scores the refinement starts from (the best ones)
  /// Boxes on the other parameters (NaN = the whole grid): {lo, hi} for log g, [M/H], [α/M].
  std::array<std::array<double, 2>, 3> box = {{{{-1e9, 1e9}}, {{-1e9, 1e9}}, {{-1e9, 1e9}}}};
  /// Teff range from colours: models within this Δχ² of the best colour match are kept, with this
  /// systematic floor (mag) added in quadrature to the catalog errors, and one grid step of margin.
  double colour_delta_chi2 = 9.0, colour_floor_mag = 0.03;
};

struct ObservedSpectrum {
  std::vector<double> wavelength_angstrom;  ///< pixel centres, increasing, in the template grid's medium
  std::vector<double> flux;                 ///< any units (counts); NaN where bad
  std::vector<double> variance;
  std::vector<unsigned char> good;          ///< 1 usable
  /// Covariance of the flux of pixels j and j + 1 (a RED's COVAR: the resampling shares detector pixels between
  /// neighbours); NaN where unknown. Empty: not known for the spectrum, and the fit estimates the correlation of
  /// neighbouring pixels from the autocorrelation of its residuals instead (see NoiseCorrelation).
  std::vector<double> covariance_next;
  std::string name;
};

/// How correlated the noise of neighbouring pixels is, and what that does to the fit's errors. The χ² of the fit
/// weights every pixel as if its noise were independent; with a correlation matrix R of the normalised noise
/// (1 on the diagonal, ρ between neighbours) the covariance of a least-squares estimate with Jacobian J is the
/// sandwich (JᵀJ)⁻¹ JᵀRJ (JᵀJ)⁻¹ instead of (JᵀJ)⁻¹. R comes from the spectrum's `covariance_next`
/// (ρ_j = cov(j, j+1)/√(V_j V_{j+1}), lag 1 only: the only non-zero term of a resampling onto pixels at least as
/// wide as the input's) or, without it, from the lag-1 and lag-2 autocorrelation of the normalised residuals of the
/// fit, taken as 0 when negative (only their estimation noise would make them so).
struct NoiseCorrelation {
  std::string source = "none";  ///< covariance | residuals | none
  double rho1 = 0.0, rho2 = 0.0;  ///< median lag-1 and lag-2 correlation over the fitted pixels
  double tau = 1.0;               ///< 1 + 2 (ρ1 + ρ2): the variance factor of a sum of smooth weight over the pixels
  double rv_factor = 1.0;         ///< factor on the RV variance (JᵀRJ/JᵀJ for the RV derivative)
};

/// A model convolved to the instrument resolution on an even ln λ grid, ready to be shifted.
struct PreparedModel {
  std::vector<double> ln_lambda, flux;
};

/// Convolves (λ, f) in ln λ with the instrument Gaussian (FWHM from `res`, minus λ/`model_r` in quadrature
/// when model_r > 0) over [lambda_min, lambda_max] (a margin of 5 FWHM is added). Throws DataError when the
/// model does not cover that range.
PreparedModel prepare_model(const std::vector<double>& wavelength_angstrom, const std::vector<double>& flux,
                            const Resolution& res, double model_r, double lambda_min, double lambda_max);

/// Bin averages over the observed pixels (edges halfway between centres) of the model shifted by `rv_km_s`:
/// the flux-conserving resampling of a piecewise-linear density. NaN for pixels outside the model.
std::vector<double> resample_model(const PreparedModel& m, double rv_km_s, const std::vector<double>& centres);

/// Edges of pixels with these centres (halfway between, the ends extrapolated).
std::vector<double> pixel_edges(const std::vector<double>& centres);

/// The continuum of `y` (a Legendre polynomial of `degree` over the range of `x`) fitted by weighted least
/// squares over the pixels with use[i] = 1.
std::vector<double> fit_continuum(const std::vector<double>& x, const std::vector<double>& y,
                                  const std::vector<double>& weight, const std::vector<unsigned char>& use, int degree);

/// The pixels that define the continuum of a model: good pixels not clipped as lines (asymmetric clipping).
std::vector<unsigned char> continuum_pixels(const std::vector<double>& x, const std::vector<double>& model,
                                            const std::vector<double>& weight, const std::vector<unsigned char>& good,
                                            const FitConfig& cfg);

struct RvMeasurement {
  double rv_km_s = 0.0, rv_err_km_s = 0.0;  ///< final (χ² minimum and curvature)
  double ccf_rv_km_s = 0.0, ccf_err_km_s = 0.0, ccf_peak = 0.0;  ///< cross-correlation (Zucker 2003 error)
  double chi2 = 0.0;
  long n_good = 0;
};

struct TemplateScore {
  long index = -1;  ///< grid row; -1 for an interpolated model
  TemplateParams params;
  double rv_km_s = 0.0;
  double score = 0.0;  ///< the metric's value (χ² or 2 × Huber loss)
  double chi2 = 0.0;
  long n_good = 0;
};

/// One minimum of the scores over the interpolated grid.
struct FitMode {
  TemplateParams params;
  double score = 0.0, chi2 = 0.0;  ///< scored like a grid candidate (its own continuum pixels, RV by cross-correlation)
  double rv_km_s = 0.0;
  long n_good = 0;
};

struct FitResult {
  TemplateParams params;        ///< of the model used (interpolated or a grid point)
  /// The best minimum of the refinement (the best grid point without one): where the fit puts the star,
  /// whether or not the interpolated model was kept.
  TemplateParams refined{0.0, 0.0, 0.0, 0.0};
  /// The used model first, then every other minimum the refinement found (best first).
  std::vector<FitMode> modes;
  /// Covariance of (Teff, log g, [M/H], [α/M]) at the used model, from the curvature of χ² of the normalised
  /// residuals (Δχ² = 1, scaled by max(1, χ²/dof)) and the correlation of neighbouring pixels (`noise`); no
  /// variance above that of a uniform distribution over the candidates' range; rows and columns of a parameter
  /// that does not vary among the candidates are 0.
  std::array<std::array<double, 4>, 4> param_cov{};
  long grid_index = -1;         ///< best grid point
  bool interpolated = false;
  RvMeasurement rv;             ///< rv_err_km_s and ccf_err_km_s include the correlation of neighbouring pixels (`noise`)
  NoiseCorrelation noise;
  double score = 0.0, chi2 = 0.0;
  long dof = 0;
  double chi2_dof() const { return dof > 0 ? chi2 / static_cast<double>(dof) : 0.0; }
  std::array<double, 2> teff_range = {0.0, 0.0};
  std::vector<TemplateScore> candidates;
  std::vector<double> model_wavelength;  ///< the grid's wavelengths (rest frame)
  std::vector<double> model_flux;        ///< surface flux of the model used, full resolution, rest frame
  std::vector<double> model_on_data;     ///< convolved, shifted by the RV, resampled on the observed pixels
  std::vector<double> normalised_data, normalised_model, normalised_sigma;  ///< on the observed pixels
};

/// Observed magnitudes of one star (AB) in bands with filter curves.
struct BandMagnitudes {
  std::vector<FilterCurve> filters;
  std::vector<double> mag_ab, err;
};

/// Teff range of the grid models whose synthetic colours match `mags` (see FitConfig), among the models in
/// the parameter box; the whole grid's Teff range when fewer than two bands are usable.
std::array<double, 2> teff_range_from_colours(const TemplateGrid& grid, const BandMagnitudes& mags, const FitConfig& cfg);

/// Grid rows inside the Teff range and the box.
std::vector<std::size_t> select_candidates(const TemplateGrid& grid, std::array<double, 2> teff_range,
                                           const FitConfig& cfg);

/// Scores one grid model against the spectrum (RV by cross-correlation, no refinement).
TemplateScore score_model(const ObservedSpectrum& obs, const std::vector<double>& model_wavelength,
                          const std::vector<double>& model_flux, double model_r, const FitConfig& cfg);

/// Everything after the candidates were scored (possibly on other ranks): picks the best, interpolates,
/// measures the final RV and fills the result.
FitResult finish_fit(const ObservedSpectrum& obs, const TemplateGrid& grid, std::vector<TemplateScore> scores,
                     const FitConfig& cfg);

/// Scores every candidate and finishes the fit. Throws DataError when there is no candidate, the spectrum
/// has too few good pixels, or the grid does not cover the observed range.
FitResult fit_template(const ObservedSpectrum& obs, const TemplateGrid& grid, const std::vector<std::size_t>& candidates,
                       const FitConfig& cfg);

/// The uncertainty of the fitted model on the observed pixels, as a fractional variance Var(model_j)/model_j²
/// (without the photometric scale, whose error is separate and fully correlated across λ):
///   mismatch       a per-pixel floor s² on the normalised spectrum, the one that brings the fit's χ² down to
///                  its degrees of freedom (Σ r²/(σ² + s²) = dof over the fitted pixels; 0 when χ²/dof ≤ 1):
///                  what the templates cannot reproduce, spread evenly over the pixels;
///   neighbours     along each parameter axis, from the grid model nearest the used one and its two neighbours
///                  (convolved, shifted by the fitted RV, on the observed pixels): for an interpolated model the
///                  error of linear interpolation in ln F, ½ u(1 − u) |Δ² ln F| at the fractional position u in
///                  its cell; for a grid model the step to where the refinement puts the star, |u*| |Δ ln F|
///                  (u* in grid steps, Δ the central difference). Axes where that grid model has no neighbour on
///                  both sides add nothing;
///   parameters     the colour of the parameters' own uncertainty: gᵀ C g per pixel, C the fit's covariance of
///                  the parameters (`FitResult::param_cov`) and g = ∂ ln F/∂p on the pixel less its mean over the
///                  pixels (the broadband level is the photometric scale's, whose error is separate). The
///                  continuum-normalised fit does not see the slope such a model change gives; this term carries
///                  it into Cal;
///   modes          the fit's other minima (`FitResult::modes`), each weighted by exp(−Δscore / 2) with Δscore
///                  divided by max(1, χ²/dof), the weights normalised over all minima including the used one:
///                  Σ_k w_k (d_k − mean d_k)², d_k = ln F_k − ln F_used on the pixels — the colour of a solution
///                  the data cannot exclude, which no local curvature describes.
/// The four add; rel_var is NaN where the model is undefined.
struct ModelUncertainty {
  std::vector<double> rel_var;   ///< per observed pixel
  double mismatch_rel = 0.0;     ///< s (fractional, per pixel)
  double neighbours_rel = 0.0;   ///< median over the pixels of the neighbours term's fractional σ
  double parameters_rel = 0.0;   ///< median over the pixels of the parameters term's fractional σ
  double modes_rel = 0.0;        ///< median over the pixels of the modes term's fractional σ
  double modes_weight = 0.0;     ///< total weight of the minima other than the used one
};
ModelUncertainty model_uncertainty(const ObservedSpectrum& obs, const TemplateGrid& grid, const FitResult& fit,
                                   const FitConfig& cfg);

/// Throws DataError (naming the star) unless the grid's wavelengths cover the observed range with the RV
/// search margin and 5 FWHM.
void check_grid_covers(const TemplateGrid& grid, const ObservedSpectrum& obs, const FitConfig& cfg);

/// log-flux multilinear interpolation of the grid at `p`; false when a corner model is missing.
bool interpolate_model(const TemplateGrid& grid, const TemplateParams& p, std::vector<double>& flux);

}  // namespace kspecdr::fluxcal
