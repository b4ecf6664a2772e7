#pragma once
// Atmospheric extinction: a curve k(λ) in magnitudes per airmass, so that light
// observed through airmass X arrives dimmed by 10^(−0.4 k X). Calibration
// vectors are moved to airmass 0 (above the atmosphere) and from there to the
// airmass of the exposure they calibrate (IRAF `calibrate` convention).
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/sensitivity.hpp"

namespace kspecdr::fluxcal {

struct ExtinctionCurve {
  std::string name;                         ///< file name, for messages and HISTORY
  std::vector<double> wavelength_angstrom;  ///< increasing (Å)
  std::vector<double> mag_per_airmass;      ///< k(λ) (mag per airmass), ≥ 0

  /// k at `angstrom` by linear interpolation. Throws DataError (naming the curve and its range) outside
  /// [first, last] wavelength: extinction is never extrapolated.
  double k(double angstrom) const;
  /// True when [lo, hi] (Å) lies within the curve's range.
  bool covers(double lo_angstrom, double hi_angstrom) const;
  /// 10^(0.4 k(λ) X): the factor that restores the flux above the atmosphere from light seen at airmass X.
  double factor(double angstrom, double airmass) const;
};

/// Reads a two-column extinction table (wavelength in Å, k in mag/airmass; '#' comments; extra columns
/// ignored), as in IRAF's onedstds and ../shared/data/extinction/. Throws DataError naming the file and line
/// for unreadable rows, negative or non-finite k, fewer than 2 rows or non-increasing wavelengths.
ExtinctionCurve read_extinction_curve(const std::filesystem::path& path);

/// The vector moved from the airmass it refers to (`cal.airmass`, required finite and ≥ 0) to `airmass`:
/// cal × 10^(0.4 k (airmass − cal.airmass)), variance × the factor squared (the curve is taken as exact).
/// Throws DataError when the curve does not cover the vector's good pixels.
CalVector to_airmass(const CalVector& cal, const ExtinctionCurve& curve, double airmass);

}  // namespace kspecdr::fluxcal
