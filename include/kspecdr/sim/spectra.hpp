#pragma once
// The light that goes into a simulated night, as functions of air wavelength
// (Å): star templates, system throughput, atmospheric extinction, the night
// sky, the quartz lamp and arc-lamp line lists. Pure functions of their
// parameters, so the truth file can store them on a grid and any stage can
// compare what it recovers with what went in.
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace kspecdr::sim {

/// A Legendre series on the domain [x_min, x_max] (mapped onto [-1, 1]).
struct Legendre {
  std::vector<double> coeffs;
  double x_min = 0.0, x_max = 1.0;
  double operator()(double x) const;
  double derivative(double x) const;  ///< d/dx (not d/du)
  /// x in the domain (extended by a margin) where the series equals `value`; NaN if none (Newton).
  double solve(double value, double x_guess) const;
};

/// Fraction of a unit Gaussian (centre, sigma) that falls in pixel `i` (pixel centres at integers).
double pixel_fraction(double centre, double sigma, long i);

/// Photon flux density of an AB magnitude: photons /s /cm² /Å at `lambda_angstrom`.
double ab_photon_flux(double mag_ab, double lambda_angstrom);

/// One absorption line of a star template.
struct StellarLine {
  double lambda_angstrom;  ///< rest air wavelength
  double depth;            ///< fractional depth at line centre (before instrumental broadening)
  double sigma_angstrom;   ///< intrinsic Gaussian width
};

/// A parametric star: a blackbody continuum times Gaussian absorption lines whose strengths
/// follow the temperature, Doppler-shifted by the radial velocity, scaled to an AB magnitude.
/// The family has the four parameters of a model-atmosphere grid: Balmer wings widen with
/// log g (pressure broadening), metal lines deepen with [M/H] and the α-element lines (Ca II,
/// Mg b, the Ca triplet) with [M/H] + [α/M]; at log g = 4.4, [M/H] = [α/M] = 0 the lines are
/// those of the temperature alone.
struct StarTemplate {
  double teff_k = 5800.0;
  double rv_km_s = 0.0;
  double mag_r_ab = 15.0;  ///< AB magnitude of the continuum at the r-band effective wavelength
  double logg = 4.4;
  double mh = 0.0;         ///< [M/H]
  double alpha = 0.0;      ///< [α/M]
  /// Photons /s /cm² /Å above the atmosphere. With `lsf_sigma_angstrom` > 0 the lines are
  /// broadened by a Gaussian line-spread function of that width (analytically).
  double photon_flux(double lambda_angstrom, double lsf_sigma_angstrom = 0.0) const;
  /// AB magnitude of the continuum at `lambda_angstrom` (the r, g, i catalogue magnitudes).
  double continuum_mag_ab(double lambda_angstrom) const;
  std::vector<StellarLine> lines() const;
  /// Surface flux F_λ = π B_λ(Teff) × lines [erg s⁻¹ cm⁻² Å⁻¹] at a rest-frame wavelength (no RV,
  /// no magnitude): what a model-atmosphere grid tabulates. `with_lines` = false gives the continuum.
  double surface_flux(double rest_lambda_angstrom, bool with_lines = true) const;
};

/// Effective wavelengths of the catalogue bands (Å).
inline constexpr double kLambdaG = 4770.0, kLambdaR = 6231.0, kLambdaI = 7625.0;

/// Smooth system throughput (telescope, spectrograph, CCD QE), 0..peak.
double system_throughput(double lambda_angstrom, double peak);

/// Extinction in magnitudes per airmass: Rayleigh (scaled by the site's pressure height),
/// aerosols and the ozone Chappuis band.
double extinction_mag_per_airmass(double lambda_angstrom, double site_height_m);

/// Quartz lamp: a 3100 K blackbody photon spectrum, normalised to 1 at 6000 Å.
double quartz_lamp(double lambda_angstrom);

/// Emission lines (air wavelength in Å, relative intensity).
struct LineList {
  std::vector<double> lambda_angstrom;
  std::vector<double> intensity;
  std::string source;
};

/// Reads an IRAF-style line list (wavelength, optional intensity, comment), keeping lines in
/// [lambda_min, lambda_max]. Lines without an intensity get one drawn log-uniformly from
/// [10^-2.5, 1] with `rng` (drawn for every line of the file, in file order, so the result does
/// not depend on the range). Throws ConfigError naming the file when it cannot be read.
LineList read_line_list(const std::filesystem::path& path, double lambda_min, double lambda_max,
                        std::mt19937_64& rng);

/// The night sky: a continuum rising to the red plus emission lines at real air wavelengths
/// ([O I], Na D, Hg street lights, OH), in photons /s per spatial pixel (slit) or per fiber.
struct SkyModel {
  double continuum_photons = 0.4;  ///< photons /s /Å at 5500 Å
  double line_scale = 1.0;
  double continuum(double lambda_angstrom) const;  ///< photons /s /Å
  LineList lines() const;                          ///< intensities are photons /s per line
};

}  // namespace kspecdr::sim
