#pragma once
// Air <-> vacuum wavelengths. The refractive index of standard air is the IAU
// standard form of Edlén's dispersion formula as given by Morton (2000, ApJS
// 130, 403, eq. 8), written in the vacuum wavenumber s = 10^4 / λ_vac [µm⁻¹]:
//     n − 1 = 8.34254e-5 + 2.406147e-2 / (130 − s²) + 1.5998e-4 / (38.9 − s²)
//     λ_air = λ_vac / n(λ_vac)
// Air → vacuum inverts this exactly by fixed-point iteration, so a round trip
// returns the input to rounding error. By the IAU convention, wavelengths below
// 2000 Å are vacuum wavelengths in both media and are returned unchanged.
#include <vector>

#include "kspecdr/wavecal/linelist.hpp"

namespace kspecdr::wavecal {

/// Refractive index of standard air at vacuum wavelength `vacuum_angstrom`.
double air_refractive_index(double vacuum_angstrom);
double vacuum_to_air(double vacuum_angstrom);
double air_to_vacuum(double air_angstrom);
/// Converts from one medium to another (identity when they agree).
double convert_medium(double angstrom, Medium from, Medium to);
void convert_medium(std::vector<double>& angstrom, Medium from, Medium to);

}  // namespace kspecdr::wavecal
