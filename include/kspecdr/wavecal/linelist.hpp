#pragma once
// Arc and sky line lists. The IRAF format is one line per row: wavelength [Å]
// first, then an optional intensity and/or free-text identification; '#'
// starts a comment. The medium of the wavelengths (air or vacuum) is not in
// the files, so the caller states it and it travels with the list.
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace kspecdr::wavecal {

enum class Medium { Air, Vacuum };
std::string to_string(Medium m);
/// "air" or "vacuum"/"vac" (case-insensitive); throws ConfigError otherwise.
Medium medium_from_string(const std::string& s);

struct ArcLine {
  double wavelength_angstrom = 0.0;
  double intensity = std::numeric_limits<double>::quiet_NaN();  ///< relative; NaN when the list has none
  std::string id;       ///< identification text as written (e.g. "NeI(6)"); may be empty
  bool blend = false;   ///< the list itself calls the entry a blend: never used as a fit anchor
};

struct LineList {
  std::vector<ArcLine> lines;  ///< sorted by wavelength
  Medium medium = Medium::Air;
  std::string source;          ///< file name(s), for messages and diagnostics

  std::size_t size() const { return lines.size(); }
  bool empty() const { return lines.empty(); }
  std::vector<double> wavelengths() const;
};

/// Reads an IRAF-format list and sorts it by wavelength (skylines.dat is not sorted on disk).
/// An entry whose text contains "blend" is flagged `blend`. Throws DataError naming the file
/// and line when it cannot be read or holds no line.
LineList read_linelist(const std::filesystem::path& path, Medium medium);

/// The lines whose identification starts with one of `species` (case-insensitive, e.g. {"Ne"}
/// keeps "NeI" and "NeI(6)"). Use it to take only one lamp's lines from a mixed list.
LineList select_species(const LineList& list, const std::vector<std::string>& species);

/// The lines within [lo, hi] Å.
LineList select_range(const LineList& list, double lo_angstrom, double hi_angstrom);

/// The list converted to `medium` (no-op when it is already there).
LineList to_medium(const LineList& list, Medium medium);

/// Several lamps' lists merged into one, in the medium of the first. Entries of different lists
/// closer than `same_line_angstrom` are the same transition listed twice: the first list's entry wins.
LineList merge_linelists(const std::vector<LineList>& lists, double same_line_angstrom = 0.05);

/// The lamps' lines as an instrument profile lists them: each entry a file, absolute or relative to one
/// of `search_dirs` (tried in order), optionally followed by species in brackets to keep only those lines
/// ("idhenear.dat[Ne]"; several: "thar.dat[Th Ar]"); all in `medium`, merged in the order given.
/// Throws ConfigError naming the entry when a file is missing or a selection is empty.
LineList load_linelists(const std::vector<std::string>& entries, Medium medium,
                        const std::vector<std::filesystem::path>& search_dirs);

}  // namespace kspecdr::wavecal
