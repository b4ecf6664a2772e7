#include "kspecdr/fluxcal/catalog.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <numbers>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\"");
  if (a == std::string::npos) return "";
  const auto b = s.find_last_not_of(" \t\r\"");
  return s.substr(a, b - a + 1);
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) out.push_back(trim(cur)), cur.clear();
    else cur.push_back(c);
  }
  out.push_back(trim(cur));
  return out;
}

}  // namespace

Catalog read_catalog(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open the standard-star catalog", ErrorContext{.file = path.string()});
  Catalog cat;
  cat.path = path;
  std::string line;
  long line_no = 0;
  std::vector<std::string> header;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    header = split_csv(line);
    break;
  }
  if (header.empty()) throw DataError("the catalog has no header row", ErrorContext{.file = path.string()});
  long i_name = -1, i_ra = -1, i_dec = -1;
  for (std::size_t i = 0; i < header.size(); ++i) {
    const auto h = lower(header[i]);
    if ((h == "name" || h == "id" || h == "objid") && i_name < 0) i_name = static_cast<long>(i);
    if (h == "ra" || h == "ra_deg") i_ra = static_cast<long>(i);
    if (h == "dec" || h == "dec_deg") i_dec = static_cast<long>(i);
  }
  if (i_ra < 0 || i_dec < 0)
    throw DataError("the catalog needs columns ra and dec (degrees)", ErrorContext{.file = path.string()});
  std::vector<std::pair<std::size_t, std::size_t>> band_cols;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (static_cast<long>(i) == i_name || static_cast<long>(i) == i_ra || static_cast<long>(i) == i_dec) continue;
    const auto h = lower(header[i]);
    for (std::size_t j = 0; j < header.size(); ++j) {
      const auto e = lower(header[j]);
      if (e == h + "_err" || e == "e_" + h || e == "d" + h || e == h + "_error") {
        cat.bands.push_back(header[i]);
        band_cols.push_back({i, j});
        break;
      }
    }
  }
  auto number = [&](const std::string& s, const std::string& col) {
    if (s.empty() || lower(s) == "nan" || lower(s) == "null") return kNaN;
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0')
      throw DataError(fmt::format("line {}: column {} = '{}' is not a number", line_no, col, s),
                      ErrorContext{.file = path.string()});
    return v;
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    const auto f = split_csv(line);
    if (f.size() != header.size())
      throw DataError(fmt::format("line {}: {} fields but the header has {}", line_no, f.size(), header.size()),
                      ErrorContext{.file = path.string()});
    CatalogStar s;
    s.row = static_cast<long>(cat.stars.size());
    s.name = i_name >= 0 ? f[static_cast<std::size_t>(i_name)] : fmt::format("row{}", s.row);
    s.ra_deg = number(f[static_cast<std::size_t>(i_ra)], "ra");
    s.dec_deg = number(f[static_cast<std::size_t>(i_dec)], "dec");
    if (!std::isfinite(s.ra_deg) || !std::isfinite(s.dec_deg))
      throw DataError(fmt::format("line {}: the star has no position", line_no), ErrorContext{.file = path.string()});
    for (const auto& [m, e] : band_cols) {
      s.mag.push_back(number(f[m], header[m]));
      s.err.push_back(number(f[e], header[e]));
    }
    cat.stars.push_back(std::move(s));
  }
  return cat;
}

double default_ab_offset(const std::string& band) {
  const auto b = lower(band);
  if (b == "gaia_g" || b == "g_gaia" || b == "phot_g_mean_mag" || band == "G") return 0.1050;
  if (b == "gaia_bp" || b == "bp_gaia" || b == "phot_bp_mean_mag" || b == "bp") return 0.0292;
  if (b == "gaia_rp" || b == "rp_gaia" || b == "phot_rp_mean_mag" || b == "rp") return 0.3542;
  return 0.0;
}

double separation_arcsec(double ra1, double dec1, double ra2, double dec2) {
  constexpr double d2r = std::numbers::pi / 180.0;
  // Haversine: accurate at the arcsecond separations of a match.
  const double s1 = std::sin(0.5 * (dec2 - dec1) * d2r), s2 = std::sin(0.5 * (ra2 - ra1) * d2r);
  const double a = s1 * s1 + std::cos(dec1 * d2r) * std::cos(dec2 * d2r) * s2 * s2;
  return 2.0 * std::asin(std::min(1.0, std::sqrt(a))) / d2r * 3600.0;
}

CatalogMatch match_by_position(const std::vector<FiberPosition>& fibers, const Catalog& cat, double radius_arcsec) {
  struct Pair {
    double sep;
    std::size_t f, s;
  };
  std::vector<Pair> pairs;
  for (std::size_t f = 0; f < fibers.size(); ++f)
    for (std::size_t s = 0; s < cat.stars.size(); ++s) {
      const double d = separation_arcsec(fibers[f].ra_deg, fibers[f].dec_deg, cat.stars[s].ra_deg, cat.stars[s].dec_deg);
      if (d <= radius_arcsec) pairs.push_back({d, f, s});
    }
  std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
    return a.sep < b.sep || (a.sep == b.sep && (a.f < b.f || (a.f == b.f && a.s < b.s)));
  });
  CatalogMatch m;
  m.star.assign(fibers.size(), -1);
  m.separation_arcsec.assign(fibers.size(), kNaN);
  std::vector<bool> taken(cat.stars.size(), false);
  std::vector<bool> had_candidate(fibers.size(), false);
  for (const auto& p : pairs) {
    had_candidate[p.f] = true;
    if (m.star[p.f] >= 0 || taken[p.s]) continue;
    m.star[p.f] = static_cast<long>(p.s);
    m.separation_arcsec[p.f] = p.sep;
    taken[p.s] = true;
  }
  for (std::size_t f = 0; f < fibers.size(); ++f)
    if (m.star[f] < 0)
      m.unmatched.push_back(had_candidate[f]
                                ? fmt::format("{}: its nearest catalog stars within {:.1f}\" went to closer fibers",
                                              fibers[f].name, radius_arcsec)
                                : fmt::format("{}: no catalog star within {:.1f}\" of RA {:.6f} Dec {:.6f}", fibers[f].name,
                                              radius_arcsec, fibers[f].ra_deg, fibers[f].dec_deg));
  return m;
}

CatalogMatch match_by_row_order(const std::vector<FiberPosition>& fibers, const Catalog& cat) {
  CatalogMatch m;
  for (std::size_t f = 0; f < fibers.size(); ++f) {
    if (f < cat.stars.size()) {
      m.star.push_back(static_cast<long>(f));
      m.separation_arcsec.push_back(separation_arcsec(fibers[f].ra_deg, fibers[f].dec_deg, cat.stars[f].ra_deg,
                                                      cat.stars[f].dec_deg));
    } else {
      m.star.push_back(-1);
      m.separation_arcsec.push_back(kNaN);
      m.unmatched.push_back(fmt::format("{}: the catalog has only {} rows (row-order matching)", fibers[f].name,
                                        cat.stars.size()));
    }
  }
  return m;
}

PhotometricScale scale_to_photometry(const std::vector<double>& wl, const std::vector<double>& flux, const Catalog& cat,
                                     const CatalogStar& star, const std::map<std::string, FilterCurve>& filters,
                                     const std::map<std::string, double>& ab_offsets) {
  PhotometricScale out;
  double sw = 0, swd = 0;
  for (std::size_t b = 0; b < cat.bands.size(); ++b) {
    BandResidual r;
    r.band = cat.bands[b];
    r.err = star.err[b];
    r.mag = star.mag[b];
    const auto off = ab_offsets.find(r.band);
    r.ab_offset = off != ab_offsets.end() ? off->second : default_ab_offset(r.band);
    r.obs_ab = r.mag + r.ab_offset;
    const auto fc = filters.find(r.band);
    if (fc == filters.end()) {
      r.note = "no filter curve";
    } else if (!std::isfinite(star.mag[b]) || !(star.err[b] > 0)) {
      r.note = "no magnitude or error";
    } else {
      try {
        r.synth_ab = synthetic_ab_mag(wl, flux, fc->second);
        r.used = true;
      } catch (const DataError& e) {
        r.note = std::string("not covered by the model: ") + e.message();
      }
    }
    if (r.used) {
      const double w = 1.0 / (r.err * r.err);
      sw += w;
      swd += w * (r.obs_ab - r.synth_ab);
      ++out.n_bands;
    }
    out.bands.push_back(r);
  }
  if (out.n_bands == 0)
    throw DataError(fmt::format("no catalog band can scale the model of {} (bands: {})", star.name,
                                fmt::join(cat.bands, ", ")),
                    ErrorContext{.file = cat.path.string(), .aperture = star.name});
  out.dm = swd / sw;
  out.dm_err = 1.0 / std::sqrt(sw);
  out.scale = std::pow(10.0, -0.4 * out.dm);
  out.scale_err = 0.4 * std::log(10.0) * out.scale * out.dm_err;
  for (auto& r : out.bands)
    if (r.used) {
      // The scaled model is dm brighter in every band: synthetic(scaled) = synth + dm.
      r.synth_scaled_ab = r.synth_ab + out.dm;
      r.residual = r.synth_scaled_ab - r.obs_ab;
      out.chi2 += r.residual * r.residual / (r.err * r.err);
    }
  return out;
}

}  // namespace kspecdr::fluxcal
