#include "kspecdr/core/names.hpp"

#include <cctype>

namespace kspecdr {

std::string safe_name(const std::string& text, const std::string& if_empty) {
  std::string out;
  for (char c : text)
    out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+') ? c : '_';
  return out.empty() ? if_empty : out;
}

}  // namespace kspecdr
