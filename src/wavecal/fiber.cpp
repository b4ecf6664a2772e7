#include "kspecdr/wavecal/fiber.hpp"


#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kspecdr/wavecal/fit_detail.hpp"
#include "kspecdr/core/error.hpp"

namespace kspecdr::wavecal {
namespace {

/// rms over the detector of the difference of two solutions, in px of the first.
double difference_px(const LegendreSeries& a, const LegendreSeries& b, long npix) {
  double ss = 0;
  int n = 0;
  for (long x = 0; x < npix; x += std::max(1L, npix / 64)) {
    const double xd = static_cast<double>(x);
    ss += std::pow((a(xd) - b(xd)) / a.derivative(xd), 2);
    ++n;
  }
  return std::sqrt(ss / std::max(1, n));
}

/// The same after removing the best straight line in x from the difference: what a per-fiber shift and
/// scale correction cannot absorb.
double difference_after_linear_px(const LegendreSeries& a, const LegendreSeries& b, long npix) {
  std::vector<double> xs, ds;
  for (long x = 0; x < npix; x += std::max(1L, npix / 64)) {
    const double xd = static_cast<double>(x);
    xs.push_back(xd);
    ds.push_back((a(xd) - b(xd)) / a.derivative(xd));
  }
  const double n = static_cast<double>(xs.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    sx += xs[i];
    sy += ds[i];
    sxx += xs[i] * xs[i];
    sxy += xs[i] * ds[i];
  }
  const double den = n * sxx - sx * sx;
  const double slope = den != 0 ? (n * sxy - sx * sy) / den : 0.0, icpt = (sy - slope * sx) / n;
  double ss = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) ss += std::pow(ds[i] - icpt - slope * xs[i], 2);
  return std::sqrt(ss / std::max(1.0, n));
}

LegendreSeries evaluate_smooth(const std::vector<LegendreSeries>& smooth, double coord, long npix) {
  LegendreSeries s;
  s.xmin = 0.0;
  s.xmax = static_cast<double>(npix - 1);
  for (const auto& c : smooth) s.coeffs.push_back(c(coord));
  return s;
}

/// Corrects the smooth model with a fiber's own lines: a shift with fewer than 6 lines, shift and
/// scale with more. Few lines cannot constrain the full order, but they do pin the zero point.
WavelengthSolution correct(const std::vector<ArcPeak>& peaks, long npix, const std::vector<ArcLine>& lines,
                           Medium medium, const LegendreSeries& model, double model_error_px, int n_model_fibers,
                           const WavecalConfig& cfg) {
  WavelengthSolution s;
  s.npix = npix;
  s.medium = medium;
  s.lambda = model;
  std::vector<double> w;
  for (const auto& l : lines) w.push_back(l.wavelength_angstrom);
  const auto pairs = detail::match_lines(peaks, model, w, 2.0 * cfg.match_tolerance_px);
  for (const auto& p : peaks) s.n_peaks += p.usable() ? 1 : 0;
  if (pairs.empty()) {
    s.status = SolutionStatus::Failed;
    s.message = "none of its arc lines matches the model smoothed across fibers";
    return s;
  }
  std::vector<double> fx, fy, fe, fte;
  for (const auto& [pi, li] : pairs) {
    const double disp = std::abs(model.derivative(peaks[pi].x_px));
    fx.push_back(peaks[pi].x_px);
    fy.push_back(w[li] - model(peaks[pi].x_px));
    fe.push_back(std::hypot(peaks[pi].x_err_px, cfg.centroid_floor_px) * disp);
    fte.push_back(peaks[pi].x_err_px * disp);
  }
  const int order = fx.size() >= 6 ? 1 : 0;
  const auto f = detail::fit_legendre_clipped(fx, fy, fe, fte, order, model.xmin, model.xmax, cfg.clip_sigma,
                                              cfg.clip_iterations);
  if (!f.ok) {
    s.status = SolutionStatus::Failed;
    s.message = "the correction of the smooth model failed";
    return s;
  }
  for (std::size_t k = 0; k < f.series.coeffs.size(); ++k) s.lambda.coeffs[k] += f.series.coeffs[k];
  double ss = 0, sa = 0, se = 0;
  for (std::size_t k = 0; k < fx.size(); ++k) {
    LineMatch m;
    m.x_px = fx[k];
    m.x_err_px = peaks[pairs[k].first].x_err_px;
    m.wavelength_angstrom = w[pairs[k].second];
    m.fit_angstrom = s.lambda(fx[k]);
    m.residual_px = (m.wavelength_angstrom - m.fit_angstrom) / std::abs(s.lambda.derivative(fx[k]));
    m.snr = peaks[pairs[k].first].snr;
    m.flux = peaks[pairs[k].first].flux;
    m.sigma_px = peaks[pairs[k].first].sigma_px;
    m.used = f.used[k] != 0;
    m.id = lines[pairs[k].second].id;
    if (m.used) {
      ++s.n_used;
      ss += m.residual_px * m.residual_px;
      sa += std::pow(m.wavelength_angstrom - m.fit_angstrom, 2);
      se += m.x_err_px * m.x_err_px;
    } else {
      ++s.n_rejected;
    }
    s.lines.push_back(m);
  }
  s.n_matched = s.n_used + s.n_rejected;
  s.rms_px = std::sqrt(ss / std::max(1, s.n_used));
  s.rms_angstrom = std::sqrt(sa / std::max(1, s.n_used));
  s.expected_rms_px = std::sqrt(se / std::max(1, s.n_used));
  s.chi2_dof = f.chi2_dof;
  // Error of the solution: the correction's from the centroid errors, scaled up by √(χ²/dof) of the lines
  // against their centroid errors when they scatter more (list errors, faint blends), plus the smooth
  // model's own error.
  // Error of the solution: the correction's, from the lines' centroid errors plus the common extra scatter
  // they show (list errors, faint blends), and the smooth model's own error.
  std::vector<double> lx, ly, le, lr, ld;
  for (std::size_t k = 0; k < s.lines.size(); ++k) {
    const auto& ln = s.lines[k];
    if (!ln.used || !(ln.x_err_px > 0)) continue;
    lx.push_back(ln.x_px);
    ly.push_back(ln.wavelength_angstrom - model(ln.x_px));
    le.push_back(ln.x_err_px);
    lr.push_back(ln.residual_px);
    ld.push_back(std::abs(model.derivative(ln.x_px)));
  }
  const double corr = detail::honest_error_px(lx, ly, le, lr, ld, order, model.xmin, model.xmax, cfg.centroid_floor_px,
                                              npix, s.lambda);
  s.predicted_error_px = std::hypot(std::isfinite(corr) ? corr : 0.0, model_error_px);
  s.max_predicted_error_px = s.predicted_error_px;
  s.status = SolutionStatus::Smoothed;
  s.message = fmt::format("smooth model of {} fibers corrected with {} own line(s) ({})", n_model_fibers, s.n_used,
                          order == 0 ? "shift" : "shift and scale");
  return s;
}

}  // namespace

FiberCalibration calibrate_fibers(const std::vector<std::vector<ArcPeak>>& peaks, long npix,
                                  const std::vector<double>& coordinate, const LineList& list,
                                  const DispersionHint& hint, const WavecalConfig& cfg, const mpi::Comm* comm) {
  const std::size_t nf = peaks.size();
  if (coordinate.size() != nf)
    throw DataError(fmt::format("calibrate_fibers: {} coordinates for {} fibers", coordinate.size(), nf));
  FiberCalibration out;
  out.solutions.resize(nf);
  std::vector<char> own_ok(nf, 0);
  solve_shared(out.solutions, comm, [&](std::size_t i) {
    auto& s = out.solutions[i];
    s.npix = npix;
    s.medium = cfg.output_medium;
    if (peaks[i].empty()) {
      s.message = "no arc lines (fiber skipped or dark)";
      return;
    }
    try {
      s = identify(peaks[i], npix, list, hint, cfg);
    } catch (const Error& e) {
      s.status = SolutionStatus::Failed;
      s.npix = npix;
      s.message = e.message();
    }
  });
  // An own identification is what left a fiber Ok.
  for (std::size_t i = 0; i < nf; ++i) own_ok[i] = out.solutions[i].status == SolutionStatus::Ok;
  // Smooth each coefficient across the well-measured fibers, rejecting fibers whose own solution
  // departs from the smooth model (a wrong identification, a bad fiber).
  const int ncoef = cfg.order + 1;
  std::vector<std::size_t> good;
  for (std::size_t i = 0; i < nf; ++i)
    if (own_ok[i] && out.solutions[i].n_used >= cfg.fiber_min_own_lines) good.push_back(i);
  const int sorder = cfg.fiber_smooth_order;
  if (static_cast<int>(good.size()) >= sorder + 2) {
    double cmin = coordinate[good.front()], cmax = cmin;
    for (auto i : good) {
      cmin = std::min(cmin, coordinate[i]);
      cmax = std::max(cmax, coordinate[i]);
    }
    for (std::size_t i = 0; i < nf; ++i) {
      cmin = std::min(cmin, coordinate[i]);
      cmax = std::max(cmax, coordinate[i]);
    }
    std::vector<char> keep(good.size(), 1);
    std::vector<LegendreSeries> smooth;
    for (int it = 0; it < 6; ++it) {
      smooth.assign(static_cast<std::size_t>(ncoef), LegendreSeries{});
      for (int k = 0; k < ncoef; ++k) {
        std::vector<double> x, y, e;
        for (std::size_t g = 0; g < good.size(); ++g) {
          if (!keep[g]) continue;
          const auto& c = out.solutions[good[g]].lambda.coeffs;
          x.push_back(coordinate[good[g]]);
          y.push_back(k < static_cast<int>(c.size()) ? c[static_cast<std::size_t>(k)] : 0.0);
          e.push_back(1.0);
        }
        const int ord = std::min(sorder, static_cast<int>(x.size()) - 1);
        smooth[static_cast<std::size_t>(k)] =
            detail::fit_legendre_clipped(x, y, e, {}, ord, cmin, cmax, 1e30, 0).series;
      }
      std::vector<double> dev(good.size());
      std::vector<double> kept_dev;
      for (std::size_t g = 0; g < good.size(); ++g) {
        dev[g] = difference_px(out.solutions[good[g]].lambda, evaluate_smooth(smooth, coordinate[good[g]], npix), npix);
        if (keep[g]) kept_dev.push_back(dev[g]);
      }
      // Deviations are positive: their robust scale is 1.4826 × median about 0, with a floor so that a
      // perfectly smooth set does not reject fibers for rounding noise.
      const double scale = std::max(0.02, 1.4826 * detail::median(kept_dev));
      std::vector<char> next(good.size());
      for (std::size_t g = 0; g < good.size(); ++g) next[g] = dev[g] <= cfg.fiber_clip_sigma * scale;
      if (std::count(next.begin(), next.end(), 1) < sorder + 2 || next == keep) break;
      keep = next;
    }
    out.smooth = smooth;
    // Error of the smooth model at a fiber, beyond what the fiber's own shift and scale correct: the
    // scatter of the kept fibers' own solutions about it once a straight line is removed (their noise and
    // any real non-smooth part) over the √(fibers per parameter).
    double ss_dev = 0;
    int n_kept = 0;
    for (std::size_t g = 0; g < good.size(); ++g)
      if (keep[g]) {
        ss_dev += std::pow(difference_after_linear_px(out.solutions[good[g]].lambda,
                                                      evaluate_smooth(smooth, coordinate[good[g]], npix), npix),
                           2);
        ++n_kept;
      }
    const double model_error_px =
        n_kept > 0 ? std::sqrt(ss_dev / n_kept) * std::sqrt(static_cast<double>(sorder + 1) / n_kept) : 0.0;
    const LineList l = to_medium(list, cfg.output_medium);
    for (std::size_t i = 0; i < nf; ++i) {
      const auto g = std::find(good.begin(), good.end(), i);
      const bool own_stands = g != good.end() && keep[static_cast<std::size_t>(g - good.begin())];
      if (own_stands && !cfg.fiber_refit_all) continue;  // own solution stands
      if (peaks[i].empty()) continue;
      const LegendreSeries model = evaluate_smooth(smooth, coordinate[i], npix);
      const double xmax = static_cast<double>(npix - 1);
      const double a = model(0.0), b = model(xmax);
      const double D = std::abs(b - a) / xmax;
      const auto lines = detail::anchor_lines(l, std::min(a, b) - 5 * D, std::max(a, b) + 5 * D,
                                              cfg.list_blend_px * D);
      const std::string why = out.solutions[i].ok() ? "its own solution departs from its neighbours'"
                                                    : out.solutions[i].message;
      WavelengthSolution r = correct(peaks[i], npix, lines, l.medium, model, model_error_px, n_kept, cfg);
      r.reversed = out.solutions[i].reversed;
      // A well-measured fiber keeps its own solution if the corrected model cannot be fitted to its lines.
      if (own_stands && !r.ok()) continue;
      if (!r.ok()) r.message += " (own fit: " + why + ")";
      out.solutions[i] = r;
    }
  }
  for (const auto& s : out.solutions) {
    if (s.status == SolutionStatus::Ok) ++out.n_ok;
    else if (s.status == SolutionStatus::Smoothed) ++out.n_smoothed;
    else ++out.n_failed;
  }
  if (out.n_ok + out.n_smoothed == 0) {
    std::string why = nf ? out.solutions.front().message : "no fiber";
    throw DataError(fmt::format("no fiber could be wavelength calibrated (first fiber: {})", why));
  }
  return out;
}

FiberCalibration calibrate_fibers(const SpectrumSet& arc, const LineList& list, const DispersionHint& hint,
                                  const WavecalConfig& cfg, const mpi::Comm* comm) {
  arc.check_shapes("arc spectra");
  std::vector<std::vector<ArcPeak>> peaks(static_cast<std::size_t>(arc.naper()));
  std::vector<double> coord(peaks.size());
  for (Eigen::Index a = 0; a < arc.naper(); ++a) {
    coord[static_cast<std::size_t>(a)] = static_cast<double>(a);
    if (static_cast<std::size_t>(a) < arc.apertures.size() && arc.apertures[static_cast<std::size_t>(a)].type == aperture_type::kUnused)
      continue;
    peaks[static_cast<std::size_t>(a)] = find_peaks(spectrum_row(arc, a), cfg.peaks);
  }
  return calibrate_fibers(peaks, arc.npix(), coord, list, hint, cfg, comm);
}

}  // namespace kspecdr::wavecal
