#pragma once
// One raw frame -> IM: overscan, trim, gain, master bias, dark, variance,
// pixel flat, saturation/bad pixels and cosmic rays, with a header that says
// what was done and from which inputs.
#include <filesystem>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/detector/config.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/io/format.hpp"
#include "kspecdr/io/instrument.hpp"

namespace kspecdr::detector {

/// Calibrates one raw frame. Any of `bias`, `dark`, `flat` may be null: the fallback is
/// overscan only (BIASCORR = 'OVERSCAN'), no dark (DARKCORR = F) and a unit flat (FLATCORR = F),
/// each with a warning. The result is in electrons, pipeline orientation:
///   signal = (raw - overscan) * gain - bias [- dark rate * exptime]
///   data   = signal / flat
///   var    = (RN^2 + max(signal, 0) + var_bias [+ var_dark]) / flat^2 + data^2 var_flat / flat^2
/// Throws FitsError / DataError naming the file when the frame cannot be read or does not match
/// the calibration products' shape.
Image calibrate_frame(const std::filesystem::path& raw, const InstrumentProfile& profile, const MasterBias* bias,
                      const MasterFlat* flat, const DetectorConfig& cfg, const MasterDark* dark = nullptr);

/// The IM layout: PRIMARY data (e-), VARIANCE, MASK and the keywords the detector stage and reduce add
/// to the raw header (which the IM keeps, less its section keywords).
const std::vector<io::FormatItem>& im_format();

/// Writes an IM file (data, VARIANCE, MASK) atomically.
void write_im(const std::filesystem::path& path, const Image& im, bool overwrite);

}  // namespace kspecdr::detector
