#include "kspecdr/io/fits.hpp"

#include <fitsio.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"

namespace kspecdr::fits {
namespace fs = std::filesystem;

static inline fitsfile* ff(void* p) { return static_cast<fitsfile*>(p); }

namespace {

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string cfitsio_messages(int status) {
  char text[FLEN_STATUS];
  fits_get_errstatus(status, text);
  std::string msg = fmt::format("CFITSIO status {} ({})", status, text);
  char line[FLEN_ERRMSG];
  std::string stack;
  while (fits_read_errmsg(line)) {
    if (!stack.empty()) stack += "; ";
    stack += line;
  }
  if (!stack.empty()) msg += ": " + stack;
  return msg;
}

int datatype_of(PixelType t) {
  switch (t) {
    case PixelType::UInt8: return BYTE_IMG;
    case PixelType::Int16: return SHORT_IMG;
    case PixelType::UInt16: return USHORT_IMG;
    case PixelType::Int32: return LONG_IMG;
    case PixelType::Int64: return LONGLONG_IMG;
    case PixelType::Float32: return FLOAT_IMG;
    case PixelType::Float64: return DOUBLE_IMG;
  }
  return FLOAT_IMG;
}

}  // namespace

int bitpix_of(PixelType t) {
  int b = datatype_of(t);
  return b == USHORT_IMG ? SHORT_IMG : b;
}

// ------------------------------------------------------------------ Column / Table

std::size_t Column::nrows() const {
  switch (type) {
    case Type::Double: return repeat ? doubles.size() / static_cast<std::size_t>(repeat) : 0;
    case Type::Int: return repeat ? ints.size() / static_cast<std::size_t>(repeat) : 0;
    case Type::String: return strings.size();
    case Type::Logical: return logicals.size();
  }
  return 0;
}

double Column::number(std::size_t r, long k) const {
  std::size_t i = r * static_cast<std::size_t>(repeat) + static_cast<std::size_t>(k);
  switch (type) {
    case Type::Double: return doubles.at(i);
    case Type::Int: return static_cast<double>(ints.at(i));
    case Type::Logical: return logicals.at(r) ? 1.0 : 0.0;
    case Type::String: break;
  }
  throw DataError(fmt::format("table column {} holds text, not numbers", name), ErrorContext{.keyword = name});
}

bool Table::has(const std::string& name) const {
  return std::any_of(columns.begin(), columns.end(), [&](const Column& c) { return upper(c.name) == upper(name); });
}

const Column& Table::column(const std::string& name) const {
  for (const auto& c : columns)
    if (upper(c.name) == upper(name)) return c;
  throw DataError(fmt::format("table has no column {}", name), ErrorContext{.keyword = name});
}

Column& Table::add_double(const std::string& name, std::vector<double> v, const std::string& unit, long repeat) {
  Column c;
  c.name = name;
  c.unit = unit;
  c.type = Column::Type::Double;
  c.repeat = repeat;
  c.doubles = std::move(v);
  columns.push_back(std::move(c));
  return columns.back();
}
Column& Table::add_int(const std::string& name, std::vector<long long> v, const std::string& unit) {
  Column c;
  c.name = name;
  c.unit = unit;
  c.type = Column::Type::Int;
  c.ints = std::move(v);
  columns.push_back(std::move(c));
  return columns.back();
}
Column& Table::add_string(const std::string& name, std::vector<std::string> v) {
  Column c;
  c.name = name;
  c.type = Column::Type::String;
  std::size_t w = 1;
  for (const auto& s : v) w = std::max(w, s.size());
  c.repeat = static_cast<long>(w);
  c.strings = std::move(v);
  columns.push_back(std::move(c));
  return columns.back();
}
Column& Table::add_logical(const std::string& name, std::vector<bool> v) {
  Column c;
  c.name = name;
  c.type = Column::Type::Logical;
  c.logicals = std::move(v);
  columns.push_back(std::move(c));
  return columns.back();
}

// ------------------------------------------------------------------ Fits

void Fits::fail(int status, const std::string& what) {
  std::string hdu;
  if (f_) {
    int n = 0, s = 0;
    fits_get_hdu_num(ff(f_), &n);
    char name[FLEN_VALUE] = "";
    fits_read_key(ff(f_), TSTRING, "EXTNAME", name, nullptr, &s);
    hdu = s == 0 ? fmt::format("{} ({})", n - 1, name) : fmt::format("{}", n - 1);
  }
  throw FitsError(fmt::format("{}: {}", what, cfitsio_messages(status)), ErrorContext{.file = path_, .hdu = hdu});
}

Fits Fits::open(const fs::path& path) {
  if (!fs::exists(path))
    throw FitsError(fmt::format("FITS file does not exist: {}", path.string()), ErrorContext{.file = path.string()});
  fitsfile* f = nullptr;
  int status = 0;
  fits_open_file(&f, path.c_str(), READONLY, &status);
  if (status) {
    std::string msg = cfitsio_messages(status);
    if (f) {
      int s2 = 0;
      fits_close_file(f, &s2);
    }
    throw FitsError(fmt::format("cannot open FITS file (corrupt, truncated or not FITS?): {}", msg),
                    ErrorContext{.file = path.string()});
  }
  return Fits(f, path.string());
}

Fits Fits::create(const fs::path& path, bool tile_compress) {
  fitsfile* f = nullptr;
  int status = 0;
  std::string name = "!" + path.string();  // '!' = replace an existing file
  fits_create_file(&f, name.c_str(), &status);
  if (status)
    throw FitsError(fmt::format("cannot create FITS file: {}", cfitsio_messages(status)),
                    ErrorContext{.file = path.string()});
  Fits out(f, path.string());
  out.tile_compress_ = tile_compress;
  return out;
}

Fits::Fits(Fits&& o) noexcept : f_(o.f_), path_(std::move(o.path_)), tile_compress_(o.tile_compress_) {
  o.f_ = nullptr;
}
Fits& Fits::operator=(Fits&& o) noexcept {
  if (this != &o) {
    if (f_) {
      int s = 0;
      fits_close_file(ff(f_), &s);
    }
    f_ = o.f_;
    path_ = std::move(o.path_);
    tile_compress_ = o.tile_compress_;
    o.f_ = nullptr;
  }
  return *this;
}
Fits::~Fits() {
  if (f_) {
    int s = 0;
    fits_close_file(ff(f_), &s);
  }
}

void Fits::close() {
  if (!f_) return;
  int status = 0;
  fits_close_file(ff(f_), &status);
  f_ = nullptr;
  if (status)
    throw FitsError(fmt::format("error closing FITS file: {}", cfitsio_messages(status)),
                    ErrorContext{.file = path_});
}

int Fits::num_hdus() {
  int n = 0, status = 0;
  fits_get_num_hdus(ff(f_), &n, &status);
  check(status, "cannot count HDUs");
  return n;
}

int Fits::current_hdu() {
  int n = 0;
  fits_get_hdu_num(ff(f_), &n);
  return n - 1;
}

void Fits::move_to(int hdu) {
  int status = 0, type = 0;
  fits_movabs_hdu(ff(f_), hdu + 1, &type, &status);
  check(status, fmt::format("cannot move to HDU {}", hdu));
}

void Fits::move_to(const std::string& extname) {
  int status = 0;
  fits_movnam_hdu(ff(f_), ANY_HDU, const_cast<char*>(extname.c_str()), 0, &status);
  if (status) {
    fits_clear_errmsg();
    throw FitsError(fmt::format("FITS file has no HDU named {}", extname), ErrorContext{.file = path_, .hdu = extname});
  }
}

bool Fits::has_hdu(const std::string& extname) {
  int here = current_hdu();
  int status = 0;
  fits_movnam_hdu(ff(f_), ANY_HDU, const_cast<char*>(extname.c_str()), 0, &status);
  bool found = status == 0;
  if (!found) fits_clear_errmsg();
  move_to(here);
  return found;
}

HduType Fits::hdu_type() {
  int type = 0, status = 0;
  fits_get_hdu_type(ff(f_), &type, &status);
  check(status, "cannot read HDU type");
  if (type == ASCII_TBL) return HduType::AsciiTable;
  if (type == BINARY_TBL) return HduType::BinaryTable;
  return HduType::Image;
}

std::string Fits::extname() {
  char name[FLEN_VALUE] = "";
  int status = 0;
  fits_read_key(ff(f_), TSTRING, "EXTNAME", name, nullptr, &status);
  if (status) {
    fits_clear_errmsg();
    return {};
  }
  return name;
}

Header Fits::read_header() {
  Header h;
  int nkeys = 0, status = 0;
  fits_get_hdrspace(ff(f_), &nkeys, nullptr, &status);
  check(status, "cannot read header size");
  for (int i = 1; i <= nkeys; ++i) {
    char key[FLEN_KEYWORD] = "", value[FLEN_VALUE] = "", comment[FLEN_COMMENT] = "";
    fits_read_keyn(ff(f_), i, key, value, comment, &status);
    check(status, fmt::format("cannot read header card {}", i));
    std::string k = key;
    if (k == "HISTORY") {
      h.add_history(comment);
      continue;
    }
    if (k == "COMMENT") {
      h.add_comment(comment);
      continue;
    }
    if (k.empty() || k == "CONTINUE" || Header::is_structural(k)) continue;
    std::string v = value;
    if (v.size() >= 3 && v.back() == '\'' && v[v.size() - 2] == '&') {
      char* longstr = nullptr;
      int s2 = 0;
      fits_read_key_longstr(ff(f_), key, &longstr, nullptr, &s2);
      if (s2 == 0 && longstr) {
        std::string full = longstr;
        v = Header::quote(full);
      }
      if (longstr) fits_free_memory(longstr, &s2);
    }
    if (!h.has(k)) h.set_raw(k, v, comment);
  }
  return h;
}

std::vector<long> Fits::image_shape() {
  if (hdu_type() != HduType::Image) return {};
  int naxis = 0, status = 0;
  fits_get_img_dim(ff(f_), &naxis, &status);
  check(status, "cannot read NAXIS");
  if (naxis == 0) return {};
  std::vector<long> n(static_cast<std::size_t>(naxis));
  fits_get_img_size(ff(f_), naxis, n.data(), &status);
  check(status, "cannot read NAXISn");
  std::reverse(n.begin(), n.end());
  return n;
}

int Fits::image_equiv_bitpix() {
  int bp = 0, status = 0;
  fits_get_img_equivtype(ff(f_), &bp, &status);
  check(status, "cannot read BITPIX");
  return bp;
}

void Fits::check_last_pixel() {
  auto s = image_shape();
  if (s.size() != 2) return;
  long fpixel[2] = {s[1], s[0]};
  double v = 0;
  int status = 0, anynul = 0;
  fits_read_pix(ff(f_), TDOUBLE, fpixel, 1, nullptr, &v, &anynul, &status);
  if (status) fail(status, "image data end early (truncated file?)");
}

int Fits::first_image_hdu() {
  int n = num_hdus();
  for (int i = 0; i < n; ++i) {
    move_to(i);
    auto s = image_shape();
    if (s.size() == 2) return i;
  }
  throw DataError("FITS file holds no 2-dimensional image", ErrorContext{.file = path_});
}

namespace {
template <typename T>
struct FitsType;
template <>
struct FitsType<float> {
  static constexpr int code = TFLOAT;
};
template <>
struct FitsType<double> {
  static constexpr int code = TDOUBLE;
};
template <>
struct FitsType<MaskPixel> {
  static constexpr int code = TUSHORT;
};
}  // namespace

template <typename Array>
static Array read_image_as(Fits& self, fitsfile* f, const std::vector<long>& shape, auto fail, long y0 = 0) {
  (void)self;
  using T = typename Array::Scalar;
  Array a(shape[0], shape[1]);
  if (a.size() == 0) return a;
  advise_huge_pages(a);
  int status = 0, anynul = 0;
  long fpixel[2] = {1, y0 + 1};
  T nulval;
  if constexpr (std::is_floating_point_v<T>)
    nulval = std::numeric_limits<T>::quiet_NaN();
  else
    nulval = 0;
  fits_read_pix(f, FitsType<T>::code, fpixel, static_cast<LONGLONG>(a.size()), &nulval, a.data(), &anynul, &status);
  if (status) fail(status);
  return a;
}

ImageArray Fits::read_image_float() {
  auto s = image_shape();
  if (s.size() != 2)
    throw DataError(fmt::format("HDU {} is not a 2-dimensional image (NAXIS = {})", current_hdu(), s.size()),
                    ErrorContext{.file = path_, .hdu = std::to_string(current_hdu())});
  return read_image_as<ImageArray>(*this, ff(f_), s, [this](int st) { fail(st, "cannot read image pixels"); });
}
ImageArrayD Fits::read_image_double() {
  auto s = image_shape();
  if (s.size() != 2)
    throw DataError(fmt::format("HDU {} is not a 2-dimensional image (NAXIS = {})", current_hdu(), s.size()),
                    ErrorContext{.file = path_, .hdu = std::to_string(current_hdu())});
  return read_image_as<ImageArrayD>(*this, ff(f_), s, [this](int st) { fail(st, "cannot read image pixels"); });
}
MaskArray Fits::read_image_mask() {
  auto s = image_shape();
  if (s.size() != 2)
    throw DataError(fmt::format("HDU {} is not a 2-dimensional mask (NAXIS = {})", current_hdu(), s.size()),
                    ErrorContext{.file = path_, .hdu = std::to_string(current_hdu())});
  return read_image_as<MaskArray>(*this, ff(f_), s, [this](int st) { fail(st, "cannot read mask pixels"); });
}

/// {y1 - y0, nx} of rows [y0, y1) of the current 2D image; throws DataError when they are not inside it.
static std::vector<long> row_range_shape(const std::vector<long>& s, long y0, long y1, const std::string& path,
                                         int hdu) {
  const ErrorContext where{.file = path, .hdu = std::to_string(hdu)};
  if (s.size() != 2)
    throw DataError(fmt::format("HDU {} is not a 2-dimensional image (NAXIS = {})", hdu, s.size()), where);
  if (y0 < 0 || y1 < y0 || y1 > s[0])
    throw DataError(fmt::format("rows [{}, {}) are not inside the image's {} rows", y0, y1, s[0]), where);
  return {y1 - y0, s[1]};
}
ImageArray Fits::read_rows_float(long y0, long y1) {
  const auto s = row_range_shape(image_shape(), y0, y1, path_, current_hdu());
  return read_image_as<ImageArray>(*this, ff(f_), s, [this](int st) { fail(st, "cannot read image pixels"); }, y0);
}
MaskArray Fits::read_rows_mask(long y0, long y1) {
  const auto s = row_range_shape(image_shape(), y0, y1, path_, current_hdu());
  return read_image_as<MaskArray>(*this, ff(f_), s, [this](int st) { fail(st, "cannot read mask pixels"); }, y0);
}

void Fits::write_header_cards(const Header& h) {
  int status = 0;
  for (const auto& c : h.cards()) {
    if (Header::is_structural(c.key)) continue;
    const std::string& v = c.value;
    char* key = const_cast<char*>(c.key.c_str());
    char* com = const_cast<char*>(c.comment.c_str());
    if (!v.empty() && v.front() == '\'') {
      std::string s = h.get_string(c.key).value_or("");
      fits_write_key_longstr(ff(f_), key, s.c_str(), com, &status);
    } else if (v == "T" || v == "F") {
      fits_write_key_log(ff(f_), key, v == "T" ? 1 : 0, com, &status);
    } else if (v.find_first_of(".EeDd") == std::string::npos && !v.empty()) {
      long long iv = std::stoll(v);
      fits_write_key_lng(ff(f_), key, static_cast<LONGLONG>(iv), com, &status);
    } else if (!v.empty()) {
      double dv = *h.get_double(c.key);
      fits_write_key_dbl(ff(f_), key, dv, -15, com, &status);
    } else {
      fits_write_key_null(ff(f_), key, com, &status);
    }
    check(status, fmt::format("cannot write header keyword {}", c.key));
  }
  for (const auto& line : h.history()) fits_write_history(ff(f_), line.c_str(), &status);
  for (const auto& line : h.comments()) fits_write_comment(ff(f_), line.c_str(), &status);
  check(status, "cannot write HISTORY/COMMENT");
}

template <typename T>
void Fits::write_typed(const T* data, long ny, long nx, int datatype, PixelType type, const Header& h,
                       const std::string& extname) {
  int status = 0;
  long naxes[2] = {nx, ny};
  if (tile_compress_) {
    int ctype = (type == PixelType::Float32 || type == PixelType::Float64) ? GZIP_1 : RICE_1;
    fits_set_compression_type(ff(f_), ctype, &status);
    if (ctype == GZIP_1) fits_set_quantize_level(ff(f_), 0.0, &status);  // lossless floats
    check(status, "cannot set tile compression");
  }
  fits_create_img(ff(f_), datatype_of(type), 2, naxes, &status);
  check(status, fmt::format("cannot create image HDU {}", extname));
  if (!extname.empty()) {
    fits_write_key_str(ff(f_), "EXTNAME", extname.c_str(), "", &status);
    check(status, "cannot write EXTNAME");
  }
  write_header_cards(h);
  long fpixel[2] = {1, 1};
  const LONGLONG n = static_cast<LONGLONG>(nx) * ny;
  // CFITSIO cannot convert types while compressing, so convert first (rounding to integers).
  auto write_as = [&](auto tag, int code) {
    using U = decltype(tag);
    std::vector<U> buf(static_cast<std::size_t>(n));
    for (LONGLONG i = 0; i < n; ++i) {
      if constexpr (std::is_floating_point_v<U>)
        buf[static_cast<std::size_t>(i)] = static_cast<U>(data[i]);
      else
        buf[static_cast<std::size_t>(i)] = static_cast<U>(std::llround(static_cast<double>(data[i])));
    }
    fits_write_pix(ff(f_), code, fpixel, n, buf.data(), &status);
  };
  if (!tile_compress_) {
    fits_write_pix(ff(f_), datatype, fpixel, n, const_cast<T*>(data), &status);
  } else {
    switch (type) {
      case PixelType::UInt8: write_as(static_cast<unsigned char>(0), TBYTE); break;
      case PixelType::Int16: write_as(static_cast<short>(0), TSHORT); break;
      case PixelType::UInt16: write_as(static_cast<unsigned short>(0), TUSHORT); break;
      case PixelType::Int32: write_as(static_cast<int>(0), TINT); break;
      case PixelType::Int64: write_as(static_cast<long long>(0), TLONGLONG); break;
      case PixelType::Float32: write_as(0.0f, TFLOAT); break;
      case PixelType::Float64: write_as(0.0, TDOUBLE); break;
    }
  }
  check(status, fmt::format("cannot write image pixels of HDU {}", extname.empty() ? "PRIMARY" : extname));
}

void Fits::write_image(const ImageArray& a, const Header& h, const std::string& extname, PixelType type) {
  write_typed(a.data(), static_cast<long>(a.rows()), static_cast<long>(a.cols()), TFLOAT, type, h, extname);
}
void Fits::write_image(const ImageArrayD& a, const Header& h, const std::string& extname, PixelType type) {
  write_typed(a.data(), static_cast<long>(a.rows()), static_cast<long>(a.cols()), TDOUBLE, type, h, extname);
}
void Fits::write_image(const MaskArray& a, const Header& h, const std::string& extname) {
  write_typed(a.data(), static_cast<long>(a.rows()), static_cast<long>(a.cols()), TUSHORT, PixelType::UInt16, h,
              extname);
}

void Fits::write_empty_primary(const Header& h) {
  int status = 0;
  fits_create_img(ff(f_), BYTE_IMG, 0, nullptr, &status);
  check(status, "cannot create primary HDU");
  write_header_cards(h);
}

Table Fits::read_table() {
  if (hdu_type() == HduType::Image)
    throw DataError(fmt::format("HDU {} is an image, not a table", current_hdu()), ErrorContext{.file = path_});
  int status = 0, ncols = 0;
  long nrows = 0;
  fits_get_num_rows(ff(f_), &nrows, &status);
  fits_get_num_cols(ff(f_), &ncols, &status);
  check(status, "cannot read table size");
  Table t;
  for (int c = 1; c <= ncols; ++c) {
    Column col;
    char key[FLEN_KEYWORD], name[FLEN_VALUE] = "", unit[FLEN_VALUE] = "";
    fits_make_keyn("TTYPE", c, key, &status);
    fits_read_key(ff(f_), TSTRING, key, name, nullptr, &status);
    check(status, fmt::format("cannot read name of column {}", c));
    int s2 = 0;
    fits_make_keyn("TUNIT", c, key, &s2);
    fits_read_key(ff(f_), TSTRING, key, unit, nullptr, &s2);
    if (s2) fits_clear_errmsg();
    col.name = name;
    col.unit = s2 ? "" : unit;
    int typecode = 0;
    long repeat = 0, width = 0;
    fits_get_eqcoltype(ff(f_), c, &typecode, &repeat, &width, &status);
    check(status, fmt::format("cannot read type of column {}", col.name));
    const LONGLONG n = nrows;
    int anynul = 0;
    if (typecode == TSTRING) {
      col.type = Column::Type::String;
      col.repeat = repeat;
      std::vector<std::vector<char>> buf(static_cast<std::size_t>(nrows), std::vector<char>(static_cast<std::size_t>(repeat) + 1));
      std::vector<char*> ptrs;
      for (auto& b : buf) ptrs.push_back(b.data());
      if (nrows) fits_read_col(ff(f_), TSTRING, c, 1, 1, n, nullptr, ptrs.data(), &anynul, &status);
      for (auto& b : buf) {
        std::string s = b.data();
        auto e = s.find_last_not_of(' ');
        col.strings.push_back(e == std::string::npos ? "" : s.substr(0, e + 1));
      }
    } else if (typecode == TLOGICAL) {
      col.type = Column::Type::Logical;
      std::vector<char> v(static_cast<std::size_t>(nrows));
      if (nrows) fits_read_col(ff(f_), TLOGICAL, c, 1, 1, n, nullptr, v.data(), &anynul, &status);
      for (char x : v) col.logicals.push_back(x != 0);
    } else if (typecode == TFLOAT || typecode == TDOUBLE) {
      col.type = Column::Type::Double;
      col.repeat = repeat;
      col.doubles.resize(static_cast<std::size_t>(nrows * repeat));
      double nan = std::numeric_limits<double>::quiet_NaN();
      if (nrows) fits_read_col(ff(f_), TDOUBLE, c, 1, 1, n * repeat, &nan, col.doubles.data(), &anynul, &status);
    } else {
      col.type = Column::Type::Int;
      col.repeat = repeat;
      col.ints.resize(static_cast<std::size_t>(nrows * repeat));
      if (nrows) fits_read_col(ff(f_), TLONGLONG, c, 1, 1, n * repeat, nullptr, col.ints.data(), &anynul, &status);
    }
    check(status, fmt::format("cannot read column {}", col.name));
    t.columns.push_back(std::move(col));
  }
  return t;
}

void Fits::write_table(const Table& t, const Header& h, const std::string& extname) {
  std::vector<std::string> names, forms, units;
  for (const auto& c : t.columns) {
    names.push_back(c.name);
    units.push_back(c.unit);
    switch (c.type) {
      case Column::Type::Double: forms.push_back(fmt::format("{}D", c.repeat)); break;
      case Column::Type::Int: forms.push_back(fmt::format("{}K", c.repeat)); break;
      case Column::Type::String: forms.push_back(fmt::format("{}A", std::max(1L, c.repeat))); break;
      case Column::Type::Logical: forms.push_back("1L"); break;
    }
  }
  std::vector<char*> pn, pf, pu;
  for (auto& s : names) pn.push_back(s.data());
  for (auto& s : forms) pf.push_back(s.data());
  for (auto& s : units) pu.push_back(s.data());
  int status = 0;
  // A table cannot be the primary HDU: give an empty file an empty primary first. (fits_get_num_hdus does
  // not count a primary whose header is still being written, so ask whether the current HDU has keywords.)
  int nkeys = 0, nmore = 0;
  fits_get_hdrspace(ff(f_), &nkeys, &nmore, &status);
  if (status || nkeys == 0) {
    status = 0;
    fits_create_img(ff(f_), BYTE_IMG, 0, nullptr, &status);
  }
  fits_create_tbl(ff(f_), BINARY_TBL, static_cast<LONGLONG>(t.nrows()), static_cast<int>(t.columns.size()), pn.data(),
                  pf.data(), pu.data(), extname.c_str(), &status);
  check(status, fmt::format("cannot create table {}", extname));
  write_header_cards(h);
  const LONGLONG n = static_cast<LONGLONG>(t.nrows());
  for (const auto& c : t.columns)
    if (c.nrows() != t.nrows())
      throw DataError(fmt::format("table {}: column {} has {} rows, the first column {}", extname, c.name, c.nrows(),
                                  t.nrows()),
                      ErrorContext{.file = path_, .hdu = extname});
  // Row blocks of the size CFITSIO's buffers hold, every column per block: writing whole columns one
  // after the other would pass over every row once per column and re-read and re-write each record.
  long block = 0;
  fits_get_rowsize(ff(f_), &block, &status);
  check(status, fmt::format("cannot size the row blocks of table {}", extname));
  block = std::max(1L, block);
  std::vector<char> logicals;
  std::vector<char*> ptrs;
  for (LONGLONG r0 = 0; r0 < n; r0 += block) {
    const LONGLONG nr = std::min<LONGLONG>(block, n - r0);
    for (std::size_t i = 0; i < t.columns.size(); ++i) {
      const auto& c = t.columns[i];
      const int colnum = static_cast<int>(i) + 1;
      const LONGLONG first = r0 * c.repeat, count = nr * c.repeat;
      switch (c.type) {
        case Column::Type::Double:
          fits_write_col(ff(f_), TDOUBLE, colnum, r0 + 1, 1, count, const_cast<double*>(c.doubles.data() + first),
                         &status);
          break;
        case Column::Type::Int:
          fits_write_col(ff(f_), TLONGLONG, colnum, r0 + 1, 1, count, const_cast<long long*>(c.ints.data() + first),
                         &status);
          break;
        case Column::Type::String:
          ptrs.clear();
          for (LONGLONG r = r0; r < r0 + nr; ++r) ptrs.push_back(const_cast<char*>(c.strings[r].c_str()));
          fits_write_col(ff(f_), TSTRING, colnum, r0 + 1, 1, nr, ptrs.data(), &status);
          break;
        case Column::Type::Logical:
          logicals.clear();
          for (LONGLONG r = r0; r < r0 + nr; ++r) logicals.push_back(c.logicals[r] ? 1 : 0);
          fits_write_col(ff(f_), TLOGICAL, colnum, r0 + 1, 1, nr, logicals.data(), &status);
          break;
      }
      check(status, fmt::format("cannot write column {}", c.name));
    }
  }
}

void Fits::write_checksum() {
  int status = 0;
  fits_write_chksum(ff(f_), &status);
  check(status, "cannot write CHECKSUM");
}

bool Fits::verify_checksums() {
  int n = num_hdus();
  for (int i = 0; i < n; ++i) {
    move_to(i);
    int dataok = 0, hduok = 0, status = 0;
    fits_verify_chksum(ff(f_), &dataok, &hduok, &status);
    check(status, "cannot verify CHECKSUM");
    if (dataok == -1 || hduok == -1) return false;
  }
  return true;
}

// ------------------------------------------------------------------ whole images

namespace {
/// read_image_file and read_image_rows: all rows (rows = nullptr) or rows [y0, y1).
Image read_image_hdus(const fs::path& path, const std::pair<long, long>* rows, std::vector<long>* shape) {
  Fits f = Fits::open(path);
  Image im;
  f.move_to(0);
  Header primary = f.read_header();
  int hdu = f.first_image_hdu();
  f.move_to(hdu);
  im.header = f.read_header();
  if (hdu != 0) im.header.merge_missing(primary);
  if (shape) *shape = f.image_shape();
  auto floats = [&] { return rows ? f.read_rows_float(rows->first, rows->second) : f.read_image_float(); };
  im.data = floats();
  // A file cut at an HDU boundary opens cleanly: the writer's NEXTEND tells that extensions are missing.
  if (const auto next = primary.get_int("NEXTEND"); next && f.num_hdus() < *next + 1 &&
                                                    (!f.has_hdu("VARIANCE") || !f.has_hdu("MASK")))
    throw DataError(fmt::format("{}: NEXTEND = {} in the primary header but the file has {} extension(s) and lacks "
                                "its {}: the file is truncated; re-create it (e.g. re-run the stage with "
                                "--overwrite)",
                                path.string(), *next, f.num_hdus() - 1,
                                f.has_hdu("VARIANCE") ? "MASK" : "VARIANCE"),
                    ErrorContext{.file = path.string()});
  if (f.has_hdu("VARIANCE")) {
    f.move_to("VARIANCE");
    im.variance = floats();
  } else {
    im.variance = ImageArray::Zero(im.data.rows(), im.data.cols());
  }
  if (f.has_hdu("MASK")) {
    f.move_to("MASK");
    im.mask = rows ? f.read_rows_mask(rows->first, rows->second) : f.read_image_mask();
  } else {
    im.mask = MaskArray::Zero(im.data.rows(), im.data.cols());
  }
  im.unit = im.header.get_string("BUNIT").value_or("");
  try {
    im.check_shapes(path.string());
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = path.string()});
    throw;
  }
  return im;
}
}  // namespace

Image read_image_file(const fs::path& path) { return read_image_hdus(path, nullptr, nullptr); }

Image read_image_rows(const fs::path& path, long y0, long y1, std::vector<long>* shape) {
  const std::pair<long, long> rows{y0, y1};
  return read_image_hdus(path, &rows, shape);
}

Header mask_header() {
  Header hm;
  for (const auto& [bit, name] : mask_bit_names()) {
    int b = 0;
    while ((1u << b) != bit) ++b;
    hm.set(fmt::format("MASKB{}", b), name, fmt::format("mask bit {} (value {})", b, bit));
  }
  return hm;
}

void write_image_hdus(Fits& f, const Image& im, int n_extra) {
  Header h = im.header;
  if (!im.unit.empty()) h.set("BUNIT", im.unit, "unit of the data");
  h.set("NEXTEND", 2 + n_extra, "number of extensions (VARIANCE, MASK, then any others)");
  f.write_image(im.data, h, "");
  f.write_checksum();
  Header hv;
  hv.set("BUNIT", im.unit.empty() ? std::string("") : "(" + im.unit + ")**2", "variance of the primary data");
  f.write_image(im.variance, hv, "VARIANCE");
  f.write_checksum();
  f.write_image(im.mask, mask_header(), "MASK");
  f.write_checksum();
}

void write_image_file(const fs::path& path, const Image& im, bool overwrite,
                      const std::vector<std::pair<std::string, const ImageArray*>>& extra) {
  im.check_shapes(path.string());
  io::AtomicOutput out(path, overwrite);
  {
    Fits f = Fits::create(out.temp_path());
    write_image_hdus(f, im, static_cast<int>(extra.size()));
    for (const auto& [name, arr] : extra) {
      f.write_image(*arr, Header{}, name);
      f.write_checksum();
    }
    f.close();
  }
  out.commit();
}

}  // namespace kspecdr::fits
