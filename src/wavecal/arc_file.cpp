#include "kspecdr/wavecal/arc_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/apertures.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::wavecal {

namespace {

SolutionStatus status_from_string(const std::string& s, const std::string& file) {
  for (auto st : {SolutionStatus::Ok, SolutionStatus::Smoothed, SolutionStatus::Failed})
    if (to_string(st) == s) return st;
  throw DataError(fmt::format("unknown solution status '{}'", s), ErrorContext{.file = file, .hdu = "SOLUTIONS"});
}

/// Double members of WavelengthSolution written as SOLUTIONS columns.
struct SolColumn {
  const char* name;
  double WavelengthSolution::*member;
  const char* unit;
  const char* description;
};
const SolColumn kSolDoubles[] = {
    {"RMS_PX", &WavelengthSolution::rms_px, "pixel", "rms of the used lines about the solution"},
    {"RMS_A", &WavelengthSolution::rms_angstrom, "Angstrom", "the same in Angstrom"},
    {"EXP_RMS_PX", &WavelengthSolution::expected_rms_px, "pixel", "rms expected from the line centroid errors"},
    {"PRED_ERR_PX", &WavelengthSolution::predicted_error_px, "pixel",
     "predicted rms error of the solution over the detector"},
    {"MAXPRED_PX", &WavelengthSolution::max_predicted_error_px, "pixel", "largest predicted error along the detector"},
    {"CHI2_DOF", &WavelengthSolution::chi2_dof, "", "chi-square per degree of freedom of the fit"},
    {"MATCH_TOL_PX", &WavelengthSolution::match_tolerance_px, "pixel", "tolerance of the line identification"},
    {"MATCH_SIG", &WavelengthSolution::match_significance, "", "matched peaks over the matches expected by chance"},
};
struct SolInt {
  const char* name;
  int WavelengthSolution::*member;
  const char* description;
};
const SolInt kSolInts[] = {{"N_PEAKS", &WavelengthSolution::n_peaks, "peaks found in the arc spectrum"},
                           {"N_MATCHED", &WavelengthSolution::n_matched, "peaks matched to catalogue lines"},
                           {"N_USED", &WavelengthSolution::n_used, "lines used by the final fit"},
                           {"N_REJECTED", &WavelengthSolution::n_rejected, "lines rejected by the clipped fit"}};

using io::FormatItem;
using K = FormatItem::Kind;

std::vector<FormatItem> build_format() {
  std::vector<FormatItem> f;
  auto kw = [&](const char* hdu, const char* name, const char* type, const char* what, const char* when = "") {
    f.push_back({hdu, K::Keyword, name, type, "", what, when});
  };
  auto col = [&](const char* hdu, const char* name, const char* type, const char* unit, const char* what,
                 const char* when = "") { f.push_back({hdu, K::Column, name, type, unit, what, when}); };
  const char* P = "PRIMARY";
  kw(P, "SETUP", "string", "setup key");
  kw(P, "TRACESET", "string", "object whose traces the arcs were extracted along ('' = fiber mode)");
  kw(P, "MEDIUM", "string", "medium of the wavelengths: air | vacuum");
  kw(P, "NPIX", "int64", "pixels along the dispersion axis");
  kw(P, "NAPER", "int64", "apertures (rows of ARC and SOLUTIONS)");
  kw(P, "LINELIST", "string", "arc line lists used");
  kw(P, "NARCS", "int64", "arc exposures combined");
  kw(P, "ARCn", "string", "name of the n-th arc exposure combined (n = 1 .. NARCS)");
  kw(P, "NSOLOK", "int64", "apertures with a wavelength solution");
  kw(P, "CFGHASH", "string", "hash of the resolved configuration (config-used.ini)");
  kw(P, "INSTPROF", "string", "kspecdr instrument profile");
  kw(P, "DATE", "string", "UTC time the file was written");
  f.push_back({"ARC", K::Image, "ARC", "float32", "electron", "combined arc spectrum per aperture (NAPER x NPIX)"});
  kw("ARC", "BUNIT", "string", "unit of the values: electron");
  f.push_back({"ARC_VAR", K::Image, "ARC_VAR", "float32", "electron2", "variance of ARC; +inf = no data"});
  kw("ARC_VAR", "BUNIT", "string", "unit of the values: electron2");
  f.push_back({"ARC_MASK", K::Image, "ARC_MASK", "uint16", "", "mask bits of ARC (MASKBn keywords name them)"});
  kw("ARC_MASK", "MASKBn", "string", "name of mask bit n");
  const char* S = "SOLUTIONS";
  col(S, "NAME", "string", "", "aperture (fiber or star) name");
  col(S, "TYPE", "string", "", "P program, S sky, C calibration standard, F guide, N unused");
  col(S, "RA", "float64", "deg", "right ascension (NaN when unknown)");
  col(S, "DEC", "float64", "deg", "declination (NaN when unknown)");
  col(S, "MAG_*", "float64", "mag", "catalogue magnitudes, one column per band known",
      "when the apertures have magnitudes");
  col(S, "STATUS", "string", "", "ok | smoothed | failed");
  col(S, "MESSAGE", "string", "", "why the status is not ok (' ' when none)");
  col(S, "ORDER", "int64", "", "Legendre order of lambda(x) (-1 = no solution)");
  col(S, "COEFFS", "float64[n]", "Angstrom",
      "Legendre coefficients c0..cn of lambda(x) = sum c_k P_k(u), u = (2x - XMIN - XMAX)/(XMAX - XMIN); 0 beyond ORDER");
  col(S, "XMIN", "float64", "pixel", "x mapped to u = -1 (0-based pixel centres along the dispersion)");
  col(S, "XMAX", "float64", "pixel", "x mapped to u = +1");
  for (const auto& c : kSolDoubles) col(S, c.name, "float64", c.unit, c.description);
  for (const auto& c : kSolInts) col(S, c.name, "int64", "", c.description);
  col(S, "REVERSED", "int64", "", "1 = wavelength runs opposite to the sign the profile's dispersion hint gives");
  kw(S, "MEDIUM", "string", "medium of the wavelengths");
  const char* L = "LINES";
  col(L, "APERTURE", "int64", "", "row of SOLUTIONS (0 = first) the line belongs to");
  col(L, "X", "float64", "pixel", "line centroid along the dispersion");
  col(L, "X_ERR", "float64", "pixel", "uncertainty of X");
  col(L, "WAVE", "float64", "Angstrom", "catalogue wavelength (in MEDIUM)");
  col(L, "WAVE_FIT", "float64", "Angstrom", "solution at X");
  col(L, "RESID_PX", "float64", "pixel", "residual of the line about the solution");
  col(L, "SNR", "float64", "", "signal-to-noise of the line");
  col(L, "FLUX", "float64", "electron", "line flux");
  col(L, "SIGMA", "float64", "pixel", "Gaussian sigma of the line");
  col(L, "USED", "int64", "", "1 = used by the final fit");
  col(L, "ID", "string", "", "line identification (' ' when none)");
  return f;
}

}  // namespace

const std::vector<io::FormatItem>& arc_format() {
  static const std::vector<io::FormatItem> f = build_format();
  return f;
}

int ArcCalibration::n_ok() const {
  return static_cast<int>(std::count_if(solutions.begin(), solutions.end(), [](const auto& s) { return s.ok(); }));
}

void write_arc_file(const std::filesystem::path& path, const ArcCalibration& arc, bool overwrite) {
  const auto naper = static_cast<Eigen::Index>(arc.solutions.size());
  if (arc.arc_flux.rows() != naper || arc.arc_variance.rows() != naper || arc.arc_mask.rows() != naper ||
      arc.apertures.size() != arc.solutions.size())
    throw DataError(fmt::format("arc calibration: {} solutions, {} apertures, {} arc rows", naper,
                                arc.apertures.size(), arc.arc_flux.rows()),
                    ErrorContext{.file = path.string()});
  io::AtomicOutput out(path, overwrite);
  {
    auto f = fits::Fits::create(out.temp_path());
    Header h = arc.header;
    h.set("SETUP", arc.setup, "setup key");
    h.set("TRACESET", arc.traceset, "object whose traces the arcs were extracted along ('' = fiber mode)");
    h.set("MEDIUM", to_string(arc.medium), "medium of the wavelengths: air | vacuum");
    h.set("NPIX", static_cast<long long>(arc.npix()), "pixels along the dispersion axis");
    h.set("NAPER", static_cast<long long>(naper), "apertures");
    h.set("LINELIST", arc.linelist, "arc line lists used");
    h.set("NARCS", static_cast<long long>(arc.arc_exposures.size()), "arc exposures combined");
    for (std::size_t i = 0; i < arc.arc_exposures.size(); ++i)
      h.set(fmt::format("ARC{}", i + 1), arc.arc_exposures[i], "arc exposure combined");
    h.set("NSOLOK", static_cast<long long>(arc.n_ok()), "apertures with a wavelength solution");
    f.write_empty_primary(h);
    f.write_checksum();
    Header hu;
    hu.set("BUNIT", "electron", "unit of the values");
    f.write_image(arc.arc_flux, hu, "ARC");
    f.write_checksum();
    Header hv;
    hv.set("BUNIT", "electron2", "unit of the values");
    f.write_image(arc.arc_variance, hv, "ARC_VAR");
    f.write_checksum();
    f.write_image(arc.arc_mask, fits::mask_header(), "ARC_MASK");
    f.write_checksum();

    // SOLUTIONS: λ(x) = Σ c_k P_k(u), u = (2x − XMIN − XMAX)/(XMAX − XMIN), x the pixel along dispersion
    // (0-based pixel centres), λ in Å in MEDIUM. COEFFS is padded with zeros beyond ORDER.
    std::size_t ncoef = 1;
    for (const auto& s : arc.solutions) ncoef = std::max(ncoef, s.lambda.coeffs.size());
    fits::Table t;
    io::add_aperture_columns(t, arc.apertures);
    std::vector<std::string> status, message;
    std::vector<long long> order, reversed;
    std::vector<double> coeffs, xmin, xmax;
    for (const auto& s : arc.solutions) {
      status.push_back(to_string(s.status));
      message.push_back(s.message.empty() ? " " : s.message);
      order.push_back(s.lambda.coeffs.empty() ? -1 : s.lambda.order());
      for (std::size_t k = 0; k < ncoef; ++k) coeffs.push_back(k < s.lambda.coeffs.size() ? s.lambda.coeffs[k] : 0.0);
      xmin.push_back(s.lambda.xmin);
      xmax.push_back(s.lambda.xmax);
      reversed.push_back(s.reversed ? 1 : 0);
    }
    t.add_string("STATUS", status);
    t.add_string("MESSAGE", message);
    t.add_int("ORDER", order);
    t.add_double("COEFFS", coeffs, "Angstrom", static_cast<long>(ncoef));
    t.add_double("XMIN", xmin, "pixel");
    t.add_double("XMAX", xmax, "pixel");
    for (const auto& c : kSolDoubles) {
      std::vector<double> v;
      for (const auto& s : arc.solutions) v.push_back(s.*(c.member));
      t.add_double(c.name, v, c.unit);
    }
    for (const auto& c : kSolInts) {
      std::vector<long long> v;
      for (const auto& s : arc.solutions) v.push_back(s.*(c.member));
      t.add_int(c.name, v);
    }
    t.add_int("REVERSED", reversed);
    Header hs;
    hs.set("MEDIUM", to_string(arc.medium), "medium of the wavelengths");
    f.write_table(t, hs, "SOLUTIONS");
    f.write_checksum();

    fits::Table l;
    std::vector<long long> ap, used;
    std::vector<double> x, xe, w, wf, res, snr, flux, sig;
    std::vector<std::string> id;
    for (std::size_t a = 0; a < arc.solutions.size(); ++a)
      for (const auto& m : arc.solutions[a].lines) {
        ap.push_back(static_cast<long long>(a));
        x.push_back(m.x_px);
        xe.push_back(m.x_err_px);
        w.push_back(m.wavelength_angstrom);
        wf.push_back(m.fit_angstrom);
        res.push_back(m.residual_px);
        snr.push_back(m.snr);
        flux.push_back(m.flux);
        sig.push_back(m.sigma_px);
        used.push_back(m.used ? 1 : 0);
        id.push_back(m.id.empty() ? " " : m.id);
      }
    l.add_int("APERTURE", ap);
    l.add_double("X", x, "pixel");
    l.add_double("X_ERR", xe, "pixel");
    l.add_double("WAVE", w, "Angstrom");
    l.add_double("WAVE_FIT", wf, "Angstrom");
    l.add_double("RESID_PX", res, "pixel");
    l.add_double("SNR", snr);
    l.add_double("FLUX", flux, "electron");
    l.add_double("SIGMA", sig, "pixel");
    l.add_int("USED", used);
    l.add_string("ID", id);
    f.write_table(l, Header{}, "LINES");
    f.write_checksum();
    f.close();
  }
  out.commit();
}

ArcCalibration read_arc_file(const std::filesystem::path& path) {
  const std::string file = path.string();
  auto f = fits::Fits::open(path);
  ArcCalibration arc;
  f.move_to(0);
  arc.header = f.read_header();
  arc.setup = arc.header.get_string("SETUP").value_or("");
  arc.traceset = arc.header.get_string("TRACESET").value_or("");
  arc.linelist = arc.header.get_string("LINELIST").value_or("");
  arc.medium = medium_from_string(arc.header.require_string("MEDIUM"));
  const long long narcs = arc.header.get_int("NARCS").value_or(0);
  for (long long i = 1; i <= narcs; ++i)
    arc.arc_exposures.push_back(arc.header.get_string(fmt::format("ARC{}", i)).value_or(""));
  f.move_to("ARC");
  arc.arc_flux = f.read_image_float();
  f.move_to("ARC_VAR");
  arc.arc_variance = f.read_image_float();
  f.move_to("ARC_MASK");
  arc.arc_mask = f.read_image_mask();
  // CFITSIO reads IEEE infinity as NaN: no-data variances are +inf.
  for (Eigen::Index i = 0; i < arc.arc_variance.size(); ++i)
    if (std::isnan(arc.arc_variance.data()[i])) arc.arc_variance.data()[i] = std::numeric_limits<float>::infinity();

  f.move_to("SOLUTIONS");
  const fits::Table t = f.read_table();
  const std::size_t naper = t.nrows();
  if (static_cast<Eigen::Index>(naper) != arc.arc_flux.rows())
    throw DataError(fmt::format("SOLUTIONS has {} rows for {} arc spectra", naper, arc.arc_flux.rows()),
                    ErrorContext{.file = file, .hdu = "SOLUTIONS"});
  const auto& coeffs = t.column("COEFFS");
  arc.solutions.resize(naper);
  arc.apertures.resize(naper);
  for (std::size_t a = 0; a < naper; ++a) {
    arc.apertures[a] = io::aperture_from_row(t, a);
    auto& s = arc.solutions[a];
    s.npix = arc.npix();
    s.medium = arc.medium;
    s.status = status_from_string(t.column("STATUS").strings[a], file);
    s.message = t.column("MESSAGE").strings[a];
    if (s.message == " ") s.message.clear();
    const auto order = static_cast<long>(t.column("ORDER").number(a));
    if (order >= coeffs.repeat)
      throw DataError(fmt::format("row {}: ORDER {} beyond the {} COEFFS", a, order, coeffs.repeat),
                      ErrorContext{.file = file, .hdu = "SOLUTIONS"});
    for (long k = 0; k <= order; ++k) s.lambda.coeffs.push_back(coeffs.number(a, k));
    s.lambda.xmin = t.column("XMIN").number(a);
    s.lambda.xmax = t.column("XMAX").number(a);
    for (const auto& c : kSolDoubles) s.*(c.member) = t.column(c.name).number(a);
    for (const auto& c : kSolInts) s.*(c.member) = static_cast<int>(t.column(c.name).number(a));
    s.reversed = t.column("REVERSED").number(a) != 0;
  }
  f.move_to("LINES");
  const fits::Table l = f.read_table();
  for (std::size_t r = 0; r < l.nrows(); ++r) {
    const auto a = static_cast<std::size_t>(l.column("APERTURE").number(r));
    if (a >= naper)
      throw DataError(fmt::format("LINES row {} names aperture {} of {}", r, a, naper),
                      ErrorContext{.file = file, .hdu = "LINES"});
    LineMatch m;
    m.x_px = l.column("X").number(r);
    m.x_err_px = l.column("X_ERR").number(r);
    m.wavelength_angstrom = l.column("WAVE").number(r);
    m.fit_angstrom = l.column("WAVE_FIT").number(r);
    m.residual_px = l.column("RESID_PX").number(r);
    m.snr = l.column("SNR").number(r);
    m.flux = l.column("FLUX").number(r);
    m.sigma_px = l.column("SIGMA").number(r);
    m.used = l.column("USED").number(r) != 0;
    m.id = l.column("ID").strings[r];
    if (m.id == " ") m.id.clear();
    arc.solutions[a].lines.push_back(m);
  }
  return arc;
}

}  // namespace kspecdr::wavecal
