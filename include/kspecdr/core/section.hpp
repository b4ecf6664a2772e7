#pragma once
// Rectangular pixel sections. FITS/IRAF sections like "[1:966,4110:4190]" are
// 1-based and inclusive, x first; a Section is 0-based, half-open, with rows (y)
// and columns (x) named explicitly so that no caller has to remember the order.
#include <string>

namespace kspecdr {

struct Section {
  long x0 = 0, x1 = 0;  ///< columns [x0, x1)
  long y0 = 0, y1 = 0;  ///< rows    [y0, y1)
  bool flip_x = false;  ///< the FITS section ran from high to low x (e.g. "[100:1,...]")
  bool flip_y = false;
  long nx() const { return x1 - x0; }
  long ny() const { return y1 - y0; }
  bool empty() const { return nx() <= 0 || ny() <= 0; }
  bool inside(long width, long height) const { return x0 >= 0 && y0 >= 0 && x1 <= width && y1 <= height; }
  /// FITS spelling, 1-based inclusive: "[x0+1:x1,y0+1:y1]".
  std::string to_fits() const;
  bool operator==(const Section&) const = default;
};

/// Parses an IRAF/FITS section "[x1:x2,y1:y2]" (also "[*,y1:y2]" needs the full size,
/// so it is rejected). Throws ConfigError naming the text on a malformed section.
Section parse_fits_section(const std::string& text);

}  // namespace kspecdr
