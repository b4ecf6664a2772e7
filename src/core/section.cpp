#include "kspecdr/core/section.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <regex>

#include "kspecdr/core/error.hpp"

namespace kspecdr {

std::string Section::to_fits() const {
  auto a = [](long lo, long hi, bool flip) {
    return flip ? fmt::format("{}:{}", hi, lo + 1) : fmt::format("{}:{}", lo + 1, hi);
  };
  return fmt::format("[{},{}]", a(x0, x1, flip_x), a(y0, y1, flip_y));
}

Section parse_fits_section(const std::string& text) {
  static const std::regex re(R"(^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\].*$)");
  std::smatch m;
  if (!std::regex_match(text, m, re))
    throw ConfigError(fmt::format("'{}' is not a pixel section of the form [x1:x2,y1:y2]", text));
  long a = std::stol(m[1]), b = std::stol(m[2]), c = std::stol(m[3]), d = std::stol(m[4]);
  if (a < 1 || b < 1 || c < 1 || d < 1)
    throw ConfigError(fmt::format("pixel section '{}' has a zero or negative index (FITS sections start at 1)", text));
  Section s;
  s.x0 = std::min(a, b) - 1;
  s.x1 = std::max(a, b);
  s.y0 = std::min(c, d) - 1;
  s.y1 = std::max(c, d);
  s.flip_x = a > b;
  s.flip_y = c > d;
  return s;
}

}  // namespace kspecdr
