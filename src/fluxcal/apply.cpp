#include "kspecdr/fluxcal/apply.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/stats.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/fluxcal/standard.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/hdf5.hpp"

namespace kspecdr::fluxcal {

namespace fs = std::filesystem;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool is_wave_ctype(const std::optional<std::string>& s) {
  if (!s) return false;
  std::string t = *s;
  while (!t.empty() && t.back() == ' ') t.pop_back();
  return t == "WAVE" || t == "WAVE-LOG";
}

double require_positive(const Header& h, const std::string& key, const std::string& file, bool allow_zero) {
  const auto v = h.get_double(key);
  if (!v || !std::isfinite(*v) || *v < 0 || (!allow_zero && *v == 0))
    throw DataError(fmt::format("{} is {} (needed for flux calibration)", key, v ? fmt::format("{}", *v) : "absent"),
                    ErrorContext{.file = file, .hdu = "PRIMARY", .keyword = key});
  return *v;
}

}  // namespace

SpectrumAxes declared_axes(const Header& header, Eigen::Index rows, Eigen::Index cols, std::size_t nwave,
                           const std::string& file) {
  const bool w1 = is_wave_ctype(header.get_string("CTYPE1")), w2 = is_wave_ctype(header.get_string("CTYPE2"));
  if (w1 == w2)
    throw DataError(w1 ? "both CTYPE1 and CTYPE2 are 'WAVE': the wavelength axis is ambiguous"
                       : "neither CTYPE1 nor CTYPE2 is 'WAVE': the file does not declare its wavelength axis",
                    ErrorContext{.file = file, .hdu = "PRIMARY", .keyword = "CTYPE1"});
  // FITS axis 1 runs along a row (array columns); axis 2 along a column (array rows).
  const SpectrumAxes axes = w1 ? SpectrumAxes::ApertureRows : SpectrumAxes::ApertureColumns;
  const Eigen::Index len = w1 ? cols : rows;
  if (static_cast<std::size_t>(len) != nwave)
    throw DataError(fmt::format("wavelength axis {} has {} pixels, the wavelength grid {}", w1 ? 1 : 2, len, nwave),
                    ErrorContext{.file = file, .hdu = "PRIMARY", .keyword = w1 ? "NAXIS1" : "NAXIS2"});
  return axes;
}

void apply_factor(ImageArray& flux, std::vector<ImageArray*> variances, MaskArray& mask,
                  SpectrumAxes axes, const std::vector<double>& m, const std::vector<double>& var_m) {
  const bool rows = axes == SpectrumAxes::ApertureRows;
  const Eigen::Index naper = rows ? flux.rows() : flux.cols(), nwave = rows ? flux.cols() : flux.rows();
  if (static_cast<std::size_t>(nwave) != m.size() || m.size() != var_m.size())
    throw DataError(fmt::format("calibration factor has {} pixels (variance {}) for spectra of {}", m.size(),
                                var_m.size(), nwave));
  if (mask.rows() != flux.rows() || mask.cols() != flux.cols())
    throw DataError("mask and flux arrays differ in shape");
  for (auto* v : variances)
    if (v->rows() != flux.rows() || v->cols() != flux.cols()) throw DataError("variance and flux arrays differ in shape");
  const auto inf = std::numeric_limits<float>::infinity();
  for (Eigen::Index a = 0; a < naper; ++a)
    for (Eigen::Index j = 0; j < nwave; ++j) {
      const Eigen::Index r = rows ? a : j, c = rows ? j : a;
      const double f = m[static_cast<std::size_t>(j)], vf = var_m[static_cast<std::size_t>(j)];
      if (!std::isfinite(f) || !std::isfinite(vf)) {
        flux(r, c) = 0.0f;
        for (auto* v : variances) (*v)(r, c) = inf;
        mask(r, c) = static_cast<MaskPixel>(mask(r, c) | kMaskNoData);
        continue;
      }
      const double counts = flux(r, c);
      flux(r, c) = static_cast<float>(counts * f);
      for (auto* v : variances) {
        const double old = (*v)(r, c);
        (*v)(r, c) = static_cast<float>(old * f * f + counts * counts * vf);
      }
    }
}

void apply_to_red(wavecal::RedSpectra& red, const CalVector& cal_airmass0, const ExtinctionCurve& curve,
                  const CalibrationRecord& record, const std::string& file) {
  auto& sp = red.spectra;
  Header& h = sp.header;
  if (h.get_bool("FLUXCAL").value_or(false))
    throw DataError("the spectra are already flux calibrated (FLUXCAL = T)",
                    ErrorContext{.file = file, .keyword = "FLUXCAL"});
  const SpectrumAxes axes = declared_axes(h, sp.flux.rows(), sp.flux.cols(), red.grid.size(), file);
  const double exptime = require_positive(h, "EXPTIME", file, false);
  const double airmass = require_positive(h, "AIRMASS", file, false);
  if (cal_airmass0.airmass != 0.0)
    throw DataError(fmt::format("calibration vector '{}' refers to airmass {}, not 0", cal_airmass0.source,
                                cal_airmass0.airmass));
  const CalVector on_grid = interpolate(cal_airmass0, red.grid.centres);
  const std::size_t n = red.grid.size();
  std::vector<double> m(n, CalVector::kNaN), var_m(n, CalVector::kNaN);
  for (std::size_t j = 0; j < n; ++j) {
    if (!on_grid.good[j]) continue;
    const double dlam = red.grid.edges[j + 1] - red.grid.edges[j];
    const double x = curve.factor(red.grid.centres[j], airmass) / (exptime * dlam);
    m[j] = on_grid.cal[j] * x;
    var_m[j] = on_grid.variance[j] * x * x;
  }
  // The flux-calibration noise C² Var_m joins VAR_CAL, so that VARIANCE stays the sum of its components;
  // the other components and the sky only scale.
  ImageArray counts = sp.flux;
  apply_factor(sp.flux, {&sp.variance, &sp.var_cal}, sp.mask, axes, m, var_m);
  std::vector<double> scale_only(n, 0.0);
  for (std::size_t j = 0; j < n; ++j)
    if (!std::isfinite(m[j])) scale_only[j] = CalVector::kNaN;
  apply_factor(counts, {&sp.var_star, &sp.var_sky, &sp.var_read}, sp.mask, axes, m, scale_only);
  apply_factor(sp.sky, {}, sp.mask, axes, m, scale_only);
  // COVAR: covariance of pixels j and j+1 scales with m_j m_{j+1}.
  if (red.covariance_next.rows() == sp.naper() && red.covariance_next.cols() == sp.npix() &&
      axes == SpectrumAxes::ApertureRows)
    for (Eigen::Index a = 0; a < red.covariance_next.rows(); ++a)
      for (Eigen::Index j = 0; j < red.covariance_next.cols(); ++j) {
        const auto u = static_cast<std::size_t>(j);
        const double next = u + 1 < n ? m[u + 1] : 0.0;
        const double f = m[u] * next;
        red.covariance_next(a, j) = std::isfinite(f) ? static_cast<float>(red.covariance_next(a, j) * f) : 0.0f;
      }
  h.set("BUNIT", kFluxUnit, "flux density");
  h.set("FLUXCAL", true, "flux calibrated (erg/cm2/s/A above the atmosphere)");
  h.set("FCALNSTR", static_cast<long long>(record.n_standards), "standard spectra used for the calibration");
  if (std::isfinite(record.rms)) {
    h.set("FCALRMS", record.rms, "median fractional rms of the standards' Cal about the mean");
  } else {
    h.erase("FCALRMS");
    h.add_comment("FCALRMS left out: one standard spectrum, no scatter between standards to measure");
  }
  h.set("FCALMODE", record.mode, "flux calibration: exposure | nightly");
  h.set("FCALEXT", record.extinction, "extinction curve [mag/airmass] used");
  h.set("FCALAIRM", airmass, "airmass the calibration was moved to");
  h.erase("FCALERR");
  for (const auto& line : record.history) h.add_history(line);
}

CalVector combine_mean(const std::vector<CalVector>& vectors, double clip_sigma, double* rms) {
  if (vectors.empty()) throw DataError("no calibration vectors to combine");
  const CalVector& ref = vectors.front();
  ref.check();
  std::vector<CalVector> on;
  on.reserve(vectors.size());
  for (const auto& v : vectors) {
    if (v.airmass != ref.airmass)
      throw DataError(fmt::format("calibration vectors '{}' and '{}' refer to airmass {} and {}", ref.source, v.source,
                                  ref.airmass, v.airmass));
    on.push_back(&v == &ref ? v : interpolate(v, ref.wavelength_angstrom));
  }
  const std::size_t n = ref.size(), k = on.size();
  CalVector out;
  out.wavelength_angstrom = ref.wavelength_angstrom;
  out.cal.assign(n, CalVector::kNaN);
  out.variance.assign(n, CalVector::kNaN);
  out.good.assign(n, 0);
  out.airmass = ref.airmass;
  out.source = k == 1 ? ref.source : fmt::format("mean of {} vectors", k);
  std::vector<double> frac_rms;
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::size_t> use;
    for (std::size_t s = 0; s < k; ++s)
      if (on[s].good[i] && on[s].variance[i] > 0) use.push_back(s);
    if (use.empty()) continue;
    const std::size_t n_all = use.size();
    double mean = 0, sw = 0;
    for (int iter = 0; iter < 5; ++iter) {
      mean = sw = 0;
      for (auto s : use) {
        const double w = 1.0 / on[s].variance[i];
        mean += w * on[s].cal[i];
        sw += w;
      }
      mean /= sw;
      if (use.size() < 3) break;
      // Reject the worst outlier beyond clip_sigma, keeping at least half of the vectors.
      std::size_t worst = use.size();
      double worst_z = clip_sigma;
      for (std::size_t u = 0; u < use.size(); ++u) {
        const double z = std::abs(on[use[u]].cal[i] - mean) / std::sqrt(on[use[u]].variance[i]);
        if (z > worst_z) worst_z = z, worst = u;
      }
      if (worst == use.size() || 2 * (use.size() - 1) < n_all) break;
      use.erase(use.begin() + static_cast<std::ptrdiff_t>(worst));
    }
    double var = 1.0 / sw;
    if (use.size() > 1) {
      double chi2 = 0, fr = 0;
      for (auto s : use) {
        chi2 += (on[s].cal[i] - mean) * (on[s].cal[i] - mean) / on[s].variance[i];
        fr += std::pow(on[s].cal[i] / mean - 1.0, 2);
      }
      var *= std::max(1.0, chi2 / static_cast<double>(use.size() - 1));
      frac_rms.push_back(std::sqrt(fr / static_cast<double>(use.size())));
    }
    out.cal[i] = mean;
    out.variance[i] = var;
    out.good[i] = 1;
  }
  if (rms) *rms = k > 1 ? median_inplace(frac_rms) : CalVector::kNaN;
  return out;
}

std::string run_name(const fs::path& red) {
  std::string s = red.filename().string();
  for (const char* suffix : {".gz", ".fits", ".fit", ".red", ".fcal"})
    if (s.size() > std::string(suffix).size() && s.ends_with(suffix)) s.resize(s.size() - std::string(suffix).size());
  return s;
}

fs::path calibrated_path(const fs::path& red, const fs::path& out_dir) {
  const fs::path dir = out_dir.empty() ? red.parent_path() : out_dir;
  return dir / (run_name(red) + ".fcal.fits");
}

namespace {

long find_aperture(const wavecal::RedSpectra& red, const std::string& name, const std::string& file) {
  const auto& aps = red.spectra.apertures;
  if (name.empty()) {
    if (aps.size() == 1) return 0;
    std::string names;
    for (const auto& a : aps) names += (names.empty() ? "" : ", ") + a.name;
    throw DataError(fmt::format("the standard exposure has {} apertures ({}): say which is the standard "
                                "(--standard-aperture)",
                                aps.size(), names),
                    ErrorContext{.file = file});
  }
  for (std::size_t a = 0; a < aps.size(); ++a)
    if (aps[a].name == name) return static_cast<long>(a);
  throw DataError(fmt::format("no aperture named '{}' in the standard exposure", name),
                  ErrorContext{.file = file, .aperture = name});
}

void write_failed(const fs::path& in, const fs::path& out, const std::string& why, bool overwrite) {
  wavecal::RedSpectra red = wavecal::read_red_file(in);
  red.spectra.header.set("FLUXCAL", false, "not flux calibrated (see FCALERR)");
  std::string reason = why.substr(0, 68);
  red.spectra.header.set("FCALERR", reason, "why the flux calibration failed");
  red.spectra.header.add_history("FLUXCAL failed: " + why.substr(0, 200));
  wavecal::write_red_file(out, red, overwrite);
}

void write_cal_file(const fs::path& path, const KnownStandardResult& r, bool overwrite) {
  io::AtomicOutput out(path, overwrite);  // refuses an existing file without overwrite
  {
    auto f = h5::File::create(out.temp_path());
    auto& root = f.root();
    auto put = [](h5::Group&& g, const CalVector& v) {
      g.write("wavelength", v.wavelength_angstrom);
      g.write("cal", v.cal);
      g.write("variance", v.variance);
      g.write("good", v.good);
      g.set_attr("source", v.source);
      g.set_attr("airmass", v.airmass);
      g.set_attr("units", "cal: erg/cm2 per electron (F_lambda = cal * counts / (exptime * dlambda)); wavelength: "
                          "Angstrom");
    };
    for (std::size_t i = 0; i < r.per_exposure.size(); ++i)
      put(root.create_group(fmt::format("exposures/{:03d}", i)), r.per_exposure[i]);
    put(root.create_group("combined"), r.combined);
    root.set_attr("fcal_rms", r.rms);
    f.close();
  }
  out.commit();
}

}  // namespace

KnownStandardResult run_known_standard(const KnownStandardConfig& cfg) {
  KnownStandardResult result;
  if (cfg.mode != "exposure" && cfg.mode != "nightly")
    throw ConfigError(fmt::format("fluxcal: mode '{}' is not 'exposure' or 'nightly'", cfg.mode));
  if (cfg.red_files.empty()) throw ConfigError("fluxcal: no RED file given");
  if (!(cfg.standard_rel_err >= 0) || !std::isfinite(cfg.standard_rel_err))
    throw ConfigError(fmt::format("fluxcal: the standard's fractional uncertainty must be finite and >= 0, not {}",
                                  cfg.standard_rel_err));
  for (const auto& f : cfg.red_files) {
    CalibratedFile c;
    c.input = f;
    c.output = calibrated_path(f, cfg.out_dir);
    if (fs::absolute(c.output) == fs::absolute(f))
      throw ConfigError(fmt::format("fluxcal: output {} would replace its input", c.output.string()));
    result.files.push_back(c);
  }
  std::vector<double> std_mjd, std_airmass;
  ExtinctionCurve curve;
  try {
    if (cfg.standard_exposures.empty()) throw DataError("no standard exposure given (--standard-exposure RUN)");
    const StandardSpectrum star = load_standard(cfg.standard, cfg.standard_dirs);
    curve = read_extinction_curve(cfg.extinction_file);
    const BandMask mask = cfg.mask_file.empty() ? BandMask{} : read_band_mask(cfg.mask_file);
    for (const auto& run : cfg.standard_exposures) {
      auto it = std::find_if(cfg.red_files.begin(), cfg.red_files.end(),
                             [&](const fs::path& p) { return run_name(p) == run || p.string() == run; });
      if (it == cfg.red_files.end())
        throw DataError(fmt::format("standard exposure '{}' is not among the RED files given", run));
      const std::string file = it->string();
      const wavecal::RedSpectra red = wavecal::read_red_file(*it);
      const Header& h = red.spectra.header;
      if (h.get_bool("FLUXCAL").value_or(false))
        throw DataError("standard exposure is already flux calibrated", ErrorContext{.file = file});
      const double exptime = require_positive(h, "EXPTIME", file, false);
      const double airmass = require_positive(h, "AIRMASS", file, false);
      const long ap = find_aperture(red, cfg.standard_aperture, file);
      CalVector cal = cal_from_tabulated(star, red, ap, exptime, airmass, mask, fmt::format("{} {} {}", star.name, run_name(*it),
                                                   red.spectra.apertures[static_cast<std::size_t>(ap)].name));
      if (!curve.covers(cal.wavelength_angstrom.front(), cal.wavelength_angstrom.back()) ||
          !curve.covers(red.grid.centres.front(), red.grid.centres.back()))
        throw DataError(fmt::format("extinction curve {} covers {}–{} Å, not the spectrum's {:.1f}–{:.1f} Å", curve.name,
                                    curve.wavelength_angstrom.front(), curve.wavelength_angstrom.back(),
                                    red.grid.centres.front(), red.grid.centres.back()),
                        ErrorContext{.file = cfg.extinction_file.string()});
      result.per_exposure.push_back(to_airmass(cal, curve, 0.0));
      std_mjd.push_back(h.get_double("MJD-OBS").value_or(CalVector::kNaN));
      std_airmass.push_back(airmass);
      spdlog::info("fluxcal: {} aperture '{}' at airmass {:.3f}, {} s: {}/{} bands usable", run_name(*it),
                   red.spectra.apertures[static_cast<std::size_t>(ap)].name, airmass, exptime, cal.n_good(), cal.size());
    }
    result.combined = combine_mean(result.per_exposure, 3.0, &result.rms);
    // The table's own error: common to every exposure of the star, so added after the combination (averaging
    // it over the exposures would shrink it, and it would hide their scatter from combine_mean's χ²).
    const double f2 = cfg.standard_rel_err * cfg.standard_rel_err;
    auto add_table_error = [f2](CalVector& v) {
      for (std::size_t j = 0; j < v.size(); ++j)
        if (v.good[j]) v.variance[j] += f2 * v.cal[j] * v.cal[j];
    };
    add_table_error(result.combined);
    for (auto& v : result.per_exposure) add_table_error(v);
    if (!cfg.cal_file.empty()) write_cal_file(cfg.cal_file, result, cfg.overwrite);
  } catch (const Error& e) {
    result.error = e.what();
    spdlog::error("fluxcal: no calibration: {}", result.error);
    for (auto& f : result.files) {
      f.message = result.error;
      write_failed(f.input, f.output, result.error, cfg.overwrite);
    }
    return result;
  }

  const std::size_t nstd = result.per_exposure.size();
  for (auto& f : result.files) {
    try {
      wavecal::RedSpectra red = wavecal::read_red_file(f.input);
      CalibrationRecord rec;
      rec.mode = cfg.mode;
      rec.extinction = curve.name;
      std::vector<std::size_t> used;
      if (cfg.mode == "nightly" || nstd == 1) {
        for (std::size_t i = 0; i < nstd; ++i) used.push_back(i);
      } else {
        // Exposure mode: the standard exposure nearest in time (itself, for a standard exposure).
        const double mjd = red.spectra.header.get_double("MJD-OBS").value_or(CalVector::kNaN);
        if (!std::isfinite(mjd))
          throw DataError("MJD-OBS is absent: the nearest standard exposure cannot be chosen (use --mode nightly)",
                          ErrorContext{.file = f.input.string(), .keyword = "MJD-OBS"});
        std::size_t best = 0;
        for (std::size_t i = 1; i < nstd; ++i)
          if (std::abs(std_mjd[i] - mjd) < std::abs(std_mjd[best] - mjd)) best = i;
        used.push_back(best);
      }
      const CalVector& cal = used.size() == nstd ? result.combined : result.per_exposure[used.front()];
      rec.n_standards = static_cast<int>(used.size());
      rec.rms = used.size() > 1 ? result.rms : CalVector::kNaN;
      for (std::size_t i = 0; i < nstd; ++i) {
        const bool in = std::find(used.begin(), used.end(), i) != used.end();
        // One line per standard spectrum, within the 72 characters of a HISTORY card.
        rec.history.push_back(fmt::format("FCAL {} X={:.3f} no fit (table) s=1 {}",
                                          result.per_exposure[i].source, std_airmass[i],
                                          in ? "used" : "unused:far in time"));
      }
      apply_to_red(red, cal, curve, rec, f.input.string());
      wavecal::write_red_file(f.output, red, cfg.overwrite);
      f.ok = true;
      spdlog::info("fluxcal: {} -> {} ({} standard spectra)", f.input.string(), f.output.string(), rec.n_standards);
    } catch (const Error& e) {
      f.message = e.what();
      spdlog::error("fluxcal: {}: {}", f.input.string(), f.message);
      write_failed(f.input, f.output, f.message, cfg.overwrite);
    }
  }
  return result;
}

}  // namespace kspecdr::fluxcal
