#pragma once
// A library of stellar model spectra on a parameter grid (Teff, log g, [M/H], [α/M]) in
// one HDF5 file (docs/templates.md):
//
//   /                    attrs format = "kspecdr-template-grid", format_version = 1, source,
//                              synthetic (1 = made by `kspecdr templates synth`, not a model
//                              atmosphere), flux_units, wavelength_medium (air | vacuum),
//                              resolving_power (λ/FWHM of the models themselves; 0 = unresolved
//                              lines are not an issue, i.e. far sharper than any spectrograph)
//   /parameters/teff_k, logg, mh, alpha   (N) float64
//   /wavelength          (NWAVE) float64, Å, increasing, shared by every model
//   /flux                (N, NWAVE) float32, surface flux F_λ [erg s⁻¹ cm⁻² Å⁻¹]
//   /continuum           (N, NWAVE) float32, the same without lines
//
// The reader for the BOSZ 2024 library (Mészáros et al. 2024) turns a folder of its text
// files into this format.
#include <Eigen/Core>
#include <filesystem>
#include <string>
#include <vector>

namespace kspecdr::fluxcal {

struct TemplateParams {
  double teff_k = 0.0;
  double logg = 0.0;
  double mh = 0.0;     ///< [M/H]
  double alpha = 0.0;  ///< [α/M]
};

using TemplateArray = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct TemplateGrid {
  std::vector<TemplateParams> params;     ///< one per model (row of flux)
  std::vector<double> wavelength_angstrom;
  TemplateArray flux;                     ///< N × NWAVE, erg s⁻¹ cm⁻² Å⁻¹ (surface flux)
  TemplateArray continuum;                ///< N × NWAVE, same units
  std::string source;
  bool synthetic = false;
  std::string wavelength_medium = "air";  ///< air | vacuum
  double resolving_power = 0.0;           ///< of the models; 0 = infinite for our purposes

  std::size_t size() const { return params.size(); }
  std::vector<double> flux_of(std::size_t i) const;
  std::vector<double> continuum_of(std::size_t i) const;
  /// The sorted distinct values of one parameter: 0 Teff, 1 log g, 2 [M/H], 3 [α/M].
  std::vector<double> axis(int which) const;
  /// Index of the model with exactly these parameters (to 1e-6), or -1.
  long find(const TemplateParams& p) const;
  /// Throws DataError (naming `what`) for inconsistent shapes, non-increasing wavelengths, no models.
  void check(const std::string& what) const;
};

double param_value(const TemplateParams& p, int which);

void write_template_grid(const std::filesystem::path& path, const TemplateGrid& grid, bool overwrite = false);

/// Reads a grid. With `lambda_min`/`lambda_max` > 0 only that wavelength range (plus one sample each side)
/// is kept. Throws DataError naming the file for a file that is not a template grid.
TemplateGrid read_template_grid(const std::filesystem::path& path, double lambda_min = 0.0,
                                double lambda_max = 0.0);

/// BOSZ 2024 file name: bosz2024_<atm>_t<Teff>_g<logg>_m<[M/H]>_a<[α/M]>_c<[C/M]>_v<vturb>_r<R>_<resam>.txt[.gz]
/// e.g. bosz2024_mp_t5750_g+4.50_m-0.25_a+0.00_c+0.00_v1_r2000_resam.txt.gz. Returns false when the name
/// does not follow that pattern.
struct BoszName {
  std::string atmosphere;  ///< ap (ATLAS9), mp (MARCS plane-parallel), ms (MARCS spherical)
  TemplateParams params;
  double carbon = 0.0, vturb = 0.0;
  double resolving_power = 0.0;  ///< from r<R>; 0 for "orig"
  bool gzipped = false;
};
bool parse_bosz_name(const std::string& filename, BoszName& out);

struct BoszImportOptions {
  double lambda_min = 3000.0, lambda_max = 11000.0;  ///< range kept (vacuum Å)
  /// Factor from the files' second column to surface flux F_λ: BOSZ 2024 tabulates the Eddington flux
  /// H_λ [erg s⁻¹ cm⁻² Å⁻¹], and F_λ = 4π H_λ.
  double flux_factor = 12.566370614359172;
  double carbon = 0.0;  ///< keep only files with this [C/M]
  double vturb = -1.0;  ///< keep only files with this microturbulence (km/s); < 0: any (one per parameter set)
};

/// Reads every BOSZ 2024 file of `dir` (text, three columns: vacuum wavelength [Å], H_λ, continuum H_λ;
/// '#' comments; plain or gzip) of one resolving power and carbon abundance into a grid. All files must
/// share one wavelength grid (the library's "resam" files do). Throws DataError naming the file for rows
/// that cannot be read, a different grid, mixed resolving powers, or an empty folder.
TemplateGrid import_bosz(const std::filesystem::path& dir, const BoszImportOptions& opt = {});

}  // namespace kspecdr::fluxcal
