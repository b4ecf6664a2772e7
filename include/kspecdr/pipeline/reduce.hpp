#pragma once
// `kspecdr reduce`: a night of raw frames through the stages, on one rank or
// many. Rank 0 builds the plan (the observing log) and broadcasts it;
// calibration products are built once per setup and reused from calib/;
// exposures are dealt to ranks; every exposure is one unit of work whose
// failure is recorded and never stops the night.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/detector/config.hpp"
#include "kspecdr/pipeline/extract_stage.hpp"
#include "kspecdr/pipeline/red_stage.hpp"
#include "kspecdr/fluxcal/infield.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr {

/// The last stage a run goes to: IM (detector calibration), EX (traces, sky, extraction) or RED
/// (wavelength calibration, resampling, master sky in fiber mode).
enum class ReduceStage { Im, Ex, Red };

struct ReduceConfig {
  std::filesystem::path raw_dir;
  std::filesystem::path out_dir;
  std::string instrument;          ///< profile name or path
  std::string night_name;          ///< names the Rainbow cube <night>.rainbow.h5 (cli: the raw folder's name)
  ReduceStage stage = ReduceStage::Im;
  bool overwrite = false;          ///< replace existing IM files (otherwise they are kept and skipped)
  detector::DetectorConfig detector;
  ExStageConfig ex;
  RedStageConfig red;
  /// In-field flux calibration after the RED stage (fiber mode), when `infield.catalog_file` is set:
  /// OUTDIR/fcal/<run>.fcal.fits and <run>.fcalstars.csv (red_files and out_dir are filled by reduce).
  fluxcal::InFieldConfig infield;
  std::string resolved_config;     ///< INI text of every option used (written to config-used.ini)
};

struct ExposureFailure {
  std::string exposure;
  std::string file;
  std::string reason;
};

struct ReduceSummary {
  std::size_t exposures = 0;       ///< units of work planned (science, arc and imaging frames)
  std::size_t done = 0;            ///< written in this run
  std::size_t skipped = 0;         ///< outputs already present (kept; --overwrite replaces them)
  /// Products kept from earlier runs (outputs and reused masters) that another kspecdr build (KSPSHA) wrote.
  std::size_t kept_from_other_build = 0;
  std::vector<ExposureFailure> failures;
  /// 0 when every exposure succeeded, 3 when some failed (DESIGN.md exit codes).
  int exit_code() const { return failures.empty() ? 0 : 3; }
};

/// Runs the night. Collective over `comm`: every rank must call it. Throws ConfigError on every
/// rank (nothing done) when the configuration, profile or raw folder is unusable.
ReduceSummary reduce_night(const ReduceConfig& cfg, const mpi::Comm& comm);

/// A setup key made safe for file names ("R316R|8651|LONG_SLIT" → "R316R_8651_LONG_SLIT").
std::string setup_slug(const std::string& setup);

}  // namespace kspecdr
