#include "kspecdr/sim/spectra.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <numbers>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::sim {
namespace {

constexpr double kSpeedOfLightKmS = 299792.458;
constexpr double kPlanckErgS = 6.62607015e-27;
constexpr double kHcOverKAngstromK = 1.438777e8;  // hc/k in Å K

/// Photon-counting blackbody shape: λ·B_λ ∝ λ^-4 / (exp(hc/λkT) - 1), arbitrary scale.
double blackbody_photons(double lambda_angstrom, double teff_k) {
  const double l = lambda_angstrom / 1e4;  // µm keeps the numbers near 1
  return std::pow(l, -4.0) / std::expm1(kHcOverKAngstromK / (lambda_angstrom * teff_k));
}

/// Logistic step from 0 (below `edge`) to 1 (above), of width `width`.
double step_up(double x, double edge, double width) { return 1.0 / (1.0 + std::exp(-(x - edge) / width)); }

}  // namespace

double Legendre::operator()(double x) const {
  const double u = 2.0 * (x - x_min) / (x_max - x_min) - 1.0;
  if (coeffs.empty()) return 0.0;
  double p0 = 1.0, p1 = u;
  double sum = coeffs[0];
  if (coeffs.size() > 1) sum += coeffs[1] * u;
  for (std::size_t n = 1; n + 1 < coeffs.size(); ++n) {
    const double dn = static_cast<double>(n);
    const double p2 = ((2.0 * dn + 1.0) * u * p1 - dn * p0) / (dn + 1.0);
    sum += coeffs[n + 1] * p2;
    p0 = p1;
    p1 = p2;
  }
  return sum;
}

double Legendre::derivative(double x) const {
  const double u = 2.0 * (x - x_min) / (x_max - x_min) - 1.0;
  // P'_{n+1} = P'_{n-1} + (2n+1) P_n, with the values P_n from the usual recurrence.
  std::vector<double> p(coeffs.size() + 1), dp(coeffs.size() + 1);
  p[0] = 1.0;
  dp[0] = 0.0;
  if (p.size() > 1) {
    p[1] = u;
    dp[1] = 1.0;
  }
  for (std::size_t n = 1; n + 1 < p.size(); ++n) {
    const double dn = static_cast<double>(n);
    p[n + 1] = ((2.0 * dn + 1.0) * u * p[n] - dn * p[n - 1]) / (dn + 1.0);
    dp[n + 1] = dp[n - 1] + (2.0 * dn + 1.0) * p[n];
  }
  double sum = 0.0;
  for (std::size_t n = 0; n < coeffs.size(); ++n) sum += coeffs[n] * dp[n];
  return sum * 2.0 / (x_max - x_min);
}

double Legendre::solve(double value, double x_guess) const {
  const double margin = 0.1 * (x_max - x_min);
  double x = x_guess;
  for (int it = 0; it < 60; ++it) {
    const double d = derivative(x);
    if (d == 0.0 || !std::isfinite(d)) return std::numeric_limits<double>::quiet_NaN();
    const double step = ((*this)(x) - value) / d;
    x -= step;
    if (x < x_min - margin || x > x_max + margin) return std::numeric_limits<double>::quiet_NaN();
    if (std::abs(step) < 1e-10) return x;
  }
  return x;
}

double pixel_fraction(double centre, double sigma, long i) {
  const double s = std::sqrt(2.0) * sigma;
  const double lo = (static_cast<double>(i) - 0.5 - centre) / s;
  const double hi = (static_cast<double>(i) + 0.5 - centre) / s;
  // erfc keeps the relative precision in the far tails on either side.
  if (lo > 0.0) return 0.5 * (std::erfc(lo) - std::erfc(hi));
  if (hi < 0.0) return 0.5 * (std::erfc(-hi) - std::erfc(-lo));
  return 0.5 * (std::erf(hi) - std::erf(lo));
}

double ab_photon_flux(double mag_ab, double lambda_angstrom) {
  // N_λ = f_ν / (h λ): a flat-f_ν source in photons /s /cm² /Å.
  const double f_nu = std::pow(10.0, -0.4 * (mag_ab + 48.6));
  return f_nu / (kPlanckErgS * lambda_angstrom);
}

std::vector<StellarLine> StarTemplate::lines() const {
  // Line strengths follow the temperature the way spectral classes do: Balmer lines peak
  // near 9500 K, metal lines (Ca, Na, Mg, Fe, the G band) grow in cooler stars.
  const double balmer = 0.65 * std::exp(-std::pow((teff_k - 9500.0) / 4000.0, 2.0)) + 0.05;
  const double cool = 1.0 / (1.0 + std::exp((teff_k - 6800.0) / 700.0));
  const double very_cool = 1.0 / (1.0 + std::exp((teff_k - 5600.0) / 600.0));
  const double bw = (3.0 + 12.0 * balmer) *  // Balmer wings widen as the lines strengthen, and with gravity
                    (logg == 4.4 ? 1.0 : std::pow(10.0, 0.1 * (logg - 4.4)));
  std::vector<StellarLine> out = {
      {6562.80, balmer, bw},          {4861.33, balmer, bw},          {4340.47, balmer, bw},
      {4101.74, balmer, bw},          {3970.07, balmer, bw},          {3933.66, 0.7 * cool + 0.05, 4.0},
      {3968.47, 0.6 * cool + 0.05, 4.0}, {4305.00, 0.35 * very_cool, 6.0}, {5167.32, 0.35 * very_cool + 0.02, 1.2},
      {5172.68, 0.40 * very_cool + 0.02, 1.2}, {5183.60, 0.45 * very_cool + 0.02, 1.2},
      {5269.54, 0.30 * very_cool, 1.0}, {5328.04, 0.25 * very_cool, 1.0},
      {5889.95, 0.50 * very_cool + 0.03, 1.0}, {5895.92, 0.45 * very_cool + 0.03, 1.0},
      {8498.02, 0.40 * cool + 0.03, 2.0}, {8542.09, 0.55 * cool + 0.03, 2.5}, {8662.14, 0.50 * cool + 0.03, 2.5},
  };
  if (mh == 0.0 && alpha == 0.0) return out;
  // Abundances change the optical depth of a line: the residual intensity 1 − d goes to (1 − d)^f.
  const double f_metal = std::pow(10.0, 0.5 * mh), f_alpha = std::pow(10.0, 0.5 * (mh + alpha));
  for (auto& l : out) {
    const double lam = l.lambda_angstrom;
    const bool is_balmer = lam == 6562.80 || lam == 4861.33 || lam == 4340.47 || lam == 4101.74 || lam == 3970.07;
    if (is_balmer) continue;
    const bool is_alpha = lam < 3975.0 || (lam > 5160.0 && lam < 5190.0) || lam > 8400.0;
    l.depth = 1.0 - std::pow(1.0 - l.depth, is_alpha ? f_alpha : f_metal);
  }
  return out;
}

double StarTemplate::surface_flux(double rest_lambda_angstrom, bool with_lines) const {
  // π B_λ in cgs, then per Å: 2hc²/λ⁵ / (exp(hc/λkT) − 1).
  constexpr double kC = 2.99792458e10;  // cm/s
  const double lam_cm = rest_lambda_angstrom * 1e-8;
  double f = std::numbers::pi * 2.0 * kPlanckErgS * kC * kC / std::pow(lam_cm, 5.0) /
             std::expm1(kHcOverKAngstromK / (rest_lambda_angstrom * teff_k)) * 1e-8;
  if (!with_lines) return f;
  for (const auto& l : lines()) {
    const double z = (rest_lambda_angstrom - l.lambda_angstrom) / l.sigma_angstrom;
    if (std::abs(z) < 12.0) f *= 1.0 - l.depth * std::exp(-0.5 * z * z);
  }
  return f;
}

double StarTemplate::photon_flux(double lambda_angstrom, double lsf_sigma_angstrom) const {
  // The whole template moves with the radial velocity: evaluate the rest frame at λ/(1+v/c).
  const double lam = lambda_angstrom / (1.0 + rv_km_s / kSpeedOfLightKmS);
  double f = ab_photon_flux(mag_r_ab, kLambdaR) * blackbody_photons(lam, teff_k) / blackbody_photons(kLambdaR, teff_k);
  for (const auto& l : lines()) {
    // A Gaussian line seen through a Gaussian LSF stays Gaussian: widths add in quadrature, the
    // equivalent width is kept.
    const double w = std::hypot(l.sigma_angstrom, lsf_sigma_angstrom);
    const double d = l.depth * l.sigma_angstrom / w;
    const double z = (lam - l.lambda_angstrom) / w;
    if (std::abs(z) < 12.0) f *= 1.0 - d * std::exp(-0.5 * z * z);
  }
  return f;
}

double StarTemplate::continuum_mag_ab(double lambda_angstrom) const {
  // f_ν ∝ N_λ·λ for a photon flux density N_λ.
  const double ratio = blackbody_photons(lambda_angstrom, teff_k) * lambda_angstrom /
                       (blackbody_photons(kLambdaR, teff_k) * kLambdaR);
  return mag_r_ab - 2.5 * std::log10(ratio);
}

double system_throughput(double lambda_angstrom, double peak) {
  // A broad optical response with the blue cut of the glass and the red fall of the CCD QE.
  return peak * std::exp(-0.5 * std::pow((lambda_angstrom - 6200.0) / 2300.0, 2.0)) *
         step_up(lambda_angstrom, 3700.0, 80.0);
}

double extinction_mag_per_airmass(double lambda_angstrom, double site_height_m) {
  const double l = lambda_angstrom / 1e4;
  const double rayleigh = 1.086 * 0.0088 * std::pow(l, -4.05) * std::exp(-site_height_m / 7996.0);
  const double aerosol = 0.015 * std::pow(l, -1.3);
  const double ozone = 0.03 * std::exp(-0.5 * std::pow((lambda_angstrom - 6000.0) / 700.0, 2.0));
  return rayleigh + aerosol + ozone;
}

double quartz_lamp(double lambda_angstrom) {
  return blackbody_photons(lambda_angstrom, 3100.0) / blackbody_photons(6000.0, 3100.0);
}

LineList read_line_list(const std::filesystem::path& path, double lambda_min, double lambda_max,
                        std::mt19937_64& rng) {
  std::ifstream f(path);
  if (!f)
    throw ConfigError(fmt::format("cannot read the arc line list {} (Debian: apt-get install iraf-noao, or set "
                                  "arc_linelist)", path.string()),
                      ErrorContext{.file = path.string(), .keyword = "arc_linelist"});
  LineList out;
  out.source = path.string();
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::string line;
  while (std::getline(f, line)) {
    auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    std::istringstream is(line);
    double lam = 0.0;
    if (!(is >> lam)) continue;
    std::string rest;
    std::getline(is, rest);
    std::string low = rest;
    std::transform(low.begin(), low.end(), low.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const double drawn = std::pow(10.0, -2.5 * uni(rng));
    // IRAF lists carry "blend ... for low dispersion" entries that stand for two real lines.
    if (low.find("for low dispersion") != std::string::npos) continue;
    double intensity = drawn;
    std::istringstream rs(rest);
    std::string tok;
    if (rs >> tok) {
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (end && *end == '\0' && v > 0.0) intensity = v;
    }
    if (lam < lambda_min || lam > lambda_max) continue;
    out.lambda_angstrom.push_back(lam);
    out.intensity.push_back(intensity);
  }
  if (out.lambda_angstrom.empty())
    throw ConfigError(fmt::format("the arc line list {} has no lines between {:.0f} and {:.0f} Å", path.string(),
                                  lambda_min, lambda_max),
                      ErrorContext{.file = path.string(), .keyword = "arc_linelist"});
  const double top = *std::max_element(out.intensity.begin(), out.intensity.end());
  for (auto& v : out.intensity) v /= top;
  return out;
}

double SkyModel::continuum(double lambda_angstrom) const {
  return continuum_photons * std::pow(lambda_angstrom / 5500.0, 1.5);
}

LineList SkyModel::lines() const {
  // Air wavelengths of the strong night-sky lines (Osterbrock et al. 1996; IRAF skylines.dat);
  // fluxes in units of the continuum per Å at 5500 Å.
  static const double table[][2] = {
      {4358.34, 10.0}, {5460.74, 12.0}, {5577.34, 150.0}, {5769.60, 4.0},  {5790.66, 4.0},  {5889.95, 25.0},
      {5895.92, 20.0}, {6300.30, 60.0}, {6363.78, 20.0},  {6498.73, 12.0}, {6533.04, 18.0}, {6553.62, 14.0},
      {6577.28, 16.0}, {6604.13, 12.0}, {6863.96, 25.0},  {6923.22, 30.0}, {7276.41, 25.0}, {7316.28, 45.0},
      {7340.89, 45.0}, {7750.64, 50.0}, {7794.11, 50.0},  {7821.50, 60.0}, {7913.71, 70.0}, {7993.33, 90.0},
      {8344.60, 120.0}, {8399.17, 110.0}, {8430.17, 100.0}, {8827.10, 150.0}, {8885.85, 120.0}};
  LineList out;
  out.source = "night-sky lines (Osterbrock et al. 1996)";
  for (const auto& row : table) {
    out.lambda_angstrom.push_back(row[0]);
    out.intensity.push_back(row[1] * continuum_photons * line_scale);
  }
  return out;
}

}  // namespace kspecdr::sim
