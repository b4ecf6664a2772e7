#pragma once
// Where each aperture's light falls on the detector: per aperture a smooth
// centre y(x) and Gaussian width σ(x) along the dispersion axis (x, px), plus
// who the aperture is (fiber-table row or slit star). Traces are measured by
// trace/ and consumed by extract/; they are the "trace map" calibration product.
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace kspecdr {

/// A Legendre series on the domain [xmin, xmax], mapped onto [-1, 1].
struct LegendreSeries {
  double xmin = 0.0, xmax = 1.0;
  std::vector<double> coeffs;  ///< c_0 … c_n; an empty series evaluates to 0

  double operator()(double x) const;
  /// dy/dx at x (per unit of x, not of the mapped coordinate).
  double derivative(double x) const;
  /// Maps x onto the [-1, 1] coordinate of the series.
  double to_unit(double x) const { return xmax > xmin ? (2.0 * x - xmin - xmax) / (xmax - xmin) : 0.0; }
  int order() const { return static_cast<int>(coeffs.size()) - 1; }
};

/// Fills P_0(u) … P_n(u) into `out` (size n + 1) by the three-term recurrence.
void legendre_basis(double u, double* out, int n);

/// Aperture types of the FIBRES table: P program, S sky, C calibration standard, F guide, N unused.
namespace aperture_type {
inline constexpr char kProgram = 'P';
inline constexpr char kSky = 'S';
inline constexpr char kStandard = 'C';
inline constexpr char kGuide = 'F';
inline constexpr char kUnused = 'N';
}  // namespace aperture_type

/// Who an aperture is: one row of the FIBRES table (fiber mode) or one slit star.
struct ApertureInfo {
  std::string name;
  char type = aperture_type::kProgram;
  double ra_deg = std::numeric_limits<double>::quiet_NaN();
  double dec_deg = std::numeric_limits<double>::quiet_NaN();
  /// Catalogue magnitudes that are known, e.g. {"MAG_G", 15.2}; NaN entries are allowed.
  std::vector<std::pair<std::string, double>> mags;
};

/// Status of one trace.
enum class TraceStatus {
  Ok,          ///< measured along the dispersion axis and fitted
  Dead,        ///< an unused ('N') fiber: no light expected; position interpolated from its neighbours
  NotFound,    ///< light expected but not found; position interpolated, spectra flagged NODATA
  Failed,      ///< found but the fit failed; `message` says why
};
std::string to_string(TraceStatus s);

struct Trace {
  ApertureInfo info;
  TraceStatus status = TraceStatus::Ok;
  std::string message;     ///< why the status is not Ok (empty otherwise)
  LegendreSeries centre;   ///< y of the profile centre (px, row coordinate, pixel centres at integers)
  LegendreSeries sigma;    ///< Gaussian σ of the spatial profile (px)

  // Per-bin measurements behind the fits (for diagnostics and plots).
  std::vector<double> bin_x;         ///< bin centre along x (px)
  std::vector<double> bin_centre;    ///< measured centre (px); NaN where the bin failed
  std::vector<double> bin_centre_err;
  std::vector<double> bin_sigma;     ///< measured σ (px); NaN where the bin failed
  std::vector<double> bin_sigma_err;
  std::vector<unsigned char> bin_used_centre;  ///< 1 = kept by the clipped fit of the centre
  std::vector<unsigned char> bin_used_sigma;   ///< 1 = kept by the clipped fit of the width
  double centre_rms_px = std::numeric_limits<double>::quiet_NaN();  ///< rms of kept bins about the fit
  double sigma_rms_px = std::numeric_limits<double>::quiet_NaN();

  /// Range of x covered by the bins the centre fit used. Outside it y(x) continues along the tangent at
  /// the nearest end: a polynomial extrapolated past its data can swing away (NaN = no limit).
  double fit_xmin = std::numeric_limits<double>::quiet_NaN();
  double fit_xmax = std::numeric_limits<double>::quiet_NaN();

  double y(double x) const {
    if (x < fit_xmin) return centre(fit_xmin) + centre.derivative(fit_xmin) * (x - fit_xmin);
    if (x > fit_xmax) return centre(fit_xmax) + centre.derivative(fit_xmax) * (x - fit_xmax);
    return centre(x);
  }
  double width(double x) const { return sigma(x); }
  bool usable() const { return status == TraceStatus::Ok; }
};

/// All apertures of one setup, in detector order (increasing y), on an nx × ny image.
struct TraceSet {
  long nx = 0, ny = 0;
  std::vector<Trace> traces;

  std::size_t size() const { return traces.size(); }
  Trace& operator[](std::size_t i) { return traces[i]; }
  const Trace& operator[](std::size_t i) const { return traces[i]; }
  /// Index of the trace named `name`; throws DataError naming it when absent.
  std::size_t index_of(const std::string& name) const;
};

/// The shift of one aperture's trace in one exposure relative to the master trace.
struct TraceShift {
  double offset_px = 0.0;        ///< measured centre − master centre (px, + = towards higher y)
  double offset_err_px = std::numeric_limits<double>::quiet_NaN();
  double width_scale = 1.0;      ///< measured σ / master σ
  double width_scale_err = std::numeric_limits<double>::quiet_NaN();
  int nbins = 0;                 ///< bins that entered the estimates
  bool ok = false;               ///< false: no usable bin; offset 0 and scale 1 were kept
};

}  // namespace kspecdr
