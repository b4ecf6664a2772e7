#pragma once
// The calibration vector of one standard-star spectrum: the factor that turns
// the electrons a spectrograph recorded into a flux density above the
// atmosphere, with its variance, and the mask of wavelengths where it is not
// known.
//
// Convention (used by every fluxcal function):
//
//     F_λ [erg s⁻¹ cm⁻² Å⁻¹] = cal [erg cm⁻² e⁻¹] × C [e⁻] / ( t [s] × Δλ [Å] )
//
// with C the electrons in one output pixel of width Δλ and t the exposure time.
// `cal` is thus a flux density per electron *rate density*: it does not depend
// on the pixel width of the grid nor on the exposure time, so that it can be
// interpolated onto another grid (a smooth ratio, not a density) and applied to
// exposures of any length. It is 1 / (effective collecting area × detector
// efficiency) in energy units: for a perfect instrument of area A it is
// h c / (λ A).
//
// A vector computed from an exposure at airmass X includes the atmosphere's
// extinction at X (cal_X = cal_0 × 10^(0.4 k(λ) X)); extinction.hpp moves it to
// airmass 0 and to the airmass of another exposure. `airmass` says which.
//
// Masked wavelengths (non-finite or non-positive counts or model, non-finite or
// non-positive count variance, inside a mask band) have good = 0 and cal =
// variance = NaN: never 0 with variance 0.
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace kspecdr::fluxcal {

/// Wavelength bands to leave out of a calibration (telluric absorption, bad regions).
struct BandMask {
  std::vector<std::pair<double, double>> bands_angstrom;  ///< [lo, hi] in Å, lo < hi, edges included
  /// True when `angstrom` lies in one of the bands (edges included).
  bool contains(double angstrom) const;
};

/// Reads a band mask: one "lam_lo lam_hi" row per band in Å, '#' starts a comment, blank lines ignored.
/// The wavelength medium (air or vacuum) is the file's: the default telluric mask of ../shared/data/masks/
/// is in vacuum, but its bands are ~100 Å wide, so the ~2 Å air/vacuum difference does not matter for a
/// mask. Throws DataError naming the file and line for an unreadable row or lo ≥ hi.
BandMask read_band_mask(const std::filesystem::path& path);

struct CalVector {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> wavelength_angstrom;  ///< pixel centres (Å), increasing
  std::vector<double> cal;                  ///< erg cm⁻² e⁻¹ (see the convention above); NaN where masked
  std::vector<double> variance;             ///< variance of cal ((erg cm⁻² e⁻¹)²); NaN where masked
  std::vector<unsigned char> good;          ///< 1 = usable, 0 = masked
  std::string source;                       ///< where it came from, e.g. "G93-48 r2701253"
  double airmass = kNaN;                    ///< airmass the vector refers to (0: above the atmosphere)

  std::size_t size() const { return wavelength_angstrom.size(); }
  std::size_t n_good() const;
  /// Throws DataError (naming `source`) unless all arrays have the same length and the wavelengths increase.
  void check() const;
};

/// Cal = F_model × t × Δλ / C with Var(Cal) = Cal² [Var(model)/model² + Var(C)/C²] pixel by pixel.
/// wavelength_angstrom: pixel centres (Å, increasing); pixel_width_angstrom: Δλ of each pixel (Å);
/// model_flambda: the star's flux density above the atmosphere (erg s⁻¹ cm⁻² Å⁻¹) and its variance (0 for
/// an error-free table); counts_e: electrons per pixel in an exposure of exptime_s seconds (sky subtracted)
/// and their variance (e⁻²). Pass NaN counts (or infinite variance) where the spectrum's own mask is set.
/// The result refers to the exposure's airmass: the caller sets `airmass`. Throws DataError for arrays of
/// different lengths, exptime_s ≤ 0 or non-finite, or when no pixel is good.
CalVector make_cal_vector(const std::vector<double>& wavelength_angstrom,
                          const std::vector<double>& pixel_width_angstrom,
                          const std::vector<double>& model_flambda, const std::vector<double>& model_variance,
                          const std::vector<double>& counts_e, const std::vector<double>& counts_variance,
                          double exptime_s, const BandMask& mask, const std::string& source);

/// The vector linearly interpolated onto other pixel centres (Å). A target pixel is good only when both
/// neighbouring source pixels are good and it lies inside the source range; elsewhere it is masked (NaN).
/// The variance is interpolated linearly too (w₀ v₀ + w₁ v₁): exact at source pixels and, between them, an
/// upper bound of the variance of the interpolated value (w₀² v₀ + w₁² v₁) — conservative, never too small.
CalVector interpolate(const CalVector& cal, const std::vector<double>& wavelength_angstrom);

}  // namespace kspecdr::fluxcal
