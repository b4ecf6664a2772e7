#pragma once
// Synthetic photometry: AB magnitudes of a spectrum through a filter curve, for
// a photon-counting detector (Bessell & Murphy 2012; Fukugita et al. 1996):
//     m_AB = −2.5 log10( ∫ f_λ T λ dλ / ∫ f_AB,λ T λ dλ ),  f_AB,λ = c · 3631 Jy / λ²,
// with f_λ in erg s⁻¹ cm⁻² Å⁻¹, λ in Å and T the filter's photon transmission.
// A spectrum that does not cover the filter's whole non-zero range is refused,
// never integrated over the part it covers.
#include <filesystem>
#include <string>
#include <vector>

namespace kspecdr::fluxcal {

struct FilterCurve {
  std::string name;
  std::vector<double> wavelength_angstrom;  ///< increasing
  std::vector<double> transmission;         ///< photon transmission, ≥ 0
  /// First and last wavelength where the transmission exceeds `fraction` of its peak (Å).
  std::pair<double, double> support(double fraction = 1e-3) const;
};

/// Reads a two-column filter file (wavelength, transmission; '#' comments). The unit of the first column
/// is stated by the caller: "um" (µm), "nm" or "Angstrom". Throws DataError naming the file and line for
/// unreadable rows, fewer than 3 rows, negative transmission or non-increasing wavelengths; ConfigError
/// for an unknown unit.
FilterCurve read_filter_curve(const std::filesystem::path& path, const std::string& wavelength_unit,
                              const std::string& name = "");

/// f_λ (erg s⁻¹ cm⁻² Å⁻¹) of the AB zero point (3631 Jy) at `angstrom`.
double ab_flambda(double angstrom);

/// AB magnitude of the spectrum (wavelengths increasing, Å; f_λ in erg s⁻¹ cm⁻² Å⁻¹) through `filter`,
/// both interpolated linearly onto the union of their grids within the filter's support and integrated by
/// the trapezoid rule. Throws DataError (naming the filter and the ranges) when the spectrum does not cover
/// the filter's support (transmission above 1e-3 of its peak), or when the integrated flux is not positive.
double synthetic_ab_mag(const std::vector<double>& wavelength_angstrom, const std::vector<double>& flambda,
                        const FilterCurve& filter);

/// The pivot wavelength √(∫ T λ dλ / ∫ T dλ/λ) (Å) of a photon-counting band (Tokunaga & Vacca 2005):
/// there f_ν and f_λ of the band mean convert as for a monochromatic source.
double pivot_wavelength(const FilterCurve& filter);

}  // namespace kspecdr::fluxcal
