#pragma once
// Pixel → wavelength for one aperture: automatic identification of arc lines
// from approximate hints (central wavelength and dispersion), iterative
// matching and a clipped Legendre fit of λ(x), and a validation that turns a
// doubtful answer into "no solution" (an exception with the reason) instead of
// a wrong solution with a small rms.
#include "kspecdr/parallel/mpi.hpp"
#include <limits>
#include <functional>
#include <string>
#include <vector>

#include "kspecdr/core/trace.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/wavecal/config.hpp"
#include "kspecdr/wavecal/linelist.hpp"
#include "kspecdr/wavecal/peaks.hpp"

namespace kspecdr::wavecal {

/// What is known before the arc is looked at.
struct DispersionHint {
  double center_angstrom = 0.0;             ///< wavelength near `center_px` (Å)
  double dispersion_angstrom_per_px = 0.0;  ///< signed: > 0 when λ increases with x
  double center_px = std::numeric_limits<double>::quiet_NaN();  ///< NaN = the middle of the spectrum
};

/// The profile's [wavelength] hints for a spectrum of `npix` pixels along pipeline x.
DispersionHint hint_from_profile(const InstrumentProfile& profile, long npix);

/// One identified line.
struct LineMatch {
  double x_px = 0.0;
  double x_err_px = 0.0;
  double wavelength_angstrom = 0.0;  ///< list wavelength, in the solution's medium
  double fit_angstrom = 0.0;         ///< λ(x_px) of the solution
  double residual_px = 0.0;          ///< (list − fit) / |dλ/dx| (px)
  double snr = 0.0;
  double flux = 0.0;                 ///< integrated line flux of the peak (e-)
  double sigma_px = 0.0;             ///< Gaussian σ of the peak (px)
  bool used = false;                 ///< false: rejected by the clipping
  std::string id;
};

enum class SolutionStatus {
  Ok,        ///< measured on this aperture's own lines
  Smoothed,  ///< fiber mode: the model smoothed across fibers, corrected with this fiber's few lines
  Failed,    ///< no solution; `message` says why
};
std::string to_string(SolutionStatus s);

struct WavelengthSolution {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  LegendreSeries lambda;  ///< λ(x) [Å] on the domain [0, npix − 1]
  long npix = 0;
  Medium medium = Medium::Air;
  SolutionStatus status = SolutionStatus::Failed;
  std::string message;

  double rms_px = kNaN;              ///< rms of the used lines' residuals (px)
  double rms_angstrom = kNaN;        ///< the same in Å
  double expected_rms_px = kNaN;     ///< rms the centroid errors alone would give (px)
  double predicted_error_px = kNaN;  ///< rms over the pixels of the fit's own error, from the centroid errors (px)
  double max_predicted_error_px = kNaN;  ///< the same, largest over the pixels (the extrapolated ends)
  double chi2_dof = kNaN;            ///< of the used lines, with the centroid errors incl. the floor
  int n_peaks = 0;                   ///< usable peaks in the spectrum
  int n_matched = 0;                 ///< peaks matched to a list line
  int n_used = 0;                    ///< matched and kept by the clipping
  int n_rejected = 0;                ///< matched but clipped
  double match_tolerance_px = kNaN;  ///< final matching window (px)
  double match_significance = kNaN;  ///< n_matched / matches expected by chance
  bool reversed = false;             ///< λ runs opposite to the hint's sign
  std::vector<LineMatch> lines;

  bool ok() const { return status != SolutionStatus::Failed; }
  double wavelength(double x) const { return lambda(x); }
  double dispersion(double x) const { return lambda.derivative(x); }
  /// λ at every pixel centre 0 … npix − 1.
  std::vector<double> wavelengths() const;
  /// x where λ(x) = `angstrom` (Newton on the monotonic solution; may lie outside the detector).
  double pixel(double angstrom) const;
};

/// The solution as bytes and back, exactly (every double bit for bit): how ranks that solved different
/// apertures share their solutions.
std::string pack(const WavelengthSolution& s);
WavelengthSolution unpack_solution(const std::string& bytes);
/// Runs `solve(i)`, which sets solutions[i], for every i over the ranks of `comm` (nullptr: this process does
/// all): one aperture at a time to whichever rank is free (mpi::WorkQueue), so that apertures whose
/// identification takes longer do not hold the other ranks. Afterwards every rank holds every solution, bit
/// for bit as the rank that solved it. If `solve` throws, every rank throws the error of the earliest aperture that
/// failed (whichever rank solved it), after every aperture was dealt. Collective.
void solve_shared(std::vector<WavelengthSolution>& solutions, const mpi::Comm* comm,
                  const std::function<void(std::size_t)>& solve);

/// Identifies the lines of `peaks` in `list` and fits λ(x). Throws DataError when the input cannot
/// give a solution (too few lines, no line of the list in range) and NumericalError when no candidate
/// passes the validation; the message says which test failed.
WavelengthSolution identify(const std::vector<ArcPeak>& peaks, long npix, const LineList& list,
                            const DispersionHint& hint, const WavecalConfig& cfg);

/// find_peaks + identify on one arc spectrum.
WavelengthSolution calibrate_arc(const Spectrum1D& arc, const LineList& list, const DispersionHint& hint,
                                 const WavecalConfig& cfg);

/// Matches `peaks` against `list` starting from an approximate λ(x) that is already right to about
/// `start_tolerance_px`, then fits `order` with clipping. Not validated: the caller decides.
WavelengthSolution refine(const std::vector<ArcPeak>& peaks, long npix, const LineList& list,
                          const LegendreSeries& initial, int order, double start_tolerance_px,
                          const WavecalConfig& cfg);

/// Throws NumericalError when `s` fails a validation test of `cfg` (see WavecalConfig).
void validate(const WavelengthSolution& s, const DispersionHint& hint, const WavecalConfig& cfg);

}  // namespace kspecdr::wavecal
