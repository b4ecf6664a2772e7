#include "kspecdr/sim/detector.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <cmath>
#include <numbers>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::sim {
namespace {

bool explicit_sections(const InstrumentProfile& p) {
  const bool all = std::all_of(p.amplifiers.begin(), p.amplifiers.end(),
                               [](const AmplifierSpec& a) { return a.datasec && a.biassec; });
  const bool none = std::none_of(p.amplifiers.begin(), p.amplifiers.end(),
                                 [](const AmplifierSpec& a) { return a.datasec.has_value(); });
  if (!all && !none)
    throw ConfigError("the simulator needs every amplifier's sections either in the profile or in header keywords, "
                      "not a mix", ErrorContext{.file = p.source.string(), .keyword = "[amplifier.N] datasec"});
  return all;
}

/// Assembled image size {ny, nx} in raw orientation for a pipeline image of ny × nx.
std::pair<long, long> assembled_size(const InstrumentProfile& p, long ny, long nx) {
  return p.dispersion_axis == 1 ? std::pair{ny, nx} : std::pair{nx, ny};
}

Section detsec_of(const AmplifierSpec& a) { return a.detsec ? *a.detsec : *a.datasec; }

/// Union of the amplifiers' detsecs: {ny, nx}.
std::pair<long, long> detsec_extent(const InstrumentProfile& p) {
  long ny = 0, nx = 0;
  for (const auto& a : p.amplifiers) {
    const Section d = detsec_of(a);
    ny = std::max(ny, d.y1);
    nx = std::max(nx, d.x1);
  }
  return {ny, nx};
}

long scale_exact(long v, long new_size, long old_size, const std::string& axis, const InstrumentProfile& p) {
  if ((v * new_size) % old_size != 0)
    throw ConfigError(fmt::format("the profile's amplifier sections split {} = {} at pixel {}; a simulated size of {} "
                                  "does not split evenly there (choose a multiple of {})",
                                  axis, old_size, v, new_size, old_size / std::gcd(v, old_size)),
                      ErrorContext{.file = p.source.string(), .keyword = axis});
  return v * new_size / old_size;
}

/// Moves an overscan range [b0, b1) that sits before, on or after the data range [d0, d1)
/// so that it keeps its place next to the new data range [n0, n1).
std::pair<long, long> follow(long b0, long b1, long d0, long d1, long n0, long n1) {
  if (b0 == d0 && b1 == d1) return {n0, n1};
  if (b1 <= d0) return {n0 - (d0 - b0), n0 - (d0 - b0) + (b1 - b0)};
  if (b0 >= d1) return {n1 + (b0 - d1), n1 + (b0 - d1) + (b1 - b0)};
  // An overscan that overlaps the data range only partly keeps its offset from the data start.
  return {n0 + (b0 - d0), n0 + (b0 - d0) + (b1 - b0)};
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

}  // namespace

double AmpLayout::bias_at(long yr, long xr) const {
  // A slow drift along the parallel (row) direction, centred so the mean over the amplifier is
  // the level, plus a small warm-up excess in the first data columns read after the overscan.
  const double t = (static_cast<double>(yr - datasec.y0) + 0.5) / static_cast<double>(datasec.ny()) - 0.5;
  double b = bias_level_dn + bias_gradient_dn * t;
  if (xr >= datasec.x0 && xr < datasec.x1 && yr >= datasec.y0 && yr < datasec.y1) {
    const bool register_right = biassec.x0 >= datasec.x1;
    const long dist = register_right ? datasec.x1 - 1 - xr : xr - datasec.x0;
    b += bias_edge_dn * std::exp(-static_cast<double>(dist) / 8.0);
  }
  return b;
}

std::pair<long, long> RawLayout::to_pipeline(long ya, long xa) const {
  long s = ya, d = xa, ns = asm_ny, nd = asm_nx;
  if (dispersion_axis == 2) {
    s = xa;
    d = ya;
    ns = asm_nx;
    nd = asm_ny;
  }
  if (flip_dispersion) d = nd - 1 - d;
  if (flip_spatial) s = ns - 1 - s;
  return {s, d};
}

std::pair<long, long> RawLayout::to_assembled(const AmpLayout& a, long yr, long xr) const {
  const long dx = xr - a.datasec.x0, dy = yr - a.datasec.y0;
  const long xa = a.datasec.flip_x != a.detsec.flip_x ? a.detsec.x1 - 1 - dx : a.detsec.x0 + dx;
  const long ya = a.datasec.flip_y != a.detsec.flip_y ? a.detsec.y1 - 1 - dy : a.detsec.y0 + dy;
  return {ya, xa};
}

bool profile_needs_rescale(const InstrumentProfile& p, long ny, long nx) {
  if (!explicit_sections(p)) return false;
  return detsec_extent(p) != assembled_size(p, ny, nx);
}

std::string rescale_profile_text(const std::string& ini_text, const InstrumentProfile& p, long ny, long nx) {
  const auto [old_ny, old_nx] = detsec_extent(p);
  const auto [new_ny, new_nx] = assembled_size(p, ny, nx);
  std::vector<std::array<Section, 3>> sections;  // datasec, biassec, detsec per amplifier
  long raw_ny = 0, raw_nx = 0;
  for (const auto& a : p.amplifiers) {
    const Section d = *a.datasec, b = *a.biassec, t = detsec_of(a);
    Section nt = t;
    nt.x0 = scale_exact(t.x0, new_nx, old_nx, "nx", p);
    nt.x1 = scale_exact(t.x1, new_nx, old_nx, "nx", p);
    nt.y0 = scale_exact(t.y0, new_ny, old_ny, "ny", p);
    nt.y1 = scale_exact(t.y1, new_ny, old_ny, "ny", p);
    Section nd = d;
    nd.x0 = d.x0 + (nt.x0 - t.x0);
    nd.x1 = nd.x0 + nt.nx();
    nd.y0 = d.y0 + (nt.y0 - t.y0);
    nd.y1 = nd.y0 + nt.ny();
    Section nb = b;
    std::tie(nb.x0, nb.x1) = follow(b.x0, b.x1, d.x0, d.x1, nd.x0, nd.x1);
    std::tie(nb.y0, nb.y1) = follow(b.y0, b.y1, d.y0, d.y1, nd.y0, nd.y1);
    raw_ny = std::max({raw_ny, nd.y1, nb.y1});
    raw_nx = std::max({raw_nx, nd.x1, nb.x1});
    sections.push_back({nd, nb, nt});
  }
  std::istringstream in(ini_text);
  std::ostringstream out;
  std::string line, section;
  int amp = -1;
  while (std::getline(in, line)) {
    const std::string t = trim(line);
    if (!t.empty() && t.front() == '[') {
      section = t.substr(1, t.find(']') - 1);
      amp = section.rfind("amplifier.", 0) == 0 ? std::stoi(section.substr(10)) - 1 : -1;
      out << line << "\n";
      continue;
    }
    const auto eq = t.find('=');
    const std::string key = eq == std::string::npos ? "" : trim(t.substr(0, eq));
    const auto semi = line.find(';', line.find('=') == std::string::npos ? 0 : line.find('='));
    const std::string comment = semi == std::string::npos ? "" : "  " + line.substr(semi);
    if (amp >= 0 && amp < static_cast<int>(sections.size()) && (key == "datasec" || key == "biassec" || key == "detsec")) {
      const auto& s = sections[static_cast<std::size_t>(amp)];
      const Section& v = key == "datasec" ? s[0] : key == "biassec" ? s[1] : s[2];
      out << key << " = " << v.to_fits() << comment << "\n";
    } else if (section == "instrument" && key == "raw_shape") {
      out << "raw_shape = " << raw_ny << "x" << raw_nx << comment << "\n";
    } else if (section == "detector" && key == "bad_columns") {
      // The same defects at the same fraction of the width (assembled x, 1-based).
      std::string list;
      for (long col : p.bad_columns) {
        const long scaled = std::clamp((col - 1) * new_nx / old_nx + 1, 1L, new_nx);
        list += (list.empty() ? "" : ", ") + std::to_string(scaled);
      }
      out << "bad_columns = " << list << comment << "\n";
    } else {
      out << line << "\n";
    }
  }
  return out.str();
}

RawLayout make_layout(const InstrumentProfile& p, const SimConfig& c) {
  RawLayout l;
  l.dispersion_axis = p.dispersion_axis;
  l.flip_dispersion = p.flip_dispersion;
  l.flip_spatial = p.flip_spatial;
  std::tie(l.asm_ny, l.asm_nx) = assembled_size(p, c.ny, c.nx);
  const ErrorContext ctx{.file = p.source.string()};
  const auto namps = static_cast<long>(p.amplifiers.size());
  l.sections_in_header = !explicit_sections(p);
  if (!l.sections_in_header) {
    if (detsec_extent(p) != std::pair{l.asm_ny, l.asm_nx})
      throw ConfigError(fmt::format("the profile's amplifier sections assemble an image of {} x {} (raw orientation) "
                                    "but the simulation asks for {} x {}",
                                    detsec_extent(p).first, detsec_extent(p).second, l.asm_ny, l.asm_nx),
                        ctx);
  } else if (l.asm_ny % namps != 0) {
    throw ConfigError(fmt::format("{} amplifiers split the {} raw rows unevenly; choose a size divisible by {}",
                                  namps, l.asm_ny, namps),
                      ctx);
  }
  for (long k = 0; k < namps; ++k) {
    const auto& spec = p.amplifiers[static_cast<std::size_t>(k)];
    AmpLayout a;
    a.name = spec.name;
    if (!l.sections_in_header) {
      a.datasec = *spec.datasec;
      a.biassec = *spec.biassec;
      a.detsec = detsec_of(spec);
      if (a.datasec.nx() != a.detsec.nx() || a.datasec.ny() != a.detsec.ny())
        throw ConfigError(fmt::format("amplifier {}: datasec {} and detsec {} differ in size", a.name,
                                      a.datasec.to_fits(), a.detsec.to_fits()),
                          ctx);
    } else {
      const long h = l.asm_ny / namps;
      a.datasec = Section{.x0 = 0, .x1 = l.asm_nx, .y0 = k * h, .y1 = (k + 1) * h};
      a.biassec = Section{.x0 = l.asm_nx, .x1 = l.asm_nx + c.overscan_px, .y0 = k * h, .y1 = (k + 1) * h};
      a.detsec = a.datasec;
    }
    a.gain_e_per_dn = spec.gain;
    a.read_noise_e = spec.read_noise;
    if (a.gain_e_per_dn <= 0.0 || a.read_noise_e <= 0.0)
      throw ConfigError(fmt::format("amplifier {}: the simulator needs a positive gain and read_noise in the profile",
                                    a.name),
                        ctx);
    static const double default_levels[] = {412.0, 587.0, 803.0, 951.0, 655.0, 734.0, 498.0, 879.0};
    a.bias_level_dn = k < static_cast<long>(c.bias_level_dn.size()) ? c.bias_level_dn[static_cast<std::size_t>(k)]
                                                                    : default_levels[k % 8];
    // Neighbouring amplifiers drift in opposite directions, as separate readout chains do.
    a.bias_gradient_dn = (k % 2 == 0 ? 1.0 : -1.0) * c.bias_gradient_dn;
    a.bias_edge_dn = c.bias_edge_dn;
    l.raw_ny = std::max({l.raw_ny, a.datasec.y1, a.biassec.y1});
    l.raw_nx = std::max({l.raw_nx, a.datasec.x1, a.biassec.x1});
    l.amps.push_back(a);
  }
  if (p.raw_shape && !l.sections_in_header && ((*p.raw_shape)[0] != l.raw_ny || (*p.raw_shape)[1] != l.raw_nx))
    throw ConfigError(fmt::format("the profile's raw_shape {}x{} disagrees with its sections ({}x{})",
                                  (*p.raw_shape)[0], (*p.raw_shape)[1], l.raw_ny, l.raw_nx),
                      ctx);
  return l;
}

Header layout_keywords(const InstrumentProfile& p, const RawLayout& l) {
  Header h;
  for (std::size_t k = 0; k < p.amplifiers.size(); ++k) {
    const auto& spec = p.amplifiers[k];
    const auto& a = l.amps[k];
    if (!spec.datasec_key.empty()) h.set(spec.datasec_key, a.datasec.to_fits(), "data section of amplifier " + a.name);
    if (!spec.biassec_key.empty()) h.set(spec.biassec_key, a.biassec.to_fits(), "overscan of amplifier " + a.name);
    if (!spec.detsec_key.empty()) h.set(spec.detsec_key, a.detsec.to_fits(), "detector section of amplifier " + a.name);
    if (!spec.gain_key.empty()) h.set(spec.gain_key, a.gain_e_per_dn, "gain (e-/DN)");
    if (!spec.read_noise_key.empty()) h.set(spec.read_noise_key, a.read_noise_e, "read noise (e-)");
  }
  if (!p.saturation_key.empty()) h.set(p.saturation_key, p.saturation_dn, "saturation level (DN)");
  return h;
}

DetectorModel DetectorModel::make(RawLayout layout, const SimConfig& c, double saturation_dn,
                                  const std::vector<double>& clear_rows, std::mt19937_64& rng,
                                  const std::vector<long>& known_bad_columns) {
  DetectorModel d;
  d.layout = std::move(layout);
  d.saturation_dn = saturation_dn;
  const long ny = d.layout.pipeline_ny(), nx = d.layout.pipeline_nx();
  std::normal_distribution<double> gauss(0.0, 1.0);
  d.pixel_flat.resize(ny, nx);
  for (long j = 0; j < ny; ++j)
    for (long i = 0; i < nx; ++i) d.pixel_flat(j, i) = 1.0 + c.pixel_flat_rms * gauss(rng);
  d.pixel_flat /= d.pixel_flat.mean();
  d.bad_pixels = ByteArray::Zero(ny, nx);
  d.dark_e_per_s = ImageArrayD::Zero(ny, nx);

  // Two bad columns of the CCD (raw columns of the assembled image): one of low response,
  // one hot. Where raw columns are pipeline rows they are kept off the traces.
  std::uniform_int_distribution<long> col(d.layout.asm_nx / 10, d.layout.asm_nx - 1 - d.layout.asm_nx / 10);
  for (int which = 0; which < 2; ++which) {
    long xa = col(rng);
    // A detector's defects are a property of the detector: the profile's list wins over chance.
    if (static_cast<std::size_t>(which) < known_bad_columns.size()) {
      xa = known_bad_columns[static_cast<std::size_t>(which)] - 1;
      if (xa < 0 || xa >= d.layout.asm_nx)
        throw ConfigError(fmt::format("bad column {} of the instrument profile lies outside the {}-column detector",
                                      xa + 1, d.layout.asm_nx));
    } else
    for (int tries = 0; tries < 200; ++tries) {
      const long row = d.layout.to_pipeline(0, xa).first;
      const bool clear = d.layout.dispersion_axis == 1 ||
                         std::none_of(clear_rows.begin(), clear_rows.end(),
                                      [&](double y) { return std::abs(static_cast<double>(row) - y) < 12.0; });
      const bool distinct = d.bad_columns_raw.empty() || std::abs(d.bad_columns_raw.front() - xa) > 3;
      if (clear && distinct) break;
      xa = col(rng);
    }
    d.bad_columns_raw.push_back(xa);
    for (long ya = 0; ya < d.layout.asm_ny; ++ya) {
      const auto [y, x] = d.layout.to_pipeline(ya, xa);
      if (which == 0) {
        d.pixel_flat(y, x) *= 0.35;
        d.bad_pixels(y, x) = 1;
      } else {
        d.dark_e_per_s(y, x) = c.hot_column_e_per_s;
        d.bad_pixels(y, x) = 2;
      }
    }
  }

  d.bias_dn = ImageArrayD::Zero(ny, nx);
  for (const auto& a : d.layout.amps)
    for (long yr = a.datasec.y0; yr < a.datasec.y1; ++yr)
      for (long xr = a.datasec.x0; xr < a.datasec.x1; ++xr) {
        const auto [ya, xa] = d.layout.to_assembled(a, yr, xr);
        const auto [y, x] = d.layout.to_pipeline(ya, xa);
        d.bias_dn(y, x) = a.bias_at(yr, xr);
      }
  return d;
}

DetectorExposure::DetectorExposure(const DetectorModel& det, std::mt19937_64& rng)
    : det_(det),
      rng_(rng),
      mean_e_(ImageArrayD::Zero(det.pixel_flat.rows(), det.pixel_flat.cols())),
      cosmic_(ImageArrayD::Zero(det.pixel_flat.rows(), det.pixel_flat.cols())),
      saturated_(ByteArray::Zero(det.pixel_flat.rows(), det.pixel_flat.cols())) {}

DetectorExposure& DetectorExposure::add_light(const ImageArrayD& expected_e, double exptime_s) {
  mean_e_ += expected_e * det_.pixel_flat + det_.dark_e_per_s * exptime_s;
  return *this;
}

DetectorExposure& DetectorExposure::add_cosmics(double seconds, double rate_per_px_s) {
  const long ny = cosmic_.rows(), nx = cosmic_.cols();
  const double mean_events = rate_per_px_s * static_cast<double>(ny * nx) * seconds;
  if (mean_events <= 0.0) return *this;
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::normal_distribution<double> gauss(0.0, 1.0);
  const long n = std::poisson_distribution<long>(mean_events)(rng_);
  auto deposit = [&](double y, double x, double e) {
    const long j = std::lround(y), i = std::lround(x);
    if (j >= 0 && j < ny && i >= 0 && i < nx) cosmic_(j, i) += e;
  };
  for (long k = 0; k < n; ++k) {
    const double y = uni(rng_) * static_cast<double>(ny - 1), x = uni(rng_) * static_cast<double>(nx - 1);
    const double energy = 3000.0 * std::exp(0.6 * gauss(rng_));
    const double shape = uni(rng_), length = 2.0 + 8.0 * uni(rng_), angle = std::numbers::pi * uni(rng_);
    if (shape < 0.25) {
      deposit(y, x, energy);  // a single pixel
    } else if (shape < 0.5) {
      // A compact blob: most charge in one pixel, the rest in its four neighbours.
      deposit(y, x, 0.6 * energy);
      for (auto [dy, dx] : {std::pair{1.0, 0.0}, {-1.0, 0.0}, {0.0, 1.0}, {0.0, -1.0}}) deposit(y + dy, x + dx, 0.1 * energy);
    } else {
      // A track crossing the silicon at a slant: charge spread evenly along its length.
      const int steps = static_cast<int>(std::ceil(length * 4.0));
      for (int s = 0; s <= steps; ++s) {
        const double f = static_cast<double>(s) / steps - 0.5;
        deposit(y + f * length * std::sin(angle), x + f * length * std::cos(angle), energy / (steps + 1));
      }
    }
  }
  return *this;
}

DetectorExposure& DetectorExposure::add_photon_noise() {
  e_.resize(mean_e_.rows(), mean_e_.cols());
  std::poisson_distribution<long> poisson;
  using Param = std::poisson_distribution<long>::param_type;
  for (long j = 0; j < mean_e_.rows(); ++j)
    for (long i = 0; i < mean_e_.cols(); ++i) {
      const double m = mean_e_(j, i);
      e_(j, i) = m > 0.0 ? static_cast<double>(poisson(rng_, Param(m))) : 0.0;
    }
  noisy_ = true;
  return *this;
}

ImageArray DetectorExposure::read_out() {
  const RawLayout& l = det_.layout;
  const ImageArrayD& light = noisy_ ? e_ : mean_e_;
  ImageArray raw(l.raw_ny, l.raw_nx);
  std::normal_distribution<double> gauss(0.0, 1.0);
  // Which amplifier reads each raw pixel, and whether it is data (1) or overscan (2).
  std::vector<int> amp_of(static_cast<std::size_t>(l.raw_ny * l.raw_nx), -1);
  std::vector<char> kind(amp_of.size(), 0);
  for (std::size_t k = 0; k < l.amps.size(); ++k) {
    const auto& a = l.amps[k];
    for (const auto& [sec, what] : {std::pair{a.datasec, char{1}}, std::pair{a.biassec, char{2}}})
      for (long y = sec.y0; y < sec.y1; ++y)
        for (long x = sec.x0; x < sec.x1; ++x) {
          const auto idx = static_cast<std::size_t>(y * l.raw_nx + x);
          amp_of[idx] = static_cast<int>(k);
          kind[idx] = what;
        }
  }
  for (long yr = 0; yr < l.raw_ny; ++yr)
    for (long xr = 0; xr < l.raw_nx; ++xr) {
      const auto idx = static_cast<std::size_t>(yr * l.raw_nx + xr);
      const AmpLayout& a = l.amps[static_cast<std::size_t>(std::max(0, amp_of[idx]))];
      double e = 0.0;
      long py = -1, px = -1;
      if (kind[idx] == 1) {
        const auto [ya, xa] = l.to_assembled(a, yr, xr);
        std::tie(py, px) = l.to_pipeline(ya, xa);
        e = light(py, px) + cosmic_(py, px);
      }
      const double dn = (e + a.read_noise_e * gauss(rng_)) / a.gain_e_per_dn + a.bias_at(yr, xr);
      const double q = std::clamp(std::floor(dn + 0.5), 0.0, 65535.0);
      raw(yr, xr) = static_cast<float>(q);
      if (py >= 0 && q >= det_.saturation_dn) saturated_(py, px) = 1;
    }
  return raw;
}

}  // namespace kspecdr::sim
