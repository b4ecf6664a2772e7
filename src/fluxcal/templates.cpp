#include "kspecdr/fluxcal/templates.hpp"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/hdf5.hpp"

namespace kspecdr::fluxcal {
namespace {

constexpr const char* kFormat = "kspecdr-template-grid";

/// Every line of a text file, gzip or plain (zlib reads both transparently).
std::vector<std::string> read_lines(const std::filesystem::path& path) {
  gzFile f = gzopen(path.string().c_str(), "rb");
  if (!f) throw DataError("cannot open model spectrum", ErrorContext{.file = path.string()});
  std::vector<std::string> lines;
  std::string cur;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) {
    for (int i = 0; i < n; ++i) {
      if (buf[i] == '\n') {
        lines.push_back(std::move(cur));
        cur.clear();
      } else {
        cur.push_back(buf[i]);
      }
    }
  }
  int err = 0;
  const char* msg = n < 0 ? gzerror(f, &err) : nullptr;
  const std::string what = msg ? msg : "";
  gzclose(f);
  if (n < 0) throw DataError("cannot decompress model spectrum: " + what, ErrorContext{.file = path.string()});
  if (!cur.empty()) lines.push_back(std::move(cur));
  return lines;
}

}  // namespace

double param_value(const TemplateParams& p, int which) {
  switch (which) {
    case 0: return p.teff_k;
    case 1: return p.logg;
    case 2: return p.mh;
    default: return p.alpha;
  }
}

std::vector<double> TemplateGrid::flux_of(std::size_t i) const {
  const auto r = flux.row(static_cast<Eigen::Index>(i));
  return std::vector<double>(r.begin(), r.end());
}

std::vector<double> TemplateGrid::continuum_of(std::size_t i) const {
  const auto r = continuum.row(static_cast<Eigen::Index>(i));
  return std::vector<double>(r.begin(), r.end());
}

std::vector<double> TemplateGrid::axis(int which) const {
  std::vector<double> v;
  for (const auto& p : params) v.push_back(param_value(p, which));
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end(), [](double a, double b) { return std::abs(a - b) < 1e-6; }), v.end());
  return v;
}

long TemplateGrid::find(const TemplateParams& p) const {
  for (std::size_t i = 0; i < params.size(); ++i) {
    bool same = true;
    for (int k = 0; k < 4; ++k) same = same && std::abs(param_value(params[i], k) - param_value(p, k)) < 1e-6;
    if (same) return static_cast<long>(i);
  }
  return -1;
}

void TemplateGrid::check(const std::string& what) const {
  const auto n = static_cast<Eigen::Index>(params.size());
  const auto nw = static_cast<Eigen::Index>(wavelength_angstrom.size());
  if (n == 0) throw DataError("the template grid has no models", ErrorContext{.file = what});
  if (nw < 3) throw DataError("the template grid has fewer than 3 wavelengths", ErrorContext{.file = what});
  if (flux.rows() != n || flux.cols() != nw || continuum.rows() != n || continuum.cols() != nw)
    throw DataError(fmt::format("template grid shapes disagree: {} models, {} wavelengths, flux {}x{}, continuum {}x{}",
                                n, nw, flux.rows(), flux.cols(), continuum.rows(), continuum.cols()),
                    ErrorContext{.file = what});
  for (std::size_t i = 1; i < wavelength_angstrom.size(); ++i)
    if (!(wavelength_angstrom[i] > wavelength_angstrom[i - 1]))
      throw DataError(fmt::format("template wavelengths do not increase at index {}", i), ErrorContext{.file = what});
  if (wavelength_medium != "air" && wavelength_medium != "vacuum")
    throw DataError("template wavelength_medium must be air or vacuum, not '" + wavelength_medium + "'",
                    ErrorContext{.file = what});
}

void write_template_grid(const std::filesystem::path& path, const TemplateGrid& g, bool overwrite) {
  g.check(path.string());
  io::AtomicOutput out(path, overwrite);
  {
    auto f = h5::File::create(out.temp_path());
    auto& r = f.root();
    r.set_attr("format", kFormat);
    r.set_attr("format_version", 1);
    r.set_attr("source", g.source);
    r.set_attr("synthetic", g.synthetic ? 1 : 0);
    r.set_attr("flux_units", "erg/s/cm2/Angstrom (surface flux)");
    r.set_attr("wavelength_medium", g.wavelength_medium);
    r.set_attr("resolving_power", g.resolving_power);
    std::vector<double> cols[4];
    for (const auto& p : g.params)
      for (int k = 0; k < 4; ++k) cols[k].push_back(param_value(p, k));
    const char* names[] = {"teff_k", "logg", "mh", "alpha"};
    for (int k = 0; k < 4; ++k) r.write(std::string("parameters/") + names[k], cols[k]);
    r.write("wavelength", g.wavelength_angstrom);
    r.open_dataset("wavelength").set_attr("units", "Angstrom");
    r.write_array("flux", g.flux, true);
    r.write_array("continuum", g.continuum, true);
    r.open_dataset("flux").set_attr("units", "erg/s/cm2/Angstrom");
    r.open_dataset("continuum").set_attr("units", "erg/s/cm2/Angstrom");
    f.close();
  }
  out.commit();
}

TemplateGrid read_template_grid(const std::filesystem::path& path, double lambda_min, double lambda_max) {
  if (!std::filesystem::exists(path))
    throw DataError("template grid not found", ErrorContext{.file = path.string()});
  auto f = h5::File::open(path);
  const auto& r = f.root();
  if (!r.has_attr("format") || r.attr_string("format") != kFormat)
    throw DataError(fmt::format("not a template grid (no format = \"{}\" attribute); make one with `kspecdr "
                                "templates import-bosz` or `kspecdr templates synth`",
                                kFormat),
                    ErrorContext{.file = path.string()});
  TemplateGrid g;
  g.source = r.attr_string("source");
  g.synthetic = r.attr_int("synthetic") != 0;
  g.wavelength_medium = r.attr_string("wavelength_medium");
  g.resolving_power = r.attr_double("resolving_power");
  const auto teff = r.read<double>("parameters/teff_k"), logg = r.read<double>("parameters/logg"),
             mh = r.read<double>("parameters/mh"), alpha = r.read<double>("parameters/alpha");
  if (logg.size() != teff.size() || mh.size() != teff.size() || alpha.size() != teff.size())
    throw DataError("template parameter columns have different lengths", ErrorContext{.file = path.string()});
  for (std::size_t i = 0; i < teff.size(); ++i) g.params.push_back({teff[i], logg[i], mh[i], alpha[i]});
  const auto w = r.read<double>("wavelength");
  std::size_t i0 = 0, i1 = w.size();
  if (lambda_max > lambda_min && lambda_min > 0) {
    while (i0 + 1 < w.size() && w[i0 + 1] < lambda_min) ++i0;
    while (i1 > i0 + 1 && w[i1 - 2] > lambda_max) --i1;
  }
  g.wavelength_angstrom.assign(w.begin() + static_cast<long>(i0), w.begin() + static_cast<long>(i1));
  const auto nw = static_cast<hsize_t>(g.wavelength_angstrom.size());
  const auto n = static_cast<hsize_t>(g.params.size());
  g.flux.resize(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(nw));
  g.continuum.resize(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(nw));
  if (n > 0 && nw > 0) {
    for (const char* name : {"flux", "continuum"}) {
      auto ds = r.open_dataset(name);
      const auto d = ds.dims();
      if (d.size() != 2 || d[0] != n || d[1] != w.size())
        throw DataError(fmt::format("/{} is not {} x {}", name, n, w.size()), ErrorContext{.file = path.string()});
      auto& a = std::string(name) == "flux" ? g.flux : g.continuum;
      ds.read_slab(a.data(), h5::Dims{0, static_cast<hsize_t>(i0)}, h5::Dims{n, nw});
    }
  }
  g.check(path.string());
  return g;
}

bool parse_bosz_name(const std::string& filename, BoszName& out) {
  static const std::regex re(
      R"(^bosz2024_([a-z]{2})_t(\d+(?:\.\d+)?)_g([+-]?\d+(?:\.\d+)?)_m([+-]?\d+(?:\.\d+)?)_a([+-]?\d+(?:\.\d+)?)_c([+-]?\d+(?:\.\d+)?)_v(\d+(?:\.\d+)?)_r(\d+|orig)_(?:resam|noresam)\.txt(\.gz)?$)");
  std::smatch m;
  if (!std::regex_match(filename, m, re)) return false;
  out.atmosphere = m[1];
  out.params = {std::stod(m[2]), std::stod(m[3]), std::stod(m[4]), std::stod(m[5])};
  out.carbon = std::stod(m[6]);
  out.vturb = std::stod(m[7]);
  out.resolving_power = m[8] == "orig" ? 0.0 : std::stod(m[8]);
  out.gzipped = m[9].matched;
  return true;
}

TemplateGrid import_bosz(const std::filesystem::path& dir, const BoszImportOptions& opt) {
  if (!std::filesystem::is_directory(dir)) throw DataError("not a folder of BOSZ files", ErrorContext{.file = dir.string()});
  std::map<std::string, BoszName> files;  // sorted by name: a reproducible model order
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    BoszName b;
    if (e.is_regular_file() && parse_bosz_name(e.path().filename().string(), b) && std::abs(b.carbon - opt.carbon) < 1e-6 &&
        (opt.vturb < 0 || std::abs(b.vturb - opt.vturb) < 1e-6))
      files.emplace(e.path().string(), b);
  }
  if (files.empty())
    throw DataError(fmt::format("no BOSZ 2024 files (bosz2024_*_t*_g*_m*_a*_c{:+.2f}_v*_r*_resam.txt[.gz]) in the folder",
                                opt.carbon),
                    ErrorContext{.file = dir.string()});
  TemplateGrid g;
  g.wavelength_medium = "vacuum";
  g.resolving_power = files.begin()->second.resolving_power;
  std::set<std::string> atmospheres;
  std::vector<std::vector<float>> fl, co;
  for (const auto& [path, b] : files) {
    if (b.resolving_power != g.resolving_power)
      throw DataError(fmt::format("mixed resolving powers in one folder (R={} and R={})", g.resolving_power,
                                  b.resolving_power),
                      ErrorContext{.file = path});
    std::vector<double> w;
    std::vector<float> f, c;
    long line_no = 0;
    for (const auto& line : read_lines(path)) {
      ++line_no;
      const auto s = line.find_first_not_of(" \t\r");
      if (s == std::string::npos || line[s] == '#') continue;
      std::istringstream is(line);
      double lam = 0, h = 0, hc = 0;
      if (!(is >> lam >> h >> hc) || !std::isfinite(lam) || !std::isfinite(h) || !std::isfinite(hc))
        throw DataError(fmt::format("line {}: expected three numbers (wavelength, H_lambda, continuum)", line_no),
                        ErrorContext{.file = path});
      if (lam < opt.lambda_min || lam > opt.lambda_max) continue;
      w.push_back(lam);
      f.push_back(static_cast<float>(h * opt.flux_factor));
      c.push_back(static_cast<float>(hc * opt.flux_factor));
    }
    if (w.size() < 3)
      throw DataError(fmt::format("fewer than 3 wavelengths between {} and {} Å", opt.lambda_min, opt.lambda_max),
                      ErrorContext{.file = path});
    if (g.wavelength_angstrom.empty()) {
      g.wavelength_angstrom = w;
    } else if (w.size() != g.wavelength_angstrom.size() ||
               !std::equal(w.begin(), w.end(), g.wavelength_angstrom.begin(),
                           [](double a, double bb) { return std::abs(a - bb) <= 1e-6 * a; })) {
      throw DataError("wavelength grid differs from the folder's first file (use the resampled 'resam' files)",
                      ErrorContext{.file = path});
    }
    if (g.find(b.params) >= 0)
      throw DataError(fmt::format("two files with Teff {} logg {} [M/H] {} [alpha/M] {} (choose one with --vturb)",
                                  b.params.teff_k, b.params.logg, b.params.mh, b.params.alpha),
                      ErrorContext{.file = path});
    g.params.push_back(b.params);
    fl.push_back(std::move(f));
    co.push_back(std::move(c));
    atmospheres.insert(b.atmosphere);
  }
  const auto n = static_cast<Eigen::Index>(g.params.size());
  const auto nw = static_cast<Eigen::Index>(g.wavelength_angstrom.size());
  g.flux.resize(n, nw);
  g.continuum.resize(n, nw);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j < nw; ++j) {
      g.flux(i, j) = fl[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
      g.continuum(i, j) = co[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
    }
  std::string atm;
  for (const auto& a : atmospheres) atm += (atm.empty() ? "" : ",") + a;
  g.source = fmt::format("BOSZ 2024 (Meszaros et al. 2024), R={}, [C/M]={:+.2f}, atmospheres {}, {} models from {}",
                         g.resolving_power, opt.carbon, atm, n, dir.string());
  g.synthetic = false;
  g.check(dir.string());
  return g;
}

}  // namespace kspecdr::fluxcal
