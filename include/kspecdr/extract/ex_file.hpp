#pragma once
// The EX file: extracted spectra on detector pixels. Its layout — every HDU,
// table column and keyword with type, unit and meaning — is the one table
// `ex_format()`, which the writer and reader follow and from which
// docs/formats.md can be generated.
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/spectrum.hpp"

namespace kspecdr::extract {

/// One item of a file format.
struct FormatItem {
  enum class Kind { Image, Column, Keyword };
  std::string hdu;          ///< "PRIMARY" or the EXTNAME
  Kind kind = Kind::Image;
  std::string name;         ///< EXTNAME of an image, column name, or keyword
  std::string type;         ///< FITS type: float32, uint16, float64, int64, string
  std::string unit;         ///< "" when dimensionless
  std::string description;
};

/// The EX layout: PRIMARY flux (NAPER × NPIX, e-), VARIANCE, VAR_STAR, VAR_SKY, VAR_READ, SKY, MASK,
/// OFFSET, WIDTH, PEAK, MASKFRAC, REJECTED images; FIBRES and DIAGNOSTICS tables; their keywords.
/// FIBRES gains one MAG_* column per magnitude name that any aperture carries.
const std::vector<FormatItem>& ex_format();

/// Writes `spectra` to `path` atomically (temporary name, renamed when complete). Throws Error if the file
/// exists and `overwrite` is false, FitsError on write failures.
void write_ex_file(const std::filesystem::path& path, const SpectrumSet& spectra, bool overwrite);

/// Reads an EX file written by write_ex_file. Throws FitsError/DataError naming the file and HDU.
SpectrumSet read_ex_file(const std::filesystem::path& path);

}  // namespace kspecdr::extract
