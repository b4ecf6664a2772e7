#pragma once
// The aperture catalogue columns that several files share (the FIBRES table of EX files, the TRACES
// table of trace maps, and the raw frames' fiber table): NAME, TYPE, RA, DEC and one MAG_<band>
// column per band that any aperture knows. One writer and one reader, so the files cannot drift apart.
#include <cstddef>
#include <string>
#include <vector>

#include "kspecdr/core/trace.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::io {

/// "MAG_<band>" for a band name (a name that already starts with MAG_ is kept).
std::string mag_column(const std::string& band);

/// Appends NAME, TYPE, RA [deg], DEC [deg] and MAG_* [mag] columns (NaN where an aperture lacks a band).
void add_aperture_columns(fits::Table& t, const std::vector<ApertureInfo>& apertures);

/// Row `r` of a table with those columns. NAME and TYPE are required (DataError naming the column);
/// RA, DEC and magnitudes are read when present. Magnitude columns are the numeric ones whose name
/// starts with "MAG".
ApertureInfo aperture_from_row(const fits::Table& t, std::size_t r);

}  // namespace kspecdr::io
