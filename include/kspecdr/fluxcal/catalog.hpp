#pragma once
// The photometric catalog of the standard stars (an ATLAS-RefCat2-style CSV: one row per star with a
// name, RA, Dec and magnitudes with errors), its association with the standard fibers by position,
// and the absolute scale of a fitted model from synthetic photometry.
//
// CSV: a header row; columns `name` (or `id`), `ra`, `dec` (degrees; case-insensitive); every other
// column X that has an error column (`X_err`, `e_X`, `dX` or `X_error`) is a band. Empty cells and
// NaN are missing values.
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "kspecdr/fluxcal/photometry.hpp"

namespace kspecdr::fluxcal {

struct CatalogStar {
  std::string name;
  double ra_deg = 0.0, dec_deg = 0.0;
  std::vector<double> mag, err;  ///< per band of the catalog (NaN = missing)
  long row = 0;                  ///< 0-based data row in the file
};

struct Catalog {
  std::filesystem::path path;
  std::vector<std::string> bands;  ///< magnitude column names
  std::vector<CatalogStar> stars;
};

/// Throws DataError naming the file and line for a missing column, a row of the wrong length or a
/// number that cannot be read.
Catalog read_catalog(const std::filesystem::path& path);

/// m_AB − m_catalog of a band by its column name: Gaia DR2 G, BP, RP are Vega magnitudes (Evans et al.
/// 2018: ZP_AB − ZP_Vega = 0.1050, 0.0292, 0.3542); PS1, SDSS, SkyMapper and ATLAS-RefCat2's g, r, i, z
/// are AB (0). Names: gaia_g | g_gaia | phot_g_mean_mag | G (and bp, rp alike); other bands 0.
double default_ab_offset(const std::string& band);

/// A standard fiber's position.
struct FiberPosition {
  std::string name;
  double ra_deg = 0.0, dec_deg = 0.0;
};

struct CatalogMatch {
  std::vector<long> star;               ///< per fiber: index into Catalog::stars, -1 when unmatched
  std::vector<double> separation_arcsec;  ///< per fiber (NaN when unmatched)
  std::vector<std::string> unmatched;   ///< "fiber: reason" for every unmatched fiber
};

/// Great-circle separation (arcsec).
double separation_arcsec(double ra1, double dec1, double ra2, double dec2);

/// Nearest unique match within `radius_arcsec`: pairs are taken in order of increasing separation and a
/// catalog star goes to one fiber only, so two fibers never share a star.
CatalogMatch match_by_position(const std::vector<FiberPosition>& fibers, const Catalog& cat, double radius_arcsec);

/// Legacy association by order: fiber i gets catalog row i (no position check). Only on explicit request.
CatalogMatch match_by_row_order(const std::vector<FiberPosition>& fibers, const Catalog& cat);

/// One band of the photometric scale (magnitudes in mag; NaN where not measured).
struct BandResidual {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::string band;
  double mag = kNaN;        ///< the catalog's magnitude as given
  double ab_offset = 0.0;   ///< m_AB − m_catalog applied
  double obs_ab = kNaN;     ///< mag + ab_offset
  double err = kNaN;        ///< the catalog's error
  double synth_ab = kNaN;   ///< synthetic AB magnitude of the unscaled model (surface flux)
  double synth_scaled_ab = kNaN;  ///< synthetic AB magnitude of the scaled model: synth_ab + dm
  double residual = kNaN;   ///< synthetic magnitude of the scaled model − observed (mag)
  bool used = false;
  std::string note;         ///< why a band was not used
};

struct PhotometricScale {
  double scale = 0.0, scale_err = 0.0;  ///< model flux × scale = flux at the telescope
  double dm = 0.0, dm_err = 0.0;        ///< inverse-variance weighted mean of observed − synthetic (mag)
  double chi2 = 0.0;                    ///< of the band offsets about dm
  int n_bands = 0;
  std::vector<BandResidual> bands;
};

/// Observed AB magnitudes of the bands (mag + offset) against the synthetic AB magnitudes of the whole model
/// (wavelength [Å], f_λ) through each band's filter. Bands without a filter, without a magnitude or error, or
/// that the model does not fully cover are not used (noted). scale = 10^(−0.4 dm), σ(dm) = 1/√Σw, σ(scale) =
/// 0.4 ln10 · scale · σ(dm). Throws DataError naming the star when no band can be used.
PhotometricScale scale_to_photometry(const std::vector<double>& model_wavelength, const std::vector<double>& model_flux,
                                     const Catalog& cat, const CatalogStar& star,
                                     const std::map<std::string, FilterCurve>& filters,
                                     const std::map<std::string, double>& ab_offsets);

}  // namespace kspecdr::fluxcal
