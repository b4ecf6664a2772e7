#pragma once
// The EX → RED stage of a night: the arcs of a setup combined per aperture
// and calibrated (slit: one solution per star trace; fiber: one per fiber,
// smoothed across fibers), then per science exposure the flexure shift, the
// resampling of every aperture onto one wavelength grid, and in fiber mode
// the master sky from the sky fibers subtracted from every fiber.
#include "kspecdr/parallel/mpi.hpp"
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/wavecal/arc_file.hpp"
#include "kspecdr/wavecal/config.hpp"
#include "kspecdr/wavecal/linelist.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr {

/// How the shift of the spectra since the arcs (flexure) is measured per science exposure.
enum class FlexureMethod {
  None,              ///< the arc solution as it is
  SkyLines,          ///< night-sky emission lines of the sky spectrum through the arc solution
  CrossCorrelation,  ///< cross-correlation with the science exposure nearest in time to the arcs
  Auto,              ///< sky lines; where too few are found, cross-correlation
};
std::string to_string(FlexureMethod m);
/// "none", "sky-lines", "cross-correlation" or "auto"; throws ConfigError otherwise.
FlexureMethod flexure_method_from_string(const std::string& s);

struct RedStageConfig {
  wavecal::WavecalConfig wavecal;
  wavecal::ResampleConfig resample;
  FlexureMethod flexure = FlexureMethod::Auto;
  /// Night-sky line list (IRAF format, air wavelengths) for the flexure from sky lines; a relative path
  /// is looked up in the data folder. The default holds the bright lines that stay isolated at R < ~5000
  /// (data/linelists/sky-lowres.dat); IRAF's skylines.dat suits high resolution only.
  std::string sky_linelist = "linelists/sky-lowres.dat";
  /// Fiber mode: the master sky rejects a sky fiber's pixel beyond this many of its σ from the median.
  double master_sky_clip_sigma = 4.0;
  /// Fiber mode: fewer usable sky fibers than this is an error for the exposure.
  int master_sky_min_fibers = 2;
};

/// The profile's arc line lists ([wavelength] linelists, medium), found beside the profile or in the
/// data folder. Throws ConfigError naming the entry.
wavecal::LineList profile_arc_lines(const InstrumentProfile& profile);

/// Combines the arc EX spectra of one setup (and trace set) per aperture (inverse-variance mean) and
/// solves each aperture: slit mode one solution per trace, fiber mode one per fiber smoothed across the
/// fibers. An aperture that cannot be solved gets status Failed with the reason; it never stops the
/// others. Throws DataError when the arcs disagree in shape or no aperture at all is solved. With `comm`
/// (collective) the apertures are solved by the ranks in turn and shared: the same solutions on every rank,
/// whatever their number.
wavecal::ArcCalibration calibrate_arcs(const std::vector<SpectrumSet>& arcs, const std::vector<std::string>& names,
                                       const InstrumentProfile& profile, const wavecal::LineList& lines,
                                       const RedStageConfig& cfg, const mpi::Comm* comm = nullptr);

/// The common grid of a setup: from the config, with the range covered by every solved aperture and
/// the median dispersion where the config leaves them open.
wavecal::WavelengthGrid red_grid(const wavecal::ArcCalibration& arc, const RedStageConfig& cfg);

/// Everything an exposure's RED needs besides its own spectra.
struct RedContext {
  const wavecal::ArcCalibration* arc = nullptr;
  wavecal::WavelengthGrid grid;
  const wavecal::LineList* sky_lines = nullptr;  ///< nullptr = no sky-line list (flexure by cross-correlation only)
  /// Cross-correlation reference: the science exposure nearest in time to the arcs (nullptr = none).
  const SpectrumSet* reference = nullptr;
  std::string reference_name;
  /// Fiber mode: relative throughput of every aperture (from the flat); empty = all 1.
  std::vector<double> throughput;
  std::string throughput_source = "none";  ///< what `throughput` came from (RED header THPTSRC)
};

/// One exposure EX → RED: flexure (science frames), pixel wavelengths, resampling with variance and
/// covariance, and in fiber mode the master sky. Throws DataError when the EX does not fit the arc
/// calibration (aperture count, pixels) or the master sky cannot be built.
/// With `group` (collective over it; every rank passes the same inputs) the ranks share the apertures: each
/// measures the flexure of, and resamples, its band of apertures (Comm::band_begin); the results are exchanged, so
/// that every rank combines the exposure's shift and builds the master sky from all the sky fibers, and every rank
/// returns the whole result, the same values as one rank alone. An error on any rank is thrown on all.
wavecal::RedSpectra reduce_exposure_red(const SpectrumSet& ex, const RedContext& ctx, const InstrumentProfile& profile,
                                        const RedStageConfig& cfg, const std::string& exposure, bool is_science,
                                        const mpi::Comm* group = nullptr);

/// Fiber throughput from the extracted master flat: the flat resampled with each fiber's solution onto
/// `grid`, then per fiber the median over wavelength of its flux over the median of all lit fibers.
std::vector<double> throughput_from_flat(const SpectrumSet& flat_ex, const wavecal::ArcCalibration& arc,
                                         const wavecal::WavelengthGrid& grid, const RedStageConfig& cfg);

}  // namespace kspecdr
