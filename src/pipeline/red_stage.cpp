#include "kspecdr/pipeline/red_stage.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/stats.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/extract/sky.hpp"
#include "kspecdr/wavecal/fiber.hpp"
#include "kspecdr/wavecal/flexure.hpp"
#include "kspecdr/wavecal/peaks.hpp"
#include "kspecdr/wavecal/resample.hpp"

namespace kspecdr {

namespace fs = std::filesystem;
using wavecal::ArcCalibration;
using wavecal::WavelengthSolution;

std::string to_string(FlexureMethod m) {
  switch (m) {
    case FlexureMethod::None: return "none";
    case FlexureMethod::SkyLines: return "sky-lines";
    case FlexureMethod::CrossCorrelation: return "cross-correlation";
    case FlexureMethod::Auto: return "auto";
  }
  return "?";
}

FlexureMethod flexure_method_from_string(const std::string& s) {
  std::string t;
  for (char c : s) t += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto m : {FlexureMethod::None, FlexureMethod::SkyLines, FlexureMethod::CrossCorrelation, FlexureMethod::Auto})
    if (to_string(m) == t) return m;
  throw ConfigError(fmt::format("flexure method '{}' is none of none, sky-lines, cross-correlation, auto", s));
}

wavecal::LineList profile_arc_lines(const InstrumentProfile& profile) {
  std::vector<fs::path> dirs;
  if (!profile.source.empty()) dirs.push_back(fs::path(profile.source).parent_path());
  dirs.push_back(data_dir());
  dirs.push_back(data_dir() / "linelists");
  try {
    return wavecal::load_linelists(profile.arc_linelists, wavecal::medium_from_string(profile.wavelength_medium), dirs);
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = profile.source.string(), .keyword = "[wavelength] linelists"});
    throw;
  }
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

WavelengthSolution failed_solution(long npix, const std::string& why) {
  WavelengthSolution s;
  s.npix = npix;
  s.status = wavecal::SolutionStatus::Failed;
  s.message = why;
  return s;
}

bool is_sky_fiber(const ApertureInfo& a) { return a.type == aperture_type::kSky; }

/// Weighted mean of per-aperture shifts (ok results only); the error from the scatter when it exceeds
/// the stated errors (a shift that differs between apertures is not flexure of the whole spectrograph).
wavecal::FlexureResult combine_shifts(const std::vector<wavecal::FlexureResult>& r, const std::string& method) {
  wavecal::FlexureResult out;
  out.method = method;
  double sw = 0, swx = 0;
  int n = 0, lines = 0;
  for (const auto& f : r)
    if (f.ok && std::isfinite(f.shift_err_px) && f.shift_err_px > 0) {
      const double w = 1.0 / (f.shift_err_px * f.shift_err_px);
      sw += w;
      swx += w * f.shift_px;
      ++n;
      lines += f.n_lines;
    }
  if (n == 0) {
    out.message = "no aperture gave a shift";
    for (const auto& f : r)
      if (!f.ok && !f.message.empty()) {
        out.message += ": " + f.message;
        break;
      }
    return out;
  }
  out.ok = true;
  out.shift_px = swx / sw;
  double chi2 = 0;
  for (const auto& f : r)
    if (f.ok && std::isfinite(f.shift_err_px) && f.shift_err_px > 0)
      chi2 += std::pow((f.shift_px - out.shift_px) / f.shift_err_px, 2);
  const double inflate = n > 1 ? std::max(1.0, std::sqrt(chi2 / (n - 1))) : 1.0;
  out.shift_err_px = inflate / std::sqrt(sw);
  out.n_lines = lines;
  out.centre_px = r.empty() ? 0.0 : r.front().centre_px;
  return out;
}

/// Collective over `group`: rank r has measured the entries [band_begin(n, r), band_begin(n, r + 1)) of `r`;
/// afterwards every rank holds every entry, bit for bit.
void share_flexure_bands(std::vector<wavecal::FlexureResult>& res, const mpi::Comm& group) {
  if (group.size() == 1) return;
  const auto n = static_cast<long long>(res.size());
  auto put_text = [](std::string& out, const std::string& t) {
    const std::uint64_t k = t.size();
    out.append(reinterpret_cast<const char*>(&k), sizeof k);
    out += t;
  };
  std::string mine;
  for (long long a = group.band_begin(n, group.rank()); a < group.band_begin(n, group.rank() + 1); ++a) {
    const auto& f = res[static_cast<std::size_t>(a)];
    const double v[8] = {f.ok ? 1.0 : 0.0, f.shift_px, f.shift_err_px, f.stretch,
                         f.stretch_err, f.centre_px, static_cast<double>(f.n_lines), f.rms_px};
    mine.append(reinterpret_cast<const char*>(v), sizeof v);
    put_text(mine, f.method);
    put_text(mine, f.message);
  }
  const std::vector<std::string> all = group.allgather(mine);
  for (int r = 0; r < group.size(); ++r) {
    const std::string& in = all[static_cast<std::size_t>(r)];
    std::size_t pos = 0;
    auto need = [&](std::size_t k) {
      if (pos + k > in.size()) throw Error("flexure results exchanged between ranks are cut short");
    };
    auto get_text = [&] {
      std::uint64_t k = 0;
      need(sizeof k);
      std::memcpy(&k, in.data() + pos, sizeof k);
      pos += sizeof k;
      need(static_cast<std::size_t>(k));
      std::string t = in.substr(pos, static_cast<std::size_t>(k));
      pos += static_cast<std::size_t>(k);
      return t;
    };
    for (long long a = group.band_begin(n, r); a < group.band_begin(n, r + 1); ++a) {
      auto& f = res[static_cast<std::size_t>(a)];
      double v[8];
      need(sizeof v);
      std::memcpy(v, in.data() + pos, sizeof v);
      pos += sizeof v;
      f.ok = v[0] != 0.0;
      f.shift_px = v[1], f.shift_err_px = v[2], f.stretch = v[3], f.stretch_err = v[4], f.centre_px = v[5];
      f.n_lines = static_cast<int>(v[6]);
      f.rms_px = v[7];
      f.method = get_text();
      f.message = get_text();
    }
  }
}

wavecal::Spectrum1D row_of(const ImageArray& flux, const ImageArray& var, const MaskArray& mask, Eigen::Index a) {
  wavecal::Spectrum1D s;
  const auto n = static_cast<std::size_t>(flux.cols());
  s.flux.resize(n);
  s.variance.resize(n);
  s.mask.resize(n);
  for (Eigen::Index x = 0; x < flux.cols(); ++x) {
    const auto u = static_cast<std::size_t>(x);
    s.flux[u] = flux(a, x);
    s.variance[u] = var(a, x);
    s.mask[u] = mask(a, x);
  }
  return s;
}

}  // namespace

ArcCalibration calibrate_arcs(const std::vector<SpectrumSet>& arcs, const std::vector<std::string>& names,
                              const InstrumentProfile& profile, const wavecal::LineList& lines,
                              const RedStageConfig& cfg, const mpi::Comm* comm) {
  if (arcs.empty()) throw DataError("no arc exposure to calibrate the wavelengths with");
  const Eigen::Index naper = arcs.front().naper(), npix = arcs.front().npix();
  for (std::size_t i = 0; i < arcs.size(); ++i)
    if (arcs[i].naper() != naper || arcs[i].npix() != npix)
      throw DataError(fmt::format("arc {} has {} × {} spectra, arc {} has {} × {}", names.at(i), arcs[i].naper(),
                                  arcs[i].npix(), names.front(), naper, npix),
                      ErrorContext{.exposure = names.at(i)});
  ArcCalibration arc;
  arc.apertures = arcs.front().apertures;
  arc.arc_exposures = names;
  arc.linelist = lines.source;
  arc.medium = cfg.wavecal.output_medium;
  arc.arc_flux = ImageArray::Zero(naper, npix);
  arc.arc_variance = ImageArray::Zero(naper, npix);
  arc.arc_mask = MaskArray::Zero(naper, npix);
  SpectrumSet combined = arcs.front();  // carries apertures and shapes; rows replaced by the combination
  for (Eigen::Index a = 0; a < naper; ++a) {
    std::vector<wavecal::Spectrum1D> rows;
    for (const auto& s : arcs) rows.push_back(wavecal::spectrum_row(s, a));
    const wavecal::Spectrum1D c = wavecal::combine_spectra(rows);
    for (Eigen::Index x = 0; x < npix; ++x) {
      const auto u = static_cast<std::size_t>(x);
      arc.arc_flux(a, x) = static_cast<float>(c.flux[u]);
      arc.arc_variance(a, x) = static_cast<float>(c.variance[u]);
      arc.arc_mask(a, x) = c.mask[u];
      combined.flux(a, x) = arc.arc_flux(a, x);
      combined.variance(a, x) = arc.arc_variance(a, x);
      combined.mask(a, x) = c.mask[u];
    }
  }
  const wavecal::DispersionHint hint = wavecal::hint_from_profile(profile, static_cast<long>(npix));
  const auto t0 = std::chrono::steady_clock::now();
  if (profile.mode == SpectroMode::Fiber) {
    try {
      arc.solutions = wavecal::calibrate_fibers(combined, lines, hint, cfg.wavecal, comm).solutions;
    } catch (const Error& e) {
      throw DataError(fmt::format("no fiber could be wavelength-calibrated: {}", e.what()));
    }
  } else {
    // The apertures dealt to the ranks one at a time (wavecal::solve_shared).
    arc.solutions.resize(static_cast<std::size_t>(naper));
    wavecal::solve_shared(arc.solutions, comm, [&](std::size_t a) {
      auto& sol = arc.solutions[a];
      try {
        sol = wavecal::calibrate_arc(wavecal::spectrum_row(combined, static_cast<Eigen::Index>(a)), lines, hint,
                                     cfg.wavecal);
      } catch (const Error& e) {
        sol = failed_solution(static_cast<long>(npix), e.what());
        spdlog::warn("arc solution for aperture {} failed: {}", arc.apertures[a].name, e.what());
      }
    });
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  arc.header.set("ARCTMS", ms / static_cast<double>(std::max<Eigen::Index>(1, naper)),
                 "[ms] wall time per aperture: peaks, identification, fit (and fiber smoothing)");
  for (auto& s : arc.solutions) s.npix = static_cast<long>(npix);
  if (arc.n_ok() == 0) {
    std::string why = arc.solutions.empty() ? "no aperture" : arc.solutions.front().message;
    throw DataError(fmt::format("no aperture could be wavelength-calibrated (first reason: {})", why));
  }
  return arc;
}

wavecal::WavelengthGrid red_grid(const ArcCalibration& arc, const RedStageConfig& cfg) {
  std::vector<std::vector<double>> w;
  for (std::size_t a = 0; a < arc.solutions.size(); ++a) {
    const auto& s = arc.solutions[a];
    // Unused fibers and failed apertures do not restrict the common range.
    if (!s.ok() || (a < arc.apertures.size() && arc.apertures[a].type == aperture_type::kUnused)) continue;
    w.push_back(s.wavelengths());
  }
  if (w.empty()) throw DataError("no wavelength solution to build the output grid from");
  return wavecal::make_grid(cfg.resample, w);
}

std::vector<double> throughput_from_flat(const SpectrumSet& flat_ex, const ArcCalibration& arc,
                                         const wavecal::WavelengthGrid& grid, const RedStageConfig& cfg) {
  if (flat_ex.naper() != static_cast<Eigen::Index>(arc.naper()) || flat_ex.npix() != arc.npix())
    throw DataError(fmt::format("extracted flat has {} × {} spectra, the arc solution {} × {}", flat_ex.naper(),
                                flat_ex.npix(), arc.naper(), arc.npix()));
  std::vector<std::vector<double>> w(arc.naper());
  for (std::size_t a = 0; a < arc.naper(); ++a)
    if (arc.solutions[a].ok()) w[a] = arc.solutions[a].wavelengths();
  const SpectrumSet r = wavecal::resample_spectra(flat_ex, w, grid, cfg.resample);
  return extract::fiber_throughput(r).throughput;
}

wavecal::RedSpectra reduce_exposure_red(const SpectrumSet& ex, const RedContext& ctx, const InstrumentProfile& profile,
                                        const RedStageConfig& cfg, const std::string& exposure, bool is_science,
                                        const mpi::Comm* group) {
  if (!ctx.arc) throw DataError("no arc solution for this exposure", ErrorContext{.exposure = exposure});
  const ArcCalibration& arc = *ctx.arc;
  if (ex.naper() != static_cast<Eigen::Index>(arc.naper()) || ex.npix() != arc.npix())
    throw DataError(fmt::format("{} × {} spectra do not fit the arc solution's {} × {} (setup {})", ex.naper(),
                                ex.npix(), arc.naper(), arc.npix(), arc.setup),
                    ErrorContext{.exposure = exposure});
  const auto naper = static_cast<std::size_t>(ex.naper());
  const bool fiber = profile.mode == SpectroMode::Fiber;
  // A group shares the apertures: rank r measures the flexure of, and resamples, the apertures
  // [band_begin(naper, r), band_begin(naper, r + 1)); what needs them all (the exposure's shift, the master sky)
  // is done by every rank on the shared results.
  const mpi::Comm& together = group ? *group : mpi::self();
  const int me = together.rank();
  const auto a_begin = static_cast<std::size_t>(together.band_begin(static_cast<long long>(naper), me));
  const auto a_end = static_cast<std::size_t>(together.band_begin(static_cast<long long>(naper), me + 1));
  const bool speak = together.is_root();

  // ---- flexure: one shift for the exposure (the spectrograph moves as a whole), from the apertures
  // that see sky (slit: each star's sky; fiber: the sky fibers), weighted by their errors.
  wavecal::FlexureResult flex;
  flex.method = "none";
  std::vector<wavecal::FlexureResult> own(naper);
  const bool want_sky = cfg.flexure == FlexureMethod::SkyLines || cfg.flexure == FlexureMethod::Auto;
  const bool want_xc = cfg.flexure == FlexureMethod::CrossCorrelation || cfg.flexure == FlexureMethod::Auto;
  if (is_science && cfg.flexure != FlexureMethod::None) {
    if (want_sky && ctx.sky_lines) {
      mpi::all_or_throw(together, [&] {
        for (std::size_t a = a_begin; a < a_end; ++a) {
          const auto ai = static_cast<Eigen::Index>(a);
          if (!arc.solutions[a].ok() || (fiber && !is_sky_fiber(ex.apertures[a]))) continue;
          // Slit: the SKY row is the sky under the star; its variance is close to that of the flux's sky part.
          const wavecal::Spectrum1D sky =
              fiber ? wavecal::spectrum_row(ex, ai) : row_of(ex.sky, ex.var_sky, ex.mask, ai);
          own[a] = wavecal::flexure_from_sky_lines(sky, arc.solutions[a], *ctx.sky_lines, cfg.wavecal);
        }
      });
      share_flexure_bands(own, together);
      flex = combine_shifts(own, "sky-lines");
    }
    if (!flex.ok && want_xc && ctx.reference) {
      if (ctx.reference_name == exposure) {
        flex.ok = true;
        flex.method = "reference";
        flex.shift_px = 0.0;
        flex.shift_err_px = 0.0;
      } else if (ctx.reference->naper() == ex.naper() && ctx.reference->npix() == ex.npix()) {
        std::vector<wavecal::FlexureResult> xc(naper);
        mpi::all_or_throw(together, [&] {
          // The whole light of each aperture (star + sky): its features are what moved.
          const ImageArray tot = ex.flux + ex.sky, rtot = ctx.reference->flux + ctx.reference->sky;
          for (std::size_t a = a_begin; a < a_end; ++a) {
            const auto ai = static_cast<Eigen::Index>(a);
            if (!arc.solutions[a].ok() || ex.apertures[a].type == aperture_type::kUnused) continue;
            xc[a] = wavecal::flexure_from_cross_correlation(
                row_of(tot, ex.variance, ex.mask, ai), row_of(rtot, ctx.reference->variance, ctx.reference->mask, ai),
                cfg.wavecal);
          }
        });
        share_flexure_bands(xc, together);
        for (std::size_t a = 0; a < naper; ++a)
          if (!own[a].ok) own[a] = xc[a];
        const std::string sky_reason = flex.message;
        flex = combine_shifts(xc, "cross-correlation");
        if (!sky_reason.empty() && flex.ok) flex.message = "sky lines: " + sky_reason;
      }
    }
    if (!flex.ok) {
      if (speak)
        spdlog::warn("{}: no flexure measured ({}); the arc solution is used as it is", exposure,
                   flex.message.empty() ? "no method available" : flex.message);
      flex.shift_px = 0.0;
      flex.method = "none";
    }
  }

  // ---- pixel wavelengths with the exposure's shift
  wavecal::RedSpectra red;
  red.grid = ctx.grid;
  red.wavela = ImageArrayD::Constant(ex.naper(), ex.npix(), kNaN);
  red.wave.resize(naper);
  std::vector<std::vector<double>> w(naper);
  // ---- resampling (a group's ranks each their band of apertures, then every rank every row)
  mpi::all_or_throw(together, [&] {
    for (std::size_t a = 0; a < naper; ++a) {
      const auto& sol = arc.solutions[a];
      auto& wd = red.wave[a];
      wd.status = to_string(sol.status);
      wd.rms_px = sol.rms_px;
      wd.rms_angstrom = sol.rms_angstrom;
      wd.n_lines = sol.n_used;
      wd.flexure_px = flex.ok ? flex.shift_px : 0.0;
      wd.flexure_err_px = flex.ok ? flex.shift_err_px : kNaN;
      if (own[a].ok) {
        wd.flexure_own_px = own[a].shift_px;
        wd.flexure_own_err_px = own[a].shift_err_px;
        wd.flexure_lines = own[a].n_lines;
      }
      if (!sol.ok()) continue;
      wavecal::FlexureResult applied = flex;
      applied.shift_px = wd.flexure_px;
      applied.stretch = 0.0;
      applied.centre_px = 0.5 * static_cast<double>(arc.npix() - 1);
      w[a] = flex.ok ? wavecal::apply_flexure(sol, applied).wavelengths() : sol.wavelengths();
      for (Eigen::Index x = 0; x < ex.npix(); ++x) red.wavela(static_cast<Eigen::Index>(a), x) = w[a][static_cast<std::size_t>(x)];
    }
    red.spectra = wavecal::resample_spectra(ex, w, ctx.grid, cfg.resample, &red.covariance_next,
                                            static_cast<Eigen::Index>(a_begin), static_cast<Eigen::Index>(a_end));
  });
  if (together.size() > 1) {
    extract::share_aperture_bands(red.spectra, together);
    together.allgather_row_bands(red.covariance_next.data(), red.covariance_next.rows(),
                                 static_cast<long long>(red.covariance_next.cols() * sizeof(float)));
  }
  for (std::size_t a = 0; a < naper; ++a)
    if (!arc.solutions[a].ok()) {
      auto& d = red.spectra.diagnostics[a];
      d.status = "no wavelength solution: " + arc.solutions[a].message;
    }

  // What needs every aperture (the master sky) and the header: the same on every rank of a group.
  mpi::all_or_throw(together, [&] {
    // ---- fiber mode: master sky from the sky fibers, subtracted from every fiber
    Header& h = red.spectra.header;
    if (fiber && is_science) {
      std::vector<double> thr = ctx.throughput;
      if (thr.empty()) thr.assign(naper, 1.0);
      if (thr.size() != naper)
        throw DataError(fmt::format("{} fiber throughputs for {} apertures", thr.size(), naper),
                        ErrorContext{.exposure = exposure});
      std::vector<bool> is_sky(naper);
      for (std::size_t a = 0; a < naper; ++a) is_sky[a] = is_sky_fiber(ex.apertures[a]) && arc.solutions[a].ok();
      try {
        const extract::MasterSky ms = extract::combine_master_sky(red.spectra, thr, is_sky, cfg.master_sky_clip_sigma,
                                                                  cfg.master_sky_min_fibers);
        extract::subtract_master_sky(red.spectra, ms, thr);
        int nsky = 0;
        for (bool b : is_sky) nsky += b;
        h.set("SKYSUB", "MASTER", "sky: master sky of the sky fibers x fiber throughput");
        h.set("NSKYFIB", static_cast<long long>(nsky), "sky fibers offered to the master sky");
      } catch (Error& e) {
        e.add_context(ErrorContext{.exposure = exposure});
        throw;
      }
      h.set("THPTSRC", ctx.throughput_source, "source of the relative fiber throughputs");
    } else if (!fiber) {
      h.set("SKYSUB", "LOCAL", "sky: local sky windows beside each trace (EX stage)");
    }

    h.set("WAVECAL", true, "wavelength calibrated and resampled (kspecdr RED)");
    h.set("WAVEMED", wavecal::to_string(cfg.wavecal.output_medium), "medium of the wavelengths: air | vacuum");
    h.set("SPECSYS", "TOPOCENT", "wavelengths as observed (no barycentric correction)");
    h.set("ARCSETUP", arc.setup, "setup of the arc solution");
    if (!arc.traceset.empty()) h.set("ARCTRSET", arc.traceset, "trace set of the arc solution");
    h.set("ARCLIST", arc.linelist, "arc line lists");
    h.set("NARCAP", static_cast<long long>(arc.n_ok()), "apertures with a wavelength solution");
    std::vector<double> rms;
    for (const auto& s : arc.solutions)
      if (s.ok() && std::isfinite(s.rms_px)) rms.push_back(s.rms_px);
    if (!rms.empty()) h.set("ARCRMS", median_inplace(rms), "[pixel] median rms of the arc solutions");
    h.set("FLEXMETH", is_science ? flex.method : "none", "flexure method used");
    h.set("FLEXPX", flex.ok ? flex.shift_px : 0.0, "[pixel] flexure shift applied (x = x_arc + FLEXPX)");
    if (flex.ok && std::isfinite(flex.shift_err_px)) h.set("FLEXERR", flex.shift_err_px, "[pixel] error of FLEXPX");
    h.set("FLEXNLIN", static_cast<long long>(flex.n_lines), "sky lines behind FLEXPX");
    if (!ctx.reference_name.empty()) h.set("FLEXREF", ctx.reference_name, "cross-correlation reference exposure");
    const char* spacing = cfg.resample.spacing == wavecal::ResampleConfig::Spacing::Log ? "log" : "linear";
    h.set("RESAMPLE", spacing, "flux-conserving resampling (counts per output pixel)");
  });
  return red;
}

}  // namespace kspecdr
