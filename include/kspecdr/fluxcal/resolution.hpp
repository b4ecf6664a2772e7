#pragma once
// The instrument resolution for the template fit, measured from the arc lines of the wavelength calibration.
//
// Every identified arc line that the solution kept has a Gaussian σ in detector pixels (the peak fit
// integrates the Gaussian over each pixel, so σ is the line-spread function's own width, without the pixel)
// and the solution gives |dλ/dx| there: FWHM_i = 2√(2 ln 2) σ_i |dλ/dx|. The lines of every aperture with a
// solution are fitted together with a low-order polynomial in λ by least squares with iterative clipping
// about a robust scale (1.4826 MAD).
//
// What the template fit needs is the width of the star's lines in the RED spectrum *in excess of* what it
// does to the model itself: the model is convolved with a Gaussian of the given FWHM and then averaged over
// each RED pixel (the RED bin, already modelled). A star's spectrum on the detector is the LSF integrated over
// each detector pixel of width Δ = |dλ/dx| (variance Δ²/12), and the RED resampling holds each detector
// pixel's density constant over the pixel before integrating over the RED bin (Wavelength resampling, SpectRes),
// which shifts the pixel's light by up to ±Δ/2 (another Δ²/12 on average over the sub-pixel phases). So
//     FWHM_fit² = FWHM_arc² + 8 ln 2 · Δ²/6,
// 6.7 % more than the arc's FWHM for σ = 1.1 px: enough to leave residuals of a few per cent in the cores
// of lines narrower than a few pixels. Outside the range of the lines the FWHM is held at the end values.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/template_fit.hpp"
#include "kspecdr/wavecal/arc_file.hpp"

namespace kspecdr::fluxcal {

struct ArcResolution {
  Resolution resolution;          ///< FWHM_fit(λ) for the template fit (arc ⊕ pixel terms), held beyond the lines
  Resolution arc_fwhm;            ///< the arc lines' own FWHM(λ), same form
  int degree = 2;                 ///< polynomial degree in λ
  double lambda_centre = 0.0, lambda_half_width = 1.0;  ///< u = (λ − centre) / half_width of the fit
  std::vector<double> coeff_u;    ///< arc FWHM = Σ a_k u^k
  std::vector<double> covariance; ///< of coeff_u, (degree+1)², row-major, scaled by the residual variance
  int n_lines = 0, n_used = 0, n_apertures = 0;
  double rms_angstrom = 0.0;      ///< scatter of the used lines about the fit (Å)
  std::string source;             ///< the arc-solution file

  /// The fit's error of the arc FWHM at λ (Å), from the covariance.
  double arc_fwhm_error(double lambda_angstrom) const;
  /// One line for logs and FITS HISTORY, e.g. "FWHM 5.21 A at 6000 A (4.93-5.80 A over 5000-7000 A) from 412 arc
  /// lines, arcsol_x.fits".
  std::string summary() const;
};

/// The resolution from an arc calibration: every used line of every aperture whose solution did not fail.
/// Throws DataError (naming `source`) when fewer than degree + 3 lines with a width remain.
ArcResolution resolution_from_arcs(const wavecal::ArcCalibration& arc, const std::string& source, int degree = 2,
                                   double clip_sigma = 3.0);

/// Reads the arc-solution file (wavecal/arc_file.hpp) and measures it. Throws naming the file.
ArcResolution resolution_from_arc_file(const std::filesystem::path& arcsol, int degree = 2, double clip_sigma = 3.0);

}  // namespace kspecdr::fluxcal
