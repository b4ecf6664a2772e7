#pragma once
// Every knob of the simulator ("going backward") in one plain struct with
// documented defaults. cli/ fills it from the command line and an INI file;
// the simulator never looks options up anywhere else. A value of 0 for the
// mode-dependent fields means "the default of the mode" (resolved by
// resolve_mode_defaults), so that one INI file can serve both modes.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/io/instrument.hpp"

namespace kspecdr::sim {

struct SimConfig {
  // ---- what and where
  SpectroMode mode = SpectroMode::Fiber;
  std::filesystem::path out_dir;          ///< DIR: raw frames go to DIR/raw, the truth to DIR/truth.h5
  std::uint64_t seed = 1;                 ///< every random draw comes from std::mt19937_64(seed)
  std::string instrument;                 ///< profile name or path; "" = sim-fiber / sim-slit
  bool overwrite = false;                 ///< replace an existing DIR/truth.h5 and frames

  // ---- image size in pipeline orientation (dispersion along x)
  long nx = 1024;                         ///< pixels along dispersion
  long ny = 0;                            ///< pixels along the slit / across fibers (0: fiber 400, slit 200)
  long overscan_px = 32;                  ///< width of the serial overscan of keyword-described amplifiers

  // ---- the night plan
  int n_bias = 5;
  int n_flat = 3;
  int n_arc = 2;                          ///< the first is OBSTYPE=ARC, the others OBSTYPE=OBJECT with the lamp on
  int n_science = 0;                      ///< 0: fiber 3, slit 12
  double flat_exptime_s = 5.0;
  double arc_exptime_s = 10.0;            ///< first arc; later arcs are 3x longer so the brightest lines saturate
  double science_exptime_s = 0.0;         ///< 0: fiber 600, slit 240
  /// Flexure: the spectra of science exposure i move along dispersion by flexure_px · (2 t_i − 1) px,
  /// t_i = i / (n − 1) (a drift from −flexure_px to +flexure_px over the night; arcs and flats at 0).
  double flexure_px = 0.4;
  double overhead_s = 60.0;               ///< readout and set-up time between exposures
  double mjd_start = 0.0;                 ///< start of the calibrations (0: fiber 60384.30, slit 60384.85)

  // ---- detector
  std::vector<double> bias_level_dn;      ///< per amplifier, in profile order (empty: 412, 587, 803, 951, ...)
  double bias_gradient_dn = 3.0;          ///< bias change along the readout direction across one amplifier
  double bias_edge_dn = 4.0;              ///< extra bias in the data columns next to the serial register
  double pixel_flat_rms = 0.01;           ///< rms of the pixel-to-pixel sensitivity (mean 1)
  double hot_column_e_per_s = 5.0;        ///< dark current of the hot column
  double cosmic_rate_per_px_s = 2e-7;     ///< cosmic-ray events per pixel per second of exposure
  double cosmic_extra_s = 30.0;           ///< cosmic rays also arrive during readout and set-up

  // ---- light
  double flat_peak_e = 2.5e4;             ///< brightest pixel of a flat (electrons)
  double arc_peak_e_per_s = 4.0e3;        ///< brightest arc-line pixel, electrons per second of exposure
  std::string arc_linelist;               ///< "" = first line list of the profile's [wavelength]
  double lsf_sigma_px = 1.1;              ///< Gaussian line-spread sigma at the detector centre (px)
  double telescope_area_cm2 = 1.2e5;      ///< collecting area (4.2 m with central obstruction)
  double throughput_peak = 0.25;          ///< peak system throughput (telescope + spectrograph + CCD QE)
  double sky_continuum_photons = 0.0;     ///< sky photons /s /Å per spatial pixel (slit) or per fiber at 5500 Å (0: fiber 1.2, slit 0.4)
  double sky_line_scale = 1.0;            ///< multiplies every sky-line flux

  // ---- fiber mode
  int n_fibers = 36;
  int n_sky_fibers = 6;
  int n_standard_fibers = 3;
  int n_fiber_blocks = 3;                 ///< fibers come in blocks with a gap between blocks
  double fiber_gap_px = 20.0;             ///< extra empty space between blocks
  double fiber_sigma_px = 1.4;            ///< mean spatial sigma of a fiber profile
  /// Folder of filter curves (two columns: µm, photon transmission; e.g. ../shared/data/filters). When set,
  /// DIR/catalog.csv gets every star's catalog magnitudes through these bands, with errors, in shuffled order.
  std::filesystem::path catalog_filters_dir;
  std::vector<std::string> catalog_bands = {"ps1_g", "ps1_r", "ps1_i", "gaia_g"};  ///< file stems in that folder
  double catalog_mag_err = 0.01;          ///< catalog errors are drawn from [1, 2] × this (mag)

  // ---- slit mode
  int n_stars = 3;                        ///< stars on the slit; the first has the transit
  double transit_depth = 0.01;            ///< fractional depth of the transit of the first star
  double seeing_fwhm_arcsec = 1.0;        ///< median seeing
  double plate_scale_arcsec_per_px = 0.2; ///< along the slit
  double slit_width_arcsec = 4.0;         ///< wide slit for the time series: slit losses follow the seeing
  double drift_px = 1.5;                  ///< peak-to-peak trace drift along the slit over the series
};

/// Fills the 0-valued mode-dependent fields with the defaults of `c.mode`.
void resolve_mode_defaults(SimConfig& c);

/// Throws ConfigError (naming the option) for values that cannot make a night.
void validate(const SimConfig& c);

}  // namespace kspecdr::sim
