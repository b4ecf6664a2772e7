#include "kspecdr/core/header.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>

#include "kspecdr/core/error.hpp"

namespace kspecdr {
namespace {

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

std::optional<double> parse_number(const std::string& text) {
  std::string t = trim(text);
  if (t.empty()) return std::nullopt;
  for (auto& c : t)
    if (c == 'D' || c == 'd') c = 'E';  // FITS allows D exponents
  char* end = nullptr;
  double v = std::strtod(t.c_str(), &end);
  if (end == t.c_str() || trim(std::string(end)).size() != 0) return std::nullopt;
  return v;
}

}  // namespace

HeaderCard* Header::find(const std::string& key) {
  const std::string k = upper(key);
  for (auto& c : cards_)
    if (c.key == k) return &c;
  return nullptr;
}
const HeaderCard* Header::find(const std::string& key) const {
  return const_cast<Header*>(this)->find(key);
}

bool Header::has(const std::string& key) const { return find(key) != nullptr; }

std::optional<std::string> Header::raw(const std::string& key) const {
  if (auto* c = find(key)) return c->value;
  return std::nullopt;
}

std::optional<std::string> Header::get_string(const std::string& key) const {
  auto* c = find(key);
  if (!c) return std::nullopt;
  std::string v = trim(c->value);
  if (v.size() >= 2 && v.front() == '\'') {
    std::string out;
    for (std::size_t i = 1; i + 1 < v.size(); ++i) {
      if (v[i] == '\'' && v[i + 1] == '\'') ++i;
      out += v[i];
    }
    // FITS: trailing blanks in a string value are not significant.
    auto e = out.find_last_not_of(' ');
    return e == std::string::npos ? std::string{} : out.substr(0, e + 1);
  }
  return v;  // numbers and logicals read as text are allowed
}

std::optional<double> Header::get_double(const std::string& key) const {
  auto* c = find(key);
  if (!c) return std::nullopt;
  if (auto v = parse_number(c->value)) return v;
  // Some instruments write numbers as strings ('1.25'); accept them.
  if (auto s = get_string(key))
    if (auto v = parse_number(*s)) return v;
  throw DataError(fmt::format("header keyword {} is not a number (value {})", c->key, c->value),
                  ErrorContext{.keyword = c->key});
}

std::optional<long long> Header::get_int(const std::string& key) const {
  auto v = get_double(key);
  if (!v) return std::nullopt;
  if (std::floor(*v) != *v)
    throw DataError(fmt::format("header keyword {} is not an integer (value {})", upper(key), *v),
                    ErrorContext{.keyword = upper(key)});
  return static_cast<long long>(*v);
}

std::optional<bool> Header::get_bool(const std::string& key) const {
  auto* c = find(key);
  if (!c) return std::nullopt;
  std::string v = upper(trim(c->value));
  if (v == "T") return true;
  if (v == "F") return false;
  throw DataError(fmt::format("header keyword {} is not a logical (value {})", c->key, c->value),
                  ErrorContext{.keyword = c->key});
}

std::string Header::require_string(const std::string& key) const {
  auto v = get_string(key);
  if (!v)
    throw DataError(fmt::format("required header keyword {} is missing", upper(key)),
                    ErrorContext{.keyword = upper(key)});
  return *v;
}

double Header::require_double(const std::string& key) const {
  auto v = get_double(key);
  if (!v)
    throw DataError(fmt::format("required header keyword {} is missing", upper(key)),
                    ErrorContext{.keyword = upper(key)});
  return *v;
}

std::string Header::quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  // FITS wants at least 8 characters between the quotes for fixed-format readers.
  while (out.size() < 9) out += ' ';
  out += '\'';
  return out;
}

void Header::set_raw(const std::string& key, const std::string& fits_value, const std::string& comment) {
  if (auto* c = find(key)) {
    c->value = fits_value;
    if (!comment.empty()) c->comment = comment;
    return;
  }
  cards_.push_back({upper(key), fits_value, comment});
}

void Header::set(const std::string& key, const std::string& value, const std::string& comment) {
  set_raw(key, quote(value), comment);
}
void Header::set(const std::string& key, const char* value, const std::string& comment) {
  set(key, std::string(value), comment);
}
void Header::set(const std::string& key, double value, const std::string& comment) {
  if (!std::isfinite(value))
    throw DataError(fmt::format("cannot write non-finite value to header keyword {}", upper(key)),
                    ErrorContext{.keyword = upper(key)});
  std::string s = fmt::format("{:.15G}", value);
  if (s.find_first_of(".E") == std::string::npos) s += ".0";
  set_raw(key, s, comment);
}
void Header::set(const std::string& key, long long value, const std::string& comment) {
  set_raw(key, fmt::format("{}", value), comment);
}
void Header::set(const std::string& key, int value, const std::string& comment) {
  set(key, static_cast<long long>(value), comment);
}
void Header::set(const std::string& key, bool value, const std::string& comment) {
  set_raw(key, value ? "T" : "F", comment);
}

void Header::erase(const std::string& key) {
  const std::string k = upper(key);
  cards_.erase(std::remove_if(cards_.begin(), cards_.end(), [&](const HeaderCard& c) { return c.key == k; }),
               cards_.end());
}

void Header::add_history(const std::string& text) { history_.push_back(text); }
void Header::add_comment(const std::string& text) { comments_.push_back(text); }

void Header::merge_missing(const Header& other) {
  for (const auto& c : other.cards_)
    if (!has(c.key)) cards_.push_back(c);
}

bool Header::is_structural(const std::string& key) {
  static const char* fixed[] = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT",
                                "BZERO", "BSCALE", "TFIELDS", "THEAP", "CHECKSUM", "DATASUM", "END",
                                "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZTILE1", "ZTILE2", "ZQUANTIZ",
                                "ZDITHER0", "ZSIMPLE", "ZTENSION", "ZEXTEND", "ZPCOUNT", "ZGCOUNT", "INHERIT",
                                "BLANK", "EXTNAME", "EXTVER"};
  const std::string k = upper(key);
  for (const char* f : fixed)
    if (k == f) return true;
  auto starts = [&](const char* p) { return k.rfind(p, 0) == 0; };
  // NAXISn, TTYPEn, TFORMn, TUNITn ..., ZNAXISn, ZTILEn, ZNAMEn, ZVALn
  return starts("NAXIS") || starts("TTYPE") || starts("TFORM") || starts("TUNIT") || starts("TNULL") ||
         starts("TSCAL") || starts("TZERO") || starts("TDISP") || starts("TDIM") || starts("ZNAXIS") ||
         starts("ZTILE") || starts("ZNAME") || starts("ZVAL") || starts("ZFORM") || starts("ZCTYP");
}

}  // namespace kspecdr
