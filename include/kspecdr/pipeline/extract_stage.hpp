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

namespace mpi {
class Comm;
}
namespace detector {
struct MasterBias;
struct MasterFlat;
}  // namespace detector

struct ExStageConfig {
  trace::TraceConfig trace;
  extract::SkyConfig sky;  ///< slit mode; fiber mode extracts without local sky (master sky comes later)
  extract::ExtractConfig extract;
  bool measure_shifts = true;  ///< measure each science exposure's trace offset and width change
  /// Slit mode: also put the 2D sky model, its variance and the sky windows into the EX file (HDUs
  /// SKYMODEL, SKYMODEL_VAR, SKYWIN) for figures and checks. Off by default: they triple the file size.
  bool write_sky_image = false;
};

/// Per-pixel read noise of an IM from its header (NAMP, AMPSECn, RDNOISEn written by the detector
/// stage). Throws DataError naming the keyword when the header lacks them.
extract::ReadNoise read_noise_from_header(const Image& im, const std::string& file = "");

/// The apertures of a fiber frame: the FIBRES table (NAME, TYPE, RA, DEC, MAG_*) of a raw frame.
std::vector<ApertureInfo> read_fibre_table(const std::filesystem::path& raw, const InstrumentProfile& profile);

/// The mean of science IMs that slit mode traces: per pixel the mean over the frames whose MASK is 0 there (each
/// frame weighted equally), its variance, and kMaskNoData where no frame is good. Throws DataError when the
/// frames differ in shape or there are none.
Image mean_science_image(const std::vector<Image>& science);
/// The same from IM files, read band by band: with `comm`, each rank reads only its band of rows of every file
/// and the bands are gathered, so every rank ends with the same image as one rank reading everything (a pixel's
/// frames are added in the same order). A file one rank cannot read fails every rank with the same message.
Image mean_science_image(const std::vector<std::filesystem::path>& files, const mpi::Comm* comm = nullptr);

/// Slit mode: traces on `slit_mean` (mean_science_image; required). Fiber mode: traces on the flat image
/// (pixel flat × illumination model), matched to `fibres`.
TraceSet build_master_traces(const InstrumentProfile& profile, const Image* slit_mean, const Image* flat_image,
                             const std::vector<ApertureInfo>& fibres, const ExStageConfig& cfg);

/// The noise the master bias and flat left in the pixels of `im` (see extract::CalibrationNoise): the
/// pixel flat's relative variance var_f / f² and the master bias variance over f², each only when the IM
/// header says that very master was applied (FLATCORR and FLATHASH, BIASCORR = 'MASTER' and BIASHASH equal
/// to its CALHASH; a mismatch is logged and leaves the term out). nullptr = no such master: no term.
/// Throws DataError when a master's shape differs from the image's.
extract::CalibrationNoise calibration_noise_for(const Image& im, const detector::MasterFlat* flat,
                                                const detector::MasterBias* bias, const std::string& file = "");

/// One exposure: trace shift (science, if asked), sky (slit), extraction. The model variance of the sky
/// and of the extraction includes the noise of `flat` and `bias` (calibration_noise_for; nullptr = none).
/// Fiber mode keeps the master traces' widths (a fiber's output profile does not change with seeing) and
/// applies only the measured offsets. The EX header carries the IM header's provenance and the stage's
/// settings; with `cfg.write_sky_image` the sky model images travel in `extra_images`.
/// With `group` (collective over it; every rank passes the same inputs) the ranks share the extraction
/// (extract::extract_spectra) after each has computed the noise model, trace shifts and slit sky whole; every rank
/// returns the whole result, the same values as one rank alone, and an error on any rank is thrown on all.
SpectrumSet extract_exposure(const Image& im, const TraceSet& master, const InstrumentProfile& profile,
                             const ExStageConfig& cfg, const std::string& exposure, bool is_science,
                             const std::string& file = "", const detector::MasterFlat* flat = nullptr,
                             const detector::MasterBias* bias = nullptr, const mpi::Comm* group = nullptr);

}  // namespace kspecdr
