#pragma once
// RAII wrapper over the HDF5 C API, serial and MPI-IO. Every hid_t lives in a
// Handle that closes it on every path (so a file, dataset or property list can
// never leak on an exception), and every negative return becomes Hdf5Error with
// the file and object name and HDF5's own error stack.
//
// Lifetime: groups and datasets are valid while their File is open; File::close
// (and the File destructor) closes every object still open in it.
// Parallel files: every metadata operation (create, open, exists, extend,
// attributes, close) is collective on the file's communicator, reads included.
#include <hdf5.h>
#include <mpi.h>

#include <Eigen/Core>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kspecdr::h5 {

using Dims = std::vector<hsize_t>;

/// Owns one hid_t and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  /// Gives up ownership without closing (the caller closes and checks the result).
  hid_t release() {
    hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

/// Element types the wrapper reads and writes, named by their C types so that
/// std::int32_t, std::int64_t, long long, std::uint8_t and std::uint16_t all qualify
/// whichever of int/long/long long they alias on the platform.
template <typename T>
concept Element = std::same_as<T, double> || std::same_as<T, float> || std::same_as<T, int> ||
                  std::same_as<T, long> || std::same_as<T, long long> || std::same_as<T, unsigned char> ||
                  std::same_as<T, unsigned short>;
static_assert(Element<std::int32_t> && Element<std::int64_t> && Element<std::uint8_t> && Element<std::uint16_t>);

template <Element T>
hid_t native_type() {
  if constexpr (std::same_as<T, double>) return H5T_NATIVE_DOUBLE;
  else if constexpr (std::same_as<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::same_as<T, int>) return H5T_NATIVE_INT;
  else if constexpr (std::same_as<T, long>) return H5T_NATIVE_LONG;
  else if constexpr (std::same_as<T, long long>) return H5T_NATIVE_LLONG;
  else if constexpr (std::same_as<T, unsigned char>) return H5T_NATIVE_UCHAR;
  else return H5T_NATIVE_USHORT;
}

class Dataset;

/// A group (the file's root group included). Names may be paths ("a/b/c").
class Group {
 public:
  Group() = default;
  Group(Handle h, std::string file, std::string path, bool parallel = false)
      : h_(std::move(h)), file_(std::move(file)), path_(std::move(path)), parallel_(parallel) {}
  hid_t id() const { return h_.id(); }
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  bool parallel() const { return parallel_; }  ///< lives in a file opened over MPI-IO

  bool exists(const std::string& name) const;  ///< link (group or dataset) exists
  Group create_group(const std::string& name);  ///< creates intermediate groups too
  Group open_group(const std::string& name) const;
  /// Opens if present, else creates.
  Group require_group(const std::string& name);
  std::vector<std::string> members() const;  ///< names of the links in this group, sorted

  // ---- whole datasets (serial or independent I/O). A write replaces an existing
  // dataset of that name; intermediate groups of a path are created. Empty `dims`
  // makes a scalar. `compress` (gzip 4 + shuffle, chunked) applies to serial files only.
  template <Element T>
  void write(const std::string& name, const T* data, const Dims& dims, bool compress = false);
  template <Element T>
  void write(const std::string& name, const std::vector<T>& v) { write(name, v.data(), Dims{v.size()}); }
  template <Element T>
  void write_scalar(const std::string& name, T v) { write(name, &v, Dims{}); }
  /// Variable-length UTF-8 strings (h5py reads them as str).
  void write_strings(const std::string& name, const std::vector<std::string>& v);
  /// Whole dataset converted to T; `dims` receives its shape.
  template <Element T>
  std::vector<T> read(const std::string& name, Dims* dims = nullptr) const;
  /// Reads variable- or fixed-length string datasets.
  std::vector<std::string> read_strings(const std::string& name) const;
  Dims dims(const std::string& name) const;

  /// Row-major 2D Eigen arrays (shape (rows, cols) = HDF5 dims {rows, cols}).
  template <Element T>
  void write_array(const std::string& name,
                   const Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& a, bool compress = true) {
    write(name, a.data(), Dims{static_cast<hsize_t>(a.rows()), static_cast<hsize_t>(a.cols())}, compress);
  }
  template <Element T>
  Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_array(const std::string& name) const;

  // ---- datasets for parallel, extendible writing
  /// Creates a dataset (fails if the name exists); with `maxdims` entries of H5S_UNLIMITED
  /// it can grow; `chunk` is required then. `fill` false: the storage is never filled with the fill
  /// value, for a dataset whose every element will be written (in a parallel file the chunks are
  /// allocated at creation, and filling them writes the whole dataset once more); an element left
  /// unwritten then reads as whatever the file held.
  template <Element T>
  Dataset create_dataset(const std::string& name, const Dims& dims, const Dims& maxdims = {},
                         const Dims& chunk = {}, bool fill = true);
  Dataset open_dataset(const std::string& name) const;

  // ---- attributes on this group (set_attr replaces an existing attribute;
  // strings are variable-length UTF-8, which h5py returns as str)
  void set_attr(const std::string& name, double v);
  void set_attr(const std::string& name, long long v);
  template <std::integral I>
  void set_attr(const std::string& name, I v) { set_attr(name, static_cast<long long>(v)); }
  void set_attr(const std::string& name, const std::string& v);
  void set_attr(const std::string& name, const char* v) { set_attr(name, std::string(v)); }
  void set_attr(const std::string& name, const std::vector<double>& v);
  bool has_attr(const std::string& name) const;
  double attr_double(const std::string& name) const;
  long long attr_int(const std::string& name) const;
  std::string attr_string(const std::string& name) const;
  std::vector<double> attr_doubles(const std::string& name) const;

 private:
  Handle h_;
  std::string file_, path_;
  bool parallel_ = false;
};

class Dataset {
 public:
  Dataset() = default;
  Dataset(Handle h, std::string file, std::string path, bool parallel = false)
      : h_(std::move(h)), file_(std::move(file)), path_(std::move(path)), parallel_(parallel) {}
  hid_t id() const { return h_.id(); }
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  bool parallel() const { return parallel_; }
  Dims dims() const;
  void extend(const Dims& new_dims);  ///< collective in parallel files

  /// Writes a hyperslab (`offset`, `count`); an empty `count` (any zero) writes nothing but
  /// still takes part in collective I/O. With `collective`, every rank of the file's
  /// communicator must call it.
  template <Element T>
  void write_slab(const T* data, const Dims& offset, const Dims& count, bool collective = false);
  template <Element T>
  void read_slab(T* data, const Dims& offset, const Dims& count) const;

  /// Attribute helpers on the dataset (e.g. units).
  void set_attr(const std::string& name, const std::string& v);
  void set_attr(const std::string& name, const char* v) { set_attr(name, std::string(v)); }
  void set_attr(const std::string& name, double v);
  bool has_attr(const std::string& name) const;
  double attr_double(const std::string& name) const;
  std::string attr_string(const std::string& name) const;

  /// After a collective write: why collective I/O was not used (0 = it was), from
  /// H5Pget_mpio_no_collective_cause on the transfer list of the last write;
  /// H5D_MPIO_SET_INDEPENDENT when the last write was not collective.
  uint32_t last_no_collective_cause() const { return last_cause_; }

 private:
  Handle h_;
  std::string file_, path_;
  bool parallel_ = false;
  uint32_t last_cause_ = 0;
};

class File {
 public:
  /// Serial file. `create` truncates an existing file.
  static File create(const std::filesystem::path& path);
  static File open(const std::filesystem::path& path, bool readwrite = false);
  /// Parallel file over MPI-IO (H5Pset_fapl_mpio); collective on `comm`.
  static File create_parallel(const std::filesystem::path& path, MPI_Comm comm);
  static File open_parallel(const std::filesystem::path& path, MPI_Comm comm, bool readwrite = false);

  Group& root() { return root_; }
  const Group& root() const { return root_; }
  const std::string& path() const { return path_; }
  bool parallel() const { return parallel_; }
  void flush();
  void close();  ///< explicit close (reports errors); the destructor closes silently

 private:
  Handle h_;
  Group root_;
  std::string path_;
  bool parallel_ = false;
};

}  // namespace kspecdr::h5
