// The format tables of every product against the files the pipeline writes and against docs/formats.md.
// A small slit night and a small fiber night are simulated and reduced to RED in-process; then, per product:
//   (a) every item of its table (image HDU, column, keyword, dataset, attribute) is in the files: items
//       without a condition (`when`) in every file of the product, conditional ones in at least one; types
//       and units of images, columns and datasets are the table's; and the files hold no HDU, column,
//       dataset or attribute the table does not list (keywords are not checked that way: the IM keeps the
//       raw header);
//   (b) docs/formats.md has a section per product whose tables list exactly the items of the table (HDU,
//       kind, name, type and unit), so neither the files nor the document can drift from the code.
// One process, one rank: MPI is initialised by a test environment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/fluxcal/infield.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/format.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/diagnostics.hpp"
#include "kspecdr/pipeline/obslog.hpp"
#include "kspecdr/pipeline/reduce.hpp"
#include "kspecdr/series/rainbow.hpp"
#include "kspecdr/sim/config.hpp"
#include "kspecdr/sim/night.hpp"
#include "kspecdr/trace/trace_file.hpp"
#include "kspecdr/wavecal/arc_file.hpp"
#include "kspecdr/wavecal/red_file.hpp"
#include "support/mpi_environment.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;
using io::FormatItem;
using K = FormatItem::Kind;

namespace {


enum class FileKind { Fits, Hdf5, Ecsv };

/// A product: its format table, the files of it in the reduced nights, and the tag of its section in the doc.
struct Product {
  std::string key;  ///< the table function's name, e.g. "red_format" (the doc's section names it)
  const std::vector<FormatItem>* format;
  FileKind kind;
  std::vector<fs::path> files;
};

/// Conditional items the test nights cannot produce (no darks are simulated).
const std::set<std::string> kNeverInTestNights = {"im_format PRIMARY DARKHASH"};

// ---- name patterns (kspecdr/io/format.hpp)

std::string regex_escape(char c) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  return special.find(c) != std::string::npos ? std::string("\\") + c : std::string(1, c);
}

/// FITS names: in an upper-case name a trailing run of lower-case 'n' = digits (MASKBn); '*' = any suffix.
bool fits_name_matches(const std::string& pattern, const std::string& name) {
  std::string stem = pattern;
  while (!stem.empty() && stem.back() == 'n') stem.pop_back();
  const bool digits = stem.size() < pattern.size() &&
                      std::none_of(stem.begin(), stem.end(), [](char c) { return c >= 'a' && c <= 'z'; });
  if (!digits) stem = pattern;
  std::string re;
  for (char c : stem) re += c == '*' ? std::string(".+") : regex_escape(c);
  if (digits) re += "[0-9]+";
  return std::regex_match(name, std::regex(re));
}


std::string item_id(const Product& p, const FormatItem& it) { return p.key + " " + it.hdu + " " + it.name; }

// ---- what a file holds

struct Seen {
  std::string hdu, name, type, unit;
  K kind;
};

std::string fits_column_type(const fits::Column& c) {
  switch (c.type) {
    case fits::Column::Type::Double: return c.repeat > 1 ? "float64[n]" : "float64";
    case fits::Column::Type::Int: return "int64";
    case fits::Column::Type::String: return "string";
    case fits::Column::Type::Logical: return "logical";
  }
  return "?";
}

std::string fits_image_type(int bitpix) {
  switch (bitpix) {
    case -32: return "float32";
    case -64: return "float64";
    case 20: return "uint16";  // CFITSIO's USHORT_IMG: BITPIX 16 with BZERO 32768
    default: return "bitpix " + std::to_string(bitpix);
  }
}

std::vector<Seen> read_fits(const fs::path& path) {
  std::vector<Seen> out;
  auto f = fits::Fits::open(path);
  const int n = f.num_hdus();
  for (int i = 0; i < n; ++i) {
    f.move_to(i);
    const std::string hdu = i == 0 ? "PRIMARY" : f.extname();
    const Header h = f.read_header();
    for (const auto& c : h.cards()) out.push_back({hdu, c.key, "", "", K::Keyword});
    if (f.hdu_type() == fits::HduType::Image) {
      if (f.image_shape().empty()) continue;  // an empty primary
      out.push_back({hdu, hdu, fits_image_type(f.image_equiv_bitpix()), h.get_string("BUNIT").value_or(""), K::Image});
    } else {
      for (const auto& c : f.read_table().columns) out.push_back({hdu, c.name, fits_column_type(c), c.unit, K::Column});
    }
  }
  return out;
}

std::vector<Seen> read_h5(const fs::path& path) {
  std::vector<Seen> out;
  for (auto& it : kspecdr::testing::h5_items(path, /*root_attributes=*/true))
    out.push_back({std::move(it.path), std::move(it.name), std::move(it.type), std::move(it.unit), it.kind});
  return out;
}

/// The ECSV header's columns (name, datatype, unit) and the first data line's names.
std::vector<Seen> read_ecsv(const fs::path& path) {
  std::vector<Seen> out;
  std::ifstream in(path);
  std::string line;
  const std::regex col(R"(^# - \{name: ([^,]+), datatype: ([^,}]+)(, unit: ([^,}]+))?.*\}$)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_match(line, m, col)) out.push_back({"log", m[1], m[2], m[4], K::Column});
    if (!line.empty() && line[0] != '#') break;  // the header line of the CSV part
  }
  return out;
}

// ---- the checks

bool matches(const Product& p, const FormatItem& it, const Seen& s) {
  if (it.kind != s.kind) return false;
  if (p.kind == FileKind::Hdf5) {
    return kspecdr::testing::h5_path_matches(it.hdu, s.hdu) && it.name == s.name;
  }
  return it.hdu == s.hdu && (it.kind == K::Image || fits_name_matches(it.name, s.name));
}

void check_product(const Product& p) {
  SCOPED_TRACE(p.key);
  ASSERT_FALSE(p.files.empty()) << "no file of " << p.key << " in the test nights";
  std::map<std::string, int> found;  // item id -> files holding it
  std::size_t checked = 0;
  for (const auto& file : p.files) {
    SCOPED_TRACE(file.string());
    const std::vector<Seen> seen = p.kind == FileKind::Fits ? read_fits(file)
                                   : p.kind == FileKind::Hdf5 ? read_h5(file)
                                                              : read_ecsv(file);
    for (const auto& it : *p.format) {
      bool here = false;
      for (const auto& s : seen) {
        if (!matches(p, it, s)) continue;
        here = true;
        if (it.kind == K::Image || it.kind == K::Column || it.kind == K::Dataset) {
          EXPECT_EQ(s.type, it.type) << it.hdu << " " << s.name << ": type";
          // Units: FITS images carry BUNIT, columns TUNIT, datasets an attribute `units` (strings have none).
          if (!(it.kind == K::Dataset && it.type == "string")) {
            EXPECT_EQ(s.unit, it.unit) << it.hdu << " " << s.name << ": unit";
          }
        }
        if (it.kind == K::Attribute) {
          EXPECT_EQ(s.type, it.type) << it.hdu << " attribute " << s.name << ": type";
        }
      }
      if (here) ++found[item_id(p, it)];
      if (it.when.empty()) {
        EXPECT_TRUE(here) << it.hdu << " " << to_string(it.kind) << " " << it.name << " is missing";
      }
    }
    // Nothing the table does not list (keywords aside).
    for (const auto& s : seen) {
      if (s.kind == K::Keyword) continue;
      bool listed = false;
      for (const auto& it : *p.format) listed = listed || matches(p, it, s);
      if (p.kind == FileKind::Fits && s.kind == K::Image)  // a table HDU is listed through its columns
        for (const auto& it : *p.format) listed = listed || (it.kind == K::Image && it.hdu == s.hdu);
      EXPECT_TRUE(listed) << s.hdu << " " << to_string(s.kind) << " " << s.name << " is not in " << p.key << "()";
      ++checked;
    }
    if (p.kind == FileKind::Fits) {  // every table HDU has columns listed, every listed HDU exists
      std::set<std::string> hdus;
      for (const auto& s : seen) hdus.insert(s.hdu);
      for (const auto& it : *p.format)
        if (it.when.empty() && (it.kind == K::Column || it.kind == K::Image) && it.name.find('*') == std::string::npos) {
          EXPECT_TRUE(hdus.count(it.hdu)) << "HDU " << it.hdu << " missing";
        }
    }
  }
  for (const auto& it : *p.format) {
    const std::string id = item_id(p, it);
    if (!it.when.empty() && !kNeverInTestNights.count(id)) {
      EXPECT_GT(found[id], 0) << id << " (" << it.when << ") is in no file of the test nights";
    }
  }
  EXPECT_GT(checked, 0u);
}

// ---- docs/formats.md

fs::path doc_path() { return fs::path(__FILE__).parent_path().parent_path().parent_path() / "docs" / "formats.md"; }

std::string trim(std::string s) {
  const auto a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  s = a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  if (s.size() >= 2 && s.front() == '`' && s.back() == '`') s = s.substr(1, s.size() - 2);
  return s;
}

/// Sections of the document: heading -> table rows (cells, trimmed, backticks removed).
struct DocSection {
  std::string heading, text;
  std::vector<std::vector<std::string>> rows;
};

std::vector<DocSection> read_doc() {
  std::vector<DocSection> out;
  std::ifstream in(doc_path());
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) {
      out.push_back({line, "", {}});
      continue;
    }
    if (out.empty()) continue;
    out.back().text += line + "\n";
    if (line.rfind("|", 0) != 0 || line.find("---") != std::string::npos) continue;
    std::vector<std::string> cells;
    std::string cell;
    std::istringstream ss(line.substr(1));
    while (std::getline(ss, cell, '|')) cells.push_back(trim(cell));
    if (cells.size() >= 6 && cells[1] != "kind") out.back().rows.push_back(cells);
  }
  return out;
}

std::string doc_row(const FormatItem& it) {
  std::string what = it.description + (it.when.empty() ? "" : " (" + it.when + ")");
  for (std::size_t i = 0; (i = what.find('|', i)) != std::string::npos; i += 2) what.insert(i, "\\");
  return "| `" + it.hdu + "` | " + to_string(it.kind) + " | `" + it.name + "` | " + it.type + " | " + it.unit + " | " +
         what + " |";
}

void check_doc(const Product& p, const std::vector<DocSection>& doc, const std::vector<FormatItem>* covered_by,
               const std::string& covered_key) {
  SCOPED_TRACE(p.key);
  const DocSection* sec = nullptr;
  for (const auto& s : doc)
    if (s.heading.find(p.key + "()") != std::string::npos) sec = &s;
  ASSERT_NE(sec, nullptr) << "docs/formats.md has no section whose heading names " << p.key << "()";
  auto same = [](const FormatItem& it, const std::vector<std::string>& r) {
    return r[0] == it.hdu && r[1] == to_string(it.kind) && r[2] == it.name && r[3] == it.type && r[4] == it.unit;
  };
  for (const auto& it : *p.format) {
    bool in_doc = false;
    for (const auto& r : sec->rows) in_doc = in_doc || same(it, r);
    // Items a product shares with another (RED = the EX layout + its own) may be documented once, in the
    // other's section, which this section must name.
    if (!in_doc && covered_by)
      for (const auto& c : *covered_by)
        if (c.hdu == it.hdu && c.kind == it.kind && c.name == it.name && c.type == it.type && c.unit == it.unit)
          in_doc = sec->text.find(covered_key + "()") != std::string::npos;
    EXPECT_TRUE(in_doc) << "not in docs/formats.md under " << sec->heading << ":\n" << doc_row(it);
  }
  for (const auto& r : sec->rows) {
    bool known = false;
    for (const auto& it : *p.format) known = known || same(it, r);
    EXPECT_TRUE(known) << "docs/formats.md, " << sec->heading << ": row " << r[0] << " | " << r[1] << " | " << r[2]
                       << " | " << r[3] << " | " << r[4] << " is not in " << p.key << "()";
  }
}

// ---- the nights

struct Nights {
  std::unique_ptr<kspecdr::testing::TempDir> dir;
  std::vector<Product> products;
};

fs::path reduce(const fs::path& dir, SpectroMode mode) {
  sim::SimConfig c;
  c.mode = mode;
  c.out_dir = dir / "night";
  c.seed = 20261121;
  c.n_bias = 3;
  c.n_flat = 3;
  c.n_arc = 2;
  c.n_science = 3;
  const sim::NightResult r = sim::simulate_night(c);
  ReduceConfig cfg;
  cfg.raw_dir = c.out_dir / "raw";
  cfg.out_dir = dir / "out";
  cfg.instrument = r.profile_file.string();
  cfg.night_name = "night";
  cfg.stage = ReduceStage::Red;
  cfg.resolved_config = "[reduce]\nstage = red\n";
  const ReduceSummary s = reduce_night(cfg, mpi::world());
  EXPECT_EQ(s.exit_code(), 0);
  return cfg.out_dir;
}

std::vector<fs::path> glob(const fs::path& dir, const std::string& prefix, const std::string& suffix) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind(prefix, 0) == 0 && f.size() >= suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

const Nights& nights() {
  static const Nights n = [] {
    Nights r;
    r.dir = std::make_unique<kspecdr::testing::TempDir>("kspecdr-formats");
    const fs::path outs[] = {reduce(r.dir->path() / "slit", SpectroMode::Slit),
                             reduce(r.dir->path() / "fiber", SpectroMode::Fiber)};
    auto add = [&](const std::string& key, const std::vector<FormatItem>& f, FileKind kind, const std::string& sub,
                   const std::string& prefix, const std::string& suffix) {
      Product* p = nullptr;
      for (auto& q : r.products)
        if (q.key == key) p = &q;
      if (!p) p = &r.products.emplace_back(Product{key, &f, kind, {}});
      for (const auto& o : outs)
        for (auto& file : glob(o / sub, prefix, suffix)) p->files.push_back(file);
    };
    add("im_format", detector::im_format(), FileKind::Fits, "im", "", ".im.fits");
    add("master_bias_format", detector::master_bias_format(), FileKind::Fits, "calib", "master_bias_", ".fits");
    add("master_flat_format", detector::master_flat_format(), FileKind::Fits, "calib", "master_flat_", ".fits");
    add("trace_file_format", trace::trace_file_format(), FileKind::Fits, "calib", "traces_", ".fits");
    add("arc_format", wavecal::arc_format(), FileKind::Fits, "calib", "arcsol_", ".fits");
    add("ex_format", extract::ex_format(), FileKind::Fits, "ex", "", ".ex.fits");
    add("ex_format", extract::ex_format(), FileKind::Fits, "calib", "flat_ex_", ".fits");
    add("red_format", wavecal::red_format(), FileKind::Fits, "red", "", ".red.fits");
    add("rainbow_format", series::rainbow_format(), FileKind::Hdf5, "", "", ".rainbow.h5");
    add("rainbow_fits_format", series::rainbow_fits_format(), FileKind::Fits, "", "", ".rainbow.fits");
    add("diagnostics_format", diagnostics_format(), FileKind::Hdf5, "", "diagnostics", ".h5");
    add("obslog_format", obslog_format(), FileKind::Ecsv, "", "log", ".ecsv");
    return r;
  }();
  return n;
}

const Product& product(const std::string& key) {
  for (const auto& p : nights().products)
    if (p.key == key) return p;
  throw std::runtime_error("no product " + key);
}

}  // namespace

class Formats : public ::testing::TestWithParam<std::string> {};

TEST_P(Formats, TheFilesHoldExactlyTheTable) { check_product(product(GetParam())); }

TEST_P(Formats, TheDocumentListsExactlyTheTable) {
  static const std::vector<DocSection> doc = read_doc();
  ASSERT_FALSE(doc.empty()) << doc_path();
  const Product& p = product(GetParam());
  const bool red = p.key == "red_format";
  check_doc(p, doc, red ? &extract::ex_format() : nullptr, red ? "ex_format" : "");
}

INSTANTIATE_TEST_SUITE_P(Products, Formats,
                         ::testing::Values("im_format", "master_bias_format", "master_flat_format",
                                           "trace_file_format", "arc_format", "ex_format", "red_format",
                                           "rainbow_format", "rainbow_fits_format", "diagnostics_format",
                                           "obslog_format"),
                         [](const auto& p) { return p.param; });

// The flux-calibrated cube <night>.fcal.rainbow.h5 needs the in-field calibration, which these nights do not
// run: its files are checked against rainbow_fcal_format() by tests/integration/test_fluxcal_cube.cpp, its
// table against the document here (the items it shares with the electron cube may be documented there).
TEST(FormatsDoc, TheFcalCubeSectionListsExactlyTheTable) {
  static const std::vector<DocSection> doc = read_doc();
  ASSERT_FALSE(doc.empty()) << doc_path();
  const Product p{"rainbow_fcal_format", &series::rainbow_fcal_format(), FileKind::Hdf5, {}};
  check_doc(p, doc, &series::rainbow_format(), "rainbow_format");
}

// The in-field calibration's fluxcal_cal.h5 needs a catalog and a template grid, which these nights do not have:
// its files are checked against fluxcal::infield_cal_format() by tests/integration/test_fluxcal_infield.cpp, its
// table against the document here (and for well-formed items).
TEST(FormatsDoc, TheInFieldCalSectionListsExactlyTheTable) {
  static const std::vector<DocSection> doc = read_doc();
  ASSERT_FALSE(doc.empty()) << doc_path();
  const Product p{"infield_cal_format", &fluxcal::infield_cal_format(), FileKind::Hdf5, {}};
  check_doc(p, doc, nullptr, "");
  const std::set<std::string> types = {"float64", "uint8", "int64", "string"};
  std::set<std::string> ids;
  for (const auto& it : *p.format) {
    EXPECT_TRUE(types.count(it.type)) << it.name << ": type " << it.type;
    EXPECT_FALSE(it.description.empty()) << it.name;
    EXPECT_TRUE(ids.insert(it.hdu + "|" + to_string(it.kind) + "|" + it.name).second) << it.hdu << " " << it.name;
  }
}

// The CSV log has the ECSV's columns, in order.
TEST(FormatsLog, TheCsvHeaderIsTheTable) {
  for (const auto& f : product("obslog_format").files) {
    std::ifstream in(f.parent_path() / "log.csv");
    std::string header;
    std::getline(in, header);
    std::string want;
    for (const auto& it : obslog_format()) want += (want.empty() ? "" : ",") + it.name;
    EXPECT_EQ(header, want) << f.parent_path() / "log.csv";
  }
}

// The readers of a file's header and tables alone (the night's diagnostics and the cubes' layout use them)
// give exactly what the whole-file readers give, for every EX and RED file of the nights.
namespace {
/// NaN-aware equality of two doubles.
bool same(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

void expect_same_tables(const SpectrumSet& full, const SpectrumSet& tables, const fs::path& file) {
  SCOPED_TRACE(file.string());
  ASSERT_EQ(full.header.cards().size(), tables.header.cards().size());
  for (std::size_t i = 0; i < full.header.cards().size(); ++i) {
    EXPECT_EQ(full.header.cards()[i].key, tables.header.cards()[i].key);
    EXPECT_EQ(full.header.cards()[i].value, tables.header.cards()[i].value);
  }
  EXPECT_EQ(full.header.history(), tables.header.history());
  ASSERT_EQ(full.apertures.size(), tables.apertures.size());
  ASSERT_EQ(full.diagnostics.size(), tables.diagnostics.size());
  for (std::size_t a = 0; a < full.apertures.size(); ++a) {
    EXPECT_EQ(full.apertures[a].name, tables.apertures[a].name);
    EXPECT_EQ(full.apertures[a].type, tables.apertures[a].type);
    EXPECT_TRUE(same(full.apertures[a].ra_deg, tables.apertures[a].ra_deg));
    const auto &x = full.diagnostics[a], &y = tables.diagnostics[a];
    EXPECT_EQ(x.status, y.status);
    EXPECT_EQ(x.rejected, y.rejected);
    EXPECT_EQ(x.bad_columns, y.bad_columns);
    for (auto m : {&ApertureDiagnostics::trace_offset_px, &ApertureDiagnostics::shift_px,
                   &ApertureDiagnostics::width_px, &ApertureDiagnostics::snr_median, &ApertureDiagnostics::sky_median_e})
      EXPECT_TRUE(same(x.*m, y.*m)) << a;
  }
  EXPECT_EQ(tables.flux.size(), 0) << "no pixels are read";
}
}  // namespace

TEST(FormatsReaders, HeaderAndTablesAloneAreWhatTheWholeFileHolds) {
  std::size_t n = 0;
  for (const auto& file : product("ex_format").files) {
    expect_same_tables(extract::read_ex_file(file), extract::read_ex_tables(file), file);
    ++n;
  }
  for (const auto& file : product("red_format").files) {
    const auto full = wavecal::read_red_file(file), tables = wavecal::read_red_tables(file);
    expect_same_tables(full.spectra, tables.spectra, file);
    EXPECT_EQ(full.grid.centres, tables.grid.centres) << file;
    EXPECT_EQ(full.grid.edges, tables.grid.edges) << file;
    ASSERT_EQ(full.wave.size(), tables.wave.size());
    for (std::size_t a = 0; a < full.wave.size(); ++a) {
      EXPECT_EQ(full.wave[a].status, tables.wave[a].status);
      EXPECT_EQ(full.wave[a].n_lines, tables.wave[a].n_lines);
      EXPECT_TRUE(same(full.wave[a].rms_px, tables.wave[a].rms_px));
      EXPECT_TRUE(same(full.wave[a].flexure_px, tables.wave[a].flexure_px));
    }
    ++n;
  }
  EXPECT_GE(n, 16u) << "the two nights' EX (science, arcs, master flat) and RED files";
}

// Every table item is well formed: a known type, a description, no duplicate.
TEST(FormatsTables, ItemsAreWellFormed) {
  // KSPECDR_FORMATS_DUMP=<file> writes every table as the rows docs/formats.md expects.
  if (const char* dump = std::getenv("KSPECDR_FORMATS_DUMP")) {
    std::ofstream out(dump);
    for (const auto& p : nights().products) {
      out << "### " << p.key << "\n\n| HDU / path | kind | name | type | unit | meaning |\n|---|---|---|---|---|---|\n";
      for (const auto& it : *p.format) out << doc_row(it) << "\n";
      out << "\n";
    }
  }
  const std::set<std::string> types = {"float32", "float64", "float64[n]", "uint16", "uint8",
                                       "int64",   "string",  "logical"};
  for (const auto& p : nights().products) {
    std::set<std::string> ids;
    for (const auto& it : *p.format) {
      EXPECT_TRUE(types.count(it.type)) << p.key << " " << it.name << ": type " << it.type;
      EXPECT_FALSE(it.description.empty()) << p.key << " " << it.name;
      EXPECT_TRUE(ids.insert(it.hdu + "|" + to_string(it.kind) + "|" + it.name).second)
          << p.key << ": " << it.hdu << " " << it.name << " listed twice";
    }
  }
}
