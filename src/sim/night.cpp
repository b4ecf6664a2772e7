#include "kspecdr/sim/night.hpp"

#include <erfa.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <numbers>
#include <random>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/sim/detector.hpp"
#include "kspecdr/sim/scene.hpp"
#include "kspecdr/sim/spectra.hpp"

namespace kspecdr::sim {
namespace fs = std::filesystem;

namespace {

constexpr double kDegPerRad = 180.0 / std::numbers::pi;
constexpr double kSecondsPerDay = 86400.0;

// ---------------------------------------------------------------- time and sky geometry

std::string iso_datetime(double mjd) {
  int iy = 0, im = 0, id = 0;
  double fd = 0.0;
  eraJd2cal(2400000.5, mjd, &iy, &im, &id, &fd);
  // Round to milliseconds first so that 59.9996 s never prints as "60.000".
  long ms = std::lround(fd * kSecondsPerDay * 1000.0);
  if (ms >= static_cast<long>(kSecondsPerDay * 1000.0)) ms = static_cast<long>(kSecondsPerDay * 1000.0) - 1;
  const long h = ms / 3600000, m = (ms / 60000) % 60, s = (ms / 1000) % 60, f = ms % 1000;
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}", iy, im, id, h, m, s, f);
}

/// Local sidereal time in degrees (GMST 1982 with UT1 = UTC, ample for an airmass).
double lst_deg(double mjd, double longitude_deg) {
  return std::fmod(eraGmst82(2400000.5, mjd) * kDegPerRad + longitude_deg + 720.0, 360.0);
}

/// Plane-parallel airmass sec(z) of (ra, dec) seen from the site at `mjd`.
double airmass_at(double ra_deg, double dec_deg, double mjd, const InstrumentProfile& p) {
  const double ha = (lst_deg(mjd, p.site_longitude_deg) - ra_deg) / kDegPerRad;
  const double lat = p.site_latitude_deg / kDegPerRad, dec = dec_deg / kDegPerRad;
  const double cosz = std::sin(lat) * std::sin(dec) + std::cos(lat) * std::cos(dec) * std::cos(ha);
  if (cosz <= 0.05)
    throw ConfigError(fmt::format("the simulated field sets at MJD {:.4f}; shorten the night or change mjd-start", mjd),
                      ErrorContext{.keyword = "mjd-start"});
  return 1.0 / cosz;
}

/// Box-shaped transit with linear ingress and egress: the flux factor at time t.
double transit_model(double t, double t0, double duration, double ingress, double depth) {
  const double dt = std::abs(t - t0), half = 0.5 * duration;
  if (dt >= half) return 1.0;
  if (dt <= half - ingress) return 1.0 - depth;
  return 1.0 - depth * (half - dt) / ingress;
}

std::string lamp_name(const fs::path& linelist) {
  const std::string stem = linelist.stem().string();
  if (stem == "henear" || stem == "idhenear" || stem == "ctiohenear") return "HeNeAr";
  if (stem == "cuar") return "CuAr";
  if (stem == "thar" || stem == "thorium") return "ThAr";
  if (stem == "argon") return "Ar";
  return stem;
}

// ---------------------------------------------------------------- truth helpers

void set_units(h5::Group& g, const std::string& name, const std::string& units) {
  g.open_dataset(name).set_attr("units", units);
}

void write_image_f32(h5::Group& g, const std::string& name, const ImageArrayD& a, const std::string& units) {
  const ImageArray f = a.cast<float>();
  g.write_array(name, f, true);
  set_units(g, name, units);
}

void write_vector(h5::Group& g, const std::string& name, const std::vector<double>& v, const std::string& units) {
  g.write(name, v.data(), h5::Dims{v.size()}, true);
  set_units(g, name, units);
}

void write_mask(h5::Group& g, const std::string& name, const ByteArray& a, const std::string& meaning) {
  g.write_array(name, a, true);
  g.open_dataset(name).set_attr("meaning", meaning);
}

// ---------------------------------------------------------------- the night

/// Everything fixed over the night, built once.
struct NightModel {
  InstrumentProfile profile;
  Spectrograph spec;
  DetectorModel detector;
  double field_ra_deg = 0.0, field_dec_deg = 0.0;
  std::string field_name;
};

/// Per science exposure: what changes with time.
struct ScienceConditions {
  ExposureState state;
  double seeing_fwhm_arcsec = 0.0;
  double flexure_px = 0.0;  ///< shift of the spectra along dispersion (px)
};

struct TransitTruth {
  double t0_mjd = 0.0, duration_d = 0.0, ingress_d = 0.0, depth = 0.0;
};

Header frame_header(const NightModel& m, const SimConfig& c, const PlannedFrame& f, double airmass, double ra_deg,
                    double dec_deg, const Header& layout) {
  const InstrumentProfile& p = m.profile;
  auto key = [&](const std::string& logical, const std::string& fallback) {
    const std::string k = p.keyword(logical);
    return k.empty() ? fallback : k;
  };
  Header h;
  h.set("INSTRUME", p.name, "simulated instrument (profile name)");
  h.set("TELESCOP", "kspecdr simulator", "simulated telescope");
  h.set("OBSERVAT", p.site_name, "site");
  h.set("DETECTOR", "SIMCCD", "simulated CCD");
  h.set("SIMULATE", true, "frame written by kspecdr simulate");
  h.set("SIMSEED", static_cast<long long>(c.seed), "random seed of the simulated night");
  h.set(key("frame_type", "OBSTYPE"), f.obstype, "observation type");
  h.set(key("object", "OBJECT"), f.object, "object name");
  h.set(key("exptime", "EXPTIME"), f.exptime_s, "exposure time [s]");
  const std::string date = iso_datetime(f.mjd_start);
  if (const std::string tk = p.keyword("time_obs"); !tk.empty()) {
    h.set(key("date_obs", "DATE-OBS"), date.substr(0, 10), "UTC date of exposure start");
    h.set(tk, date.substr(11), "UTC time of exposure start");
  } else {
    h.set(key("date_obs", "DATE-OBS"), date, "UTC date and time of exposure start");
  }
  h.set(key("mjd_obs", "MJD-OBS"), f.mjd_start, "MJD (UTC) of exposure start");
  h.set(key("airmass", "AIRMASS"), airmass, "airmass at mid-exposure");
  h.set(key("ra", "RA"), ra_deg, "telescope right ascension [deg, ICRS]");
  h.set(key("dec", "DEC"), dec_deg, "telescope declination [deg, ICRS]");
  h.set(key("disperser", "GRATING"), c.mode == SpectroMode::Fiber ? "580V" : "R600R", "disperser");
  h.set(key("lamps", "LAMP"), f.lamp, "calibration lamps");
  h.set(key("filter", "FILTER"), c.mode == SpectroMode::Fiber ? "GG455" : "GG495", "order-sorting filter");
  for (const auto& card : layout.cards()) h.set_raw(card.key, card.value, card.comment);
  return h;
}

fits::Table fibre_table(const Spectrograph& spec) {
  std::vector<std::string> names, types;
  std::vector<double> ra, dec, g, r, i;
  std::vector<long long> num;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t k = 0; k < spec.apertures.size(); ++k) {
    const auto& a = spec.apertures[k];
    names.push_back(a.name);
    types.push_back(std::string(1, a.type));
    ra.push_back(a.ra_deg);
    dec.push_back(a.dec_deg);
    num.push_back(static_cast<long long>(k + 1));
    g.push_back(a.star ? a.star->continuum_mag_ab(kLambdaG) : nan);
    r.push_back(a.star ? a.star->continuum_mag_ab(kLambdaR) : nan);
    i.push_back(a.star ? a.star->continuum_mag_ab(kLambdaI) : nan);
  }
  fits::Table t;
  t.add_string("NAME", names);
  t.add_string("TYPE", types);
  t.add_int("FIBNUM", num);
  t.add_double("RA", ra, "deg");
  t.add_double("DEC", dec, "deg");
  t.add_double("MAG_G", g, "mag");
  t.add_double("MAG_R", r, "mag");
  t.add_double("MAG_I", i, "mag");
  return t;
}

void write_raw_frame(const fs::path& path, const ImageArray& raw, const Header& h, const Spectrograph& spec,
                     bool fiber, bool overwrite) {
  io::AtomicOutput out(path, overwrite);
  {
    auto f = fits::Fits::create(out.temp_path());
    f.write_image(raw, h, "", fits::PixelType::UInt16);
    if (fiber) {
      Header th;
      th.add_comment("fibers in detector order, from row 0 of the pipeline image upwards");
      f.write_table(fibre_table(spec), th, "FIBRES");
    }
    f.close();
  }
  out.commit();
}

void write_truth_static(h5::File& file, const NightModel& m, const SimConfig& c, const std::vector<PlannedFrame>& plan,
                        const TransitTruth& transit) {
  h5::Group& root = file.root();
  const Spectrograph& s = m.spec;
  root.set_attr("mode", to_string(c.mode));
  root.set_attr("seed", static_cast<long long>(c.seed));
  root.set_attr("instrument", m.profile.name);
  root.set_attr("ny", static_cast<long long>(s.ny));
  root.set_attr("nx", static_cast<long long>(s.nx));
  root.set_attr("software", fmt::format("kspecdr {} (git {})", version(), git_sha()));
  root.set_attr("orientation",
                "every 2D array is in pipeline orientation: assembled and trimmed, dispersion along x (columns), "
                "rows = spatial y, pixel centres at integer 0-based coordinates");
  root.set_attr("units",
                "electrons (e-) for light, DN for raw levels, Angstrom (air) for wavelengths, seconds for times, "
                "degrees for RA/Dec, AB magnitudes, photons /s /cm2 /Angstrom above the atmosphere for templates");
  root.set_attr("field_name", m.field_name);
  root.set_attr("field_ra_deg", m.field_ra_deg);
  root.set_attr("field_dec_deg", m.field_dec_deg);

  // ---- detector
  h5::Group det = root.create_group("detector");
  det.set_attr("saturation_dn", m.detector.saturation_dn);
  det.set_attr("adc_max_dn", 65535.0);
  std::vector<double> badcols(m.detector.bad_columns_raw.begin(), m.detector.bad_columns_raw.end());
  det.set_attr("bad_columns_assembled_x", badcols);
  for (const auto& a : m.detector.layout.amps) {
    h5::Group g = det.create_group("amplifiers/" + a.name);
    g.set_attr("bias_level_dn", a.bias_level_dn);
    g.set_attr("bias_gradient_dn", a.bias_gradient_dn);
    g.set_attr("bias_edge_dn", a.bias_edge_dn);
    g.set_attr("gain_e_per_dn", a.gain_e_per_dn);
    g.set_attr("read_noise_e", a.read_noise_e);
    g.set_attr("datasec", a.datasec.to_fits());
    g.set_attr("biassec", a.biassec.to_fits());
    g.set_attr("detsec", a.detsec.to_fits());
  }
  write_image_f32(det, "pixel_flat", m.detector.pixel_flat, "relative sensitivity (mean 1)");
  write_mask(det, "bad_pixels", m.detector.bad_pixels, "0 good, 1 low-response column, 2 hot column");
  write_image_f32(det, "illumination", s.illumination(), "relative illumination per unit lamp spectrum");
  write_image_f32(det, "bias_dn", m.detector.bias_dn, "DN");
  write_image_f32(det, "dark_e_per_s", m.detector.dark_e_per_s, "electrons per second");

  // ---- apertures
  h5::Group aps = root.create_group("apertures");
  aps.set_attr("order", [&] {
    std::string names;
    for (const auto& a : s.apertures) names += (names.empty() ? "" : ",") + a.name;
    return names;
  }());
  for (const auto& a : s.apertures) {
    h5::Group g = aps.create_group(a.name);
    g.set_attr("type", std::string(1, a.type));
    g.set_attr("ra", a.ra_deg);
    g.set_attr("dec", a.dec_deg);
    g.set_attr("throughput", a.throughput);
    g.set_attr("y0_px", a.y0_px);
    g.set_attr("tilt_px", a.tilt_px);
    g.set_attr("curvature_px", a.curvature_px);
    g.set_attr("sigma0_px", a.sigma0_px);
    g.set_attr("sigma_slope", a.sigma_slope);
    g.set_attr("sigma_curvature", a.sigma_curvature);
    g.set_attr("transits", static_cast<long long>(a.transits));
    if (a.star) {
      g.set_attr("teff_k", a.star->teff_k);
      g.set_attr("rv_km_s", a.star->rv_km_s);
      g.set_attr("mag_g", a.star->continuum_mag_ab(kLambdaG));
      g.set_attr("mag_r", a.star->continuum_mag_ab(kLambdaR));
      g.set_attr("mag_i", a.star->continuum_mag_ab(kLambdaI));
      g.set_attr("logg", a.star->logg);
      g.set_attr("mh", a.star->mh);
      g.set_attr("alpha", a.star->alpha);
    }
    std::vector<double> cy(static_cast<std::size_t>(s.nx)), sg(cy.size()), wl(cy.size());
    for (long x = 0; x < s.nx; ++x) {
      const double xd = static_cast<double>(x);
      cy[static_cast<std::size_t>(x)] = a.centre_y(xd, s.nx);
      sg[static_cast<std::size_t>(x)] = a.sigma(xd, s.nx);
      wl[static_cast<std::size_t>(x)] = a.wavelength(xd);
    }
    write_vector(g, "centre_y", cy, "pixel (0-based row of the trace centre)");
    write_vector(g, "sigma", sg, "pixel");
    write_vector(g, "wavelength", wl, "Angstrom (air)");
    write_vector(g, "wavelength_legendre", a.wavelength.coeffs, "Angstrom (air)");
    auto d = g.open_dataset("wavelength_legendre");
    d.set_attr("x_min", a.wavelength.x_min);
    d.set_attr("x_max", a.wavelength.x_max);
    d.set_attr("meaning", "lambda(x) = sum_k c_k P_k(u), u = 2 (x - x_min) / (x_max - x_min) - 1");
  }

  // ---- spectra
  h5::Group sp = root.create_group("spectra");
  std::vector<double> grid;
  for (double l = 3000.0; l <= 10500.0; l += 0.5) grid.push_back(l);
  std::vector<double> thr, ext, skyc, quartz;
  for (double l : grid) {
    thr.push_back(system_throughput(l, s.throughput_peak));
    ext.push_back(extinction_mag_per_airmass(l, s.site_height_m));
    skyc.push_back(s.sky.continuum(l));
    quartz.push_back(quartz_lamp(l));
  }
  sp.set_attr("telescope_area_cm2", s.telescope_area_cm2);
  sp.set_attr("lsf_sigma0_px", s.lsf_sigma0_px);
  sp.set_attr("lsf_meaning", "Gaussian line-spread sigma(x) = lsf_sigma0_px (1 + 0.15 u^2), u = 2x/(nx-1) - 1");
  write_vector(sp, "wavelength", grid, "Angstrom (air)");
  write_vector(sp, "throughput", thr, "fraction (system, without fiber throughput or slit loss)");
  {
    std::vector<double> area;
    for (double t : thr) area.push_back(t * s.telescope_area_cm2);
    write_vector(sp, "effective_area_cm2", area,
                 "cm2: telescope area x system throughput, as applied to the stars (x fiber throughput, x extinction)");
  }
  write_vector(sp, "extinction", ext, "mag per airmass");
  write_vector(sp, "sky_continuum", skyc, "photons /s /Angstrom per spatial pixel (slit) or per fiber");
  write_vector(sp, "quartz_lamp", quartz, "relative photons /s /Angstrom (1 at 6000 Angstrom)");
  const LineList sky = s.sky.lines();
  write_vector(sp, "sky_lines/wavelength", sky.lambda_angstrom, "Angstrom (air)");
  write_vector(sp, "sky_lines/flux", sky.intensity, "photons /s per line per spatial pixel (slit) or per fiber");
  write_vector(sp, "arc_lines/wavelength", s.arc_lines.lambda_angstrom, "Angstrom (air)");
  write_vector(sp, "arc_lines/intensity", s.arc_lines.intensity, "relative (brightest 1)");
  sp.open_group("arc_lines").set_attr("source", s.arc_lines.source);
  for (const auto& a : s.apertures) {
    if (!a.star) continue;
    std::vector<double> f;
    for (double l : grid) f.push_back(a.star->photon_flux(l));
    h5::Group t = sp.create_group("templates/" + a.name);
    t.set_attr("teff_k", a.star->teff_k);
    t.set_attr("rv_km_s", a.star->rv_km_s);
    t.set_attr("mag_r_ab", a.star->mag_r_ab);
    t.set_attr("logg", a.star->logg);
    t.set_attr("mh", a.star->mh);
    t.set_attr("alpha", a.star->alpha);
    write_vector(t, "photon_flux", f, "photons /s /cm2 /Angstrom above the atmosphere (intrinsic, Doppler-shifted)");
  }
  if (c.mode == SpectroMode::Slit) {
    h5::Group sl = sp.create_group("slit");
    write_vector(sl, "wavelength_legendre", s.slit_wavelength.coeffs, "Angstrom (air)");
    sl.set_attr("x_min", s.slit_wavelength.x_min);
    sl.set_attr("x_max", s.slit_wavelength.x_max);
    sl.set_attr("tilt_angstrom", s.slit_tilt_angstrom);
    sl.set_attr("meaning",
                "lambda(x, y) = legendre(x) + tilt_angstrom (y - (ny-1)/2) / (ny/2): lines tilt across the slit");
    sl.set_attr("row0", s.slit_row0);
    sl.set_attr("row1", s.slit_row1);
    sl.set_attr("plate_scale_arcsec_per_px", s.plate_scale_arcsec_per_px);
    sl.set_attr("slit_width_arcsec", s.slit_width_arcsec);
  }

  // ---- night plan
  std::vector<std::string> names, classes;
  for (const auto& f : plan) {
    names.push_back(f.name);
    classes.push_back(to_string(f.frame_class));
  }
  h5::Group night = root.create_group("night");
  night.write_strings("frames", names);
  night.write_strings("classes", classes);
  if (c.mode == SpectroMode::Slit) {
    night.set_attr("transit_t0_mjd", transit.t0_mjd);
    night.set_attr("transit_duration_d", transit.duration_d);
    night.set_attr("transit_ingress_d", transit.ingress_d);
    night.set_attr("transit_depth", transit.depth);
    night.set_attr("transit_star", s.apertures.front().name);
    night.set_attr("transit_meaning",
                   "trapezoid: flux factor 1 - depth inside, linear ingress/egress, evaluated at mid-exposure");
  }
}

void check_output_folder(const SimConfig& c, const std::vector<PlannedFrame>& plan) {
  const fs::path raw = c.out_dir / "raw";
  std::error_code ec;
  fs::create_directories(raw, ec);
  if (ec)
    throw ConfigError(fmt::format("cannot create the output folder {}: {}", raw.string(), ec.message()),
                      ErrorContext{.file = raw.string(), .keyword = "out"});
  const fs::path probe = raw / ".kspecdr-write-test";
  {
    std::ofstream f(probe);
    if (!(f << "test") || !f.flush())
      throw ConfigError(fmt::format("the output folder {} is not writable", raw.string()),
                        ErrorContext{.file = raw.string(), .keyword = "out"});
  }
  fs::remove(probe, ec);
  if (c.overwrite) return;
  if (fs::exists(c.out_dir / "truth.h5"))
    throw ConfigError(fmt::format("{} exists already; pass --overwrite to replace the simulated night",
                                  (c.out_dir / "truth.h5").string()),
                      ErrorContext{.file = (c.out_dir / "truth.h5").string(), .keyword = "overwrite"});
  for (const auto& f : plan)
    if (fs::exists(raw / (f.name + ".fits")))
      throw ConfigError(fmt::format("{} exists already; pass --overwrite to replace the simulated night",
                                    (raw / (f.name + ".fits")).string()),
                        ErrorContext{.file = (raw / (f.name + ".fits")).string(), .keyword = "overwrite"});
}

/// Loads the profile; when the simulated size differs from its explicit sections, writes a
/// rescaled copy. The copy in DIR is what describes the frames either way.
std::pair<InstrumentProfile, fs::path> prepare_profile(const SimConfig& c) {
  const std::string name = c.instrument.empty() ? (c.mode == SpectroMode::Fiber ? "sim-fiber" : "sim-slit")
                                                : c.instrument;
  InstrumentProfile p = load_instrument(name);
  if (p.mode != c.mode)
    throw ConfigError(fmt::format("the profile {} is for {} mode, the simulation for {} mode", p.source.string(),
                                  to_string(p.mode), to_string(c.mode)),
                      ErrorContext{.file = p.source.string(), .keyword = "instrument"});
  std::ifstream in(p.source);
  std::stringstream text;
  text << in.rdbuf();
  std::string ini = text.str();
  const bool rescale = profile_needs_rescale(p, c.ny, c.nx);
  if (rescale) ini = rescale_profile_text(ini, p, c.ny, c.nx);
  const fs::path copy = c.out_dir / "instrument.ini";
  io::write_text_atomic(copy, ini, true);
  return {load_instrument(copy.string()), copy};
}

}  // namespace

std::vector<PlannedFrame> plan_night(const SimConfig& c) {
  std::vector<PlannedFrame> plan;
  double t = c.mjd_start;
  int run = 1;
  auto add = [&](FrameClass cls, const std::string& obstype, const std::string& object, const std::string& lamp,
                 double exptime) {
    plan.push_back(PlannedFrame{fmt::format("run{:04d}", run++), cls, obstype, object, lamp, exptime, t});
    t += (exptime + c.overhead_s) / kSecondsPerDay;
  };
  for (int i = 0; i < c.n_bias; ++i) add(FrameClass::Bias, "BIAS", "bias", "Off", 0.0);
  for (int i = 0; i < c.n_flat; ++i) add(FrameClass::Flat, "FLAT", "quartz flat", "Quartz", c.flat_exptime_s);
  for (int i = 0; i < c.n_arc; ++i) {
    // Observers often take arcs as OBJECT frames with the lamp on, and longer ones saturate.
    if (i == 0)
      add(FrameClass::Arc, "ARC", "arc", "", c.arc_exptime_s);
    else
      add(FrameClass::Arc, "OBJECT", "arc", "", 3.0 * c.arc_exptime_s);
  }
  t += 1800.0 / kSecondsPerDay;  // twilight: calibrations end, the field is acquired
  const std::string field = c.mode == SpectroMode::Fiber ? "SIMFIELD-01" : "SIMTRANSIT-1";
  for (int i = 0; i < c.n_science; ++i) add(FrameClass::Science, "OBJECT", field, "Off", c.science_exptime_s);
  return plan;
}

namespace {

// ---------------------------------------------------------------- the photometric catalog

/// A filter curve of the catalog: wavelength (µm in the file, Å here), photon transmission.
struct SimFilter {
  std::string name;
  std::vector<double> angstrom, transmission;
};

SimFilter read_sim_filter(const fs::path& path, const std::string& name) {
  std::ifstream in(path);
  if (!in)
    throw ConfigError(fmt::format("catalog band {}: cannot read the filter curve {}", name, path.string()),
                      ErrorContext{.file = path.string(), .keyword = "catalog-filters-dir"});
  SimFilter f;
  f.name = name;
  std::string line;
  while (std::getline(in, line)) {
    const auto h = line.find('#');
    if (h != std::string::npos) line.erase(h);
    std::istringstream is(line);
    double w = 0, t = 0;
    if (is >> w >> t) f.angstrom.push_back(w * 1e4), f.transmission.push_back(std::max(t, 0.0));
  }
  if (f.angstrom.size() < 3)
    throw ConfigError(fmt::format("catalog band {}: fewer than 3 rows in {}", name, path.string()),
                      ErrorContext{.file = path.string()});
  return f;
}

/// AB magnitude of a star above the atmosphere through a photon-counting band: the ratio of the photon
/// rates of the star and of a 3631 Jy source, on a fine grid (trapezoids).
double star_ab_mag(const StarTemplate& star, const SimFilter& f) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i + 1 < f.angstrom.size(); ++i) {
    const double l0 = f.angstrom[i], l1 = f.angstrom[i + 1];
    const int n = std::max(1, static_cast<int>(std::ceil((l1 - l0) / 0.25)));
    for (int k = 0; k < n; ++k) {
      const double l = l0 + (k + 0.5) * (l1 - l0) / n;
      const double t = f.transmission[i] + (f.transmission[i + 1] - f.transmission[i]) * (l - l0) / (l1 - l0);
      num += t * star.photon_flux(l) * (l1 - l0) / n;
      den += t * ab_photon_flux(0.0, l) * (l1 - l0) / n;
    }
  }
  return -2.5 * std::log10(num / den);
}

/// Gaia DR2 G is a Vega magnitude: m_Vega = m_AB − (ZP_AB − ZP_Vega) (Evans et al. 2018).
double catalog_minus_ab(const std::string& band) {
  if (band == "gaia_g") return -0.1050;
  if (band == "gaia_bp") return -0.0292;
  if (band == "gaia_rp") return -0.3542;
  return 0.0;
}

/// DIR/catalog.csv: every star of the field (program and standard) with its catalog magnitudes (the true
/// band magnitude plus a Gaussian error of the stated size), in shuffled order, with its own name and a
/// position that differs from the fiber's by ~0.1". The truth of every row goes to /catalog.
void write_catalog(const fs::path& dir, const Spectrograph& s, const SimConfig& c, h5::Group& root) {
  std::vector<SimFilter> filters;
  for (const auto& b : c.catalog_bands) filters.push_back(read_sim_filter(c.catalog_filters_dir / (b + ".dat"), b));
  std::mt19937_64 rng(c.seed ^ 0xca7a1060ULL);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<const Aperture*> stars;
  for (const auto& a : s.apertures)
    if (a.star && a.type != 'N') stars.push_back(&a);
  for (std::size_t i = stars.size(); i > 1; --i)
    std::swap(stars[i - 1], stars[std::uniform_int_distribution<std::size_t>(0, i - 1)(rng)]);
  std::string csv = "name,ra,dec";
  for (const auto& b : c.catalog_bands) csv += fmt::format(",{0},{0}_err", b);
  csv += "\n";
  std::vector<std::string> names, aps;
  std::vector<std::vector<double>> true_ab(filters.size()), cat_mag(filters.size()), cat_err(filters.size());
  for (const auto* a : stars) {
    const double ra = a->ra_deg + 0.1 / 3600.0 * gauss(rng) / std::cos(a->dec_deg * std::numbers::pi / 180.0);
    const double dec = a->dec_deg + 0.1 / 3600.0 * gauss(rng);
    const std::string name = fmt::format("SIM J{:09.5f}{:+09.5f}", ra, dec);
    csv += fmt::format("{},{:.7f},{:.7f}", name, ra, dec);
    for (std::size_t b = 0; b < filters.size(); ++b) {
      const double ab = star_ab_mag(*a->star, filters[b]);
      const double err = c.catalog_mag_err * (1.0 + uni(rng));
      const double m = ab + catalog_minus_ab(filters[b].name) + err * gauss(rng);
      csv += fmt::format(",{:.4f},{:.4f}", m, err);
      true_ab[b].push_back(ab);
      cat_mag[b].push_back(m);
      cat_err[b].push_back(err);
    }
    csv += "\n";
    names.push_back(name);
    aps.push_back(a->name);
  }
  io::write_text_atomic(dir / "catalog.csv", csv, true);
  h5::Group g = root.create_group("catalog");
  g.set_attr("file", "catalog.csv");
  g.set_attr("meaning", "rows of catalog.csv in file order: the aperture of each star, its true AB magnitude "
                        "above the atmosphere per band, and the catalog value (in the band's system) and error");
  g.write_strings("name", names);
  g.write_strings("aperture", aps);
  for (std::size_t b = 0; b < filters.size(); ++b) {
    write_vector(g, filters[b].name + "/true_ab", true_ab[b], "AB mag");
    write_vector(g, filters[b].name + "/catalog", cat_mag[b],
                 catalog_minus_ab(filters[b].name) != 0 ? "Vega mag" : "AB mag");
    write_vector(g, filters[b].name + "/error", cat_err[b], "mag");
  }
}
}  // namespace

NightResult simulate_night(SimConfig c) {
  resolve_mode_defaults(c);
  validate(c);
  std::vector<PlannedFrame> plan = plan_night(c);
  check_output_folder(c, plan);

  NightModel m;
  fs::path profile_copy;
  std::tie(m.profile, profile_copy) = prepare_profile(c);
  const bool fiber = c.mode == SpectroMode::Fiber;

  // The field is placed so that the science block starts at a chosen hour angle.
  const auto first_sci = std::find_if(plan.begin(), plan.end(),
                                      [](const PlannedFrame& f) { return f.frame_class == FrameClass::Science; });
  const double lst0 = lst_deg(first_sci->mjd_start, m.profile.site_longitude_deg);
  m.field_ra_deg = std::fmod(lst0 + (fiber ? 10.5 : -22.5) + 360.0, 360.0);
  m.field_dec_deg = m.profile.site_latitude_deg + (fiber ? 2.0 : -25.0);
  m.field_name = first_sci->object;

  std::mt19937_64 rng(c.seed);
  m.spec = make_spectrograph(c, m.profile, m.field_ra_deg, m.field_dec_deg, rng);
  std::vector<double> clear_rows;
  for (const auto& a : m.spec.apertures) clear_rows.push_back(a.y0_px);
  RawLayout layout = make_layout(m.profile, c);
  m.detector = DetectorModel::make(std::move(layout), c, m.profile.saturation_dn, clear_rows, rng, m.profile.bad_columns);
  if (m.detector.layout.pipeline_nx() != c.nx || m.detector.layout.pipeline_ny() != c.ny)
    throw ConfigError(fmt::format("the profile {} describes a {} x {} image, the simulation is {} x {}",
                                  profile_copy.string(), m.detector.layout.pipeline_ny(),
                                  m.detector.layout.pipeline_nx(), c.ny, c.nx));
  const Header layout_keys = layout_keywords(m.profile, m.detector.layout);
  const std::string lamp = lamp_name(m.spec.arc_lines.source);
  for (auto& f : plan)
    if (f.frame_class == FrameClass::Arc) {
      f.lamp = lamp;
      f.object = "arc " + lamp;
    }

  // Conditions of every science exposure, drawn in time order before any pixel noise.
  std::vector<ScienceConditions> conditions;
  TransitTruth transit;
  {
    std::vector<double> mids;
    for (const auto& f : plan)
      if (f.frame_class == FrameClass::Science) mids.push_back(f.mjd_start + 0.5 * f.exptime_s / kSecondsPerDay);
    const double span = mids.back() - mids.front() + c.science_exptime_s / kSecondsPerDay;
    transit = {0.5 * (mids.front() + mids.back()), 0.45 * span, 0.1 * span, c.transit_depth};
    std::normal_distribution<double> gauss(0.0, 1.0);
    for (std::size_t i = 0; i < mids.size(); ++i) {
      const double tf = mids.size() > 1 ? static_cast<double>(i) / static_cast<double>(mids.size() - 1) : 0.5;
      ScienceConditions sc;
      sc.flexure_px = c.flexure_px * (2.0 * tf - 1.0);
      const double n1 = gauss(rng), n2 = gauss(rng);
      if (fiber) {
        sc.state.trace_offset_px = 0.1 * n1;  // flexure between exposures
      } else {
        sc.state.trace_offset_px = c.drift_px * (tf - 0.5) + 0.15 * n1;
        sc.seeing_fwhm_arcsec =
            c.seeing_fwhm_arcsec * (1.0 + 0.2 * std::sin(2.0 * std::numbers::pi * 1.3 * tf + 0.5)) * std::exp(0.05 * n2);
        sc.state.sigma_scale = sc.seeing_fwhm_arcsec / c.seeing_fwhm_arcsec;
        sc.state.transit_model =
            transit_model(mids[i], transit.t0_mjd, transit.duration_d, transit.ingress_d, transit.depth);
      }
      conditions.push_back(sc);
    }
  }

  NightResult result;
  result.profile_file = profile_copy;
  result.truth_file = c.out_dir / "truth.h5";
  io::AtomicOutput truth_out(result.truth_file, true);
  h5::File truth = h5::File::create(truth_out.temp_path());
  write_truth_static(truth, m, c, plan, transit);
  h5::Group frames = truth.root().create_group("frames");

  std::size_t sci_index = 0;
  for (const auto& f : plan) {
    const double mjd_mid = f.mjd_start + 0.5 * f.exptime_s / kSecondsPerDay;
    ExposureState state;
    state.exptime_s = f.exptime_s;
    double airmass = 1.0, ra = 0.0, dec = 0.0;
    ScienceConditions sc;
    if (f.frame_class == FrameClass::Science) {
      sc = conditions[sci_index++];
      state = sc.state;
      state.exptime_s = f.exptime_s;
      ra = m.field_ra_deg;
      dec = m.field_dec_deg;
      airmass = airmass_at(ra, dec, mjd_mid, m.profile);
      state.airmass = airmass;
    } else {
      // Calibrations are taken with the telescope parked at the zenith.
      ra = lst_deg(mjd_mid, m.profile.site_longitude_deg);
      dec = m.profile.site_latitude_deg;
    }

    // Flexure moves every wavelength solution along x: λ'(x) = λ(x − s) is the same Legendre series on a
    // domain shifted by s.
    Spectrograph shifted = m.spec;
    if (f.frame_class == FrameClass::Science && sc.flexure_px != 0.0) {
      for (auto& a : shifted.apertures) {
        a.wavelength.x_min += sc.flexure_px;
        a.wavelength.x_max += sc.flexure_px;
      }
      shifted.slit_wavelength.x_min += sc.flexure_px;
      shifted.slit_wavelength.x_max += sc.flexure_px;
    }
    SceneBuilder scene(shifted, state);
    if (f.frame_class == FrameClass::Flat) scene.add_flat_lamp();
    if (f.frame_class == FrameClass::Arc) scene.add_arc();
    if (f.frame_class == FrameClass::Science) scene.add_sky().add_stars();

    DetectorExposure exposure(m.detector, rng);
    exposure.add_light(scene.electrons(), f.exptime_s);
    if (f.frame_class != FrameClass::Bias) exposure.add_cosmics(f.exptime_s + c.cosmic_extra_s, c.cosmic_rate_per_px_s);
    const ImageArray raw = exposure.add_photon_noise().read_out();

    const fs::path path = c.out_dir / "raw" / (f.name + ".fits");
    write_raw_frame(path, raw, frame_header(m, c, f, airmass, ra, dec, layout_keys), m.spec, fiber, c.overwrite);
    result.raw_files.push_back(path);

    h5::Group g = frames.create_group(f.name);
    g.set_attr("class", to_string(f.frame_class));
    g.set_attr("obstype", f.obstype);
    g.set_attr("object", f.object);
    g.set_attr("lamp", f.lamp);
    g.set_attr("file", "raw/" + f.name + ".fits");
    g.set_attr("exptime_s", f.exptime_s);
    g.set_attr("airmass", airmass);
    g.set_attr("mjd_start", f.mjd_start);
    g.set_attr("mjd_mid", mjd_mid);
    write_image_f32(g, "expected_e", scene.electrons(), "electrons");
    write_image_f32(g, "cosmic_e", exposure.cosmic_e(), "electrons");
    write_mask(g, "saturated", exposure.saturated(), "1 where the raw value is at or above saturation_dn");
    if (f.frame_class == FrameClass::Science) {
      g.set_attr("trace_offset_px", state.trace_offset_px);
      g.set_attr("sigma_scale", state.sigma_scale);
      g.set_attr("flexure_px", sc.flexure_px);
      if (!fiber) {
        g.set_attr("seeing_fwhm_arcsec", sc.seeing_fwhm_arcsec);
        g.set_attr("transit_model", state.transit_model);
      }
      for (const auto& a : m.spec.apertures) {
        const auto it = scene.light().find(a.name);
        if (it == scene.light().end()) continue;
        h5::Group ag = g.create_group("apertures/" + a.name);
        write_vector(ag, "star_e", it->second.star_e, "electrons per column, summed over all rows");
        write_vector(ag, "sky_e_per_px", it->second.sky_e_per_px, "electrons in the pixel nearest the trace centre");
        if (fiber) {
          write_vector(ag, "sky_e", it->second.sky_e, "sky electrons per column through this fiber");
        } else {
          write_vector(ag, "slit_transmission", it->second.slit_transmission, "fraction");
          ag.set_attr("trace_offset_px", state.trace_offset_px);
          ag.set_attr("sigma_scale", state.sigma_scale);
          ag.set_attr("transit_model", a.transits ? state.transit_model : 1.0);
        }
      }
    }
    spdlog::info("simulate: {} ({}, {} s){}", path.filename().string(), to_string(f.frame_class), f.exptime_s,
                 exposure.saturated().any() ? fmt::format(", {} saturated pixels", exposure.saturated().cast<int>().sum())
                                            : "");
  }
  if (!c.catalog_filters_dir.empty() && fiber) write_catalog(c.out_dir, m.spec, c, truth.root());
  truth.close();
  truth_out.commit();
  return result;
}

}  // namespace kspecdr::sim
