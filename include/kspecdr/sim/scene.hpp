#pragma once
// The light path of a simulated spectrograph in pipeline orientation (dispersion
// along x, rows = spatial y, pixel centres at integer coordinates), and a small
// fluent builder that turns it into the noiseless electrons a perfect detector
// would record in one exposure:
//
//   SceneBuilder(spec, state).add_sky().add_stars().electrons()
//
// Every spatial profile is integrated exactly over each pixel (erf differences),
// so the electrons that fall in a column are known exactly.
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/spectra.hpp"

namespace kspecdr::sim {

/// What changes from one exposure to the next.
struct ExposureState {
  double exptime_s = 0.0;
  double airmass = 1.0;
  double trace_offset_px = 0.0;  ///< shift of every trace along y (slit: guiding drift)
  double sigma_scale = 1.0;      ///< spatial widths are multiplied by this (slit: seeing)
  double transit_model = 1.0;    ///< flux factor of the transiting star (1 out of transit)
};

/// One trace: a fiber, or a star on the slit. y_c(x) = y0 + tilt·u + curvature·u²,
/// σ(x) = σ0·(1 + sigma_slope·u + sigma_curvature·u²), u = 2x/(nx-1) - 1.
struct Aperture {
  std::string name;
  char type = 'P';  ///< P program, S sky, C calibration standard, N unused (no light)
  double ra_deg = 0.0, dec_deg = 0.0;
  double throughput = 1.0;  ///< relative to the system throughput (fiber-to-fiber)
  double y0_px = 0.0, tilt_px = 0.0, curvature_px = 0.0;
  double sigma0_px = 1.5, sigma_slope = 0.0, sigma_curvature = 0.0;
  Legendre wavelength;  ///< air wavelength (Å) along the nominal trace
  std::optional<StarTemplate> star;
  bool transits = false;  ///< its flux follows ExposureState::transit_model

  double centre_y(double x, long nx, const ExposureState& s = {}) const;
  double sigma(double x, long nx, const ExposureState& s = {}) const;
};

/// Everything about the light path that stays fixed over the night.
struct Spectrograph {
  SpectroMode mode = SpectroMode::Fiber;
  long nx = 0, ny = 0;
  std::vector<Aperture> apertures;
  // Slit mode: λ along the slit centre row, and the line tilt across the slit.
  Legendre slit_wavelength;
  double slit_tilt_angstrom = 0.0;  ///< λ change from the slit centre to half a slit length (ny/2) away
  double slit_row0 = 0.0, slit_row1 = 0.0;  ///< first and last illuminated rows of the slit
  double plate_scale_arcsec_per_px = 0.2, slit_width_arcsec = 4.0;
  double lsf_sigma0_px = 1.1;
  double throughput_peak = 0.25, telescope_area_cm2 = 1.2e5, site_height_m = 0.0;
  double flat_peak_e = 2.5e4, arc_peak_e_per_s = 4e3;
  SkyModel sky;
  LineList arc_lines;

  double lsf_sigma_px(double x) const;
  double slit_illumination(double y) const;  ///< slit mode: relative illumination of row y
  double slit_lambda(double x, double y) const;
  /// The large-scale illumination pattern of the flat lamp (fiber profiles × throughputs, or
  /// the slit function), per unit lamp spectrum.
  ImageArrayD illumination() const;
};

/// Builds the fiber or slit light path from the configuration and the profile's wavelength
/// hints; draws fiber types, positions, stars and the wavelength zero point from `rng`.
Spectrograph make_spectrograph(const SimConfig& c, const InstrumentProfile& profile, double field_ra_deg,
                               double field_dec_deg, std::mt19937_64& rng);

/// The truth about one aperture in one exposure (per column x).
struct ApertureLight {
  std::vector<double> star_e;           ///< star electrons in the column, summed over every row
  std::vector<double> sky_e;            ///< sky electrons that entered the fiber (fiber mode)
  std::vector<double> sky_e_per_px;     ///< sky electrons in the pixel nearest the trace centre
  std::vector<double> slit_transmission;///< slit mode: fraction of the star's light through the slit
};

class SceneBuilder {
 public:
  SceneBuilder(const Spectrograph& spec, ExposureState state);

  /// Quartz lamp through every fiber / the whole slit; scaled so the brightest pixel is flat_peak_e.
  SceneBuilder& add_flat_lamp();
  /// Arc lamp lines; scaled so the brightest pixel is arc_peak_e_per_s × exptime.
  SceneBuilder& add_arc();
  /// Night-sky continuum and lines: through each fiber, or filling the slit.
  SceneBuilder& add_sky();
  /// Every aperture's star, extincted by the airmass and scaled by the exposure time.
  SceneBuilder& add_stars();
  /// One aperture's star only (tests check the pixel integration with it).
  SceneBuilder& add_star(const Aperture& ap);

  const ImageArrayD& electrons() const { return e_; }
  const std::map<std::string, ApertureLight>& light() const { return light_; }

 private:
  ApertureLight& light_of(const Aperture& ap);
  /// Adds `column_e` (electrons per column) through the aperture's spatial profile.
  void spread(const Aperture& ap, const std::vector<double>& column_e, ImageArrayD& into) const;
  /// Renders the arc or sky lines (and continuum) per slit row into `into`.
  void render_slit_lines(const LineList& lines, bool sky_continuum, ImageArrayD& into) const;
  std::vector<double> line_spectrum(const Aperture& ap, const LineList& lines) const;

  const Spectrograph& spec_;
  ExposureState state_;
  ImageArrayD e_;
  std::map<std::string, ApertureLight> light_;
};

}  // namespace kspecdr::sim
