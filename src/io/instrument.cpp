#include "kspecdr/io/instrument.hpp"

#include <boost/property_tree/ini_parser.hpp>
#include <boost/property_tree/ptree.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <set>

#include "kspecdr/core/error.hpp"

namespace kspecdr {
namespace fs = std::filesystem;
namespace pt = boost::property_tree;

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}
/// INI values may carry a trailing "; comment" or "# comment".
std::string strip_comment(const std::string& v) {
  std::string out = v;
  for (const char* mark : {" ;", "\t;", " #", "\t#"}) {
    auto p = out.find(mark);
    if (p != std::string::npos) out = out.substr(0, p);
  }
  return trim(out);
}
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(trim(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!trim(cur).empty() || !out.empty()) out.push_back(trim(cur));
  out.erase(std::remove(out.begin(), out.end(), std::string{}), out.end());
  return out;
}

/// Reads typed values from one INI section, naming file, section and key in every error,
/// and remembering which keys were used so that unknown (misspelt) keys are reported.
class SectionReader {
 public:
  SectionReader(const pt::ptree* tree, std::string file, std::string section)
      : tree_(tree), file_(std::move(file)), section_(std::move(section)) {}

  std::optional<std::string> str(const std::string& key) {
    used_.insert(key);
    if (!tree_) return std::nullopt;
    auto v = tree_->get_optional<std::string>(pt::ptree::path_type(key, '/'));
    if (!v) return std::nullopt;
    return strip_comment(*v);
  }
  std::string str(const std::string& key, const std::string& def) { return str(key).value_or(def); }
  std::string required(const std::string& key) {
    auto v = str(key);
    if (!v || v->empty()) throw ConfigError(fmt::format("[{}] {} is required", section_, key), ctx(key));
    return *v;
  }
  double number(const std::string& key, double def) {
    auto v = str(key);
    if (!v || v->empty()) return def;
    char* end = nullptr;
    double d = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || !trim(end).empty())
      throw ConfigError(fmt::format("[{}] {} = '{}' is not a number", section_, key, *v), ctx(key));
    return d;
  }
  bool boolean(const std::string& key, bool def) {
    auto v = str(key);
    if (!v || v->empty()) return def;
    std::string l = lower(*v);
    if (l == "true" || l == "yes" || l == "1" || l == "on") return true;
    if (l == "false" || l == "no" || l == "0" || l == "off") return false;
    throw ConfigError(fmt::format("[{}] {} = '{}' is not true/false", section_, key, *v), ctx(key));
  }
  std::optional<Section> section(const std::string& key) {
    auto v = str(key);
    if (!v || v->empty()) return std::nullopt;
    try {
      return parse_fits_section(*v);
    } catch (Error& e) {
      throw ConfigError(fmt::format("[{}] {}: {}", section_, key, e.message()), ctx(key));
    }
  }
  void check_unknown() const {
    if (!tree_) return;
    for (const auto& [k, v] : *tree_)
      if (!used_.count(k))
        throw ConfigError(fmt::format("[{}] has an unknown key '{}' (see docs/instruments.md for the keys)", section_, k),
                          ctx(k));
  }
  ErrorContext ctx(const std::string& key) const {
    return ErrorContext{.file = file_, .keyword = fmt::format("[{}] {}", section_, key)};
  }

 private:
  const pt::ptree* tree_;
  std::string file_, section_;
  std::set<std::string> used_;
};

Condition parse_condition(const std::string& text, const InstrumentProfile& p, const ErrorContext& ctx) {
  std::string t = trim(text);
  Condition c;
  struct OpText {
    const char* text;
    Condition::Op op;
  };
  // Longest operators first so that "!=" is not read as "=".
  static const OpText ops[] = {{"==", Condition::Op::Equal},     {"!=", Condition::Op::NotEqual},
                               {"!~", Condition::Op::NotContains}, {"~", Condition::Op::Contains},
                               {">", Condition::Op::Greater},     {"<", Condition::Op::Less}};
  for (const auto& o : ops) {
    auto pos = t.find(o.text);
    if (pos == std::string::npos) continue;
    c.keyword = trim(t.substr(0, pos));
    c.op = o.op;
    c.value = trim(t.substr(pos + std::string(o.text).size()));
    if (c.value.size() >= 2 && (c.value.front() == '\'' || c.value.front() == '"')) c.value = c.value.substr(1, c.value.size() - 2);
    break;
  }
  if (c.keyword.empty()) {
    auto words = split(t, ' ');
    if (words.size() == 2 && lower(words[1]) == "exists") {
      c.keyword = words[0];
      c.op = Condition::Op::Exists;
    } else if (words.size() == 2 && lower(words[1]) == "missing") {
      c.keyword = words[0];
      c.op = Condition::Op::Missing;
    } else {
      throw ConfigError(fmt::format("cannot read the condition '{}': write KEY == value, KEY != value, KEY ~ text, "
                                    "KEY !~ text, KEY > number, KEY < number, KEY exists or KEY missing", t),
                        ctx);
    }
  }
  // A logical name from [keywords] stands for its FITS keyword.
  if (auto k = p.keyword(lower(c.keyword)); !k.empty()) c.keyword = k;
  c.keyword = upper(c.keyword);
  return c;
}

}  // namespace

std::string to_string(SpectroMode m) { return m == SpectroMode::Fiber ? "fiber" : "slit"; }

std::string to_string(FrameClass c) {
  switch (c) {
    case FrameClass::Bias: return "bias";
    case FrameClass::Dark: return "dark";
    case FrameClass::Flat: return "flat";
    case FrameClass::Arc: return "arc";
    case FrameClass::Science: return "science";
    case FrameClass::Imaging: return "imaging";
    case FrameClass::Unknown: return "unknown";
  }
  return "unknown";
}

FrameClass frame_class_from_string(const std::string& s) {
  std::string l = lower(trim(s));
  if (l == "bias" || l == "zero") return FrameClass::Bias;
  if (l == "dark") return FrameClass::Dark;
  if (l == "flat") return FrameClass::Flat;
  if (l == "arc") return FrameClass::Arc;
  if (l == "science") return FrameClass::Science;
  if (l == "imaging") return FrameClass::Imaging;
  if (l == "unknown") return FrameClass::Unknown;
  throw ConfigError(fmt::format("'{}' is not a frame class (bias, dark, flat, arc, science, imaging, unknown)", s));
}

bool Condition::matches(const Header& h) const {
  if (op == Op::Exists) return h.has(keyword);
  if (op == Op::Missing) return !h.has(keyword);
  if (!h.has(keyword)) return false;
  std::string v;
  try {
    v = lower(trim(h.get_string(keyword).value_or("")));
  } catch (const Error&) {
    return false;
  }
  std::string want = lower(value);
  switch (op) {
    case Op::Equal: return v == want;
    case Op::NotEqual: return v != want;
    case Op::Contains: return v.find(want) != std::string::npos;
    case Op::NotContains: return v.find(want) == std::string::npos;
    case Op::Greater:
    case Op::Less: {
      auto d = h.get_double(keyword);
      double w = std::strtod(value.c_str(), nullptr);
      return d && (op == Op::Greater ? *d > w : *d < w);
    }
    default: return false;
  }
}

std::string InstrumentProfile::keyword(const std::string& logical) const {
  auto it = keywords.find(lower(logical));
  return it == keywords.end() ? std::string{} : it->second;
}

FrameClass InstrumentProfile::classify(const Header& h) const {
  for (const auto& r : rules)
    if (std::all_of(r.conditions.begin(), r.conditions.end(), [&](const Condition& c) { return c.matches(h); }))
      return r.frame_class;
  return default_class;
}

std::string InstrumentProfile::setup_key(const Header& h) const {
  std::string key;
  for (const auto& s : setup_keywords) {
    std::string k = keyword(s);
    if (k.empty()) k = upper(s);
    std::string v;
    try {
      v = trim(h.get_string(k).value_or("?"));
      // Numbers written as 8651.000000 in one file and 8651.0 in another are one setup.
      char* end = nullptr;
      double d = std::strtod(v.c_str(), &end);
      if (end != v.c_str() && *end == '\0') v = fmt::format("{:g}", d);
    } catch (const Error&) {
      v = "?";
    }
    if (!key.empty()) key += "|";
    key += v;
  }
  return key.empty() ? "default" : key;
}

fs::path data_dir() {
  if (const char* env = std::getenv("KSPECDR_DATA_DIR"); env && *env) return env;
  fs::path build = KSPECDR_DATA_DIR_BUILD;
  if (fs::exists(build / "instruments")) return build;
  return KSPECDR_DATA_DIR_INSTALL;
}

std::vector<std::string> known_instruments() {
  std::vector<std::string> out;
  fs::path dir = data_dir() / "instruments";
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".ini") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

InstrumentProfile load_instrument(const std::string& name_or_path) {
  fs::path path = name_or_path;
  if (!fs::exists(path) || fs::is_directory(path)) {
    path = data_dir() / "instruments" / (name_or_path + ".ini");
    if (!fs::exists(path))
      throw ConfigError(fmt::format("unknown instrument '{}': no profile file of that name and none in {} "
                                    "(known: {}); pass a profile name or the path of a profile .ini",
                                    name_or_path, (data_dir() / "instruments").string(),
                                    fmt::join(known_instruments(), ", ")),
                        ErrorContext{.keyword = "instrument"});
  }
  pt::ptree tree;
  try {
    pt::read_ini(path.string(), tree);
  } catch (const pt::ini_parser_error& e) {
    throw ConfigError(fmt::format("instrument profile is not valid INI: {}", e.message()),
                      ErrorContext{.file = path.string(), .keyword = fmt::format("line {}", e.line())});
  }
  const std::string file = path.string();
  auto child = [&](const std::string& s) -> const pt::ptree* {
    auto it = tree.find(s);
    return it == tree.not_found() ? nullptr : &it->second;
  };

  InstrumentProfile p;
  p.source = path;
  try {
    SectionReader ins(child("instrument"), file, "instrument");
    if (!child("instrument")) throw ConfigError("the profile has no [instrument] section", ErrorContext{.file = file});
    p.name = ins.required("name");
    p.description = ins.str("description", "");
    std::string mode = lower(ins.required("mode"));
    if (mode == "fiber" || mode == "fibre")
      p.mode = SpectroMode::Fiber;
    else if (mode == "slit")
      p.mode = SpectroMode::Slit;
    else
      throw ConfigError(fmt::format("[instrument] mode = '{}' must be fiber or slit", mode), ins.ctx("mode"));
    p.image_hdu = ins.str("image_hdu", "auto");
    p.fibre_table_hdu = ins.str("fibre_table_hdu", "FIBRES");
    p.dispersion_axis = static_cast<int>(ins.number("dispersion_axis", 1));
    if (p.dispersion_axis != 1 && p.dispersion_axis != 2)
      throw ConfigError("[instrument] dispersion_axis must be 1 (NAXIS1, x) or 2 (NAXIS2, y)",
                        ins.ctx("dispersion_axis"));
    p.flip_dispersion = ins.boolean("flip_dispersion", false);
    p.flip_spatial = ins.boolean("flip_spatial", false);
    if (auto s = ins.str("raw_shape"); s && !s->empty()) {
      auto parts = split(*s, 'x');
      if (parts.size() != 2)
        throw ConfigError(fmt::format("[instrument] raw_shape = '{}' must be NAXIS2 x NAXIS1, e.g. 4200x966", *s),
                          ins.ctx("raw_shape"));
      p.raw_shape = std::vector<long>{std::stol(parts[0]), std::stol(parts[1])};
    }
    ins.check_unknown();

    SectionReader det(child("detector"), file, "detector");
    p.saturation_dn = det.number("saturation_dn", 65535.0);
    p.saturation_key = upper(det.str("saturation_key", ""));
    p.overscan_method = lower(det.str("overscan_method", "median"));
    if (p.overscan_method != "median" && p.overscan_method != "poly")
      throw ConfigError("[detector] overscan_method must be median or poly", det.ctx("overscan_method"));
    p.overscan_order = static_cast<int>(det.number("overscan_order", 1));
    for (const auto& s : split(det.str("bad_columns", ""), ',')) {
      char* end = nullptr;
      long v = std::strtol(s.c_str(), &end, 10);
      if (end == s.c_str() || *end != '\0' || v < 1)
        throw ConfigError(fmt::format("[detector] bad_columns: '{}' is not a column number (1-based)", s),
                          det.ctx("bad_columns"));
      p.bad_columns.push_back(v);
    }
    int namps = static_cast<int>(det.number("amplifiers", 1));
    det.check_unknown();
    if (namps < 1) throw ConfigError("[detector] amplifiers must be at least 1", det.ctx("amplifiers"));

    for (int a = 1; a <= namps; ++a) {
      std::string sname = fmt::format("amplifier.{}", a);
      if (!child(sname))
        throw ConfigError(fmt::format("[detector] amplifiers = {} but there is no [{}] section", namps, sname),
                          ErrorContext{.file = file, .keyword = sname});
      SectionReader amp(child(sname), file, sname);
      AmplifierSpec s;
      s.name = amp.str("name", std::to_string(a));
      s.datasec = amp.section("datasec");
      s.biassec = amp.section("biassec");
      s.detsec = amp.section("detsec");
      s.datasec_key = upper(amp.str("datasec_key", ""));
      s.biassec_key = upper(amp.str("biassec_key", ""));
      s.detsec_key = upper(amp.str("detsec_key", ""));
      s.gain = amp.number("gain", 0.0);
      s.gain_key = upper(amp.str("gain_key", ""));
      s.read_noise = amp.number("read_noise", 0.0);
      s.read_noise_key = upper(amp.str("read_noise_key", ""));
      amp.check_unknown();
      if (!s.datasec && s.datasec_key.empty())
        throw ConfigError(fmt::format("[{}] needs datasec or datasec_key", sname), amp.ctx("datasec"));
      if (!s.biassec && s.biassec_key.empty())
        throw ConfigError(fmt::format("[{}] needs biassec or biassec_key (the overscan strip)", sname),
                          amp.ctx("biassec"));
      if (s.gain <= 0 && s.gain_key.empty())
        throw ConfigError(fmt::format("[{}] needs a positive gain (e-/DN) or gain_key", sname), amp.ctx("gain"));
      if (namps > 1 && !s.detsec && s.detsec_key.empty())
        throw ConfigError(fmt::format("[{}] needs detsec or detsec_key: with several amplifiers the pipeline must "
                                      "know where each one's pixels go", sname),
                          amp.ctx("detsec"));
      p.amplifiers.push_back(std::move(s));
    }

    if (const auto* kw = child("keywords")) {
      for (const auto& [k, v] : *kw) {
        std::string val = strip_comment(v.data());
        if (lower(k) == "setup")
          p.setup_keywords = split(val, ',');
        else
          p.keywords[lower(k)] = upper(val);
      }
    }
    if (p.keyword("frame_type").empty())
      throw ConfigError("[keywords] frame_type is required (the keyword that says what a frame is)",
                        ErrorContext{.file = file, .keyword = "[keywords] frame_type"});

    if (const auto* cl = child("classify")) {
      for (const auto& [k, v] : *cl) {
        std::string val = strip_comment(v.data());
        ErrorContext ctx{.file = file, .keyword = "[classify] " + k};
        if (lower(k) == "default") {
          p.default_class = frame_class_from_string(val);
          continue;
        }
        auto colon = val.find(':');
        if (colon == std::string::npos)
          throw ConfigError(fmt::format("rule '{}' must read 'class: KEY == value && ...'", val), ctx);
        ClassRule r;
        r.text = val;
        try {
          r.frame_class = frame_class_from_string(val.substr(0, colon));
        } catch (Error& e) {
          e.add_context(ctx);
          throw;
        }
        std::string rest = val.substr(colon + 1);
        std::size_t pos = 0;
        while (true) {
          auto amp = rest.find("&&", pos);
          r.conditions.push_back(parse_condition(rest.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos), p, ctx));
          if (amp == std::string::npos) break;
          pos = amp + 2;
        }
        p.rules.push_back(std::move(r));
      }
    }
    if (p.rules.empty())
      throw ConfigError("[classify] has no rules: the pipeline could not tell bias, flat, arc and science apart",
                        ErrorContext{.file = file, .keyword = "[classify]"});

    SectionReader site(child("site"), file, "site");
    p.site_name = site.str("name", "");
    p.site_latitude_deg = site.number("latitude_deg", 0.0);
    p.site_longitude_deg = site.number("longitude_deg", 0.0);
    p.site_height_m = site.number("height_m", 0.0);
    p.extinction_file = site.str("extinction_file", "");
    site.check_unknown();

    SectionReader wav(child("wavelength"), file, "wavelength");
    p.wave_center_angstrom = wav.number("center_angstrom", 0.0);
    p.dispersion_angstrom_per_px = wav.number("dispersion_angstrom_per_px", 0.0);
    p.arc_linelists = split(wav.str("linelists", ""), ',');
    p.wavelength_medium = lower(wav.str("medium", "air"));
    if (p.wavelength_medium != "air" && p.wavelength_medium != "vacuum")
      throw ConfigError("[wavelength] medium must be air or vacuum", wav.ctx("medium"));
    wav.check_unknown();

    static const std::set<std::string> sections = {"instrument", "detector", "keywords", "classify", "site",
                                                   "wavelength"};
    for (const auto& [k, v] : tree)
      if (!sections.count(k) && k.rfind("amplifier.", 0) != 0)
        throw ConfigError(fmt::format("unknown section [{}] (see docs/instruments.md)", k),
                          ErrorContext{.file = file, .keyword = k});
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = file});
    throw;
  }
  return p;
}

}  // namespace kspecdr
