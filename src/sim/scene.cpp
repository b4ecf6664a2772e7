#include "kspecdr/sim/scene.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kspecdr/core/error.hpp"

namespace kspecdr::sim {
namespace {

double unit_x(double x, long nx) { return 2.0 * x / static_cast<double>(nx - 1) - 1.0; }

/// Fraction of a Gaussian (centre, sigma) that lands on rows 0..ny-1.
double on_detector_fraction(double centre, double sigma, long ny) {
  const double s = std::sqrt(2.0) * sigma;
  return 0.5 * (std::erf((static_cast<double>(ny) - 0.5 - centre) / s) - std::erf((-0.5 - centre) / s));
}

/// Largest value of an image (the scale of a lamp exposure).
double peak(const ImageArrayD& a) { return a.size() ? a.maxCoeff() : 0.0; }

/// A wavelength solution over the pixel domain: centre, dispersion, and smooth non-linear terms.
Legendre wavelength_solution(double centre_angstrom, double dispersion_angstrom_per_px, long nx) {
  const double half = dispersion_angstrom_per_px * static_cast<double>(nx - 1) / 2.0;
  return Legendre{{centre_angstrom, half, -0.006 * half, 0.002 * half}, 0.0, static_cast<double>(nx - 1)};
}

std::filesystem::path resolve_linelist(const SimConfig& c, const InstrumentProfile& p) {
  std::filesystem::path path = c.arc_linelist;
  if (path.empty()) {
    if (p.arc_linelists.empty())
      throw ConfigError(fmt::format("the profile {} lists no arc line list ([wavelength] linelists) and "
                                    "arc_linelist is not set", p.source.string()),
                        ErrorContext{.file = p.source.string(), .keyword = "arc_linelist"});
    path = p.arc_linelists.front();
  }
  if (path.is_relative() && !std::filesystem::exists(path)) path = data_dir() / path;
  return path;
}

}  // namespace

double Aperture::centre_y(double x, long nx, const ExposureState& s) const {
  const double u = unit_x(x, nx);
  return y0_px + s.trace_offset_px + tilt_px * u + curvature_px * u * u;
}

double Aperture::sigma(double x, long nx, const ExposureState& s) const {
  const double u = unit_x(x, nx);
  return sigma0_px * s.sigma_scale * (1.0 + sigma_slope * u + sigma_curvature * u * u);
}

double Spectrograph::lsf_sigma_px(double x) const {
  const double u = unit_x(x, nx);
  return lsf_sigma0_px * (1.0 + 0.15 * u * u);
}

double Spectrograph::slit_illumination(double y) const {
  // Slow vignetting along the slit, with soft slit ends.
  const double v = (y - 0.5 * static_cast<double>(ny - 1)) / (0.5 * static_cast<double>(ny));
  const double edge = 0.5 * (std::erf((y - (slit_row0 - 0.5)) / (std::sqrt(2.0) * 0.6)) -
                             std::erf((y - (slit_row1 + 0.5)) / (std::sqrt(2.0) * 0.6)));
  return (1.0 + 0.04 * v - 0.06 * v * v) * edge;
}

double Spectrograph::slit_lambda(double x, double y) const {
  const double v = (y - 0.5 * static_cast<double>(ny - 1)) / (0.5 * static_cast<double>(ny));
  return slit_wavelength(x) + slit_tilt_angstrom * v;
}

ImageArrayD Spectrograph::illumination() const {
  ImageArrayD out = ImageArrayD::Zero(ny, nx);
  if (mode == SpectroMode::Slit) {
    for (long j = 0; j < ny; ++j) out.row(j).setConstant(slit_illumination(static_cast<double>(j)));
    return out;
  }
  for (const auto& ap : apertures) {
    if (ap.type == 'N') continue;
    for (long x = 0; x < nx; ++x) {
      const double c = ap.centre_y(static_cast<double>(x), nx), s = ap.sigma(static_cast<double>(x), nx);
      const long lo = std::max(0L, static_cast<long>(std::floor(c - 10.0 * s)));
      const long hi = std::min(ny - 1, static_cast<long>(std::ceil(c + 10.0 * s)));
      for (long j = lo; j <= hi; ++j) out(j, x) += ap.throughput * pixel_fraction(c, s, j);
    }
  }
  return out;
}

Spectrograph make_spectrograph(const SimConfig& c, const InstrumentProfile& profile, double field_ra_deg,
                               double field_dec_deg, std::mt19937_64& rng) {
  Spectrograph s;
  s.mode = c.mode;
  s.nx = c.nx;
  s.ny = c.ny;
  s.plate_scale_arcsec_per_px = c.plate_scale_arcsec_per_px;
  s.slit_width_arcsec = c.slit_width_arcsec;
  s.lsf_sigma0_px = c.lsf_sigma_px;
  s.throughput_peak = c.throughput_peak;
  s.telescope_area_cm2 = c.telescope_area_cm2;
  s.site_height_m = profile.site_height_m;
  s.flat_peak_e = c.flat_peak_e;
  s.arc_peak_e_per_s = c.arc_peak_e_per_s;
  s.sky.continuum_photons = c.sky_continuum_photons;
  s.sky.line_scale = c.sky_line_scale;

  std::normal_distribution<double> gauss(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const double disp = profile.dispersion_angstrom_per_px;
  const double ny_d = static_cast<double>(c.ny);
  const double ymid = 0.5 * (ny_d - 1.0);
  // The true zero point differs from the profile's hint, as it does at a telescope.
  const double zero_offset_angstrom = 1.5 * gauss(rng);
  const Legendre base = wavelength_solution(profile.wave_center_angstrom + zero_offset_angstrom, disp, c.nx);

  if (c.mode == SpectroMode::Fiber) {
    // Fibers in blocks with gaps, evenly spaced inside a margin that keeps the curved traces on the chip.
    const double margin = 6.0 * c.fiber_sigma_px + 5.0;
    const double spacing = (ny_d - 2.0 * margin - (c.n_fiber_blocks - 1) * c.fiber_gap_px) / c.n_fibers;
    std::vector<char> types(static_cast<std::size_t>(c.n_fibers), 'P');
    std::vector<std::size_t> order(types.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (std::size_t i = order.size() - 1; i > 0; --i)
      std::swap(order[i], order[std::uniform_int_distribution<std::size_t>(0, i)(rng)]);
    std::size_t k = 0;
    for (int i = 0; i < c.n_sky_fibers; ++i) types[order[k++]] = 'S';
    for (int i = 0; i < c.n_standard_fibers; ++i) types[order[k++]] = 'C';
    types[order[k++]] = 'N';

    const int per_block = (c.n_fibers + c.n_fiber_blocks - 1) / c.n_fiber_blocks;
    std::mt19937_64 std_rng(c.seed ^ 0x5eed5eed5eedULL);  // log g, [M/H], [α/M] of the standard stars
    for (int f = 0; f < c.n_fibers; ++f) {
      Aperture a;
      a.name = fmt::format("fib{:03d}", f + 1);
      a.type = types[static_cast<std::size_t>(f)];
      const int block = f / per_block;
      a.y0_px = margin + (f + 0.5) * spacing + block * c.fiber_gap_px;
      const double yn = (a.y0_px - ymid) / (0.5 * ny_d);
      a.tilt_px = 1.5 * (1.0 + 0.3 * yn);
      a.curvature_px = 3.0 * (0.6 + 0.4 * yn * yn);
      const double thr = 0.80 + 0.25 * uni(rng);
      a.throughput = a.type == 'N' ? 0.0 : thr;
      a.sigma0_px = c.fiber_sigma_px * (1.0 + 0.05 * gauss(rng));
      a.sigma_slope = 0.04 * yn;
      a.sigma_curvature = 0.15;
      // Wavelength zero point and scale drift smoothly across the slit of fibers.
      a.wavelength = base;
      a.wavelength.coeffs[0] += 1.8 * yn * yn + 0.6 * yn;
      a.wavelength.coeffs[1] *= 1.0 + 0.002 * yn;
      // Positions within a 1-degree radius of the field centre.
      const double r = 0.9 * std::sqrt(uni(rng)), th = 2.0 * std::numbers::pi * uni(rng);
      const double teff = 4000.0 + 5000.0 * uni(rng), rv = 40.0 * gauss(rng), mag = 15.5 + 2.5 * uni(rng);
      const double std_teff = 5900.0 + 800.0 * uni(rng), std_mag = 14.0 + 1.0 * uni(rng);
      if (a.type != 'N') {
        a.dec_deg = field_dec_deg + r * std::sin(th);
        a.ra_deg = std::fmod(field_ra_deg + r * std::cos(th) / std::cos(a.dec_deg * std::numbers::pi / 180.0) + 360.0,
                             360.0);
      }
      if (a.type == 'P') a.star = StarTemplate{teff, rv, mag};
      if (a.type == 'C') {
        // The other parameters come from a generator of their own, so that the draws of the night do not move.
        std::uniform_real_distribution<double> u01(0.0, 1.0);
        StarTemplate st{std_teff, rv, std_mag};
        st.logg = 3.9 + 0.7 * u01(std_rng);
        st.mh = -0.8 + 1.1 * u01(std_rng);
        st.alpha = 0.4 * u01(std_rng);
        a.star = st;
      }
      s.apertures.push_back(std::move(a));
    }
  } else {
    // A long slit covering all but a few rows at each end, the lines tilted across it.
    s.slit_row0 = std::max(4.0, std::round(0.03 * ny_d));
    s.slit_row1 = ny_d - 1.0 - s.slit_row0;
    s.slit_wavelength = base;
    s.slit_tilt_angstrom = 0.8 * disp;
    const double seeing_sigma_px = c.seeing_fwhm_arcsec / 2.3548 / c.plate_scale_arcsec_per_px;
    static const double teffs[] = {5600.0, 5000.0, 6300.0, 4600.0, 7000.0};
    static const double mags[] = {13.0, 13.5, 14.2, 13.8, 14.5};
    // Stars spread over the middle of the slit, off pixel centres by a fraction of a pixel.
    auto star_y = [&](int i) {
      const double f = c.n_stars > 1 ? 0.28 + 0.52 * i / (c.n_stars - 1.0) : 0.5;
      return std::round(ny_d * f) + 0.3;
    };
    for (int i = 0; i < c.n_stars; ++i) {
      Aperture a;
      a.name = i == 0 ? "target" : fmt::format("comp{}", i);
      a.type = 'P';
      a.y0_px = star_y(i);
      const double yn = (a.y0_px - ymid) / (0.5 * ny_d);
      a.tilt_px = 0.8;
      a.curvature_px = 2.5 * (1.0 + 0.1 * yn);
      a.sigma0_px = seeing_sigma_px;
      a.sigma_slope = 0.03;
      a.sigma_curvature = 0.10;
      a.transits = i == 0;
      const double rv = 30.0 * gauss(rng);
      a.star = StarTemplate{teffs[i % 5], rv, mags[i % 5]};
      // The slit runs north-south through the target.
      a.dec_deg = field_dec_deg + (a.y0_px - star_y(0)) * c.plate_scale_arcsec_per_px / 3600.0;
      a.ra_deg = field_ra_deg;
      // λ along this star's trace: the slit solution plus the tilt at y_c(u) = a0 + a1·u + a2·u²,
      // rewritten exactly in the Legendre basis (u² = (2·P2 + P0)/3).
      const double t = s.slit_tilt_angstrom / (0.5 * ny_d);
      a.wavelength = base;
      a.wavelength.coeffs[0] += t * (a.y0_px - ymid + a.curvature_px / 3.0);
      a.wavelength.coeffs[1] += t * a.tilt_px;
      a.wavelength.coeffs[2] += t * 2.0 * a.curvature_px / 3.0;
      s.apertures.push_back(std::move(a));
    }
  }

  // The arc line list covers every aperture's range with a margin for lines just off the chip.
  double lmin = 1e30, lmax = -1e30;
  const double x_lo = -20.0, x_hi = static_cast<double>(c.nx) + 19.0;
  auto extend = [&](double l) {
    lmin = std::min(lmin, l);
    lmax = std::max(lmax, l);
  };
  if (c.mode == SpectroMode::Fiber) {
    for (const auto& a : s.apertures) {
      extend(a.wavelength(x_lo));
      extend(a.wavelength(x_hi));
    }
  } else {
    for (double y : {0.0, ny_d - 1.0}) {
      extend(s.slit_lambda(x_lo, y));
      extend(s.slit_lambda(x_hi, y));
    }
  }
  s.arc_lines = read_line_list(resolve_linelist(c, profile), lmin, lmax, rng);
  return s;
}

// ---------------------------------------------------------------- SceneBuilder

SceneBuilder::SceneBuilder(const Spectrograph& spec, ExposureState state)
    : spec_(spec), state_(state), e_(ImageArrayD::Zero(spec.ny, spec.nx)) {}

ApertureLight& SceneBuilder::light_of(const Aperture& ap) {
  auto& l = light_[ap.name];
  const auto n = static_cast<std::size_t>(spec_.nx);
  if (l.star_e.empty()) {
    l.star_e.assign(n, 0.0);
    l.sky_e.assign(n, 0.0);
    l.sky_e_per_px.assign(n, 0.0);
    l.slit_transmission.assign(n, 1.0);
  }
  return l;
}

void SceneBuilder::spread(const Aperture& ap, const std::vector<double>& column_e, ImageArrayD& into) const {
  for (long x = 0; x < spec_.nx; ++x) {
    const double v = column_e[static_cast<std::size_t>(x)];
    if (v == 0.0) continue;
    const double c = ap.centre_y(static_cast<double>(x), spec_.nx, state_);
    const double s = ap.sigma(static_cast<double>(x), spec_.nx, state_);
    // ±10σ holds all but 1e-23 of a Gaussian.
    const long lo = std::max(0L, static_cast<long>(std::floor(c - 10.0 * s)));
    const long hi = std::min(spec_.ny - 1, static_cast<long>(std::ceil(c + 10.0 * s)));
    for (long j = lo; j <= hi; ++j) into(j, x) += v * pixel_fraction(c, s, j);
  }
}

std::vector<double> SceneBuilder::line_spectrum(const Aperture& ap, const LineList& lines) const {
  std::vector<double> out(static_cast<std::size_t>(spec_.nx), 0.0);
  const double nx = static_cast<double>(spec_.nx);
  for (std::size_t l = 0; l < lines.lambda_angstrom.size(); ++l) {
    const double lam = lines.lambda_angstrom[l];
    const double guess = 0.5 * (nx - 1.0) * (1.0 + (lam - ap.wavelength.coeffs[0]) / ap.wavelength.coeffs[1]);
    const double xl = ap.wavelength.solve(lam, guess);
    if (!std::isfinite(xl) || xl < -15.0 || xl > nx + 14.0) continue;
    const double s = spec_.lsf_sigma_px(xl);
    const double w = lines.intensity[l] * system_throughput(lam, spec_.throughput_peak);
    const long lo = std::max(0L, static_cast<long>(std::floor(xl - 10.0 * s)));
    const long hi = std::min(spec_.nx - 1, static_cast<long>(std::ceil(xl + 10.0 * s)));
    for (long x = lo; x <= hi; ++x) out[static_cast<std::size_t>(x)] += w * pixel_fraction(xl, s, x);
  }
  return out;
}

void SceneBuilder::render_slit_lines(const LineList& lines, bool sky_continuum, ImageArrayD& into) const {
  const double nx = static_cast<double>(spec_.nx);
  std::vector<double> guess(lines.lambda_angstrom.size());
  for (std::size_t l = 0; l < guess.size(); ++l)
    guess[l] = 0.5 * (nx - 1.0) *
               (1.0 + (lines.lambda_angstrom[l] - spec_.slit_wavelength.coeffs[0]) / spec_.slit_wavelength.coeffs[1]);
  for (long j = 0; j < spec_.ny; ++j) {
    const double y = static_cast<double>(j);
    const double illum = spec_.slit_illumination(y);
    if (illum < 1e-12) continue;
    const double tilt = spec_.slit_lambda(0.0, y) - spec_.slit_wavelength(0.0);
    if (sky_continuum) {
      for (long x = 0; x < spec_.nx; ++x) {
        const double xd = static_cast<double>(x);
        const double lam = spec_.slit_lambda(xd, y);
        into(j, x) += illum * spec_.sky.continuum(lam) * std::abs(spec_.slit_wavelength.derivative(xd)) *
                      system_throughput(lam, spec_.throughput_peak);
      }
    }
    for (std::size_t l = 0; l < guess.size(); ++l) {
      const double lam = lines.lambda_angstrom[l];
      const double xl = spec_.slit_wavelength.solve(lam - tilt, guess[l]);
      if (!std::isfinite(xl) || xl < -15.0 || xl > nx + 14.0) continue;
      guess[l] = xl;
      const double s = spec_.lsf_sigma_px(xl);
      const double w = illum * lines.intensity[l] * system_throughput(lam, spec_.throughput_peak);
      const long lo = std::max(0L, static_cast<long>(std::floor(xl - 10.0 * s)));
      const long hi = std::min(spec_.nx - 1, static_cast<long>(std::ceil(xl + 10.0 * s)));
      for (long x = lo; x <= hi; ++x) into(j, x) += w * pixel_fraction(xl, s, x);
    }
  }
}

SceneBuilder& SceneBuilder::add_flat_lamp() {
  ImageArrayD lamp = ImageArrayD::Zero(spec_.ny, spec_.nx);
  if (spec_.mode == SpectroMode::Slit) {
    for (long j = 0; j < spec_.ny; ++j) {
      const double illum = spec_.slit_illumination(static_cast<double>(j));
      for (long x = 0; x < spec_.nx; ++x) {
        const double xd = static_cast<double>(x);
        const double lam = spec_.slit_lambda(xd, static_cast<double>(j));
        lamp(j, x) = illum * quartz_lamp(lam) * system_throughput(lam, spec_.throughput_peak) *
                     std::abs(spec_.slit_wavelength.derivative(xd));
      }
    }
  } else {
    for (const auto& ap : spec_.apertures) {
      if (ap.type == 'N') continue;
      std::vector<double> col(static_cast<std::size_t>(spec_.nx));
      for (long x = 0; x < spec_.nx; ++x) {
        const double xd = static_cast<double>(x);
        const double lam = ap.wavelength(xd);
        col[static_cast<std::size_t>(x)] = ap.throughput * quartz_lamp(lam) *
                                           system_throughput(lam, spec_.throughput_peak) *
                                           std::abs(ap.wavelength.derivative(xd));
      }
      spread(ap, col, lamp);
    }
  }
  const double p = peak(lamp);
  if (p > 0.0) e_ += lamp * (spec_.flat_peak_e / p);
  return *this;
}

SceneBuilder& SceneBuilder::add_arc() {
  ImageArrayD arc = ImageArrayD::Zero(spec_.ny, spec_.nx);
  if (spec_.mode == SpectroMode::Slit) {
    render_slit_lines(spec_.arc_lines, false, arc);
  } else {
    for (const auto& ap : spec_.apertures) {
      if (ap.type == 'N') continue;
      auto col = line_spectrum(ap, spec_.arc_lines);
      for (auto& v : col) v *= ap.throughput;
      spread(ap, col, arc);
    }
  }
  const double p = peak(arc);
  if (p > 0.0) e_ += arc * (spec_.arc_peak_e_per_s * state_.exptime_s / p);
  return *this;
}

SceneBuilder& SceneBuilder::add_sky() {
  const LineList lines = spec_.sky.lines();
  const double t = state_.exptime_s;
  if (spec_.mode == SpectroMode::Slit) {
    ImageArrayD sky = ImageArrayD::Zero(spec_.ny, spec_.nx);
    render_slit_lines(lines, true, sky);
    sky *= t;
    e_ += sky;
    for (const auto& ap : spec_.apertures) {
      auto& l = light_of(ap);
      for (long x = 0; x < spec_.nx; ++x) {
        const long j = std::lround(ap.centre_y(static_cast<double>(x), spec_.nx, state_));
        if (j >= 0 && j < spec_.ny) l.sky_e_per_px[static_cast<std::size_t>(x)] = sky(j, x);
      }
    }
    return *this;
  }
  for (const auto& ap : spec_.apertures) {
    if (ap.type == 'N') continue;
    auto col = line_spectrum(ap, lines);
    for (long x = 0; x < spec_.nx; ++x) {
      const double xd = static_cast<double>(x);
      const double lam = ap.wavelength(xd);
      auto& v = col[static_cast<std::size_t>(x)];
      v += spec_.sky.continuum(lam) * std::abs(ap.wavelength.derivative(xd)) *
           system_throughput(lam, spec_.throughput_peak);
      v *= t * ap.throughput;
    }
    spread(ap, col, e_);
    auto& l = light_of(ap);
    for (long x = 0; x < spec_.nx; ++x) {
      const auto ix = static_cast<std::size_t>(x);
      const double xd = static_cast<double>(x);
      const double c = ap.centre_y(xd, spec_.nx, state_), s = ap.sigma(xd, spec_.nx, state_);
      l.sky_e[ix] = col[ix] * on_detector_fraction(c, s, spec_.ny);
      l.sky_e_per_px[ix] = col[ix] * pixel_fraction(c, s, std::lround(c));
    }
  }
  return *this;
}

SceneBuilder& SceneBuilder::add_star(const Aperture& ap) {
  if (!ap.star || ap.type == 'N') return *this;
  auto& l = light_of(ap);
  std::vector<double> col(static_cast<std::size_t>(spec_.nx));
  for (long x = 0; x < spec_.nx; ++x) {
    const auto ix = static_cast<std::size_t>(x);
    const double xd = static_cast<double>(x);
    const double c = ap.centre_y(xd, spec_.nx, state_), s = ap.sigma(xd, spec_.nx, state_);
    double lam = 0.0, dlam = 0.0, transmission = 1.0;
    if (spec_.mode == SpectroMode::Slit) {
      lam = spec_.slit_lambda(xd, c);
      dlam = std::abs(spec_.slit_wavelength.derivative(xd));
      // Seeing wider than the slit loses light: a Gaussian star through a slit of full width w.
      transmission = std::erf(spec_.slit_width_arcsec / (2.0 * std::sqrt(2.0) * s * spec_.plate_scale_arcsec_per_px));
    } else {
      lam = ap.wavelength(xd);
      dlam = std::abs(ap.wavelength.derivative(xd));
    }
    const double lsf_angstrom = spec_.lsf_sigma_px(xd) * dlam;
    const double extinction = std::pow(10.0, -0.4 * extinction_mag_per_airmass(lam, spec_.site_height_m) * state_.airmass);
    double v = ap.star->photon_flux(lam, lsf_angstrom) * dlam * spec_.telescope_area_cm2 *
               system_throughput(lam, spec_.throughput_peak) * ap.throughput * state_.exptime_s * extinction *
               transmission;
    if (ap.transits) v *= state_.transit_model;
    col[ix] = v;
    l.star_e[ix] = v * on_detector_fraction(c, s, spec_.ny);
    l.slit_transmission[ix] = transmission;
  }
  spread(ap, col, e_);
  return *this;
}

SceneBuilder& SceneBuilder::add_stars() {
  for (const auto& ap : spec_.apertures) add_star(ap);
  return *this;
}

}  // namespace kspecdr::sim
