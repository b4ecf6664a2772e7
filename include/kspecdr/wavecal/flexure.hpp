#pragma once
// Per science exposure: how far the spectrum has moved along the dispersion
// axis since the arc was taken (flexure), from the night-sky emission lines or
// from a cross-correlation with a spectrum of the arc epoch.
//
// Convention: a feature at x_ref in the arc epoch is at
//     x = x_ref + shift_px + stretch · (x_ref − centre_px)
// in this exposure.
#include <string>

#include "kspecdr/wavecal/solution.hpp"

namespace kspecdr::wavecal {

struct FlexureResult {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  bool ok = false;
  std::string method;    ///< "sky-lines" or "cross-correlation"
  std::string message;   ///< why not ok
  double shift_px = 0.0;
  double shift_err_px = kNaN;
  double stretch = 0.0;  ///< dimensionless; 0 unless WavecalConfig::flexure_stretch
  double stretch_err = kNaN;
  double centre_px = 0.0;
  int n_lines = 0;       ///< sky lines used (sky-lines method)
  double rms_px = kNaN;  ///< scatter of the sky lines about the shift model
};

/// Matches the sky lines of `list` (e.g. IRAF skylines.dat, converted to the solution's medium) in the
/// sky spectrum through the arc solution. Isolated lines only. Never throws for missing lines: ok = false.
FlexureResult flexure_from_sky_lines(const Spectrum1D& sky, const WavelengthSolution& arc_solution,
                                     const LineList& list, const WavecalConfig& cfg);

/// Shift of `spectrum` against `reference` (same aperture, arc epoch): the sub-pixel peak of their
/// cross-correlation, the reference interpolated with a Lanczos kernel. Measures a shift only (stretch 0).
FlexureResult flexure_from_cross_correlation(const Spectrum1D& spectrum, const Spectrum1D& reference,
                                             const WavecalConfig& cfg);

/// The arc solution moved by a measured flexure: λ_new(x) = λ_arc(x_ref(x)).
WavelengthSolution apply_flexure(const WavelengthSolution& arc_solution, const FlexureResult& f);

}  // namespace kspecdr::wavecal
