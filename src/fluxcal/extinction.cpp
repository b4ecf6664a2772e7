#include "kspecdr/fluxcal/extinction.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {

double ExtinctionCurve::k(double angstrom) const {
  const auto& x = wavelength_angstrom;
  if (x.empty() || !(angstrom >= x.front() && angstrom <= x.back()))
    throw DataError(fmt::format("extinction curve '{}' covers {}–{} Å, not {} Å (it is never extrapolated)", name,
                                x.empty() ? NAN : x.front(), x.empty() ? NAN : x.back(), angstrom));
  auto it = std::lower_bound(x.begin(), x.end(), angstrom);
  const auto i = static_cast<std::size_t>(it - x.begin());
  if (x[i] == angstrom) return mag_per_airmass[i];
  const double t = (angstrom - x[i - 1]) / (x[i] - x[i - 1]);
  return mag_per_airmass[i - 1] + t * (mag_per_airmass[i] - mag_per_airmass[i - 1]);
}

bool ExtinctionCurve::covers(double lo_angstrom, double hi_angstrom) const {
  return !wavelength_angstrom.empty() && lo_angstrom >= wavelength_angstrom.front() &&
         hi_angstrom <= wavelength_angstrom.back();
}

double ExtinctionCurve::factor(double angstrom, double airmass) const {
  return std::pow(10.0, 0.4 * k(angstrom) * airmass);
}

ExtinctionCurve read_extinction_curve(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open the extinction curve", {.file = path.string()});
  ExtinctionCurve c;
  c.name = path.filename().string();
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::istringstream row(line);
    double lam = 0, k = 0;
    if (!(row >> lam >> k) || !std::isfinite(lam) || !std::isfinite(k) || k < 0)
      throw DataError(fmt::format("line {}: expected 'wavelength [Å]  extinction [mag/airmass ≥ 0]'", line_no),
                      {.file = path.string()});
    if (!c.wavelength_angstrom.empty() && !(lam > c.wavelength_angstrom.back()))
      throw DataError(fmt::format("line {}: wavelength {} Å does not increase", line_no, lam), {.file = path.string()});
    c.wavelength_angstrom.push_back(lam);
    c.mag_per_airmass.push_back(k);
  }
  if (c.wavelength_angstrom.size() < 2)
    throw DataError("an extinction curve needs at least 2 rows", {.file = path.string()});
  return c;
}

CalVector to_airmass(const CalVector& cal, const ExtinctionCurve& curve, double airmass) {
  if (!std::isfinite(cal.airmass) || cal.airmass < 0)
    throw DataError(fmt::format("calibration vector '{}' does not say which airmass it refers to ({})", cal.source,
                                cal.airmass),
                    {.keyword = "AIRMASS"});
  if (!std::isfinite(airmass) || airmass < 0)
    throw DataError(fmt::format("airmass {} is not a number ≥ 0", airmass), {.keyword = "AIRMASS"});
  CalVector out = cal;
  out.airmass = airmass;
  const double dx = airmass - cal.airmass;
  for (std::size_t i = 0; i < cal.size(); ++i) {
    if (!cal.good[i]) continue;
    const double f = curve.factor(cal.wavelength_angstrom[i], dx);
    out.cal[i] = cal.cal[i] * f;
    out.variance[i] = cal.variance[i] * f * f;
  }
  return out;
}

}  // namespace kspecdr::fluxcal
