#pragma once
// From a raw FITS frame to electrons in pipeline orientation: image HDU
// selection, amplifier geometry from the profile or the header, overscan per
// amplifier, trim, gain, and rotation/flips so that dispersion runs along x.
#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/section.hpp"
#include "kspecdr/detector/config.hpp"
#include "kspecdr/io/instrument.hpp"

namespace kspecdr::detector {

/// Amplifier index of every pixel (position in InstrumentProfile::amplifiers; 255 = none).
using AmpIndexArray = Eigen::Array<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr std::uint8_t kNoAmp = 255;

/// A raw frame as read: pixel values in DN, raw orientation.
struct RawFrame {
  std::filesystem::path file;
  int hdu = 0;          ///< 0-based HDU the image came from
  std::string extname;  ///< its EXTNAME ("" for the primary)
  Header header;        ///< image HDU header with the primary header's cards merged in
  ImageArray data;      ///< DN; BLANK and non-finite pixels are NaN
};

/// Reads the image HDU named by profile.image_hdu ("auto" = first 2D image, a 0-based index, or an
/// EXTNAME). Throws FitsError (missing, truncated or unreadable file) or DataError (wrong shape,
/// no such HDU), naming the file and HDU.
RawFrame load_raw(const std::filesystem::path& path, const InstrumentProfile& profile);

/// One amplifier's geometry and gain, resolved for one frame.
struct AmplifierGeometry {
  std::string name;
  Section datasec;  ///< raw coordinates
  Section biassec;  ///< raw coordinates
  Section detsec;   ///< assembled (trimmed, raw-orientation) coordinates
  double gain = 1.0;          ///< e-/DN applied
  std::string gain_source;    ///< "profile" or the header keyword it came from
  double read_noise = 0.0;    ///< nominal read noise (e-) from the profile or header; 0 = unknown
  std::string read_noise_source;
};

struct FrameGeometry {
  std::vector<AmplifierGeometry> amps;
  long ny = 0, nx = 0;  ///< assembled image size, raw orientation
};

/// Resolves every amplifier's sections (explicit, or from its header keyword), gain and nominal
/// read noise, and checks that sections lie inside the raw array, datasec and detsec agree in
/// size, and the detsecs tile the assembled image without overlap. Throws DataError naming the
/// amplifier, keyword and section.
FrameGeometry resolve_geometry(const RawFrame& raw, const InstrumentProfile& profile);

/// What the overscan step measured for one amplifier.
struct OverscanResult {
  std::string method;     ///< "median" or "poly"
  int order = 0;          ///< polynomial order (poly)
  bool along_rows = true; ///< true: one overscan value per raw row (serial overscan beside the data)
  double level = 0.0;     ///< DN; for poly the mean of the model over the amplifier's data
  double error = 0.0;     ///< DN, uncertainty of `level`
  double rms = 0.0;       ///< DN, scatter of the overscan vector about the level/model
};

/// A frame after overscan, trim and gain: electrons in pipeline orientation.
struct DetectorFrame {
  std::filesystem::path file;
  Header header;          ///< the raw header
  ImageArray electrons;   ///< (raw - overscan) * gain, pipeline orientation
  MaskArray mask;         ///< kMaskSaturated, kMaskBad (non-finite raw)
  AmpIndexArray amp;      ///< amplifier of each pixel
  FrameGeometry geometry;
  std::vector<OverscanResult> overscan;  ///< per amplifier
  double saturation_dn = 0.0;
};

/// Overscan subtraction per amplifier, trim to datasec, gain, assembly at detsec, then
/// orientation (transpose when dispersion_axis == 2, then flip_dispersion on x and flip_spatial on y).
DetectorFrame overscan_trim_gain(const RawFrame& raw, const InstrumentProfile& profile, const DetectorConfig& cfg);

/// Measures one amplifier's overscan (exposed for tests and diagnostics).
OverscanResult measure_overscan(const ImageArray& raw, const Section& biassec, const Section& datasec,
                                const std::string& method, int order, double clip_sigma,
                                std::vector<double>* model_per_line = nullptr);

/// Assembled (raw orientation) array -> pipeline orientation.
ImageArray to_pipeline(const ImageArray& a, const InstrumentProfile& profile);
MaskArray to_pipeline(const MaskArray& a, const InstrumentProfile& profile);
AmpIndexArray to_pipeline(const AmpIndexArray& a, const InstrumentProfile& profile);

}  // namespace kspecdr::detector
