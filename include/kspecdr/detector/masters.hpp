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
#include "kspecdr/io/format.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"

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
/// True when `path` exists, every HDU's CHECKSUM/DATASUM verifies, and its CALHASH equals `expected`. A file that
/// does not verify or cannot be read is logged (warning: it will be rebuilt) and gives false. With `made_by`, the
/// KSPSHA of the kspecdr build that wrote it ("" when absent) is stored there.
bool calibration_is_current(const std::filesystem::path& path, const std::string& expected,
                            std::string* made_by = nullptr);

/// Master bias from overscan-subtracted bias frames. Needs at least one frame; read noise needs
/// two (with one frame the profile's nominal read noise is used, with a warning).
/// With `comm` (collective: every rank calls it with the same arguments) the pixel work is split
/// into detector row bands, one per rank, and every rank returns the whole master, the same
/// numbers whatever the number of ranks.
MasterBias build_master_bias(const std::vector<std::filesystem::path>& bias_files, const InstrumentProfile& profile,
                             const DetectorConfig& cfg, const mpi::Comm* comm = nullptr);

/// Master dark (e-/s) from dark frames after overscan and master bias; exposure time from the
/// profile's exptime keyword.
MasterDark build_master_dark(const std::vector<std::filesystem::path>& dark_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const DetectorConfig& cfg);

/// Master flat: bias-subtracted flats, each normalised by its median over illuminated pixels,
/// combined; each row then modelled along x (dispersion) by a clipped local quadratic fit in a
/// window of cfg.flat_smooth_px columns; pixel flat = combined / model where the model is above
/// the illumination threshold, with a variance that includes the model's own. `comm` as for
/// build_master_bias: combination, model and pixel flat by row bands, the whole master on every rank.
MasterFlat build_master_flat(const std::vector<std::filesystem::path>& flat_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const MasterDark* dark, const DetectorConfig& cfg,
                             const mpi::Comm* comm = nullptr);

/// The large-scale model of a combined, normalised flat and what is needed for its noise.
struct FlatModel {
  ImageArray model;           ///< smooth model (lamp spectrum x slit/fiber profile), flat units
  ImageArray noise_variance;  ///< sum_k w_k^2 v_k: variance of the model from the noise of its pixels
  ImageArray weight_sq;       ///< sum_k w_k^2 over the pixels of the fit (1 / effective pixel count)
  ImageArray self_weight;     ///< w_0, the weight of the pixel's own value in its model (0 if clipped)
  /// Pixel-to-pixel variance of the detector response estimated from the residuals (relative
  /// units): the model averages the response over its window, so its own value scatters by
  /// response_variance * weight_sq about the truth.
  double response_variance = 0.0;
};

/// The large-scale model of a combined flat (exposed for tests). For every pixel, a quadratic in
/// x fitted by least squares to the pixels of its row within a window of `window_px` columns
/// centred on it (shifted inwards at the row ends) and evaluated at the pixel: a Savitzky-Golay
/// smoother along the dispersion axis. Unlike a model that is constant over a wider bin it
/// follows a curved or tilted fiber profile as the trace drifts across the row, as long as the
/// trace moves by less than about its width over the window. Pixels off the model by more than
/// `clip_sigma` times their noise (variance plus response scatter) are left out of the fit (two
/// rounds). `variance` is the variance of `combined`; non-finite pixels take no part. Rows are
/// modelled independently, so `combined` may be one rank's band of rows: with `comm` the one
/// number that needs every row (the response scatter) is a median over the bands of all ranks.
FlatModel flat_large_scale_model(const ImageArray& combined, const ImageArray& variance, double window_px,
                                 double clip_sigma = 4.0, const mpi::Comm* comm = nullptr);

/// Read noise per amplifier from pair differences of bias frames (e-), with its uncertainty:
/// disjoint pairs (0,1), (2,3) ...; each pair gives the clipped standard deviation of the
/// difference over the amplifier's pixels divided by sqrt(2). Exposed for tests.
std::vector<std::pair<double, double>> read_noise_from_pairs(const std::vector<const ImageArray*>& frames,
                                                             const AmpIndexArray& amp, std::size_t namps);

/// The layouts of calib/master_bias_<setup>.fits and calib/master_flat_<setup>.fits: PRIMARY data,
/// VARIANCE, MASK (and the flat's ILLUM) with their keywords.
const std::vector<io::FormatItem>& master_bias_format();
const std::vector<io::FormatItem>& master_flat_format();

void write_master_bias(const std::filesystem::path& path, const MasterBias& mb, bool overwrite);
MasterBias read_master_bias(const std::filesystem::path& path);
void write_master_dark(const std::filesystem::path& path, const MasterDark& md, bool overwrite);
MasterDark read_master_dark(const std::filesystem::path& path);
void write_master_flat(const std::filesystem::path& path, const MasterFlat& mf, bool overwrite);
MasterFlat read_master_flat(const std::filesystem::path& path);

}  // namespace kspecdr::detector
