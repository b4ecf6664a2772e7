#include "kspecdr/pipeline/obslog.hpp"

#include <erfa.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>
#include <sstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr {
namespace fs = std::filesystem;

namespace {

bool is_fits_name(const std::string& n) {
  static const std::regex re(R"(.*\.(fits|fit|fts)(\.gz|\.fz)?$|.*\.fz$)", std::regex::icase);
  return std::regex_match(n, re);
}

std::string exposure_name(const fs::path& p) {
  std::string n = p.filename().string();
  for (const char* suffix : {".gz", ".fz", ".fits", ".fit", ".fts"}) {
    std::string s = suffix;
    if (n.size() > s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0) n = n.substr(0, n.size() - s.size());
  }
  return n;
}

std::string csv_quote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

/// Optional string keyword through the profile's keyword map.
std::string header_text(const Header& h, const InstrumentProfile& p, const std::string& logical) {
  std::string k = p.keyword(logical);
  if (k.empty() || !h.has(k)) return {};
  auto v = h.get_string(k);
  return v ? *v : std::string{};
}

}  // namespace

double iso_to_mjd(const std::string& date, const std::string& time) {
  static const std::regex re_date(R"(^\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?))?\s*$)");
  static const std::regex re_time(R"(^\s*(\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)\s*$)");
  std::smatch m;
  if (!std::regex_match(date, m, re_date))
    throw DataError(fmt::format("date '{}' is not ISO 8601 (YYYY-MM-DD[Thh:mm:ss])", date));
  int iy = std::stoi(m[1]), im = std::stoi(m[2]), id = std::stoi(m[3]);
  int ih = 0, imin = 0;
  double sec = 0.0;
  if (m[4].matched) {
    ih = std::stoi(m[4]);
    imin = std::stoi(m[5]);
    sec = std::stod(m[6]);
  } else if (!time.empty()) {
    std::smatch t;
    if (!std::regex_match(time, t, re_time))
      throw DataError(fmt::format("time '{}' is not hh:mm:ss[.s]", time));
    ih = std::stoi(t[1]);
    imin = std::stoi(t[2]);
    sec = std::stod(t[3]);
  }
  double d1 = 0, d2 = 0;
  // ERFA handles the calendar and UTC leap-second days correctly.
  int rc = eraDtf2d("UTC", iy, im, id, ih, imin, sec, &d1, &d2);
  if (rc < 0) throw DataError(fmt::format("date/time '{} {}' is not a valid UTC calendar date (ERFA {})", date, time, rc));
  return (d1 - 2400000.5) + d2;
}

double parse_angle_deg(const std::string& text, bool hours) {
  static const std::regex re(R"(^\s*([+-]?)(\d+)[: ](\d+)[: ](\d+(?:\.\d*)?)\s*$)");
  std::smatch m;
  if (std::regex_match(text, m, re)) {
    double v = std::stod(m[2]) + std::stod(m[3]) / 60.0 + std::stod(m[4]) / 3600.0;
    if (m[1] == "-") v = -v;
    return hours ? v * 15.0 : v;
  }
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str()) throw DataError(fmt::format("'{}' is not an angle (degrees or sexagesimal)", text));
  return v;
}

FrameInfo read_frame_info(const fs::path& file, const InstrumentProfile& p) {
  FrameInfo fi;
  fi.file = file;
  fi.name = exposure_name(file);
  try {
    fits::Fits f = fits::Fits::open(file);
    f.move_to(0);
    Header primary = f.read_header();
    Header h = primary;
    int hdu = 0;
    if (p.image_hdu == "auto") {
      hdu = f.first_image_hdu();
    } else if (std::all_of(p.image_hdu.begin(), p.image_hdu.end(), ::isdigit)) {
      hdu = std::stoi(p.image_hdu);
    } else {
      f.move_to(p.image_hdu);
      hdu = f.current_hdu();
    }
    f.move_to(hdu);
    if (hdu != 0) {
      h = f.read_header();
      h.merge_missing(primary);
    }
    auto shape = f.image_shape();
    if (shape.size() != 2)
      throw DataError(fmt::format("HDU {} is not a 2-dimensional image", hdu), ErrorContext{.hdu = std::to_string(hdu)});
    fi.ny = shape[0];
    fi.nx = shape[1];
    // A truncated file can have intact headers; reading the last pixel finds it cheaply
    // (one seek for plain FITS, one tile for .fz, and .gz is inflated on open anyway).
    f.check_last_pixel();

    fi.frame_class = p.classify(h);
    fi.object = header_text(h, p, "object");
    fi.disperser = header_text(h, p, "disperser");
    fi.lamps = header_text(h, p, "lamps");
    fi.setup = p.setup_key(h);

    const std::string kexp = p.keyword("exptime");
    if (kexp.empty() || !h.has(kexp))
      throw DataError(fmt::format("exposure-time keyword {} is missing", kexp.empty() ? "(unmapped)" : kexp),
                      ErrorContext{.keyword = kexp});
    fi.exptime_s = *h.get_double(kexp);

    const std::string kdate = p.keyword("date_obs");
    if (kdate.empty() || !h.has(kdate))
      throw DataError(fmt::format("date keyword {} is missing", kdate.empty() ? "(unmapped)" : kdate),
                      ErrorContext{.keyword = kdate});
    fi.date_obs = *h.get_string(kdate);
    std::string time = header_text(h, p, "time_obs");
    if (fi.date_obs.find('T') == std::string::npos && !time.empty()) fi.date_obs += "T" + time;
    fi.mjd_start = iso_to_mjd(fi.date_obs);
    fi.mjd_mid = fi.mjd_start + 0.5 * fi.exptime_s / 86400.0;

    const std::string kam = p.keyword("airmass");
    if (!kam.empty() && h.has(kam))
      fi.airmass = *h.get_double(kam);
    else
      fi.warnings.push_back("no airmass keyword");
    fi.ra_deg = fi.dec_deg = std::numeric_limits<double>::quiet_NaN();
    const std::string kra = p.keyword("ra"), kdec = p.keyword("dec");
    if (!kra.empty() && h.has(kra) && !kdec.empty() && h.has(kdec)) {
      auto ra = h.get_string(kra), dec = h.get_string(kdec);
      bool ra_sexa = ra->find(':') != std::string::npos || ra->find(' ') != std::string::npos;
      fi.ra_deg = parse_angle_deg(*ra, ra_sexa);
      fi.dec_deg = parse_angle_deg(*dec, false);
    }
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = file.string(), .exposure = fi.name});
    throw;
  }
  return fi;
}

ObservingLog build_observing_log(const fs::path& rawdir, const InstrumentProfile& p) {
  if (!fs::is_directory(rawdir))
    throw ConfigError(fmt::format("raw-data folder {} does not exist or is not a folder", rawdir.string()),
                      ErrorContext{.file = rawdir.string()});
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(rawdir))
    if (e.is_regular_file() && is_fits_name(e.path().filename().string())) files.push_back(e.path());
  std::sort(files.begin(), files.end());

  ObservingLog log;
  log.instrument = p.name;
  for (const auto& f : files) {
    try {
      log.frames.push_back(read_frame_info(f, p));
    } catch (const Error& e) {
      spdlog::warn("skipping unreadable frame: {}", e.what());
      log.unreadable.push_back({f, e.what()});
    }
  }
  std::stable_sort(log.frames.begin(), log.frames.end(), [](const FrameInfo& a, const FrameInfo& b) {
    return a.mjd_start != b.mjd_start ? a.mjd_start < b.mjd_start : a.name < b.name;
  });
  for (std::size_t i = 0; i < log.frames.size(); ++i) {
    const auto& fi = log.frames[i];
    // Biases do not depend on the disperser; they join every setup of the same readout shape.
    auto& set = log.sets[fi.setup];
    set.setup = fi.setup;
    switch (fi.frame_class) {
      case FrameClass::Bias: set.bias.push_back(i); break;
      case FrameClass::Dark: set.dark.push_back(i); break;
      case FrameClass::Flat: set.flat.push_back(i); break;
      case FrameClass::Arc: set.arc.push_back(i); break;
      case FrameClass::Science: set.science.push_back(i); break;
      case FrameClass::Imaging: set.imaging.push_back(i); break;
      case FrameClass::Unknown: set.unknown.push_back(i); break;
    }
  }
  return log;
}

namespace {
struct ColumnDef {
  const char* name;
  const char* datatype;  // ECSV datatype
  const char* unit;
  const char* description;
};
const ColumnDef kLogColumns[] = {
    {"file", "string", "", "raw file path"},
    {"exposure", "string", "", "exposure name (file name without suffixes)"},
    {"class", "string", "", "frame class from the instrument profile's rules"},
    {"object", "string", "", "object name"},
    {"exptime", "float64", "s", "exposure time"},
    {"date_obs", "string", "", "start of exposure, UTC, ISO 8601"},
    {"mjd_mid", "float64", "d", "MJD (UTC) at mid-exposure"},
    {"airmass", "float64", "", "airmass (0 when absent)"},
    {"ra", "float64", "deg", "pointing right ascension"},
    {"dec", "float64", "deg", "pointing declination"},
    {"setup", "string", "", "setup key (instrument profile setup keywords)"},
    {"disperser", "string", "", "grating or grism"},
    {"lamps", "string", "", "calibration lamps"},
    {"ny", "int64", "pix", "raw image rows (NAXIS2)"},
    {"nx", "int64", "pix", "raw image columns (NAXIS1)"},
};

}  // namespace

const std::vector<io::FormatItem>& obslog_format() {
  static const std::vector<io::FormatItem> f = [] {
    std::vector<io::FormatItem> v;
    for (const auto& c : kLogColumns) v.push_back({"log", io::FormatItem::Kind::Column, c.name, c.datatype, c.unit, c.description});
    return v;
  }();
  return f;
}

namespace {

std::vector<std::string> row_values(const FrameInfo& f) {
  auto num = [](double v) { return std::isfinite(v) ? fmt::format("{:.10g}", v) : std::string("nan"); };
  return {f.file.string(), f.name, to_string(f.frame_class), f.object, num(f.exptime_s), f.date_obs,
          fmt::format("{:.8f}", f.mjd_mid), num(f.airmass), num(f.ra_deg), num(f.dec_deg), f.setup, f.disperser,
          f.lamps, std::to_string(f.ny), std::to_string(f.nx)};
}

std::string csv_body(const ObservingLog& log) {
  std::ostringstream os;
  bool first = true;
  for (const auto& c : kLogColumns) {
    os << (first ? "" : ",") << c.name;
    first = false;
  }
  os << "\n";
  for (const auto& f : log.frames) {
    auto vals = row_values(f);
    for (std::size_t i = 0; i < vals.size(); ++i) os << (i ? "," : "") << csv_quote(vals[i]);
    os << "\n";
  }
  return os.str();
}
}  // namespace

void write_log_csv(const ObservingLog& log, const fs::path& path, bool overwrite) {
  io::write_text_atomic(path, csv_body(log), overwrite);
}

void write_log_ecsv(const ObservingLog& log, const fs::path& path, bool overwrite) {
  std::ostringstream os;
  os << "# %ECSV 1.0\n# ---\n# delimiter: ','\n# datatype:\n";
  for (const auto& c : kLogColumns) {
    os << "# - {name: " << c.name << ", datatype: " << c.datatype;
    if (*c.unit) os << ", unit: " << c.unit;
    os << ", description: " << c.description << "}\n";
  }
  os << "# meta:\n#   instrument: " << log.instrument << "\n#   unreadable:" << (log.unreadable.empty() ? " []\n" : "\n");
  for (const auto& u : log.unreadable) {
    std::string reason = u.reason;
    std::replace(reason.begin(), reason.end(), '\'', '"');
    os << "#   - {file: '" << u.file.string() << "', reason: '" << reason << "'}\n";
  }
  os << "# schema: astropy-2.0\n" << csv_body(log);
  io::write_text_atomic(path, os.str(), overwrite);
}

}  // namespace kspecdr
