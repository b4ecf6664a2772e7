#include "kspecdr/wavecal/resample.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/wavecal/fit_detail.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::wavecal {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLightKmS = 299792.458;

/// Output pixel j's share of each input pixel, for one spectrum: (input index, coefficient).
struct Share {
  std::size_t i;
  double a;
};

}  // namespace

std::vector<double> pixel_edges(const std::vector<double>& c) {
  const std::size_t n = c.size();
  if (n < 2) throw DataError(fmt::format("pixel_edges: {} pixel centres, at least 2 needed", n));
  const double sgn = c[1] > c[0] ? 1.0 : -1.0;
  for (std::size_t i = 1; i < n; ++i)
    if (!(sgn * (c[i] - c[i - 1]) > 0))
      throw DataError(fmt::format("pixel wavelengths are not strictly monotonic at pixel {} ({} then {} Å)", i,
                                  c[i - 1], c[i]));
  std::vector<double> e(n + 1);
  for (std::size_t i = 1; i < n; ++i) e[i] = 0.5 * (c[i - 1] + c[i]);
  e[0] = c[0] - 0.5 * (c[1] - c[0]);
  e[n] = c[n - 1] + 0.5 * (c[n - 1] - c[n - 2]);
  return e;
}

WavelengthGrid make_grid(const ResampleConfig& cfg, const std::vector<std::vector<double>>& inputs) {
  double lo = -kInf, hi = kInf;
  std::vector<double> steps, log_steps;
  for (const auto& w : inputs) {
    if (w.size() < 2) continue;
    const auto e = pixel_edges(w);
    lo = std::max(lo, std::min(e.front(), e.back()));
    hi = std::min(hi, std::max(e.front(), e.back()));
    for (std::size_t i = 1; i < w.size(); i += std::max<std::size_t>(1, w.size() / 64)) {
      steps.push_back(std::abs(w[i] - w[i - 1]));
      log_steps.push_back(std::abs(std::log(w[i] / w[i - 1])));
    }
  }
  const bool log = cfg.spacing == ResampleConfig::Spacing::Log;
  WavelengthGrid g;
  g.spacing = cfg.spacing;
  if (log) {
    g.step = cfg.step_km_s > 0 ? std::log1p(cfg.step_km_s / kLightKmS) : detail::median(log_steps);
  } else {
    g.step = cfg.step_angstrom > 0 ? cfg.step_angstrom : detail::median(steps);
  }
  if (!(g.step > 0)) throw ConfigError("resampling: no step given and no input wavelengths to take it from");
  double start = cfg.start_angstrom, end = cfg.end_angstrom;
  // Default ends: the first and last output pixels lie wholly inside every input.
  if (!std::isfinite(start)) start = log ? lo * std::exp(0.5 * g.step) : lo + 0.5 * g.step;
  if (!std::isfinite(end)) end = log ? hi * std::exp(-0.5 * g.step) : hi - 0.5 * g.step;
  if (!(std::isfinite(start) && std::isfinite(end) && end > start && start > 0))
    throw ConfigError(fmt::format("resampling: empty wavelength range {}–{} Å", start, end));
  const double span = log ? std::log(end / start) : end - start;
  const auto n = static_cast<std::size_t>(std::floor(span / g.step + 1e-9)) + 1;
  g.centres.resize(n);
  g.edges.resize(n + 1);
  for (std::size_t k = 0; k < n; ++k) {
    const double kk = static_cast<double>(k);
    g.centres[k] = log ? start * std::exp(kk * g.step) : start + kk * g.step;
  }
  for (std::size_t k = 0; k <= n; ++k) {
    const double kk = static_cast<double>(k) - 0.5;
    g.edges[k] = log ? start * std::exp(kk * g.step) : start + kk * g.step;
  }
  return g;
}

ResampledSpectrum resample(const std::vector<double>& wavelengths, const Spectrum1D& in, const WavelengthGrid& grid,
                           const ResampleConfig& cfg) {
  in.check("resample input");
  if (wavelengths.size() != in.size())
    throw DataError(fmt::format("resample: {} wavelengths for {} pixels", wavelengths.size(), in.size()));
  const std::size_t n = in.size(), m = grid.size();
  // Work on increasing wavelength; a reversed dispersion just reads the input backwards.
  const bool rev = wavelengths.size() > 1 && wavelengths[1] < wavelengths[0];
  auto at = [&](std::size_t i) { return rev ? n - 1 - i : i; };
  std::vector<double> wl(n);
  for (std::size_t i = 0; i < n; ++i) wl[i] = wavelengths[at(i)];
  const auto e = pixel_edges(wl);

  ResampledSpectrum out;
  out.flux.assign(m, 0.0);
  out.variance.assign(m, kInf);
  out.covariance_next.assign(m, 0.0);
  out.mask.assign(m, 0);
  std::vector<Share> prev, cur;
  std::size_t i0 = 0;
  for (std::size_t j = 0; j < m; ++j) {
    const double lo = grid.edges[j], hi = grid.edges[j + 1];
    cur.clear();
    if (lo < e.front() || hi > e.back()) {
      out.mask[j] = kMaskNoData;
      prev.clear();
      continue;
    }
    while (i0 + 1 < n && e[i0 + 1] <= lo) ++i0;
    double f = 0, v = 0;
    MaskPixel bits = 0;
    for (std::size_t i = i0; i < n && e[i] < hi; ++i) {
      const double ov = std::min(hi, e[i + 1]) - std::max(lo, e[i]);
      if (ov <= 0) continue;
      const std::size_t src = at(i);
      const double a = cfg.flux_is_density ? ov / (hi - lo) : ov / (e[i + 1] - e[i]);
      f += a * in.flux[src];
      v += a * a * in.variance[src];
      bits |= in.mask[src];
      cur.push_back({i, a});
    }
    out.flux[j] = f;
    out.variance[j] = v;
    out.mask[j] = bits;
    if (j > 0 && !prev.empty()) {
      double c = 0;
      for (const auto& p : prev)
        for (const auto& q : cur)
          if (p.i == q.i) c += p.a * q.a * in.variance[at(p.i)];
      out.covariance_next[j - 1] = c;
    }
    std::swap(prev, cur);
  }
  for (std::size_t j = 0; j < m; ++j)
    if (out.mask[j] & kMaskNoData) {
      out.flux[j] = 0.0;
      out.variance[j] = kInf;
    }
  return out;
}

SpectrumSet resample_spectra(const SpectrumSet& ex, const std::vector<std::vector<double>>& wavelengths,
                             const WavelengthGrid& grid, const ResampleConfig& cfg, ImageArray* covariance_next,
                             Eigen::Index a_begin, Eigen::Index a_end) {
  ex.check_shapes("resample_spectra input");
  if (wavelengths.size() != static_cast<std::size_t>(ex.naper()))
    throw DataError(fmt::format("resample_spectra: {} wavelength arrays for {} apertures", wavelengths.size(),
                                ex.naper()));
  const auto m = static_cast<Eigen::Index>(grid.size());
  SpectrumSet out(ex.naper(), m);
  if (covariance_next) *covariance_next = ImageArray::Zero(ex.naper(), m);
  out.apertures = ex.apertures;
  out.diagnostics = ex.diagnostics;
  out.header = ex.header;
  ResampleConfig mean_cfg = cfg;
  mean_cfg.flux_is_density = true;  // per-pixel diagnostics (offset, width …) are averaged, not summed
  auto row = [&](const ImageArray& a, Eigen::Index ap, const Spectrum1D& tmpl) {
    Spectrum1D s = tmpl;
    for (Eigen::Index x = 0; x < ex.npix(); ++x) s.flux[static_cast<std::size_t>(x)] = a(ap, x);
    return s;
  };
  if (a_end < 0) a_end = ex.naper();
  a_begin = std::clamp<Eigen::Index>(a_begin, 0, ex.naper());
  a_end = std::clamp<Eigen::Index>(a_end, a_begin, ex.naper());
  for (Eigen::Index ap = a_begin; ap < a_end; ++ap) {
    const auto& w = wavelengths[static_cast<std::size_t>(ap)];
    if (w.empty()) {
      for (Eigen::Index x = 0; x < m; ++x) out.set_no_data(ap, x);
      continue;
    }
    const Spectrum1D base = spectrum_row(ex, ap);
    const ResampledSpectrum main = resample(w, base, grid, cfg);
    for (Eigen::Index x = 0; x < m; ++x) {
      const auto u = static_cast<std::size_t>(x);
      out.flux(ap, x) = static_cast<float>(main.flux[u]);
      out.variance(ap, x) = static_cast<float>(main.variance[u]);
      out.mask(ap, x) = main.mask[u];
      if (covariance_next) (*covariance_next)(ap, x) = static_cast<float>(main.covariance_next[u]);
    }
    // Variance components resample like the variance: their flux slot carries the component.
    struct Part {
      const ImageArray* src;
      ImageArray* dst;
      bool variance_like;
      bool mean;
    };
    const Part parts[] = {{&ex.var_star, &out.var_star, true, false},   {&ex.var_sky, &out.var_sky, true, false},
                          {&ex.var_read, &out.var_read, true, false},   {&ex.var_cal, &out.var_cal, true, false},
                          {&ex.sky, &out.sky, false, false},
                          {&ex.offset, &out.offset, false, true},       {&ex.width, &out.width, false, true},
                          {&ex.peak, &out.peak, false, true},           {&ex.masked_fraction, &out.masked_fraction, false, true},
                          {&ex.rejected, &out.rejected, false, true}};
    for (const auto& p : parts) {
      Spectrum1D s = row(*p.src, ap, base);
      if (p.variance_like) {
        s.variance = s.flux;
        std::fill(s.flux.begin(), s.flux.end(), 0.0);
      }
      const ResampledSpectrum r = resample(w, s, grid, p.mean ? mean_cfg : cfg);
      for (Eigen::Index x = 0; x < m; ++x) {
        const auto u = static_cast<std::size_t>(x);
        (*p.dst)(ap, x) = static_cast<float>(p.variance_like ? r.variance[u] : r.flux[u]);
      }
    }
  }
  set_wavelength_wcs(out.header, grid);
  return out;
}

void set_wavelength_wcs(Header& h, const WavelengthGrid& grid) {
  if (grid.centres.empty()) throw DataError("wavelength WCS of an empty grid");
  const bool log = grid.spacing == ResampleConfig::Spacing::Log;
  h.set("CTYPE1", log ? "WAVE-LOG" : "WAVE", log ? "wavelength, logarithmic steps" : "wavelength, linear steps");
  h.set("CUNIT1", "Angstrom", "unit of CRVAL1 and CDELT1");
  h.set("CRPIX1", 1.0, "reference pixel (1-based)");
  h.set("CRVAL1", grid.centres.front(), "[Angstrom] wavelength at CRPIX1");
  h.set("CDELT1", log ? grid.centres.front() * grid.step : grid.step, "[Angstrom] step at CRPIX1");
}

WavelengthGrid grid_from_wcs(const Header& h, long nwave, const std::string& file) {
  auto ctx = [&](const char* key) { return ErrorContext{.file = file, .keyword = key}; };
  const std::string ctype = h.get_string("CTYPE1").value_or("");
  if (ctype != "WAVE" && ctype != "WAVE-LOG")
    throw DataError(fmt::format("CTYPE1 is '{}', not a wavelength axis ('WAVE' or 'WAVE-LOG')", ctype), ctx("CTYPE1"));
  if (h.get_string("CUNIT1").value_or("") != "Angstrom")
    throw DataError("CUNIT1 is not 'Angstrom'", ctx("CUNIT1"));
  const double crpix = h.get_double("CRPIX1").value_or(1.0);
  const auto crval = h.get_double("CRVAL1"), cdelt = h.get_double("CDELT1");
  if (!crval || !(*crval > 0)) throw DataError("CRVAL1 missing or not positive", ctx("CRVAL1"));
  if (!cdelt || !(*cdelt > 0)) throw DataError("CDELT1 missing or not positive", ctx("CDELT1"));
  if (nwave < 1) throw DataError("a wavelength grid needs at least one pixel", ctx("NAXIS1"));
  WavelengthGrid g;
  const bool log = ctype == "WAVE-LOG";
  g.spacing = log ? ResampleConfig::Spacing::Log : ResampleConfig::Spacing::Linear;
  g.step = log ? *cdelt / *crval : *cdelt;
  // Pixel p (1-based) = index k + 1; the first centre is at k0 = CRPIX1 − 1 steps from CRVAL1.
  auto at = [&](double k) {
    const double w = (k + 1.0 - crpix);
    return log ? *crval * std::exp(w * g.step) : *crval + w * g.step;
  };
  g.centres.resize(static_cast<std::size_t>(nwave));
  g.edges.resize(static_cast<std::size_t>(nwave) + 1);
  for (long k = 0; k < nwave; ++k) g.centres[static_cast<std::size_t>(k)] = at(static_cast<double>(k));
  for (long k = 0; k <= nwave; ++k) g.edges[static_cast<std::size_t>(k)] = at(static_cast<double>(k) - 0.5);
  return g;
}

}  // namespace kspecdr::wavecal
