#pragma once
// A FITS-like header held in memory: an ordered list of keyword cards plus
// HISTORY and COMMENT lines. Values keep their FITS spelling so that a header
// read from one file and written to another is not re-formatted.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kspecdr {

struct HeaderCard {
  std::string key;      ///< upper case, at most 8 characters (or HIERARCH name)
  std::string value;    ///< FITS value text: 'quoted string', T/F, integer or real
  std::string comment;
};

class Header {
 public:
  /// True if `key` is present.
  bool has(const std::string& key) const;
  /// Raw FITS value text, or nullopt.
  std::optional<std::string> raw(const std::string& key) const;

  /// Typed getters. `get_*` return nullopt when absent; they throw DataError
  /// (naming the keyword) when present but of the wrong type.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<double> get_double(const std::string& key) const;
  std::optional<long long> get_int(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;

  /// Required getters: throw DataError naming the keyword when absent.
  std::string require_string(const std::string& key) const;
  double require_double(const std::string& key) const;

  void set(const std::string& key, const std::string& value, const std::string& comment = "");
  void set(const std::string& key, const char* value, const std::string& comment = "");
  void set(const std::string& key, double value, const std::string& comment = "");
  void set(const std::string& key, long long value, const std::string& comment = "");
  void set(const std::string& key, int value, const std::string& comment = "");
  void set(const std::string& key, bool value, const std::string& comment = "");
  /// Sets a card whose value text is already FITS-formatted.
  void set_raw(const std::string& key, const std::string& fits_value, const std::string& comment = "");
  void erase(const std::string& key);

  void add_history(const std::string& text);
  void add_comment(const std::string& text);

  /// Adds every card of `other` that this header lacks (used for primary + extension headers).
  void merge_missing(const Header& other);

  const std::vector<HeaderCard>& cards() const { return cards_; }
  const std::vector<std::string>& history() const { return history_; }
  const std::vector<std::string>& comments() const { return comments_; }

  /// Formats a string as a FITS string value ('text', quotes doubled).
  static std::string quote(const std::string& s);
  /// True for keywords that describe the HDU structure (BITPIX, NAXISn, BZERO ...),
  /// which a writer sets itself and never copies from another header.
  static bool is_structural(const std::string& key);

 private:
  std::vector<HeaderCard> cards_;
  std::vector<std::string> history_;
  std::vector<std::string> comments_;
  HeaderCard* find(const std::string& key);
  const HeaderCard* find(const std::string& key) const;
};

}  // namespace kspecdr
