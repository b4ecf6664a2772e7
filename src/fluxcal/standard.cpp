#include "kspecdr/fluxcal/standard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/photometry.hpp"

namespace kspecdr::fluxcal {

namespace fs = std::filesystem;

namespace {

std::string name_key(const std::string& s) {
  std::string k;
  for (const char c : s)
    if (std::isalnum(static_cast<unsigned char>(c))) k += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return k;
}

/// Aliases of a names.men file: "alias  name" rows, '#' comments.
std::vector<std::pair<std::string, std::string>> read_aliases(const fs::path& path) {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::istringstream row(line);
    std::string alias, name;
    if (row >> alias >> name) out.emplace_back(name_key(alias), name_key(name));
  }
  return out;
}

}  // namespace

StandardSpectrum read_standard_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open the standard-star table", {.file = path.string()});
  StandardSpectrum s;
  s.file = path;
  s.name = path.stem().string();
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    if (line[b] == '#') {
      if (line_no == 1) {  // IRAF: "# NAME" on the first line
        std::istringstream h(line.substr(b + 1));
        std::string n;
        if (h >> n) s.name = n;
      }
      continue;
    }
    std::istringstream row(line);
    double lam = 0, mag = 0, width = 0;
    if (!(row >> lam >> mag >> width) || !std::isfinite(lam) || !std::isfinite(mag) || !std::isfinite(width))
      throw DataError(fmt::format("line {}: expected 'wavelength [Å]  AB mag  bandwidth [Å]'", line_no),
                      {.file = path.string()});
    if (!(width > 0))
      throw DataError(fmt::format("line {}: bandwidth {} Å is not positive", line_no, width), {.file = path.string()});
    if (!s.wavelength_angstrom.empty() && !(lam > s.wavelength_angstrom.back()))
      throw DataError(fmt::format("line {}: wavelength {} Å does not increase", line_no, lam), {.file = path.string()});
    if (mag == 0.0) continue;  // IRAF placeholder: no data in this band
    s.wavelength_angstrom.push_back(lam);
    s.ab_mag.push_back(mag);
    s.bandwidth_angstrom.push_back(width);
    s.flambda.push_back(ab_flambda(lam) * std::pow(10.0, -0.4 * mag));
  }
  if (s.wavelength_angstrom.size() < 2)
    throw DataError("a standard-star table needs at least 2 rows with data", {.file = path.string()});
  return s;
}

fs::path find_standard(const std::string& name, const std::vector<fs::path>& search_dirs) {
  const std::string key = name_key(name);
  std::vector<std::string> searched;
  if (key.empty()) throw DataError(fmt::format("standard star name '{}' has no letters or digits", name));
  auto try_dir = [&](const fs::path& dir) -> fs::path {
    searched.push_back(dir.string());
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().extension() == ".dat") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
      if (name_key(f.stem().string()) == key) return f;
    if (fs::exists(dir / "names.men"))
      for (const auto& [alias, target] : read_aliases(dir / "names.men"))
        if (alias == key)
          for (const auto& f : files)
            if (name_key(f.stem().string()) == target) return f;
    return {};
  };
  for (const auto& root : search_dirs) {
    if (!fs::is_directory(root)) continue;
    std::vector<fs::path> dirs{root};
    for (const auto& e : fs::recursive_directory_iterator(root))
      if (e.is_directory()) dirs.push_back(e.path());
    std::sort(dirs.begin() + 1, dirs.end());
    for (const auto& d : dirs)
      if (auto f = try_dir(d); !f.empty()) return f;
  }
  std::string where;
  for (const auto& s : searched) where += (where.empty() ? "" : ", ") + s;
  throw DataError(fmt::format("standard star '{}' (key '{}') has no table in the catalogs searched ({}); give the "
                              "table file with --standard FILE",
                              name, key, where.empty() ? "no folder found" : where));
}

StandardSpectrum load_standard(const std::string& name_or_file, const std::vector<fs::path>& search_dirs) {
  if (fs::is_regular_file(name_or_file)) return read_standard_file(name_or_file);
  return read_standard_file(find_standard(name_or_file, search_dirs));
}

CalVector cal_from_tabulated(const StandardSpectrum& star, const wavecal::RedSpectra& red, long aperture,
                             double exptime_s, double airmass, const BandMask& mask, const std::string& source,
                             double model_rel_err) {
  if (!(model_rel_err >= 0) || !std::isfinite(model_rel_err))
    throw ConfigError(fmt::format("{}: the standard's fractional uncertainty must be finite and >= 0, not {}", source,
                                  model_rel_err));
  const auto& sp = red.spectra;
  if (aperture < 0 || aperture >= sp.naper())
    throw DataError(fmt::format("{}: aperture {} does not exist ({} apertures)", source, aperture, sp.naper()));
  const auto& edges = red.grid.edges;
  const std::size_t npix = red.grid.size();
  if (edges.size() != npix + 1 || npix == 0)
    throw DataError(fmt::format("{}: the RED wavelength grid has no pixel edges", source));
  const double grid_lo = edges.front(), grid_hi = edges.back();
  // The table must cover every wavelength where this aperture has data: a Cal that stops inside the
  // spectrum would leave part of every calibrated spectrum unknown without saying why.
  double data_lo = NAN, data_hi = NAN;
  for (std::size_t p = 0; p < npix; ++p)
    if (sp.mask(aperture, static_cast<Eigen::Index>(p)) == 0) {
      if (std::isnan(data_lo)) data_lo = edges[p];
      data_hi = edges[p + 1];
    }
  if (std::isnan(data_lo)) throw DataError(fmt::format("{}: aperture {} has no unmasked pixel", source, aperture));
  const double table_lo = star.wavelength_angstrom.front() - 0.5 * star.bandwidth_angstrom.front();
  const double table_hi = star.wavelength_angstrom.back() + 0.5 * star.bandwidth_angstrom.back();
  if (table_lo > data_lo || table_hi < data_hi)
    throw DataError(fmt::format("{}: the table of {} covers {:.1f}–{:.1f} Å, not the whole {:.1f}–{:.1f} Å of the "
                                "spectrum",
                                source, star.name, table_lo, table_hi, data_lo, data_hi),
                    {.file = star.file.string()});
  const std::size_t nb = star.wavelength_angstrom.size();
  std::vector<double> lam, width, model, model_var, counts, counts_var;
  const Eigen::Index a = aperture;
  const bool has_cov = red.covariance_next.rows() == sp.naper() && red.covariance_next.cols() == sp.npix();
  for (std::size_t b = 0; b < nb; ++b) {
    const double w = star.bandwidth_angstrom[b];
    const double lo = star.wavelength_angstrom[b] - 0.5 * w, hi = star.wavelength_angstrom[b] + 0.5 * w;
    if (hi < grid_lo || lo > grid_hi) continue;  // table row outside the spectrum: not part of the vector
    double c = 0, v = 0;
    bool ok = lo >= grid_lo && hi <= grid_hi;
    for (const auto& [mlo, mhi] : mask.bands_angstrom) ok = ok && (hi < mlo || lo > mhi);
    if (ok) {
      auto first = std::upper_bound(edges.begin(), edges.end(), lo);
      std::size_t p = first == edges.begin() ? 0 : static_cast<std::size_t>(first - edges.begin()) - 1;
      double prev_f = 0;
      for (; p < npix && edges[p] < hi; ++p) {
        const double f = (std::min(hi, edges[p + 1]) - std::max(lo, edges[p])) / (edges[p + 1] - edges[p]);
        if (f <= 0) continue;
        const auto px = static_cast<Eigen::Index>(p);
        const double vp = sp.variance(a, px);
        if (sp.mask(a, px) != 0 || !std::isfinite(vp) || !std::isfinite(sp.flux(a, px))) {
          ok = false;
          break;
        }
        c += f * sp.flux(a, px);
        v += f * f * vp;
        if (has_cov && p > 0 && prev_f > 0) v += 2.0 * prev_f * f * red.covariance_next(a, px - 1);
        prev_f = f;
      }
    }
    lam.push_back(star.wavelength_angstrom[b]);
    width.push_back(w);
    model.push_back(star.flambda[b]);
    model_var.push_back(model_rel_err * model_rel_err * star.flambda[b] * star.flambda[b]);
    counts.push_back(ok ? c : CalVector::kNaN);
    counts_var.push_back(ok ? v : CalVector::kNaN);
  }
  if (lam.size() < 2)
    throw DataError(fmt::format("{}: the table of {} ({}–{} Å) does not cover the spectrum's {}–{} Å", source,
                                star.name, star.wavelength_angstrom.front(), star.wavelength_angstrom.back(), grid_lo,
                                grid_hi));
  CalVector cal = make_cal_vector(lam, width, model, model_var, counts, counts_var, exptime_s, mask, source);
  cal.airmass = airmass;
  return cal;
}

}  // namespace kspecdr::fluxcal
