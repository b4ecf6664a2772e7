#include "kspecdr/fluxcal/infield.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <span>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/stats.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/fluxcal/photometry.hpp"
#include "kspecdr/fluxcal/sensitivity.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/hdf5.hpp"

namespace kspecdr::fluxcal {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = CalVector::kNaN;

std::string short_text(const std::string& s, std::size_t n) { return s.size() > n ? s.substr(0, n) : s; }

/// The RED file after a failed calibration: unchanged but for FLUXCAL = F, FCALERR and a HISTORY line.
void write_uncalibrated(const fs::path& in, const fs::path& out, const std::string& why, bool overwrite) {
  wavecal::RedSpectra red = wavecal::read_red_file(in);
  red.spectra.header.set("FLUXCAL", false, "not flux calibrated (see FCALERR)");
  red.spectra.header.set("FCALERR", short_text(why, 68), "why the flux calibration failed");
  red.spectra.header.add_history("FLUXCAL failed: " + short_text(why, 200));
  wavecal::write_red_file(out, red, overwrite);
}

std::vector<double> widths_of(const wavecal::WavelengthGrid& g) {
  std::vector<double> w(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) w[i] = g.edges[i + 1] - g.edges[i];
  return w;
}

struct Prepared {
  std::size_t star = 0;  ///< index into the exposure's StarResult list
  ObservedSpectrum obs;
  std::vector<double> counts, counts_var;
  std::vector<std::size_t> candidates;
};

/// Which ranks work on active star k of n (collectively `size` ranks), and this rank's share of candidates.
struct Share {
  int owner = 0;
  bool mine = false;          ///< this rank scores some of the star's candidates
  std::size_t part = 0, parts = 1;  ///< candidate c goes to part c mod parts
};

Share share_of(std::size_t k, std::size_t n, int rank, int size) {
  Share s;
  const auto P = static_cast<std::size_t>(size);
  const auto r = static_cast<std::size_t>(rank);
  if (P > n) {
    s.owner = static_cast<int>(k);
    s.parts = P / n + ((P % n) > k ? 1 : 0);  // ranks k, k + n, k + 2n, … < P
    s.mine = r % n == k;
    s.part = r / n;
  } else {
    s.owner = static_cast<int>(k % P);
    s.mine = r == k % P;
  }
  return s;
}

}  // namespace

InFieldInputs read_infield_inputs(const InFieldConfig& cfg, double lambda_min, double lambda_max) {
  InFieldInputs in;
  in.catalog = read_catalog(cfg.catalog_file);
  std::vector<std::string> bands = cfg.bands;
  const bool requested = !bands.empty();
  if (!requested) bands = in.catalog.bands;
  for (const auto& b : bands) {
    if (std::find(in.catalog.bands.begin(), in.catalog.bands.end(), b) == in.catalog.bands.end())
      throw DataError(fmt::format("band '{}' is not a magnitude column of the catalog (it has: {})", b,
                                  fmt::join(in.catalog.bands, ", ")),
                      ErrorContext{.file = cfg.catalog_file.string()});
    const fs::path f = cfg.filters_dir / (b + ".dat");
    if (!fs::is_regular_file(f)) {
      if (requested)
        throw DataError(fmt::format("no filter curve for band '{}'", b), ErrorContext{.file = f.string()});
      spdlog::warn("fluxcal: catalog band '{}' has no filter curve {}: not used", b, f.string());
      continue;
    }
    in.filters[b] = read_filter_curve(f, cfg.filter_unit, b);
    const auto o = cfg.ab_offsets.find(b);
    in.ab_offsets[b] = o != cfg.ab_offsets.end() ? o->second : default_ab_offset(b);
  }
  if (in.filters.empty())
    throw DataError(fmt::format("no catalog band has a filter curve in {}", cfg.filters_dir.string()),
                    ErrorContext{.file = cfg.catalog_file.string()});
  in.extinction = read_extinction_curve(cfg.extinction_file);
  if (!cfg.mask_file.empty()) in.mask = read_band_mask(cfg.mask_file);
  in.grid = read_template_grid(cfg.templates_file, lambda_min, lambda_max);
  in.grid.check(cfg.templates_file.string());
  return in;
}

ExposureCalibration calibrate_exposure(const wavecal::RedSpectra& red, const std::string& run, const InFieldInputs& in,
                                       const InFieldConfig& cfg, const mpi::Comm& comm) {
  ExposureCalibration ex;
  ex.run = run;
  const Header& h = red.spectra.header;
  const auto& aps = red.spectra.apertures;
  const std::size_t nw = red.grid.size();
  std::vector<Prepared> prep;
  // ---- 1. Everything every rank does identically (no collective): stars, match, spectra, candidates.
  try {
    if (h.get_bool("FLUXCAL").value_or(false)) throw DataError("the exposure is already flux calibrated");
    ex.exptime_s = h.get_double("EXPTIME").value_or(kNaN);
    ex.airmass = h.get_double("AIRMASS").value_or(kNaN);
    if (!(ex.exptime_s > 0)) throw DataError("EXPTIME is absent or not positive");
    if (!(ex.airmass >= 1.0)) throw DataError("AIRMASS is absent or below 1");
    std::vector<FiberPosition> fibers;
    std::vector<std::size_t> fiber_ap;
    for (std::size_t a = 0; a < aps.size(); ++a)
      if (aps[a].type == aperture_type::kStandard) {
        fibers.push_back({aps[a].name, aps[a].ra_deg, aps[a].dec_deg});
        fiber_ap.push_back(a);
      }
    if (fibers.empty()) throw DataError("no standard-star fibers (TYPE = C) in the exposure");
    for (const auto& f : fibers)
      if (!std::isfinite(f.ra_deg) || !std::isfinite(f.dec_deg))
        throw DataError(fmt::format("standard fiber {} has no RA/DEC in the FIBRES table", f.name));
    const CatalogMatch match = match_by_position(fibers, in.catalog, cfg.match_radius_arcsec);
    for (std::size_t i = 0; i < fibers.size(); ++i) {
      StarResult s;
      s.run = run;
      s.fiber = fibers[i].name;
      if (match.star[i] < 0) {
        s.reason = "no catalog star within " + fmt::format("{:g}\"", cfg.match_radius_arcsec);
        for (const auto& u : match.unmatched)
          if (u.rfind(s.fiber + ":", 0) == 0) s.reason = "unmatched: " + u.substr(std::min(u.size(), s.fiber.size() + 2));
        ex.stars.push_back(s);
        continue;
      }
      const CatalogStar& cs = in.catalog.stars[static_cast<std::size_t>(match.star[i])];
      s.name = cs.name;
      s.separation_arcsec = match.separation_arcsec[i];
      Prepared p;
      p.star = ex.stars.size();
      const auto a = static_cast<Eigen::Index>(fiber_ap[i]);
      p.obs.name = s.fiber;
      p.obs.wavelength_angstrom = red.grid.centres;
      p.obs.flux.resize(nw);
      p.obs.variance.resize(nw);
      p.obs.good.resize(nw);
      p.counts.resize(nw);
      p.counts_var.resize(nw);
      std::vector<double> snr;
      for (std::size_t j = 0; j < nw; ++j) {
        const auto jj = static_cast<Eigen::Index>(j);
        const double c = red.spectra.flux(a, jj), v = red.spectra.variance(a, jj);
        const bool good = red.spectra.mask(a, jj) == 0 && std::isfinite(c) && std::isfinite(v) && v > 0;
        p.obs.flux[j] = good ? c : kNaN;
        p.obs.variance[j] = good ? v : kNaN;
        p.obs.good[j] = good ? 1 : 0;
        p.counts[j] = good ? c : kNaN;
        p.counts_var[j] = good ? v : std::numeric_limits<double>::infinity();
        if (good) snr.push_back(c / std::sqrt(v));
      }
      // The resampling shares detector pixels between neighbours: their covariance (COVAR) widens the fit's errors.
      p.obs.covariance_next.assign(nw, kNaN);
      for (std::size_t j = 0; j + 1 < nw; ++j)
        if (p.obs.good[j] && p.obs.good[j + 1])
          p.obs.covariance_next[j] = red.covariance_next(a, static_cast<Eigen::Index>(j));
      s.snr = snr.empty() ? 0.0 : median_inplace(std::span<double>(snr));
      // A grid that does not cover the data stops the exposure (a configuration problem, not the star's).
      check_grid_covers(in.grid, p.obs, cfg.fit);
      try {
        BandMagnitudes mags;
        for (std::size_t b = 0; b < in.catalog.bands.size(); ++b) {
          const auto f = in.filters.find(in.catalog.bands[b]);
          if (f == in.filters.end() || !std::isfinite(cs.mag[b]) || !(cs.err[b] > 0)) continue;
          mags.filters.push_back(f->second);
          mags.mag_ab.push_back(cs.mag[b] + in.ab_offsets.at(in.catalog.bands[b]));
          mags.err.push_back(cs.err[b]);
        }
        const auto tr = teff_range_from_colours(in.grid, mags, cfg.fit);
        p.candidates = select_candidates(in.grid, tr, cfg.fit);
        if (p.candidates.empty()) throw DataError("no template in the colour Teff range and parameter box");
        prep.push_back(std::move(p));
      } catch (const Error& e) {
        s.reason = "not fitted: " + e.message();
      }
      ex.stars.push_back(s);
    }
    if (prep.empty()) {
      std::string why;
      for (const auto& s : ex.stars) why += fmt::format("{}{}: {}", why.empty() ? "" : "; ", s.fiber, s.reason);
      throw DataError("no standard star can be fitted (" + why + ")");
    }
  } catch (const Error& e) {
    ex.error = e.what();
    return ex;  // identical on every rank: no collective has been entered
  }

  // ---- 2. Template scores, spread over the ranks, gathered everywhere.
  const std::size_t n = prep.size();
  const int rank = comm.rank(), size = comm.size();
  constexpr std::size_t kScoreLen = 6;  // k, grid index, rv, score, chi2, n_good
  std::vector<double> mine;
  for (std::size_t k = 0; k < n; ++k) {
    const Share sh = share_of(k, n, rank, size);
    if (!sh.mine) continue;
    const auto& p = prep[k];
    for (std::size_t c = 0; c < p.candidates.size(); ++c) {
      if (c % sh.parts != sh.part) continue;
      const std::size_t gi = p.candidates[c];
      try {
        const TemplateScore ts =
            score_model(p.obs, in.grid.wavelength_angstrom, in.grid.flux_of(gi), in.grid.resolving_power, cfg.fit);
        if (!std::isfinite(ts.score)) continue;
        mine.insert(mine.end(), {static_cast<double>(k), static_cast<double>(gi), ts.rv_km_s, ts.score, ts.chi2,
                                 static_cast<double>(ts.n_good)});
      } catch (const Error& e) {
        spdlog::debug("fluxcal: {} template {} not scored: {}", p.obs.name, gi, e.message());
      }
    }
  }
  const std::vector<double> all_scores = comm.allgatherv(mine);

  // ---- 3. The owner finishes each star: fit, photometric scale, Cal at airmass 0.
  // k, ok, teff, logg, mh, alpha, rv, rv_err, scale, scale_err, chi2/dof, snr, model mismatch, model neighbours,
  // photometric dm, dm_err, chi2, n_bands, then cal, variance, good, model (nw each), then per catalog band
  // kBandLen numbers (the band's notes travel as text).
  constexpr std::size_t kHead = 18;
  constexpr std::size_t kBandLen = 8;  // mag, ab_offset, obs_ab, err, synth_ab, synth_scaled_ab, residual, used
  const std::size_t nb = in.catalog.bands.size();
  const std::size_t rec_len = kHead + 4 * nw + kBandLen * nb;
  std::vector<double> recs;
  std::string reasons, band_notes;  // "k\treason\n"; "k\tband\tnote\n"
  auto one_line = [](std::string t) {
    std::replace(t.begin(), t.end(), '\n', ' ');
    std::replace(t.begin(), t.end(), '\t', ' ');
    return t;
  };
  const auto widths = widths_of(red.grid);
  for (std::size_t k = 0; k < n; ++k) {
    if (share_of(k, n, rank, size).owner != rank) continue;
    const auto& p = prep[k];
    StarResult& s = ex.stars[p.star];
    std::vector<double> rec(rec_len, kNaN);
    rec[0] = static_cast<double>(k);
    rec[1] = 0;
    try {
      std::vector<TemplateScore> scores;
      for (std::size_t i = 0; i + kScoreLen <= all_scores.size(); i += kScoreLen) {
        if (static_cast<std::size_t>(all_scores[i]) != k) continue;
        TemplateScore ts;
        ts.index = static_cast<long>(all_scores[i + 1]);
        ts.params = in.grid.params[static_cast<std::size_t>(ts.index)];
        ts.rv_km_s = all_scores[i + 2];
        ts.score = all_scores[i + 3];
        ts.chi2 = all_scores[i + 4];
        ts.n_good = static_cast<long>(all_scores[i + 5]);
        scores.push_back(ts);
      }
      if (scores.empty()) throw DataError("no template could be scored");
      // Same order whatever the number of ranks: by grid index.
      std::sort(scores.begin(), scores.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
      const FitResult fit = finish_fit(p.obs, in.grid, std::move(scores), cfg.fit);
      const CatalogStar& cs = *std::find_if(in.catalog.stars.begin(), in.catalog.stars.end(),
                                            [&](const CatalogStar& c) { return c.name == s.name; });
      const PhotometricScale ps =
          scale_to_photometry(fit.model_wavelength, fit.model_flux, in.catalog, cs, in.filters, in.ab_offsets);
      rec[2] = fit.params.teff_k, rec[3] = fit.params.logg, rec[4] = fit.params.mh, rec[5] = fit.params.alpha;
      rec[6] = fit.rv.rv_km_s, rec[7] = fit.rv.rv_err_km_s;
      rec[8] = ps.scale, rec[9] = ps.scale_err, rec[10] = fit.chi2_dof(), rec[11] = s.snr;
      rec[14] = ps.dm, rec[15] = ps.dm_err, rec[16] = ps.chi2, rec[17] = ps.n_bands;
      // Var(model): the photometric scale's error (fully correlated across λ) and what the fit says about the
      // template itself (the χ² excess as a per-pixel floor, the interpolation between grid models, the colour
      // of the parameters' covariance and of the fit's other minima).
      const ModelUncertainty mu = model_uncertainty(p.obs, in.grid, fit, cfg.fit);
      rec[12] = mu.mismatch_rel, rec[13] = mu.neighbours_rel;
      const double scale_rel_var = ps.scale > 0 ? (ps.scale_err / ps.scale) * (ps.scale_err / ps.scale) : 0.0;
      std::vector<double> model(nw), model_var(nw);
      for (std::size_t j = 0; j < nw; ++j) {
        model[j] = ps.scale * fit.model_on_data[j];  // erg s⁻¹ cm⁻² Å⁻¹
        model_var[j] = model[j] * model[j] * (scale_rel_var + (std::isfinite(mu.rel_var[j]) ? mu.rel_var[j] : 0.0));
      }
      CalVector cal = make_cal_vector(red.grid.centres, widths, model, model_var, p.counts, p.counts_var,
                                      ex.exptime_s, in.mask, fmt::format("{} {} {}", s.name, run, s.fiber));
      cal.airmass = ex.airmass;
      cal = to_airmass(cal, in.extinction, 0.0);
      for (std::size_t j = 0; j < nw; ++j) {
        rec[kHead + j] = cal.cal[j];
        rec[kHead + nw + j] = cal.variance[j];
        rec[kHead + 2 * nw + j] = cal.good[j];
        rec[kHead + 3 * nw + j] = model[j];
      }
      for (std::size_t b = 0; b < nb && b < ps.bands.size(); ++b) {
        const BandResidual& r = ps.bands[b];
        double* o = rec.data() + kHead + 4 * nw + kBandLen * b;
        o[0] = r.mag, o[1] = r.ab_offset, o[2] = r.obs_ab, o[3] = r.err, o[4] = r.synth_ab, o[5] = r.synth_scaled_ab;
        o[6] = r.residual, o[7] = r.used ? 1.0 : 0.0;
        if (!r.note.empty()) band_notes += fmt::format("{}\t{}\t{}\n", k, b, one_line(r.note));
      }
      rec[1] = 1;
    } catch (const Error& e) {
      reasons += fmt::format("{}\t{}\n", k, one_line("fit failed: " + e.message()));
    }
    recs.insert(recs.end(), rec.begin(), rec.end());
  }
  const std::vector<double> all_recs = comm.allgatherv(recs);
  const std::vector<std::string> all_reasons = comm.allgather(reasons);
  const std::vector<std::string> all_band_notes = comm.allgather(band_notes);

  // ---- 4. Unpack on every rank.
  std::vector<StarCal> star_cals;
  std::vector<std::size_t> star_of_cal;  // index into ex.stars
  for (std::size_t i = 0; i + rec_len <= all_recs.size(); i += rec_len) {
    const auto k = static_cast<std::size_t>(all_recs[i]);
    StarResult& s = ex.stars[prep[k].star];
    if (all_recs[i + 1] != 1.0) continue;
    s.params = {all_recs[i + 2], all_recs[i + 3], all_recs[i + 4], all_recs[i + 5]};
    s.rv_km_s = all_recs[i + 6], s.rv_err_km_s = all_recs[i + 7];
    s.scale = all_recs[i + 8], s.scale_err = all_recs[i + 9], s.chi2_dof = all_recs[i + 10];
    s.model_mismatch = all_recs[i + 12], s.model_neighbours = all_recs[i + 13];
    s.cal.wavelength_angstrom = red.grid.centres;
    s.cal.cal.assign(all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead),
                     all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead + nw));
    s.cal.variance.assign(all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead + nw),
                          all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead + 2 * nw));
    s.cal.good.resize(nw);
    for (std::size_t j = 0; j < nw; ++j) s.cal.good[j] = all_recs[i + kHead + 2 * nw + j] != 0.0 ? 1 : 0;
    s.cal.airmass = 0.0;
    s.cal.source = fmt::format("{} {} {}", s.name, run, s.fiber);
    s.model.assign(all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead + 3 * nw),
                   all_recs.begin() + static_cast<std::ptrdiff_t>(i + kHead + 4 * nw));
    PhotometricScale& ps = s.photometry;
    ps.dm = all_recs[i + 14], ps.dm_err = all_recs[i + 15], ps.chi2 = all_recs[i + 16];
    ps.n_bands = static_cast<int>(all_recs[i + 17]);
    ps.scale = s.scale, ps.scale_err = s.scale_err;
    ps.bands.assign(nb, BandResidual{});
    for (std::size_t b = 0; b < nb; ++b) {
      const double* o = all_recs.data() + i + kHead + 4 * nw + kBandLen * b;
      BandResidual& r = ps.bands[b];
      r.band = in.catalog.bands[b];
      r.mag = o[0], r.ab_offset = o[1], r.obs_ab = o[2], r.err = o[3], r.synth_ab = o[4], r.synth_scaled_ab = o[5];
      r.residual = o[6], r.used = o[7] != 0.0;
    }
  }
  for (const auto& text : all_band_notes) {
    std::size_t pos = 0;
    while (pos < text.size()) {
      const auto t1 = text.find('\t', pos), t2 = text.find('\t', t1 + 1), nl = text.find('\n', pos);
      const auto k = static_cast<std::size_t>(std::stoul(text.substr(pos, t1 - pos)));
      const auto b = static_cast<std::size_t>(std::stoul(text.substr(t1 + 1, t2 - t1 - 1)));
      auto& bands = ex.stars[prep[k].star].photometry.bands;
      if (b < bands.size()) bands[b].note = text.substr(t2 + 1, nl - t2 - 1);
      pos = nl + 1;
    }
  }
  for (const auto& text : all_reasons) {
    std::size_t pos = 0;
    while (pos < text.size()) {
      const auto tab = text.find('\t', pos), nl = text.find('\n', pos);
      const auto k = static_cast<std::size_t>(std::stoul(text.substr(pos, tab - pos)));
      ex.stars[prep[k].star].reason = text.substr(tab + 1, nl - tab - 1);
      pos = nl + 1;
    }
  }
  for (std::size_t i = 0; i < ex.stars.size(); ++i) {
    const StarResult& s = ex.stars[i];
    if (s.cal.size() == 0) continue;
    StarCal sc;
    sc.name = s.fiber;
    sc.cal = s.cal.cal;
    sc.variance = s.cal.variance;
    sc.good = s.cal.good;
    sc.chi2_dof = s.chi2_dof;
    sc.snr = s.snr;
    sc.scale_rel_err = s.scale_err / s.scale;
    sc.correlated_rel_var = sc.scale_rel_err * sc.scale_rel_err;  // inside the variance (model_var above)
    star_cals.push_back(std::move(sc));
    star_of_cal.push_back(i);
  }

  // ---- 5. The root gates and combines; the result is broadcast.
  std::string error;
  std::vector<double> combined;  // cal, variance, good, rms_frac (nw each), rms, n_stars, level_rel_var, then per
                                 // star: factor, log_level, rejected
  std::string qc_reasons;        // per star, '\n'-separated
  if (comm.is_root()) {
    try {
      if (star_cals.empty()) throw DataError("no standard star gave a calibration vector");
      CombinedCal cc;
      try {
        cc = combine_calibrations(star_cals, cfg.combine);
      } catch (const DataError&) {
        // Every star rejected: record each star's reason before giving up.
        cc.qc = quality_gates(star_cals, cfg.combine);
        for (const auto& q : cc.qc) qc_reasons += q.reason + "\n";
        for (const auto& q : cc.qc) combined.insert(combined.end(), {q.factor, q.log_level, q.rejected ? 1.0 : 0.0});
        throw;
      }
      combined = cc.cal;
      combined.insert(combined.end(), cc.variance.begin(), cc.variance.end());
      for (auto g : cc.good) combined.push_back(g);
      combined.insert(combined.end(), cc.rms_frac.begin(), cc.rms_frac.end());
      combined.push_back(cc.rms_median);
      combined.push_back(cc.n_stars);
      combined.push_back(cc.level_rel_var);
      for (const auto& q : cc.qc) {
        combined.insert(combined.end(), {q.factor, q.log_level, q.rejected ? 1.0 : 0.0});
        qc_reasons += q.reason + "\n";
      }
    } catch (const Error& e) {
      error = e.what();
    }
  }
  comm.bcast(error);
  comm.bcast(combined);
  comm.bcast(qc_reasons);
  std::vector<std::string> reason_lines;
  for (std::size_t pos = 0; pos < qc_reasons.size();) {
    const auto nl = qc_reasons.find('\n', pos);
    reason_lines.push_back(qc_reasons.substr(pos, nl - pos));
    pos = nl + 1;
  }
  const std::size_t off = error.empty() ? 4 * nw + 3 : 0;
  if (combined.size() == off + 3 * star_cals.size() && reason_lines.size() == star_cals.size()) {
    for (std::size_t c = 0; c < star_cals.size(); ++c) {
      StarResult& s = ex.stars[star_of_cal[c]];
      s.factor = combined[off + 3 * c];
      s.log_level = combined[off + 3 * c + 1];
      s.used = error.empty() && combined[off + 3 * c + 2] == 0.0;
      s.reason = reason_lines[c];
      if (!error.empty() && s.reason.empty()) s.reason = "not used: no calibration formed";
    }
  }
  if (!error.empty()) {
    ex.error = error;
    return ex;
  }
  ex.cal.wavelength_angstrom = red.grid.centres;
  ex.cal.cal.assign(combined.begin(), combined.begin() + static_cast<std::ptrdiff_t>(nw));
  ex.cal.variance.assign(combined.begin() + static_cast<std::ptrdiff_t>(nw),
                         combined.begin() + static_cast<std::ptrdiff_t>(2 * nw));
  ex.cal.good.resize(nw);
  for (std::size_t j = 0; j < nw; ++j) ex.cal.good[j] = combined[2 * nw + j] != 0.0 ? 1 : 0;
  ex.cal.airmass = 0.0;
  ex.cal.source = run + " in-field";
  ex.rms_frac.assign(combined.begin() + static_cast<std::ptrdiff_t>(3 * nw),
                     combined.begin() + static_cast<std::ptrdiff_t>(4 * nw));
  ex.rms = combined[4 * nw];
  ex.n_used = static_cast<int>(combined[4 * nw + 1]);
  ex.level_rel_err = std::sqrt(combined[4 * nw + 2]);
  return ex;
}

namespace {

constexpr const char* kCalUnit = "erg/cm2/electron";
constexpr const char* kCalVarUnit = "(erg/cm2/electron)**2";

void write_with_unit(h5::Group& g, const std::string& name, const std::vector<double>& v, const std::string& unit) {
  g.write(name, v);
  g.open_dataset(name).set_attr("units", unit);
}

void write_vector(h5::Group& g, const CalVector& v) {
  write_with_unit(g, "wavelength", v.wavelength_angstrom, "Angstrom");
  write_with_unit(g, "cal", v.cal, kCalUnit);
  write_with_unit(g, "variance", v.variance, kCalVarUnit);
  g.write("good", v.good);
  g.open_dataset("good").set_attr("units", "");
  g.set_attr("source", v.source);
  g.set_attr("airmass", v.airmass);
  g.set_attr("units", "cal: erg/cm2 per electron (F_lambda = cal * counts / (exptime * dlambda)); wavelength: "
                      "Angstrom");
}

void write_star(h5::Group& sg, const StarResult& s) {
  if (s.cal.size() > 0) write_vector(sg, s.cal);
  sg.set_attr("fiber", s.fiber);
  sg.set_attr("name", s.name);
  sg.set_attr("used", s.used ? 1.0 : 0.0);
  sg.set_attr("factor", s.factor);
  sg.set_attr("reason", s.reason);
  // The fit and its quality, the values of the star table (<run>.fcalstars.csv) at full precision.
  sg.set_attr("sep_arcsec", s.separation_arcsec);
  sg.set_attr("teff_k", s.params.teff_k);
  sg.set_attr("logg", s.params.logg);
  sg.set_attr("mh", s.params.mh);
  sg.set_attr("alpha", s.params.alpha);
  sg.set_attr("rv_km_s", s.rv_km_s);
  sg.set_attr("rv_err_km_s", s.rv_err_km_s);
  sg.set_attr("chi2_dof", s.chi2_dof);
  sg.set_attr("scale", s.scale);
  sg.set_attr("scale_err", s.scale_err);
  sg.set_attr("model_mismatch", s.model_mismatch);
  sg.set_attr("model_neighbours", s.model_neighbours);
  sg.set_attr("snr", s.snr);
  sg.set_attr("log_level", s.log_level);
  if (!s.model.empty()) write_with_unit(sg, "model", s.model, kFluxUnit);
  const PhotometricScale& ps = s.photometry;
  if (ps.bands.empty()) return;
  auto pg = sg.create_group("photometry");
  std::vector<std::string> band, note;
  std::vector<double> mag, off, ab, err, syn, res;
  std::vector<unsigned char> used;
  for (const auto& b : ps.bands) {
    band.push_back(b.band);
    note.push_back(b.note);
    mag.push_back(b.mag), off.push_back(b.ab_offset), ab.push_back(b.obs_ab), err.push_back(b.err);
    syn.push_back(b.synth_scaled_ab), res.push_back(b.residual);
    used.push_back(b.used ? 1 : 0);
  }
  pg.write_strings("band", band);
  write_with_unit(pg, "mag_catalog", mag, "mag");
  write_with_unit(pg, "ab_offset_mag", off, "mag");
  write_with_unit(pg, "mag_ab", ab, "mag");
  write_with_unit(pg, "mag_ab_err", err, "mag");
  write_with_unit(pg, "mag_ab_synth", syn, "mag");
  write_with_unit(pg, "residual_mag", res, "mag");
  pg.write("used", used);
  pg.open_dataset("used").set_attr("units", "");
  pg.write_strings("note", note);
  pg.set_attr("offset_mag", ps.dm);
  pg.set_attr("offset_err_mag", ps.dm_err);
  pg.set_attr("chi2", ps.chi2);
  pg.set_attr("n_used", static_cast<long long>(ps.n_bands));
}

}  // namespace

void write_infield_cal_file(const fs::path& path, const InFieldResult& r, bool overwrite) {
  io::AtomicOutput out(path, overwrite);  // refuses an existing file without overwrite
  {
    auto f = h5::File::create(out.temp_path());
    auto& root = f.root();
    for (std::size_t i = 0; i < r.exposures.size(); ++i) {
      const auto& e = r.exposures[i];
      auto g = root.create_group(fmt::format("exposures/{:03d}", i));
      if (e.cal.size() > 0) write_vector(g, e.cal);
      g.set_attr("run", e.run);
      g.set_attr("exposure_airmass", e.airmass);
      g.set_attr("exptime_s", e.exptime_s);
      g.set_attr("rms", e.rms);
      g.set_attr("n_used", static_cast<double>(e.n_used));
      g.set_attr("level_rel_err", e.level_rel_err);
      g.set_attr("resolution", e.resolution_source);
      if (e.cal.size() > 0) {
        std::vector<double> fwhm;
        for (double l : e.cal.wavelength_angstrom) fwhm.push_back(e.resolution.fwhm(l));
        write_with_unit(g, "fwhm", fwhm, "Angstrom");
        if (e.rms_frac.size() == e.cal.size()) write_with_unit(g, "rms_frac", e.rms_frac, "");
      }
      g.set_attr("applied", e.applied);
      g.set_attr("error", e.error);
      for (std::size_t k = 0; k < e.stars.size(); ++k) {
        const auto& s = e.stars[k];
        auto sg = root.create_group(fmt::format("exposures/{:03d}/stars/{:03d}", i, k));
        write_star(sg, s);
      }
    }
    if (r.nightly.size() > 0) {
      auto g = root.create_group("nightly");
      write_vector(g, r.nightly);
      g.set_attr("rms", r.nightly_rms);
    }
    f.close();
  }
  out.commit();
}

const std::vector<io::FormatItem>& infield_cal_format() {
  using K = io::FormatItem::Kind;
  static const std::vector<io::FormatItem> f = [] {
    std::vector<io::FormatItem> v;
    const std::string cal_when = "when a vector was formed";
    auto vec = [&](const std::string& g, const std::string& when) {
      v.push_back({g, K::Dataset, "wavelength", "float64", "Angstrom", "pixel centres (the RED grid)", when});
      v.push_back({g, K::Dataset, "cal", "float64", kCalUnit,
                   "Cal at airmass 0: F_lambda = cal * 10^(0.4 k X) * counts / (exptime * dlambda)", when});
      v.push_back({g, K::Dataset, "variance", "float64", kCalVarUnit, "variance of cal", when});
      v.push_back({g, K::Dataset, "good", "uint8", "", "1 = cal usable, 0 = masked (cal NaN)", when});
      v.push_back({g, K::Attribute, "source", "string", "", "what the vector was made from", when});
      v.push_back({g, K::Attribute, "airmass", "float64", "", "airmass the vector refers to (0)", when});
      v.push_back({g, K::Attribute, "units", "string", "", "the units of cal and wavelength in words", when});
    };
    const std::string ex = "exposures/*";
    vec(ex, cal_when);
    // An attribute of the groups `g` (always there, or `when`).
    auto attr = [&](const std::string& g, const char* name, const char* type, const char* what,
                    const std::string& when = "") { v.push_back({g, K::Attribute, name, type, "", what, when}); };
    auto ea = [&](const char* name, const char* type, const char* what) { attr(ex, name, type, what); };
    ea("run", "string", "exposure name");
    ea("exposure_airmass", "float64", "airmass of the exposure");
    ea("exptime_s", "float64", "exposure time in s");
    ea("rms", "float64", "FCALRMS: median fractional rms of the stars about the combined vector (NaN with one star)");
    ea("n_used", "float64", "stars used in the combination");
    ea("level_rel_err", "float64", "fractional sigma of the vector's level, fully correlated across wavelength");
    ea("resolution", "string", "how the template fit's FWHM was obtained (arc lines or configuration)");
    ea("applied", "string", "own | nightly | '' (the vector the exposure was calibrated with)");
    ea("error", "string", "why no vector was formed ('' when one was)");
    v.push_back({ex, K::Dataset, "fwhm", "float64", "Angstrom", "instrument FWHM the template fit used, per pixel",
                 cal_when});
    v.push_back({ex, K::Dataset, "rms_frac", "float64", "",
                 "QC: rms fractional scatter of the used stars about the combined vector per pixel, "
                 "Cal_s / (a_s Cal) - 1 (NaN with fewer than two stars)",
                 "when a vector was formed from the exposure's own stars"});
    // Every standard fiber of the exposure has a group, with the reason when it gave no vector.
    const std::string st = "exposures/*/stars/*";
    vec(st, "when the star gave a vector");
    auto sa = [&](const char* name, const char* type, const char* what) { attr(st, name, type, what); };
    sa("fiber", "string", "fiber (aperture) name");
    sa("name", "string", "catalog name of the star");
    sa("used", "float64", "1 = used in the combination, 0 = rejected");
    sa("factor", "float64", "grey factor of the combination (fiber throughput, geometric mean 1)");
    sa("reason", "string", "why rejected (or kept despite a failed gate); '' when clean");
    sa("sep_arcsec", "float64", "fiber-to-catalog separation in arcsec");
    sa("teff_k", "float64", "fitted Teff in K");
    sa("logg", "float64", "fitted log g (cgs)");
    sa("mh", "float64", "fitted [M/H] in dex");
    sa("alpha", "float64", "fitted [alpha/M] in dex");
    sa("rv_km_s", "float64", "fitted radial velocity in km/s");
    sa("rv_err_km_s", "float64", "its uncertainty in km/s");
    sa("chi2_dof", "float64", "chi2 per degree of freedom of the fit");
    sa("scale", "float64", "photometric scale: model surface flux * scale = flux above the atmosphere");
    sa("scale_err", "float64", "uncertainty of scale");
    sa("model_mismatch", "float64", "fractional per-pixel sigma of the template mismatch");
    sa("model_neighbours", "float64", "median fractional sigma of the model from its neighbouring grid models");
    sa("snr", "float64", "median per-pixel S/N of the spectrum");
    sa("log_level", "float64", "ln of the star's level against the median of the stars (the level gate)");
    v.push_back({st, K::Dataset, "model", "float64", kFluxUnit,
                 "fitted model * scale on the pixels, above the atmosphere (convolved, RV-shifted, resampled): the "
                 "F_model of Cal_star = F_model * exptime * dlambda / counts; NaN where undefined",
                 "when the star was fitted and scaled"});
    const std::string ph = st + "/photometry";
    const std::string scaled = "when the star was scaled";
    auto pd = [&](const char* name, const char* type, const char* unit, const char* what) {
      v.push_back({ph, K::Dataset, name, type, unit, what, scaled});
    };
    pd("band", "string", "", "catalog band (one row per band of the catalog, in its order)");
    pd("mag_catalog", "float64", "mag", "the catalog's magnitude as given (NaN when missing)");
    pd("ab_offset_mag", "float64", "mag", "m_AB - m_catalog applied");
    pd("mag_ab", "float64", "mag", "catalog AB magnitude: mag_catalog + ab_offset_mag");
    pd("mag_ab_err", "float64", "mag", "the catalog's error");
    pd("mag_ab_synth", "float64", "mag", "synthetic AB magnitude of the scaled model (NaN when not computed)");
    pd("residual_mag", "float64", "mag", "mag_ab_synth - mag_ab (NaN for a band not used)");
    pd("used", "uint8", "", "1 = the band set the scale");
    pd("note", "string", "", "why a band was not used ('' when used)");
    auto pa = [&](const char* name, const char* type, const char* what) { attr(ph, name, type, what, scaled); };
    pa("offset_mag", "float64", "weighted mean of mag_ab - synthetic(unscaled) in mag: scale = 10^(-0.4 offset_mag)");
    pa("offset_err_mag", "float64", "its uncertainty in mag");
    pa("chi2", "float64", "chi2 of the used bands' residuals");
    pa("n_used", "int64", "bands used");
    vec("nightly", "nightly mode");
    v.push_back({"nightly", K::Attribute, "rms", "float64", "", "median fractional rms of the exposures' vectors",
                 "nightly mode"});
    v.push_back({"<group>/<dataset>", K::Attribute, "units", "string", "",
                 "unit of every numeric dataset (the unit column; '' = dimensionless)", ""});
    return v;
  }();
  return f;
}

fs::path star_table_path(const fs::path& calibrated) {
  return calibrated.parent_path() / (run_name(calibrated) + ".fcalstars.csv");
}

void write_star_table(const fs::path& path, const std::vector<StarResult>& stars) {
  io::AtomicOutput out(path, true);
  {
    std::ofstream f(out.temp_path());
    if (!f) throw Error("cannot write " + out.temp_path().string(), ErrorContext{.file = path.string()});
    f << "run,fiber,name,sep_arcsec,teff_k,logg,mh,alpha,rv_km_s,rv_err_km_s,scale,scale_err,chi2_dof,model_mismatch,"
         "model_neighbours,snr,factor,log_level,used,reason\n";
    for (const auto& s : stars) {
      std::string reason = s.reason;
      std::replace(reason.begin(), reason.end(), '"', '\'');
      f << fmt::format("{},{},\"{}\",{:.4g},{:.1f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.6e},{:.6e},{:.4f},{:.5f},{:.5f},"
                       "{:.2f},{:.5f},{:.5f},{},\"{}\"\n",
                       s.run, s.fiber, s.name, s.separation_arcsec, s.params.teff_k, s.params.logg, s.params.mh,
                       s.params.alpha, s.rv_km_s, s.rv_err_km_s, s.scale, s.scale_err, s.chi2_dof, s.model_mismatch,
                       s.model_neighbours, s.snr, s.factor,
                       s.log_level, s.used ? 1 : 0, reason);
    }
    f.close();
    if (!f) throw Error("cannot write " + out.temp_path().string(), ErrorContext{.file = path.string()});
  }
  out.commit();
}

std::vector<std::string> star_history(const StarResult& s) {
  std::vector<std::string> out;
  out.push_back(short_text(fmt::format("FCAL {} {} T={:.0f} g={:.2f} M={:+.2f} a={:.2f}", s.fiber, s.name,
                                       s.params.teff_k, s.params.logg, s.params.mh, s.params.alpha),
                           72));
  out.push_back(short_text(fmt::format("FCAL {} rv={:.1f}+-{:.1f} s={:.4g}+-{:.2g} c2={:.2f} {}", s.fiber, s.rv_km_s,
                                       s.rv_err_km_s, s.scale, s.scale_err, s.chi2_dof,
                                       s.used ? (s.reason.empty() ? "used" : "used:" + s.reason) : "rej:" + s.reason),
                           72));
  return out;
}

InFieldResult run_infield(const InFieldConfig& cfg, const mpi::Comm& comm) {
  if (cfg.mode != "exposure" && cfg.mode != "nightly")
    throw ConfigError(fmt::format("fluxcal: mode '{}' is not 'exposure' or 'nightly'", cfg.mode));
  if (cfg.red_files.empty()) throw ConfigError("fluxcal: no RED file given");
  if (!(cfg.match_radius_arcsec > 0)) throw ConfigError("fluxcal: the match radius must be positive");
  InFieldResult result;
  for (const auto& f : cfg.red_files) {
    ExposureCalibration e;
    e.input = f;
    e.output = calibrated_path(f, cfg.out_dir);
    e.run = run_name(f);
    if (fs::absolute(e.output) == fs::absolute(f))
      throw ConfigError(fmt::format("fluxcal: output {} would replace its input", e.output.string()));
    result.exposures.push_back(e);
  }
  const bool root = comm.is_root();
  InFieldInputs in;
  try {
    in = read_infield_inputs(cfg);
  } catch (const Error& e) {
    // Identical on every rank (every rank reads the same files).
    spdlog::error("fluxcal: no calibration: {}", e.what());
    for (auto& ex : result.exposures) {
      ex.error = ex.message = e.what();
      if (root) write_uncalibrated(ex.input, ex.output, ex.message, cfg.overwrite);
    }
    return result;
  }

  if (!cfg.arcsol_files.empty() && cfg.arcsol_files.size() != 1 && cfg.arcsol_files.size() != cfg.red_files.size())
    throw ConfigError(fmt::format("fluxcal: {} arc-solution files for {} RED files (give one, or one per RED)",
                                  cfg.arcsol_files.size(), cfg.red_files.size()));
  std::map<fs::path, ArcResolution> measured;  // each arc-solution file measured once
  for (std::size_t i = 0; i < result.exposures.size(); ++i) {
    auto& ex = result.exposures[i];
    InFieldConfig ecfg = cfg;
    std::string res_source = fmt::format("configured FWHM {}", cfg.fwhm_explicit ? "(explicit)" : "(default)");
    try {
      if (!cfg.arcsol_files.empty() && !cfg.fwhm_explicit) {
        const fs::path& arc = cfg.arcsol_files.size() == 1 ? cfg.arcsol_files.front() : cfg.arcsol_files[i];
        auto it = measured.find(arc);
        if (it == measured.end()) {
          it = measured.emplace(arc, resolution_from_arc_file(arc)).first;
          if (root) spdlog::info("fluxcal: instrument resolution measured: {}", it->second.summary());
        }
        ecfg.fit.resolution = it->second.resolution;
        res_source = it->second.summary();
      }
      const wavecal::RedSpectra red = wavecal::read_red_file(ex.input);
      auto cal = calibrate_exposure(red, ex.run, in, ecfg, comm);
      cal.input = ex.input;
      cal.output = ex.output;
      ex = std::move(cal);
    } catch (const Error& e) {
      ex.error = e.what();  // reading the files: the same on every rank, before any collective
    }
    ex.resolution = ecfg.fit.resolution;
    ex.resolution_source = res_source;
    if (!ex.error.empty()) spdlog::warn("fluxcal: {}: no calibration from its own stars: {}", ex.run, ex.error);
  }

  std::vector<CalVector> own;
  for (const auto& ex : result.exposures)
    if (ex.error.empty()) own.push_back(ex.cal);
  if (cfg.mode == "nightly" && !own.empty()) result.nightly = combine_mean(own, 3.0, &result.nightly_rms);
  int n_nightly = 0;
  for (const auto& ex : result.exposures)
    if (ex.error.empty()) n_nightly += ex.n_used;

  for (auto& ex : result.exposures) {
    const bool enough = ex.error.empty() && ex.n_used >= cfg.min_standards;
    const CalVector* cal = nullptr;
    if (cfg.mode == "exposure") {
      if (ex.error.empty()) cal = &ex.cal, ex.applied = "own";
    } else if (enough) {
      cal = &ex.cal, ex.applied = "own";
    } else if (result.nightly.size() > 0) {
      cal = &result.nightly, ex.applied = "nightly";
    }
    if (!root) {
      ex.ok = cal != nullptr;
      continue;
    }
    try {
      if (!cal) throw DataError(ex.error.empty() ? "no calibration vector" : ex.error);
      wavecal::RedSpectra red = wavecal::read_red_file(ex.input);
      CalibrationRecord rec;
      rec.mode = cfg.mode;
      rec.extinction = in.extinction.name;
      rec.n_standards = ex.applied == "own" ? ex.n_used : n_nightly;
      rec.rms = ex.applied == "own" ? ex.rms : result.nightly_rms;
      if (rec.n_standards < 2) rec.rms = kNaN;
      if (ex.applied == "nightly")
        rec.history.push_back(short_text(fmt::format("FCAL nightly vector of {} exposures ({})", own.size(),
                                                     ex.error.empty() ? fmt::format("{} own stars", ex.n_used)
                                                                      : ex.error),
                                         72));
      for (const auto& s : ex.stars)
        for (auto& line : star_history(s)) rec.history.push_back(line);
      apply_to_red(red, *cal, in.extinction, rec, ex.input.string());
      {
        const auto& c = red.grid.centres;
        const double mid = c.empty() ? 0.0 : 0.5 * (c.front() + c.back());
        red.spectra.header.set("FCALFWHM", ex.resolution.fwhm(mid),
                               fmt::format("[Angstrom] template-fit FWHM at {:.0f} A", mid));
        red.spectra.header.set("FCALRESS", ex.resolution_source.rfind("configured", 0) == 0 ? "config" : "arcs",
                               "FWHM from the arc lines or the configuration");
        red.spectra.header.add_history(short_text("FCAL resolution: " + ex.resolution_source, 200));
      }
      wavecal::write_red_file(ex.output, red, cfg.overwrite);
      ex.ok = true;
      spdlog::info("fluxcal: {} -> {} ({} vector, {} standard stars)", ex.input.string(), ex.output.string(),
                   ex.applied, rec.n_standards);
    } catch (const Error& e) {
      ex.ok = false;
      ex.message = e.what();
      spdlog::error("fluxcal: {}: {}", ex.input.string(), ex.message);
      write_uncalibrated(ex.input, ex.output, ex.message, cfg.overwrite);
    }
    if (!ex.stars.empty()) write_star_table(star_table_path(ex.output), ex.stars);
  }
  return result;
}

}  // namespace kspecdr::fluxcal
