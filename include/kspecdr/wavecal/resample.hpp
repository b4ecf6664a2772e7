#pragma once
// Flux-conserving resampling ("scrunch") of spectra from detector pixels with
// known wavelengths onto one common grid, linear or logarithmic in λ.
//
// Each input pixel i covers [e_i, e_{i+1}] (edges half-way between the pixel
// centres); an output pixel j covering [E_j, E_{j+1}] receives the fraction
// w_ij = overlap_ij / (e_{i+1} − e_i) of input pixel i's counts (SpectRes,
// Carnall 2017, in counts). Variances add as Σ w_ij² σ_i². Neighbouring output
// pixels that share an input pixel are correlated:
//     cov(j, j') = Σ_i w_ij w_ij' σ_i²,
// which is returned for j' = j + 1 (the only non-zero term when output pixels
// are at least as wide as input pixels).
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/wavecal/config.hpp"
#include "kspecdr/wavecal/peaks.hpp"

namespace kspecdr::wavecal {

struct WavelengthGrid {
  std::vector<double> centres;  ///< Å, increasing
  std::vector<double> edges;    ///< Å, centres.size() + 1
  ResampleConfig::Spacing spacing = ResampleConfig::Spacing::Linear;
  double step = 0.0;            ///< Å (linear) or Δln λ (log)
  std::size_t size() const { return centres.size(); }
};

/// Edges of pixels whose centres are given (increasing or decreasing): half-way between
/// centres, the outer edges half a pixel beyond. Throws DataError unless strictly monotonic.
std::vector<double> pixel_edges(const std::vector<double>& centres);

/// A grid from the config; NaN ends and non-positive steps are taken from `inputs` (the wavelength
/// of each pixel of each spectrum): the range covered by all of them and their median step.
WavelengthGrid make_grid(const ResampleConfig& cfg, const std::vector<std::vector<double>>& inputs);

struct ResampledSpectrum {
  std::vector<double> flux;            ///< counts per output pixel, or density (flux_is_density)
  std::vector<double> variance;        ///< +inf where NODATA
  std::vector<double> covariance_next; ///< cov(j, j + 1); the last entry is 0
  std::vector<MaskPixel> mask;         ///< input bits of every touched pixel; NODATA outside the input
};

/// Resamples one spectrum whose pixel centres are at `wavelengths` (Å). An output pixel not wholly
/// inside the input range is NODATA (flux 0, variance +inf).
ResampledSpectrum resample(const std::vector<double>& wavelengths, const Spectrum1D& in,
                           const WavelengthGrid& grid, const ResampleConfig& cfg);

/// Resamples every aperture of an EX set (flux, variance and its components, sky, mask) onto `grid`;
/// `wavelengths[a]` are aperture a's pixel wavelengths. An aperture with no wavelengths becomes NODATA.
/// `covariance_next`, when given, receives cov(j, j + 1) of the flux (NAPER × NWAVE, e-²). Only the apertures
/// [a_begin, a_end) are resampled (a_end < 0: to the last); the other rows are left zero, for the ranks of a group
/// that share an exposure's apertures (each aperture is resampled on its own, so its row does not depend on the
/// range).
SpectrumSet resample_spectra(const SpectrumSet& ex, const std::vector<std::vector<double>>& wavelengths,
                             const WavelengthGrid& grid, const ResampleConfig& cfg,
                             ImageArray* covariance_next = nullptr,
                             Eigen::Index a_begin = 0, Eigen::Index a_end = -1);

/// Sets the FITS WCS of `grid` on axis 1 of `h`: CTYPE1 'WAVE' (λ = CRVAL1 + CDELT1 (p − CRPIX1)) or
/// 'WAVE-LOG' (λ = CRVAL1 exp(CDELT1 (p − CRPIX1) / CRVAL1); Greisen et al. 2006), CUNIT1 'Angstrom',
/// CRPIX1 = 1 (the first pixel, 1-based as FITS counts), CRVAL1, CDELT1.
void set_wavelength_wcs(Header& h, const WavelengthGrid& grid);
/// The grid of `nwave` pixels that the WCS keywords of `h` describe. Throws DataError naming the
/// keyword when one is missing or not a wavelength axis in Angstrom.
WavelengthGrid grid_from_wcs(const Header& h, long nwave, const std::string& file = "");

}  // namespace kspecdr::wavecal
