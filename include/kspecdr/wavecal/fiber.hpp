#pragma once
// Fiber mode: one wavelength solution per fiber, each Legendre coefficient
// smoothed across the fibers as a low-order polynomial of the fiber's
// coordinate, so that a fiber with few lines of its own is rescued by its
// neighbours, and a fiber that still fails is flagged rather than fatal.
#include <vector>

#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/wavecal/solution.hpp"

namespace kspecdr::wavecal {

struct FiberCalibration {
  std::vector<WavelengthSolution> solutions;  ///< one per aperture, in input order
  /// smooth[k]: coefficient k of λ(x) as a Legendre series in the fiber coordinate.
  std::vector<LegendreSeries> smooth;
  int n_ok = 0, n_smoothed = 0, n_failed = 0;
};

/// `peaks[i]` are the lines of fiber i; `coordinate[i]` its position across the fibers (fiber index
/// or trace position at the detector centre). Fibers to skip (unused, dead) have empty peaks.
/// Throws DataError when no fiber at all can be calibrated. With `comm` (collective: every rank calls it with
/// the same arguments) the fibers' own identifications, the costly part, are dealt to the ranks and shared;
/// the result is the same on every rank and for any number of ranks.
FiberCalibration calibrate_fibers(const std::vector<std::vector<ArcPeak>>& peaks, long npix,
                                  const std::vector<double>& coordinate, const LineList& list,
                                  const DispersionHint& hint, const WavecalConfig& cfg,
                                  const mpi::Comm* comm = nullptr);

/// The same from an EX arc: peaks of every aperture whose trace is usable, fiber index as coordinate.
FiberCalibration calibrate_fibers(const SpectrumSet& arc, const LineList& list, const DispersionHint& hint,
                                  const WavecalConfig& cfg, const mpi::Comm* comm = nullptr);

}  // namespace kspecdr::wavecal
