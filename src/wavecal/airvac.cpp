#include "kspecdr/wavecal/airvac.hpp"

#include <cmath>

namespace kspecdr::wavecal {
namespace {
// IAU convention: no conversion below 2000 Å (vacuum wavelengths are quoted there).
constexpr double kAirLimitAngstrom = 2000.0;
}  // namespace

double air_refractive_index(double vacuum_angstrom) {
  const double s = 1.0e4 / vacuum_angstrom;  // µm⁻¹
  const double s2 = s * s;
  return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2);
}

double vacuum_to_air(double vacuum_angstrom) {
  if (!(vacuum_angstrom >= kAirLimitAngstrom)) return vacuum_angstrom;
  return vacuum_angstrom / air_refractive_index(vacuum_angstrom);
}

double air_to_vacuum(double air_angstrom) {
  if (!(air_angstrom >= kAirLimitAngstrom)) return air_angstrom;
  // λ_vac = λ_air · n(λ_vac): a contraction with factor ~1e-7 per step (dn/dλ · λ), so a few steps
  // reach machine precision and vacuum_to_air(air_to_vacuum(x)) == x to rounding.
  double v = air_angstrom * air_refractive_index(air_angstrom);
  for (int i = 0; i < 6; ++i) v = air_angstrom * air_refractive_index(v);
  return v;
}

double convert_medium(double angstrom, Medium from, Medium to) {
  if (from == to) return angstrom;
  return to == Medium::Vacuum ? air_to_vacuum(angstrom) : vacuum_to_air(angstrom);
}

void convert_medium(std::vector<double>& angstrom, Medium from, Medium to) {
  for (double& a : angstrom) a = convert_medium(a, from, to);
}

}  // namespace kspecdr::wavecal
