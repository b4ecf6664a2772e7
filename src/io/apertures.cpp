#include "kspecdr/io/apertures.hpp"

#include <algorithm>
#include <cctype>
#include <limits>

namespace kspecdr::io {

namespace {
constexpr const char* kMagPrefix = "MAG_";
}

std::string mag_column(const std::string& band) {
  return band.rfind(kMagPrefix, 0) == 0 ? band : kMagPrefix + band;
}

void add_aperture_columns(fits::Table& t, const std::vector<ApertureInfo>& apertures) {
  std::vector<std::string> names, types, bands;
  std::vector<double> ra, dec;
  for (const auto& a : apertures) {
    names.push_back(a.name);
    types.push_back(std::string(1, a.type));
    ra.push_back(a.ra_deg);
    dec.push_back(a.dec_deg);
    for (const auto& [band, v] : a.mags)
      if (std::find(bands.begin(), bands.end(), mag_column(band)) == bands.end()) bands.push_back(mag_column(band));
  }
  t.add_string("NAME", names);
  t.add_string("TYPE", types);
  t.add_double("RA", ra, "deg");
  t.add_double("DEC", dec, "deg");
  for (const auto& col : bands) {
    std::vector<double> v;
    for (const auto& a : apertures) {
      double m = std::numeric_limits<double>::quiet_NaN();
      for (const auto& [band, val] : a.mags)
        if (mag_column(band) == col) m = val;
      v.push_back(m);
    }
    t.add_double(col, v, "mag");
  }
}

ApertureInfo aperture_from_row(const fits::Table& t, std::size_t r) {
  ApertureInfo a;
  a.name = t.column("NAME").strings.at(r);
  const std::string& ty = t.column("TYPE").strings.at(r);
  a.type = ty.empty() ? aperture_type::kProgram : static_cast<char>(std::toupper(static_cast<unsigned char>(ty[0])));
  if (t.has("RA")) a.ra_deg = t.column("RA").number(r);
  if (t.has("DEC")) a.dec_deg = t.column("DEC").number(r);
  for (const auto& c : t.columns)
    if (c.name.rfind("MAG", 0) == 0 && c.type != fits::Column::Type::String) a.mags.emplace_back(c.name, c.number(r));
  return a;
}

}  // namespace kspecdr::io
