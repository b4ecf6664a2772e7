#include "kspecdr/wavecal/linelist.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/wavecal/airvac.hpp"

namespace kspecdr::wavecal {
namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

void sort_lines(std::vector<ArcLine>& v) {
  std::stable_sort(v.begin(), v.end(),
                   [](const ArcLine& a, const ArcLine& b) { return a.wavelength_angstrom < b.wavelength_angstrom; });
}

}  // namespace

std::string to_string(Medium m) { return m == Medium::Air ? "air" : "vacuum"; }

Medium medium_from_string(const std::string& s) {
  const std::string t = lower(trim(s));
  if (t == "air") return Medium::Air;
  if (t == "vacuum" || t == "vac") return Medium::Vacuum;
  throw ConfigError(fmt::format("wavelength medium '{}' is neither 'air' nor 'vacuum'", s));
}

std::vector<double> LineList::wavelengths() const {
  std::vector<double> w;
  w.reserve(lines.size());
  for (const auto& l : lines) w.push_back(l.wavelength_angstrom);
  return w;
}

LineList read_linelist(const std::filesystem::path& path, Medium medium) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open line list", ErrorContext{.file = path.string()});
  LineList out;
  out.medium = medium;
  out.source = path.filename().string();
  std::string row;
  long lineno = 0;
  while (std::getline(in, row)) {
    ++lineno;
    const auto hash = row.find('#');
    if (hash != std::string::npos) row.erase(hash);
    row = trim(row);
    if (row.empty()) continue;
    std::istringstream ss(row);
    std::string first;
    ss >> first;
    ArcLine l;
    try {
      std::size_t used = 0;
      l.wavelength_angstrom = std::stod(first, &used);
      if (used != first.size()) throw std::invalid_argument(first);
    } catch (const std::exception&) {
      throw DataError(fmt::format("line {}: '{}' does not start with a wavelength", lineno, row),
                      ErrorContext{.file = path.string()});
    }
    if (!std::isfinite(l.wavelength_angstrom) || l.wavelength_angstrom <= 0.0)
      throw DataError(fmt::format("line {}: wavelength {} is not positive", lineno, first),
                      ErrorContext{.file = path.string()});
    std::string rest;
    std::getline(ss, rest);
    rest = trim(rest);
    // An intensity is a number in the second column; anything else is the identification.
    if (!rest.empty()) {
      std::istringstream rs(rest);
      std::string second;
      rs >> second;
      try {
        std::size_t used = 0;
        const double v = std::stod(second, &used);
        if (used == second.size()) {
          l.intensity = v;
          std::getline(rs, rest);
          rest = trim(rest);
        }
      } catch (const std::exception&) {
      }
      l.id = rest;
    }
    l.blend = lower(l.id).find("blend") != std::string::npos;
    out.lines.push_back(std::move(l));
  }
  if (out.lines.empty()) throw DataError("line list holds no line", ErrorContext{.file = path.string()});
  sort_lines(out.lines);
  return out;
}

LineList select_species(const LineList& list, const std::vector<std::string>& species) {
  LineList out;
  out.medium = list.medium;
  out.source = list.source;
  std::string tag;
  for (const auto& s : species) tag += (tag.empty() ? "" : ",") + s;
  out.source += "[" + tag + "]";
  for (const auto& l : list.lines) {
    const std::string id = lower(l.id);
    for (const auto& s : species) {
      const std::string p = lower(s);
      // "Ne" must not keep "NeII" from "Ne" being a prefix of something else like "Nd": require the
      // species to be followed by an ionisation stage, a bracket or the end.
      if (id.rfind(p, 0) == 0 && (id.size() == p.size() || id[p.size()] == 'i' || id[p.size()] == 'v' ||
                                  id[p.size()] == '(' || id[p.size()] == ' ')) {
        out.lines.push_back(l);
        break;
      }
    }
  }
  return out;
}

LineList select_range(const LineList& list, double lo_angstrom, double hi_angstrom) {
  LineList out;
  out.medium = list.medium;
  out.source = list.source;
  for (const auto& l : list.lines)
    if (l.wavelength_angstrom >= lo_angstrom && l.wavelength_angstrom <= hi_angstrom) out.lines.push_back(l);
  return out;
}

LineList to_medium(const LineList& list, Medium medium) {
  LineList out = list;
  if (list.medium == medium) return out;
  for (auto& l : out.lines) l.wavelength_angstrom = convert_medium(l.wavelength_angstrom, list.medium, medium);
  out.medium = medium;
  return out;
}

LineList merge_linelists(const std::vector<LineList>& lists, double same_line_angstrom) {
  LineList out;
  if (lists.empty()) return out;
  out.medium = lists.front().medium;
  for (const auto& raw : lists) {
    const LineList l = to_medium(raw, out.medium);
    out.source += (out.source.empty() ? "" : "+") + l.source;
    std::vector<ArcLine> add;
    for (const auto& line : l.lines) {
      const auto it = std::lower_bound(
          out.lines.begin(), out.lines.end(), line.wavelength_angstrom - same_line_angstrom,
          [](const ArcLine& a, double w) { return a.wavelength_angstrom < w; });
      if (it != out.lines.end() && it->wavelength_angstrom <= line.wavelength_angstrom + same_line_angstrom) {
        // The same transition in two lists: keep the first entry but carry a blend flag from either.
        it->blend = it->blend || line.blend;
        continue;
      }
      add.push_back(line);
    }
    out.lines.insert(out.lines.end(), add.begin(), add.end());
    sort_lines(out.lines);
  }
  return out;
}

LineList load_linelists(const std::vector<std::string>& entries, Medium medium,
                        const std::vector<std::filesystem::path>& search_dirs) {
  std::vector<LineList> lists;
  for (const auto& raw : entries) {
    const std::string entry = trim(raw);
    if (entry.empty()) continue;
    std::string file = entry;
    std::vector<std::string> species;
    if (const auto open = entry.find('['); open != std::string::npos) {
      const auto close = entry.find(']', open);
      if (close == std::string::npos || trim(entry.substr(close + 1)) != "")
        throw ConfigError(fmt::format("line-list entry '{}': species go in brackets at the end, e.g. "
                                      "'idhenear.dat[Ne]' or 'thar.dat[Th Ar]'",
                                      entry));
      file = trim(entry.substr(0, open));
      std::istringstream ss(entry.substr(open + 1, close - open - 1));
      for (std::string sp; ss >> sp;) species.push_back(sp);
      if (species.empty()) throw ConfigError(fmt::format("line-list entry '{}' names no species in brackets", entry));
    }
    std::filesystem::path path(file);
    std::vector<std::string> tried;
    if (path.is_relative()) {
      for (const auto& d : search_dirs) {
        tried.push_back((d / path).string());
        if (std::filesystem::exists(d / path)) {
          path = d / path;
          break;
        }
      }
    } else {
      tried.push_back(path.string());
    }
    if (!std::filesystem::exists(path)) {
      std::string where;
      for (const auto& t : tried) where += (where.empty() ? "" : ", ") + t;
      throw ConfigError(fmt::format("line list '{}' not found (looked for {}); Debian's iraf-noao package ships "
                                    "the IRAF lists under /usr/lib/iraf/noao/lib/linelists",
                                    file, where.empty() ? file : where));
    }
    LineList l = read_linelist(path, medium);
    if (!species.empty()) {
      l = select_species(l, species);
      if (l.empty())
        throw ConfigError(fmt::format("line list '{}' has no line identified as {}", path.string(),
                                      entry.substr(entry.find('['))));
    }
    lists.push_back(std::move(l));
  }
  if (lists.empty()) throw ConfigError("no arc line list given ([wavelength] linelists of the instrument profile)");
  return lists.size() == 1 ? lists.front() : merge_linelists(lists);
}

}  // namespace kspecdr::wavecal
