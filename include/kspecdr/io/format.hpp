#pragma once
// One item of a file format: an HDU, table column or keyword of a FITS file, a
// dataset or attribute of an HDF5 file, or a column of a text table. Every
// product keeps its layout as one table of these next to its writer
// (ex_format(), red_format(), arc_format() ...); docs/formats.md lists the same
// items and tests/unit/test_formats.cpp checks files and document against them.
//
// Names may be patterns: a trailing run of lower-case 'n' after an upper-case
// FITS name stands for digits (MASKBn, IMCMBnnn) and '*' for any suffix
// (MAG_*); in HDF5 paths a <placeholder> stands for one or more path
// components (<star>, <run>) and '*' for one.
#include <string>

namespace kspecdr::io {

struct FormatItem {
  enum class Kind { Image, Column, Keyword, Dataset, Attribute };
  std::string hdu;          ///< FITS: "PRIMARY" or the EXTNAME; HDF5: the group or dataset path ("/" = root)
  Kind kind = Kind::Image;
  std::string name;         ///< EXTNAME of an image, column, keyword, dataset or attribute name
  std::string type;         ///< float32, uint16, float64, int64, string, logical; "float64[n]" = vector column
  std::string unit;         ///< "" when dimensionless
  std::string description;
  std::string when;         ///< "" = in every file; otherwise when the item is present
};

/// "image", "column", "keyword", "dataset", "attribute".
inline const char* to_string(FormatItem::Kind k) {
  switch (k) {
    case FormatItem::Kind::Image: return "image";
    case FormatItem::Kind::Column: return "column";
    case FormatItem::Kind::Keyword: return "keyword";
    case FormatItem::Kind::Dataset: return "dataset";
    case FormatItem::Kind::Attribute: return "attribute";
  }
  return "?";
}

}  // namespace kspecdr::io
