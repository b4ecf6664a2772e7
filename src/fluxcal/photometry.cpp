#include "kspecdr/fluxcal/photometry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {

namespace {

constexpr double kSpeedOfLightAngstromPerS = 2.99792458e18;
constexpr double kAbZeroPointFnu = 3631e-23;  // erg s⁻¹ cm⁻² Hz⁻¹

/// Linear interpolation of (x, y) at u; 0 outside [x.front(), x.back()].
double interp(const std::vector<double>& x, const std::vector<double>& y, double u) {
  if (x.empty() || u < x.front() || u > x.back()) return 0.0;
  auto it = std::upper_bound(x.begin(), x.end(), u);
  if (it == x.end()) return y.back();
  const auto i = static_cast<std::size_t>(it - x.begin());
  if (i == 0) return y.front();
  const double t = (u - x[i - 1]) / (x[i] - x[i - 1]);
  return y[i - 1] + t * (y[i] - y[i - 1]);
}

}  // namespace

std::pair<double, double> FilterCurve::support(double fraction) const {
  const double peak = transmission.empty() ? 0.0 : *std::max_element(transmission.begin(), transmission.end());
  double lo = 0, hi = 0;
  bool found = false;
  for (std::size_t i = 0; i < transmission.size(); ++i)
    if (transmission[i] > fraction * peak) {
      if (!found) lo = wavelength_angstrom[i];
      hi = wavelength_angstrom[i];
      found = true;
    }
  return {lo, hi};
}

FilterCurve read_filter_curve(const std::filesystem::path& path, const std::string& unit, const std::string& name) {
  double scale = 0;
  if (unit == "um" || unit == "micron" || unit == "µm") scale = 1e4;
  else if (unit == "nm") scale = 10.0;
  else if (unit == "Angstrom" || unit == "A" || unit == "angstrom") scale = 1.0;
  else throw ConfigError(fmt::format("filter wavelength unit '{}': use um, nm or Angstrom", unit));
  std::ifstream in(path);
  if (!in) throw DataError("cannot open filter curve", ErrorContext{.file = path.string()});
  FilterCurve f;
  f.name = name.empty() ? path.stem().string() : name;
  std::string line;
  long n = 0;
  while (std::getline(in, line)) {
    ++n;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line.erase(hash);
    std::istringstream is(line);
    double w, t;
    if (!(is >> w)) continue;  // blank line
    if (!(is >> t) || !std::isfinite(w) || !std::isfinite(t))
      throw DataError(fmt::format("line {}: expected two numbers (wavelength, transmission)", n),
                      ErrorContext{.file = path.string()});
    if (t < 0) throw DataError(fmt::format("line {}: negative transmission {}", n, t), ErrorContext{.file = path.string()});
    if (!f.wavelength_angstrom.empty() && w * scale <= f.wavelength_angstrom.back())
      throw DataError(fmt::format("line {}: wavelengths must increase", n), ErrorContext{.file = path.string()});
    f.wavelength_angstrom.push_back(w * scale);
    f.transmission.push_back(t);
  }
  if (f.wavelength_angstrom.size() < 3)
    throw DataError("a filter curve needs at least 3 rows", ErrorContext{.file = path.string()});
  return f;
}

double ab_flambda(double angstrom) { return kAbZeroPointFnu * kSpeedOfLightAngstromPerS / (angstrom * angstrom); }

double synthetic_ab_mag(const std::vector<double>& w, const std::vector<double>& flam, const FilterCurve& filter) {
  if (w.size() != flam.size() || w.size() < 2)
    throw DataError(fmt::format("synthetic photometry in {}: {} wavelengths for {} fluxes", filter.name, w.size(),
                                flam.size()));
  const auto [lo, hi] = filter.support();
  if (w.front() > lo || w.back() < hi)
    throw DataError(fmt::format("the spectrum ({:.1f}–{:.1f} Å) does not cover the band {} ({:.1f}–{:.1f} Å): "
                                "a partly covered band is not integrated",
                                w.front(), w.back(), filter.name, lo, hi));
  // Union of both grids over the filter's whole tabulated range (the transmission is ~0 outside the support).
  const double a = filter.wavelength_angstrom.front(), b = filter.wavelength_angstrom.back();
  std::vector<double> grid;
  for (double x : filter.wavelength_angstrom) grid.push_back(x);
  for (double x : w)
    if (x > a && x < b) grid.push_back(x);
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  double num = 0, den = 0;
  for (std::size_t i = 0; i + 1 < grid.size(); ++i) {
    const double x0 = grid[i], x1 = grid[i + 1];
    const double t0 = interp(filter.wavelength_angstrom, filter.transmission, x0);
    const double t1 = interp(filter.wavelength_angstrom, filter.transmission, x1);
    // The spectrum outside its own range contributes only where T ≈ 0 (checked above).
    const double f0 = interp(w, flam, x0), f1 = interp(w, flam, x1);
    num += 0.5 * (x1 - x0) * (f0 * t0 * x0 + f1 * t1 * x1);
    den += 0.5 * (x1 - x0) * (ab_flambda(x0) * t0 * x0 + ab_flambda(x1) * t1 * x1);
  }
  if (!(num > 0) || !(den > 0))
    throw DataError(fmt::format("synthetic photometry in {}: the integrated flux is not positive", filter.name));
  return -2.5 * std::log10(num / den);
}

double pivot_wavelength(const FilterCurve& f) {
  double a = 0, b = 0;
  for (std::size_t i = 0; i + 1 < f.wavelength_angstrom.size(); ++i) {
    const double x0 = f.wavelength_angstrom[i], x1 = f.wavelength_angstrom[i + 1];
    const double t0 = f.transmission[i], t1 = f.transmission[i + 1];
    a += 0.5 * (x1 - x0) * (t0 * x0 + t1 * x1);
    b += 0.5 * (x1 - x0) * (t0 / x0 + t1 / x1);
  }
  return b > 0 ? std::sqrt(a / b) : 0.0;
}

}  // namespace kspecdr::fluxcal
