#pragma once
// A thin RAII wrapper over CFITSIO in the style of LSST afw's Fits: the
// fitsfile handle is closed on every path, and CFITSIO's integer status codes
// never escape — they become FitsError with the file, HDU and CFITSIO's own
// message stack. Reads every BITPIX (BZERO/BSCALE applied by CFITSIO), gzip
// (.gz) and tile-compressed (.fz) files, and multi-extension files.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"

namespace kspecdr::fits {

enum class HduType { Image, AsciiTable, BinaryTable };

/// One binary-table column. Numeric columns hold nrows × repeat values, row-major.
struct Column {
  enum class Type { Double, Int, String, Logical };
  std::string name;
  std::string unit;
  Type type = Type::Double;
  long repeat = 1;  ///< values per row (numeric); maximum string width (String)
  std::vector<double> doubles;
  std::vector<long long> ints;
  std::vector<std::string> strings;
  std::vector<bool> logicals;
  std::size_t nrows() const;
  /// Value of row `r` (element `k` of a vector column) as a double; throws for strings.
  double number(std::size_t r, long k = 0) const;
};

struct Table {
  std::vector<Column> columns;
  std::size_t nrows() const { return columns.empty() ? 0 : columns.front().nrows(); }
  bool has(const std::string& name) const;
  /// Column by name (case-insensitive); throws DataError naming the column when absent.
  const Column& column(const std::string& name) const;
  Column& add_double(const std::string& name, std::vector<double> v, const std::string& unit = "", long repeat = 1);
  Column& add_int(const std::string& name, std::vector<long long> v, const std::string& unit = "");
  Column& add_string(const std::string& name, std::vector<std::string> v);
  Column& add_logical(const std::string& name, std::vector<bool> v);
};

/// Pixel types for writing; the equivalents of FITS BITPIX, including unsigned 16-bit via BZERO.
enum class PixelType { UInt8, Int16, UInt16, Int32, Int64, Float32, Float64 };
int bitpix_of(PixelType t);  ///< BITPIX written to the file (UInt16 → 16 with BZERO 32768)

class Fits {
 public:
  /// Opens an existing file read-only. `.gz` and `.fz` are handled by CFITSIO.
  static Fits open(const std::filesystem::path& path);
  /// Creates a new file (replacing any existing one at `path`). Use with io::AtomicOutput.
  /// With `tile_compress`, images are written tile-compressed (RICE for integers, GZIP for floats, lossless).
  static Fits create(const std::filesystem::path& path, bool tile_compress = false);

  Fits(Fits&& other) noexcept;
  Fits& operator=(Fits&& other) noexcept;
  Fits(const Fits&) = delete;
  Fits& operator=(const Fits&) = delete;
  ~Fits();

  /// Closes explicitly, reporting errors (the destructor closes silently).
  void close();

  const std::string& path() const { return path_; }
  int num_hdus();
  int current_hdu();  ///< 0-based
  void move_to(int hdu);  ///< 0-based
  void move_to(const std::string& extname);  ///< throws FitsError naming file and EXTNAME if absent
  bool has_hdu(const std::string& extname);
  HduType hdu_type();
  /// EXTNAME of the current HDU, or "" (primary).
  std::string extname();

  /// Header of the current HDU without structural keywords (BITPIX, NAXISn, ...).
  Header read_header();

  /// Image dimensions of the current HDU as {ny, nx} (NAXIS2, NAXIS1); {} if NAXIS = 0.
  std::vector<long> image_shape();
  /// BITPIX the data represent after scaling (e.g. 20 = USHORT for BITPIX 16 + BZERO 32768).
  int image_equiv_bitpix();
  /// Reads a 2D image in the current HDU, any BITPIX, BZERO/BSCALE applied; BLANK → NaN.
  ImageArray read_image_float();
  ImageArrayD read_image_double();
  MaskArray read_image_mask();
  /// Rows [y0, y1) of the 2D image in the current HDU (0-based, y1 exclusive), as read_image_float and
  /// read_image_mask read the whole image; throws DataError naming the file and HDU when the rows lie outside it.
  ImageArray read_rows_float(long y0, long y1);
  MaskArray read_rows_mask(long y0, long y1);
  /// Reads the last pixel of the current image HDU: throws FitsError when the file is truncated.
  void check_last_pixel();
  /// Index of the first HDU that holds a 2D image (0 for a normal file, 1 for data in extension 1 or .fz).
  int first_image_hdu();

  /// Appends an image HDU (the primary if the file is empty). `extname` may be "" for the primary.
  void write_image(const ImageArray& a, const Header& h, const std::string& extname,
                   PixelType type = PixelType::Float32);
  void write_image(const ImageArrayD& a, const Header& h, const std::string& extname,
                   PixelType type = PixelType::Float64);
  void write_image(const MaskArray& a, const Header& h, const std::string& extname);
  /// An empty primary HDU carrying only a header.
  void write_empty_primary(const Header& h);

  Table read_table();  ///< binary table in the current HDU
  void write_table(const Table& t, const Header& h, const std::string& extname);

  /// Writes DATASUM and CHECKSUM in the current HDU.
  void write_checksum();
  /// Verifies CHECKSUM/DATASUM of every HDU that has them; false if any fails.
  bool verify_checksums();

 private:
  Fits(void* f, std::string path) : f_(f), path_(std::move(path)) {}
  [[noreturn]] void fail(int status, const std::string& what);
  void check(int status, const std::string& what) {
    if (status) fail(status, what);
  }
  template <typename T>
  void write_typed(const T* data, long ny, long nx, int datatype, PixelType type, const Header& h,
                   const std::string& extname);
  void write_header_cards(const Header& h);
  void* f_ = nullptr;  ///< CFITSIO fitsfile* (opaque here: fitsio.h stays out of our headers)
  std::string path_;
  bool tile_compress_ = false;
};

/// Reads an IM-style file: primary (or first image HDU) data, and VARIANCE and MASK when present.
/// The header is the primary header merged with the image HDU's. A file whose primary NEXTEND promises
/// more extensions than it has, and that lacks VARIANCE or MASK, is refused as truncated (DataError).
Image read_image_file(const std::filesystem::path& path);
/// Rows [y0, y1) of an IM-style file, as read_image_file reads all of it (data, VARIANCE and MASK, the same
/// merged header); `shape` receives the whole image's {ny, nx}.
Image read_image_rows(const std::filesystem::path& path, long y0, long y1, std::vector<long>* shape = nullptr);
/// Header of a MASK HDU: the name of every mask bit as MASKBn keywords.
Header mask_header();
/// Appends data (primary, with BUNIT and NEXTEND = 2 + n_extra), VARIANCE and MASK HDUs of `im` to an open file,
/// each with CHECKSUM; `n_extra` further HDUs are to follow.
void write_image_hdus(Fits& f, const Image& im, int n_extra = 0);
/// Writes data (FLOAT), VARIANCE (FLOAT) and MASK (uint16, with MASKBn names) atomically, then any
/// `extra` float images as further named HDUs.
void write_image_file(const std::filesystem::path& path, const Image& im, bool overwrite,
                      const std::vector<std::pair<std::string, const ImageArray*>>& extra = {});

}  // namespace kspecdr::fits
