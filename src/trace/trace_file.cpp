#include "kspecdr/trace/trace_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/apertures.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::trace {

namespace {

using io::FormatItem;
using K = FormatItem::Kind;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<FormatItem> build_format() {
  std::vector<FormatItem> f;
  auto kw = [&](const char* name, const char* type, const char* unit, const char* what) {
    f.push_back({"PRIMARY", K::Keyword, name, type, unit, what});
  };
  auto col = [&](const char* hdu, const char* name, const char* type, const char* unit, const char* what) {
    f.push_back({hdu, K::Column, name, type, unit, what});
  };
  kw("NX", "int64", "pixel", "columns (dispersion axis) of the images the traces were measured on");
  kw("NY", "int64", "pixel", "rows (spatial axis) of those images");
  kw("NAPER", "int64", "", "number of apertures (rows of TRACES)");
  kw("TRMEAS", "string", "", "per-bin measure of centre and width: gaussian | moments");
  kw("TRBINPX", "int64", "pixel", "columns per bin");
  kw("TRWINSIG", "float64", "", "half-width of each bin's measurement window in units of the width sigma");
  kw("TRWINMIN", "float64", "pixel", "the window's half-width is at least this");
  kw("TRWINMAX", "float64", "pixel", "the window's half-width is at most this (0 = no limit; fiber mode then uses "
                                       "0.45 of the fiber pitch)");
  kw("TRCORD", "int64", "", "Legendre order asked for the centre (a fit may lower it when few bins remain)");
  kw("TRSORD", "int64", "", "Legendre order asked for the width");
  kw("TRCLIP", "float64", "", "bins beyond this many robust standard deviations are rejected from the fits");
  kw("TRMINSNR", "float64", "", "bins with a lower peak S/N are not used");
  const char* T = "TRACES";
  col(T, "NAME", "string", "", "aperture (fiber or star) name");
  col(T, "TYPE", "string", "", "P program, S sky, C calibration standard, F guide, N unused");
  col(T, "STATUS", "string", "", "ok | dead | not-found | failed");
  col(T, "MESSAGE", "string", "", "why the status is not ok ('' when it is)");
  col(T, "RA", "float64", "deg", "right ascension (NaN when unknown)");
  col(T, "DEC", "float64", "deg", "declination (NaN when unknown)");
  f.push_back({T, K::Column, "MAG_*", "float64", "mag", "catalogue magnitudes, one column per band known",
               "when the apertures have magnitudes"});
  col(T, "CENTRE_XMIN", "float64", "pixel", "domain of the centre series: x mapped to -1");
  col(T, "CENTRE_XMAX", "float64", "pixel", "x mapped to +1");
  col(T, "CENTRE_NCOEF", "int64", "", "Legendre coefficients of the centre in use (order + 1; 0 = no series)");
  col(T, "CENTRE_COEF", "float64[n]", "pixel",
      "Legendre coefficients c0..c(n-1) of the centre y(x); padded with 0 beyond CENTRE_NCOEF");
  col(T, "WIDTH_XMIN", "float64", "pixel", "domain of the width series: x mapped to -1");
  col(T, "WIDTH_XMAX", "float64", "pixel", "x mapped to +1");
  col(T, "WIDTH_NCOEF", "int64", "", "Legendre coefficients of the width in use");
  col(T, "WIDTH_COEF", "float64[n]", "pixel", "Legendre coefficients of the Gaussian sigma(x); padded with 0");
  col(T, "CENTRE_RMS", "float64", "pixel", "rms of the kept bins' centres about the fit (NaN when not fitted)");
  col(T, "FIT_XMIN", "float64", "pixel", "first bin the centre fit used; y(x) continues along the tangent below it");
  col(T, "FIT_XMAX", "float64", "pixel", "last bin the centre fit used; y(x) continues along the tangent above it");
  col(T, "WIDTH_RMS", "float64", "pixel", "rms of the kept bins' widths about the fit");
  col(T, "NBINS", "int64", "", "bins along the dispersion axis");
  col(T, "NUSED", "int64", "", "bins kept by the clipped fit of the centre");
  const char* B = "BINS";
  col(B, "APERTURE", "int64", "", "row of TRACES (0 = first) the bin belongs to");
  col(B, "X", "float64", "pixel", "bin centre along the dispersion axis");
  col(B, "CENTRE", "float64", "pixel", "measured profile centre (row coordinate); NaN where the bin failed");
  col(B, "CENTRE_ERR", "float64", "pixel", "its uncertainty");
  col(B, "WIDTH", "float64", "pixel", "measured Gaussian sigma, pixel integration removed; NaN where the bin failed");
  col(B, "WIDTH_ERR", "float64", "pixel", "its uncertainty");
  col(B, "USED_CENTRE", "int64", "", "1 = kept by the clipped fit of the centre");
  col(B, "USED_WIDTH", "int64", "", "1 = kept by the clipped fit of the width");
  return f;
}

TraceStatus status_from_string(const std::string& s, const std::string& file, const std::string& aperture) {
  for (auto st : {TraceStatus::Ok, TraceStatus::Dead, TraceStatus::NotFound, TraceStatus::Failed})
    if (to_string(st) == s) return st;
  throw DataError(fmt::format("unknown trace status '{}'", s),
                  ErrorContext{.file = file, .hdu = "TRACES", .keyword = "STATUS", .aperture = aperture});
}

/// Coefficients of every trace padded to a common count: a FITS vector column has one repeat.
std::vector<double> padded(const std::vector<const LegendreSeries*>& series, long repeat) {
  std::vector<double> v(series.size() * static_cast<std::size_t>(repeat), 0.0);
  for (std::size_t i = 0; i < series.size(); ++i)
    std::copy(series[i]->coeffs.begin(), series[i]->coeffs.end(), v.begin() + static_cast<long>(i) * repeat);
  return v;
}

}  // namespace

const std::vector<FormatItem>& trace_file_format() {
  static const std::vector<FormatItem> f = build_format();
  return f;
}

void write_trace_file(const std::filesystem::path& path, const TraceSet& ts, const TraceConfig& config,
                      const Header& header, bool overwrite) {
  const std::size_t n = ts.size();
  for (const auto& t : ts.traces) {
    const std::size_t nb = t.bin_x.size();
    if (t.bin_centre.size() != nb || t.bin_centre_err.size() != nb || t.bin_sigma.size() != nb ||
        t.bin_sigma_err.size() != nb)
      throw DataError(fmt::format("trace {}: per-bin arrays of different lengths", t.info.name),
                      ErrorContext{.file = path.string(), .aperture = t.info.name});
  }
  io::AtomicOutput out(path, overwrite);
  {
    auto f = fits::Fits::create(out.temp_path());
    Header h = header;
    h.set("NX", static_cast<long long>(ts.nx), "columns of the traced images (dispersion)");
    h.set("NY", static_cast<long long>(ts.ny), "rows of the traced images (spatial)");
    h.set("NAPER", static_cast<long long>(n), "number of apertures");
    h.set("TRMEAS", to_string(config.measure), "per-bin measure of centre and width");
    h.set("TRBINPX", static_cast<long long>(config.bin_px), "columns per bin");
    h.set("TRWINSIG", config.window_sigma, "window half-width in sigma");
    h.set("TRWINMIN", config.min_window_half_px, "minimum window half-width (px)");
    h.set("TRWINMAX", config.max_window_half_px, "maximum window half-width (px), 0 = none");
    h.set("TRCORD", static_cast<long long>(config.centre_order), "Legendre order of the centre");
    h.set("TRSORD", static_cast<long long>(config.sigma_order), "Legendre order of the width");
    h.set("TRCLIP", config.clip_sigma, "clipping of the smooth fits (robust sigma)");
    h.set("TRMINSNR", config.min_bin_snr, "minimum peak S/N of a bin");
    f.write_empty_primary(h);
    f.write_checksum();

    std::vector<ApertureInfo> infos;
    std::vector<std::string> status, message;
    std::vector<double> cxmin, cxmax, sxmin, sxmax, crms, srms, fxmin, fxmax;
    std::vector<long long> cn, sn, nbins, nused;
    std::vector<const LegendreSeries*> cs, ss;
    long crep = 1, srep = 1;
    for (const auto& t : ts.traces) {
      infos.push_back(t.info);
      status.push_back(to_string(t.status));
      message.push_back(t.message);
      cxmin.push_back(t.centre.xmin);
      cxmax.push_back(t.centre.xmax);
      sxmin.push_back(t.sigma.xmin);
      sxmax.push_back(t.sigma.xmax);
      cn.push_back(static_cast<long long>(t.centre.coeffs.size()));
      sn.push_back(static_cast<long long>(t.sigma.coeffs.size()));
      crep = std::max(crep, static_cast<long>(t.centre.coeffs.size()));
      srep = std::max(srep, static_cast<long>(t.sigma.coeffs.size()));
      cs.push_back(&t.centre);
      ss.push_back(&t.sigma);
      crms.push_back(t.centre_rms_px);
      fxmin.push_back(t.fit_xmin);
      fxmax.push_back(t.fit_xmax);
      srms.push_back(t.sigma_rms_px);
      nbins.push_back(static_cast<long long>(t.bin_x.size()));
      long long used = 0;
      for (auto u : t.bin_used_centre) used += u ? 1 : 0;
      nused.push_back(used);
    }
    fits::Table tt;
    io::add_aperture_columns(tt, infos);
    tt.add_string("STATUS", status);
    tt.add_string("MESSAGE", message);
    tt.add_double("CENTRE_XMIN", cxmin, "pixel");
    tt.add_double("CENTRE_XMAX", cxmax, "pixel");
    tt.add_int("CENTRE_NCOEF", cn);
    tt.add_double("CENTRE_COEF", padded(cs, crep), "pixel", crep);
    tt.add_double("WIDTH_XMIN", sxmin, "pixel");
    tt.add_double("WIDTH_XMAX", sxmax, "pixel");
    tt.add_int("WIDTH_NCOEF", sn);
    tt.add_double("WIDTH_COEF", padded(ss, srep), "pixel", srep);
    tt.add_double("CENTRE_RMS", crms, "pixel");
    tt.add_double("FIT_XMIN", fxmin, "pixel");
    tt.add_double("FIT_XMAX", fxmax, "pixel");
    tt.add_double("WIDTH_RMS", srms, "pixel");
    tt.add_int("NBINS", nbins);
    tt.add_int("NUSED", nused);
    f.write_table(tt, Header{}, "TRACES");
    f.write_checksum();

    std::vector<long long> ap, uc, us;
    std::vector<double> bx, bc, bce, bs, bse;
    for (std::size_t a = 0; a < n; ++a) {
      const Trace& t = ts[a];
      for (std::size_t i = 0; i < t.bin_x.size(); ++i) {
        ap.push_back(static_cast<long long>(a));
        bx.push_back(t.bin_x[i]);
        bc.push_back(t.bin_centre[i]);
        bce.push_back(t.bin_centre_err[i]);
        bs.push_back(t.bin_sigma[i]);
        bse.push_back(t.bin_sigma_err[i]);
        uc.push_back(i < t.bin_used_centre.size() && t.bin_used_centre[i] ? 1 : 0);
        us.push_back(i < t.bin_used_sigma.size() && t.bin_used_sigma[i] ? 1 : 0);
      }
    }
    fits::Table bt;
    bt.add_int("APERTURE", ap);
    bt.add_double("X", bx, "pixel");
    bt.add_double("CENTRE", bc, "pixel");
    bt.add_double("CENTRE_ERR", bce, "pixel");
    bt.add_double("WIDTH", bs, "pixel");
    bt.add_double("WIDTH_ERR", bse, "pixel");
    bt.add_int("USED_CENTRE", uc);
    bt.add_int("USED_WIDTH", us);
    f.write_table(bt, Header{}, "BINS");
    f.write_checksum();
    f.close();
  }
  out.commit();
}

TraceFile read_trace_file(const std::filesystem::path& path) {
  const std::string file = path.string();
  auto f = fits::Fits::open(path);
  TraceFile out;
  out.header = f.read_header();
  auto nx = out.header.get_int("NX"), ny = out.header.get_int("NY");
  if (!nx || !ny)
    throw DataError("not a trace map: the primary header lacks NX or NY",
                    ErrorContext{.file = file, .hdu = "PRIMARY", .keyword = "NX"});
  TraceSet& ts = out.traces;
  ts.nx = static_cast<long>(*nx);
  ts.ny = static_cast<long>(*ny);

  f.move_to("TRACES");
  const fits::Table tt = f.read_table();
  const std::size_t n = tt.nrows();
  ts.traces.resize(n);
  auto series = [&](const std::string& prefix, std::size_t r, const std::string& aperture) {
    LegendreSeries s;
    s.xmin = tt.column(prefix + "_XMIN").number(r);
    s.xmax = tt.column(prefix + "_XMAX").number(r);
    const auto& c = tt.column(prefix + "_COEF");
    const long nc = static_cast<long>(tt.column(prefix + "_NCOEF").number(r));
    if (nc < 0 || nc > c.repeat)
      throw DataError(fmt::format("{}_NCOEF = {} but the coefficient column holds {}", prefix, nc, c.repeat),
                      ErrorContext{.file = file, .hdu = "TRACES", .keyword = prefix + "_NCOEF", .aperture = aperture});
    for (long k = 0; k < nc; ++k) s.coeffs.push_back(c.number(r, k));
    return s;
  };
  for (std::size_t r = 0; r < n; ++r) {
    Trace& t = ts.traces[r];
    t.info = io::aperture_from_row(tt, r);
    t.status = status_from_string(tt.column("STATUS").strings.at(r), file, t.info.name);
    t.message = tt.column("MESSAGE").strings.at(r);
    t.centre = series("CENTRE", r, t.info.name);
    t.sigma = series("WIDTH", r, t.info.name);
    t.centre_rms_px = tt.column("CENTRE_RMS").number(r);
    if (tt.has("FIT_XMIN")) t.fit_xmin = tt.column("FIT_XMIN").number(r);
    if (tt.has("FIT_XMAX")) t.fit_xmax = tt.column("FIT_XMAX").number(r);
    t.sigma_rms_px = tt.column("WIDTH_RMS").number(r);
  }

  f.move_to("BINS");
  const fits::Table bt = f.read_table();
  const auto& ap = bt.column("APERTURE");
  for (std::size_t i = 0; i < bt.nrows(); ++i) {
    const double a = ap.number(i);
    if (!(a >= 0) || a >= static_cast<double>(n))
      throw DataError(fmt::format("BINS row {} names aperture {} but TRACES has {} rows", i + 1, a, n),
                      ErrorContext{.file = file, .hdu = "BINS", .keyword = "APERTURE"});
    Trace& t = ts.traces[static_cast<std::size_t>(a)];
    t.bin_x.push_back(bt.column("X").number(i));
    t.bin_centre.push_back(bt.column("CENTRE").number(i));
    t.bin_centre_err.push_back(bt.column("CENTRE_ERR").number(i));
    t.bin_sigma.push_back(bt.column("WIDTH").number(i));
    t.bin_sigma_err.push_back(bt.column("WIDTH_ERR").number(i));
    t.bin_used_centre.push_back(bt.column("USED_CENTRE").number(i) != 0 ? 1 : 0);
    t.bin_used_sigma.push_back(bt.column("USED_WIDTH").number(i) != 0 ? 1 : 0);
  }
  for (std::size_t r = 0; r < n; ++r) {
    const auto nb = static_cast<std::size_t>(tt.column("NBINS").number(r));
    if (ts[r].bin_x.size() != nb)
      throw DataError(fmt::format("TRACES says {} bins but BINS holds {}", nb, ts[r].bin_x.size()),
                      ErrorContext{.file = file, .hdu = "BINS", .aperture = ts[r].info.name});
  }
  return out;
}

}  // namespace kspecdr::trace
