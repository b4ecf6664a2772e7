#pragma once
// The simulated CCD: how pipeline-orientation electrons become raw DN in the
// layout that an instrument profile describes. Every layout fact (amplifier
// sections, gains, read noise, orientation) is read from the profile, so the
// frames and the profile can never disagree. A fluent builder runs the steps
// of one readout in the order a detector applies them:
//
//   DetectorExposure(det, rng).add_light(e, t).add_cosmics(t).add_photon_noise().read_out()
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/section.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/sim/config.hpp"

namespace kspecdr::sim {

using ByteArray = Eigen::Array<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// One amplifier as the simulator reads it out (sections 0-based, raw / assembled coordinates).
struct AmpLayout {
  std::string name;
  Section datasec, biassec, detsec;
  double gain_e_per_dn = 1.0;
  double read_noise_e = 0.0;
  double bias_level_dn = 0.0;     ///< mean overscan level
  double bias_gradient_dn = 0.0;  ///< bias change from the first to the last row of the amplifier
  double bias_edge_dn = 0.0;      ///< extra bias of the data columns next to the serial register
  /// Noiseless bias (DN) of raw pixel (yr, xr) of this amplifier.
  double bias_at(long yr, long xr) const;
};

/// The raw frame layout of one simulated night.
struct RawLayout {
  long raw_ny = 0, raw_nx = 0;  ///< raw image shape (NAXIS2, NAXIS1)
  long asm_ny = 0, asm_nx = 0;  ///< assembled, trimmed image in raw orientation
  int dispersion_axis = 1;
  bool flip_dispersion = false, flip_spatial = false;
  bool sections_in_header = false;  ///< the profile reads the sections from header keywords
  std::vector<AmpLayout> amps;

  long pipeline_ny() const { return dispersion_axis == 1 ? asm_ny : asm_nx; }
  long pipeline_nx() const { return dispersion_axis == 1 ? asm_nx : asm_ny; }
  /// Pipeline (y, x) of assembled pixel (ya, xa): dispersion onto x (a transpose when the
  /// dispersion runs along NAXIS2), then the profile's flips.
  std::pair<long, long> to_pipeline(long ya, long xa) const;
  /// Assembled (ya, xa) of raw pixel (yr, xr) inside amplifier `a`'s datasec.
  std::pair<long, long> to_assembled(const AmpLayout& a, long yr, long xr) const;
};

/// True when the profile gives explicit sections whose assembled image is not ny × nx
/// (pipeline orientation): then the profile must be rescaled with rescale_profile_text.
bool profile_needs_rescale(const InstrumentProfile& p, long ny, long nx);

/// The profile's INI text with its explicit sections (and raw_shape) rewritten for a pipeline
/// image of ny × nx: data sections scale, overscan strips keep their width. Throws ConfigError
/// when the size does not divide evenly between the amplifiers.
std::string rescale_profile_text(const std::string& ini_text, const InstrumentProfile& p, long ny, long nx);

/// Builds the layout for a pipeline image of ny × nx. Explicit sections are taken as they are
/// (and must match the size); sections read from header keywords are generated: the amplifiers
/// split the assembled image into bands along raw y, each with a serial overscan of
/// `overscan_px` columns on its right. Bias levels come from `c` (one per amplifier).
RawLayout make_layout(const InstrumentProfile& p, const SimConfig& c);

/// Header keywords the profile reads the layout from (DATASEC1 ...), with their values.
Header layout_keywords(const InstrumentProfile& p, const RawLayout& l);

/// The fixed properties of the detector over the night, in pipeline orientation.
struct DetectorModel {
  RawLayout layout;
  ImageArrayD pixel_flat;     ///< sensitivity, mean 1 over the detector before bad columns
  ByteArray bad_pixels;       ///< 0 good; 1 low-response column; 2 hot column
  ImageArrayD dark_e_per_s;   ///< dark current (the hot column)
  ImageArrayD bias_dn;        ///< noiseless bias level of each data pixel
  double saturation_dn = 65535.0;
  std::vector<long> bad_columns_raw;  ///< assembled-raw x of the low-response and hot columns

  /// Draws the pixel flat and the two bad columns (kept `keep_clear_px` away from the
  /// pipeline rows in `clear_rows`, which matters when raw columns are pipeline rows).
  static DetectorModel make(RawLayout layout, const SimConfig& c, double saturation_dn,
                            const std::vector<double>& clear_rows, std::mt19937_64& rng,
                            const std::vector<long>& known_bad_columns = {});
};

class DetectorExposure {
 public:
  DetectorExposure(const DetectorModel& det, std::mt19937_64& rng);

  /// Light (electrons a flat=1 detector would record) times the pixel flat, plus dark current.
  DetectorExposure& add_light(const ImageArrayD& expected_e, double exptime_s);
  /// Cosmic-ray hits: single pixels, small blobs and short tracks of thousands of electrons.
  DetectorExposure& add_cosmics(double seconds, double rate_per_px_s);
  /// Poisson noise on the light and dark electrons.
  DetectorExposure& add_photon_noise();
  /// Read noise, gain, bias and the 16-bit converter: raw DN in raw orientation (integers).
  ImageArray read_out();

  const ImageArrayD& cosmic_e() const { return cosmic_; }
  const ByteArray& saturated() const { return saturated_; }  ///< pipeline orientation, after read_out

 private:
  const DetectorModel& det_;
  std::mt19937_64& rng_;
  ImageArrayD mean_e_;   ///< expected electrons after the pixel flat (before noise)
  ImageArrayD e_;        ///< electrons collected (after add_photon_noise)
  ImageArrayD cosmic_;
  ByteArray saturated_;
  bool noisy_ = false;
};

}  // namespace kspecdr::sim
