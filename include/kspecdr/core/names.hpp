#pragma once
// Names made safe for file names and HDF5 paths.
#include <string>

namespace kspecdr {

/// `text` with every character but letters, digits, '.', '-' and '+' replaced by '_'
/// ("R316R|8651|LONG_SLIT" → "R316R_8651_LONG_SLIT"); `if_empty` when nothing is left.
std::string safe_name(const std::string& text, const std::string& if_empty = "_");

}  // namespace kspecdr
