#pragma once
// Calibration products of the detector stage: master bias (residual bias
// structure, read noise and bias level per amplifier), master dark, and master
// flat (pixel flat, illumination model and mask). Each is written to calib/ as
// FITS with a CALHASH keyword so that a later run can check it is reusable.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/combine.hpp"
#include "kspecdr/detector/config.hpp"
#include "kspecdr/detector/raw.hpp"
#include "kspecdr/io/instrument.hpp"

namespace kspecdr::detector {

/// Per-amplifier numbers measured from the bias frames.
struct AmplifierBias {
  std::string name;
  double gain = 1.0;              ///< e-/DN used
  double bias_level_dn = 0.0;     ///< mean overscan level of the bias frames
  double bias_level_err_dn = 0.0; ///< its uncertainty
  double read_noise_e = 0.0;      ///< from pair differences of bias frames
  double read_noise_err_e = 0.0;
};

struct MasterBias {
  /// data: combined overscan-subtracted bias in electrons (pipeline orientation), the residual
  /// structure that overscan does not remove; variance: its variance; mask: kMaskBad where no
  /// frame had data.
  Image image;
  std::vector<AmplifierBias> amps;
  CombineMethod method = CombineMethod::Median;
  int nframes = 0;
  std::string calhash;
  std::vector<std::string> inputs;  ///< file names of the bias frames
  /// Read noise (e-) of an amplifier by profile index.
  double read_noise(std::size_t amp) const { return amps.at(amp).read_noise_e; }
};

struct MasterDark {
  Image rate;  ///< e-/s (after bias), its variance and mask
  int nframes = 0;
  std::string calhash;
  std::vector<std::string> inputs;
};

struct MasterFlat {
  /// data: pixel-to-pixel flat (mean 1 over illuminated pixels; 1 where unilluminated);
  /// variance: its variance; mask: kMaskUnilluminated, kMaskLowFlat, kMaskBad.
  Image pixel_flat;
  /// Large-scale model of the normalised combined flat (lamp spectrum x illumination), whose
  /// footprint above threshold is the illumination mask.
  ImageArray illumination;
  int nframes = 0;
  std::string calhash;
  std::vector<std::string> inputs;
};

/// Identifier of a calibration product: a 16-hex-digit hash of the input files' names, sizes and
/// modification times and of `config_text` (the settings the product depends on).
std::string calibration_hash(const std::vector<std::filesystem::path>& inputs, const std::string& config_text);
/// The settings of profile and config that a master bias / dark / flat depends on, as text.
std::string bias_config_text(const InstrumentProfile& profile, const DetectorConfig& cfg);
std::string flat_config_text(const InstrumentProfile& profile, const DetectorConfig& cfg, const MasterBias* bias,
                             const MasterDark* dark);
/// True when `path` exists, is readable, and its CALHASH equals `expected`.
bool calibration_is_current(const std::filesystem::path& path, const std::string& expected);

/// Master bias from overscan-subtracted bias frames. Needs at least one frame; read noise needs
/// two (with one frame the profile's nominal read noise is used, with a warning).
MasterBias build_master_bias(const std::vector<std::filesystem::path>& bias_files, const InstrumentProfile& profile,
                             const DetectorConfig& cfg);

/// Master dark (e-/s) from dark frames after overscan and master bias; exposure time from the
/// profile's exptime keyword.
MasterDark build_master_dark(const std::vector<std::filesystem::path>& dark_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const DetectorConfig& cfg);

/// Master flat: bias-subtracted flats, each normalised by its median over illuminated pixels,
/// combined; each row then modelled along x (dispersion) by clipped bin means joined by a cubic
/// curve; pixel flat = combined / model where the model is above the illumination threshold.
MasterFlat build_master_flat(const std::vector<std::filesystem::path>& flat_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const MasterDark* dark, const DetectorConfig& cfg);

/// The large-scale model of a combined flat (exposed for tests): per row, clipped means in bins
/// of `bin_px` along x joined by a Catmull-Rom cubic.
ImageArray flat_large_scale_model(const ImageArray& combined, double bin_px);

/// Read noise per amplifier from pair differences of bias frames (e-), with its uncertainty:
/// disjoint pairs (0,1), (2,3) ...; each pair gives the clipped standard deviation of the
/// difference over the amplifier's pixels divided by sqrt(2). Exposed for tests.
std::vector<std::pair<double, double>> read_noise_from_pairs(const std::vector<const ImageArray*>& frames,
                                                             const AmpIndexArray& amp, std::size_t namps);

void write_master_bias(const std::filesystem::path& path, const MasterBias& mb, bool overwrite);
MasterBias read_master_bias(const std::filesystem::path& path);
void write_master_dark(const std::filesystem::path& path, const MasterDark& md, bool overwrite);
MasterDark read_master_dark(const std::filesystem::path& path);
void write_master_flat(const std::filesystem::path& path, const MasterFlat& mf, bool overwrite);
MasterFlat read_master_flat(const std::filesystem::path& path);

}  // namespace kspecdr::detector
