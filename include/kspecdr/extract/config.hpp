#pragma once
// Every knob of the sky and extraction stage (IM → EX) in plain structs with
// documented defaults. cli/ fills them; extract code never looks options up
// anywhere else. Lengths are detector pixels (px), counts electrons (e-).
#include <algorithm>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"

namespace kspecdr::extract {

/// Read noise per pixel (e-): one value for the detector, or a map with the image shape (e.g. built from
/// the RDNOISEn keywords of the IM header and the amplifier sections).
struct ReadNoise {
  double value_e = 0.0;  ///< used where `map_e` is empty
  ImageArray map_e;      ///< per-pixel read noise; empty = `value_e` everywhere
  /// Read-noise variance (e-²) of pixel (row y, column x).
  double variance(Eigen::Index y, Eigen::Index x) const {
    const double r = map_e.size() ? static_cast<double>(map_e(y, x)) : value_e;
    return r * r;
  }
  /// Throws ConfigError when the map does not have the image shape.
  void check(Eigen::Index ny, Eigen::Index nx) const;
};

/// Noise of the master calibrations that every IM pixel carries: the detector stage subtracts the master
/// bias and divides by the pixel flat f, so a pixel of expected signal S (e-, after the flat) has, besides
/// read noise and photons, the variance var_bias / f² + S² var_f / f². Both are fixed per pixel, so they
/// are given as maps with the image shape; an empty map leaves its term out.
struct CalibrationNoise {
  ImageArray flat_relvar;  ///< relative variance var_f / f² of the pixel flat; empty = no flat noise
  ImageArray bias_var;     ///< variance of the master bias over f² (e-²); empty = no bias noise
  bool empty() const { return flat_relvar.size() == 0 && bias_var.size() == 0; }
  /// Calibration variance (e-²) of pixel (row y, column x) for an expected signal S (e-); S is clipped at 0.
  double variance(Eigen::Index y, Eigen::Index x, double signal) const {
    double v = bias_var.size() ? static_cast<double>(bias_var(y, x)) : 0.0;
    if (flat_relvar.size()) {
      const double s = std::max(signal, 0.0);
      v += s * s * static_cast<double>(flat_relvar(y, x));
    }
    return v;
  }
  /// Throws ConfigError when a map does not have the image shape or holds a negative or non-finite value.
  void check(Eigen::Index ny, Eigen::Index nx) const;
};

/// How the sky is estimated in each column from the pixels of the sky windows.
enum class SkyMethod {
  None,         ///< no local sky (fiber mode, where the master sky is subtracted after wavelength alignment)
  Median,       ///< the median of the window pixels: one level per column, robust to stars and cosmics
  ClippedPoly,  ///< an iteratively clipped polynomial in y: follows gradients and tilted sky lines
};
std::string to_string(SkyMethod m);
/// "none", "median" or "poly"; throws ConfigError naming the text otherwise.
SkyMethod sky_method_from_string(const std::string& s);

/// A sky region along the slit, [from_px, to_px) in y relative to the trace centre (negative = below).
struct SkyRegion {
  double from_px = 0.0;
  double to_px = 0.0;
};

struct SkyConfig {
  SkyMethod method = SkyMethod::Median;
  /// Distance (px) from the trace centre to the inner edge of each window; ≤ 0 = `distance_sigma` × σ(x).
  double distance_px = 0.0;
  /// Inner-edge distance in units of the local trace σ when `distance_px` ≤ 0; beyond the boxcar aperture.
  double distance_sigma = 6.0;
  /// Width (px) of the window on each side of the trace.
  double width_px = 12.0;
  /// Explicit regions (relative to the trace centre); when not empty they replace the two windows.
  std::vector<SkyRegion> regions;
  /// Rows within this many σ of another trace's centre are excluded from the windows.
  double exclusion_sigma = 5.0;
  /// Polynomial order in y of ClippedPoly (0 = a clipped mean).
  int poly_order = 1;
  /// ClippedPoly rejects pixels beyond this many standard deviations of the model.
  double clip_sigma = 4.0;
  /// ClippedPoly: at most this many fit-reject rounds.
  int clip_iterations = 5;
  /// A column needs at least this many good window pixels; below it the column's sky is NODATA.
  int min_pixels = 4;
};

/// How the extraction weights the pixels of a column.
enum class ExtractMethod {
  Boxcar,   ///< sum over a box of ±halfwidth around the centre, fractional pixels at the edges
  Optimal,  ///< Horne (1986) profile-weighted extraction with model variance and outlier rejection
  /// All apertures of a column at once: a weighted linear least-squares fit of every profile's amplitude
  /// (the "simultaneous" or "deblended" optimal extraction of fiber spectrographs). Equals Optimal where
  /// the profiles do not overlap; where they do, each flux is free of its neighbours' wings.
  Joint,
};
std::string to_string(ExtractMethod m);
ExtractMethod extract_method_from_string(const std::string& s);  ///< "boxcar" | "optimal" | "joint"

/// Whether the neighbours' light is modelled when the apertures' profiles overlap (fibers packed closely).
enum class Deblend {
  /// On when no local sky model is given (fiber mode) and two apertures' optimal windows
  /// (±`optimal_halfwidth_sigma` σ) overlap somewhere; off otherwise. The pipeline turns it off in slit mode.
  Auto,
  On,   ///< always (needs no local sky model and the Gaussian profile)
  Off,  ///< never: every aperture is extracted alone, as in slit mode
};
std::string to_string(Deblend d);
Deblend deblend_from_string(const std::string& s);  ///< "auto" | "on" | "off"

/// Where the spatial profile of optimal extraction comes from.
enum class ProfileSource {
  Gaussian,  ///< a pixel-integrated Gaussian with the trace centre and width
  Data,      ///< the data themselves, smoothed along dispersion, positive and normalised per column
};
std::string to_string(ProfileSource p);
ProfileSource profile_source_from_string(const std::string& s);  ///< "gaussian" | "data"

struct ExtractConfig {
  /// With deblending on (see `deblend`), Optimal becomes Joint and Boxcar subtracts the neighbours'
  /// modelled light from its box; Joint always deblends.
  ExtractMethod method = ExtractMethod::Optimal;
  Deblend deblend = Deblend::Auto;
  /// Boxcar half-width (px); ≤ 0 = `boxcar_halfwidth_sigma` × σ(x).
  double boxcar_halfwidth_px = 0.0;
  /// Boxcar half-width in units of the local σ when `boxcar_halfwidth_px` ≤ 0. Four σ lose 6e-5 of a
  /// Gaussian's light, far below the noise of any star-frame.
  double boxcar_halfwidth_sigma = 4.0;
  /// Half-width of the optimal-extraction aperture in units of σ (the profile outside carries no weight).
  double optimal_halfwidth_sigma = 5.0;
  ProfileSource profile = ProfileSource::Gaussian;
  /// Data profile: window (columns) of the local quadratic smoothing along dispersion, per row. Wider
  /// windows average more noise out of the profile; the quadratic follows curved traces across the window.
  int profile_smooth_px = 81;
  /// Pixels deviating from the profile model by more than this many σ are rejected, worst first.
  double reject_sigma = 5.0;
  /// At most this many pixels per column are rejected (joint extraction: per aperture and column).
  int max_reject = 3;
  /// Joint extraction: a pixel beside a rejected one (same column) that lies this many σ above the model is
  /// rejected too, the faint end of a cosmic-ray track; ≤ 0 = no growing.
  double reject_grow_sigma = 2.5;
  /// Fit-and-variance rounds of optimal extraction (the variance depends on the fitted flux).
  int variance_iterations = 3;
  /// A column whose good pixels hold less than this fraction of the profile is NODATA. The profile fit
  /// stays unbiased with part of the profile masked (its variance grows accordingly), so this only stops
  /// fluxes that rest on the far wings.
  double min_good_fraction = 0.25;
  /// Read noise of the pixels (with the calibration noise, the IM variance minus its Poisson part).
  ReadNoise read_noise;
  /// Noise of the master bias and flat in the IM pixels (empty = none, e.g. an IM without masters).
  CalibrationNoise calibration_noise;
  /// Mask bits of the input image that exclude a pixel.
  MaskPixel exclude_bits = kMaskBad | kMaskSaturated | kMaskCosmic | kMaskNoData | kMaskLowFlat;
};

}  // namespace kspecdr::extract
