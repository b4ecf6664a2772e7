#pragma once
// Instrument profiles: everything the pipeline knows about a spectrograph and
// its headers, read from one INI file (data/instruments/<name>.ini). A new
// instrument is one file; docs/instruments.md documents every key.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/section.hpp"

namespace kspecdr {

enum class SpectroMode { Fiber, Slit };
std::string to_string(SpectroMode m);

/// Frame classes the observing log assigns.
enum class FrameClass { Bias, Dark, Flat, Arc, Science, Imaging, Unknown };
std::string to_string(FrameClass c);
FrameClass frame_class_from_string(const std::string& s);  ///< throws ConfigError

/// One readout amplifier. Sections are in raw pixel coordinates of the image HDU.
/// Each section comes either explicitly from the profile or from a header keyword.
struct AmplifierSpec {
  std::string name;
  std::optional<Section> datasec;  ///< pixels read by this amplifier that hold sky data (trimmed region)
  std::optional<Section> biassec;  ///< serial/parallel overscan strip of this amplifier
  std::optional<Section> detsec;   ///< where the trimmed data go in the assembled image (0-based, assembled coords)
  std::string datasec_key;         ///< header keyword holding datasec (e.g. TRIMSEC, DATASEC1)
  std::string biassec_key;         ///< header keyword holding biassec (e.g. BIASSEC)
  std::string detsec_key;          ///< header keyword holding detsec
  double gain = 1.0;               ///< nominal gain, e-/DN
  std::string gain_key;            ///< header keyword that overrides `gain` when present
  double read_noise = 0.0;         ///< nominal read noise, e-
  std::string read_noise_key;      ///< header keyword that overrides `read_noise` when present
};

/// A condition on one header keyword in a classification rule.
struct Condition {
  enum class Op { Equal, NotEqual, Contains, NotContains, Exists, Missing, Greater, Less };
  std::string keyword;  ///< FITS keyword (a logical name from [keywords] is translated)
  Op op = Op::Equal;
  std::string value;    ///< compared case-insensitively, blanks trimmed
  bool matches(const Header& h) const;
};

/// "class: cond && cond ..." — the first rule whose conditions all hold gives the class.
struct ClassRule {
  FrameClass frame_class = FrameClass::Unknown;
  std::vector<Condition> conditions;
  std::string text;  ///< the rule as written in the profile (for messages)
};

struct InstrumentProfile {
  std::string name;
  std::string description;
  std::filesystem::path source;  ///< the file it was read from
  SpectroMode mode = SpectroMode::Slit;

  // ---- raw file layout
  std::string image_hdu = "auto";  ///< "auto" (first 2D image), an HDU index, or an EXTNAME
  std::string fibre_table_hdu = "FIBRES";
  int dispersion_axis = 1;         ///< raw FITS axis along which wavelength runs: 1 (NAXIS1, x) or 2 (NAXIS2, y)
  bool flip_dispersion = false;    ///< wavelength decreases with raw pixel index along the dispersion axis
  bool flip_spatial = false;       ///< flip the spatial axis after rotating dispersion onto x
  std::optional<std::vector<long>> raw_shape;  ///< expected {ny, nx} of raw frames (checked when given)

  // ---- detector
  std::vector<AmplifierSpec> amplifiers;
  double saturation_dn = 65535.0;  ///< raw level (DN, before bias subtraction) at which pixels saturate
  std::string saturation_key;      ///< header keyword that overrides saturation_dn
  /// Known bad columns of the detector (1-based x of the assembled, trimmed image in raw orientation):
  /// flagged BAD in every frame, like a bad-pixel map.
  std::vector<long> bad_columns;
  std::string overscan_method = "median";  ///< median | poly
  int overscan_order = 1;                  ///< polynomial order along the readout direction (poly)

  // ---- header keyword map: logical name -> FITS keyword
  /// Logical names: frame_type, object, exptime, date_obs, time_obs, mjd_obs, airmass, ra, dec,
  /// disperser, lamps, filter, slit. `setup_keywords` lists the logical or FITS names that form the setup key.
  std::map<std::string, std::string> keywords;
  std::vector<std::string> setup_keywords;
  std::vector<ClassRule> rules;
  FrameClass default_class = FrameClass::Unknown;

  // ---- site (for BJD_TDB and airmass)
  double site_latitude_deg = 0.0, site_longitude_deg = 0.0, site_height_m = 0.0;
  std::string site_name;

  // ---- wavelength calibration hints (approximate; wavecal refines them)
  double wave_center_angstrom = 0.0;      ///< approximate wavelength at the centre of the dispersion axis
  double dispersion_angstrom_per_px = 0.0;///< approximate dispersion (positive = λ increases with pipeline x)
  std::vector<std::string> arc_linelists; ///< line-list files, relative to the data folder or absolute
  std::string wavelength_medium = "air";  ///< medium of the line lists: air | vacuum
  std::string extinction_file;            ///< extinction curve for this site (mag/airmass)

  /// FITS keyword for a logical name; empty if the profile does not map it.
  std::string keyword(const std::string& logical) const;
  /// Classifies a frame from its header; Unknown if no rule matches and there is no default.
  FrameClass classify(const Header& h) const;
  /// The setup key: values of `setup_keywords`, joined by '|'.
  std::string setup_key(const Header& h) const;
};

/// Folder with instrument profiles, line lists and masks: $KSPECDR_DATA_DIR, else the
/// source tree's data/ (a build), else the installed share/kspecdr.
std::filesystem::path data_dir();

/// Loads a profile by name (data/instruments/<name>.ini) or by path. Throws ConfigError
/// naming the file and key for anything malformed, and listing known names when unknown.
InstrumentProfile load_instrument(const std::string& name_or_path);
/// Names of the profiles shipped in data/instruments.
std::vector<std::string> known_instruments();

}  // namespace kspecdr
