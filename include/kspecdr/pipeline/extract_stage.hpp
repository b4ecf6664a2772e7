#pragma once
// The IM → EX stage of a night: master traces per setup (slit: from the mean
// science frame; fiber: from the master flat, matched to the FIBRES table),
// then per exposure the trace shift, the sky and the extraction.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/config.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/trace/config.hpp"

namespace kspecdr {

struct ExStageConfig {
  trace::TraceConfig trace;
  extract::SkyConfig sky;  ///< slit mode; fiber mode extracts without local sky (master sky comes later)
  extract::ExtractConfig extract;
  bool measure_shifts = true;  ///< measure each science exposure's trace offset and width change
};

/// Per-pixel read noise of an IM from its header (NAMP, AMPSECn, RDNOISEn written by the detector
/// stage). Throws DataError naming the keyword when the header lacks them.
extract::ReadNoise read_noise_from_header(const Image& im, const std::string& file = "");

/// The apertures of a fiber frame: the FIBRES table (NAME, TYPE, RA, DEC, MAG_*) of a raw frame.
std::vector<ApertureInfo> read_fibre_table(const std::filesystem::path& raw, const InstrumentProfile& profile);

/// Slit mode: traces on the mean of the science IMs (each weighted equally). Fiber mode: traces on
/// the flat image (pixel flat × illumination model), matched to `fibres`.
TraceSet build_master_traces(const InstrumentProfile& profile, const std::vector<Image>& science,
                             const Image* flat_image, const std::vector<ApertureInfo>& fibres,
                             const ExStageConfig& cfg);

/// One exposure: trace shift (science, if asked), sky (slit), extraction. The EX header carries the
/// IM header's provenance and the stage's settings.
SpectrumSet extract_exposure(const Image& im, const TraceSet& master, const InstrumentProfile& profile,
                             const ExStageConfig& cfg, const std::string& exposure, bool is_science,
                             const std::string& file = "");

}  // namespace kspecdr
