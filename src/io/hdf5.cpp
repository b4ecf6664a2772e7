#include "kspecdr/io/hdf5.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>

#include "kspecdr/core/error.hpp"

namespace kspecdr::h5 {

// ------------------------------------------------------------------ errors and helpers
namespace {

herr_t collect_entry(unsigned /*n*/, const H5E_error2_t* e, void* data) {
  auto& out = *static_cast<std::string*>(data);
  char minor[160] = "";
  H5Eget_msg(e->min_num, nullptr, minor, sizeof minor);
  if (!out.empty()) out += "; ";
  out += fmt::format("{}(): {}", e->func_name ? e->func_name : "?", e->desc ? e->desc : "");
  if (minor[0] != '\0') out += fmt::format(" ({})", minor);
  std::replace(out.begin(), out.end(), '\n', ' ');  // file-open errors embed ctime()'s newline
  return 0;
}

// Must run right after the failing call: the next HDF5 API call clears the stack.
std::string error_stack() {
  std::string s;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_entry, &s);
  H5Eclear2(H5E_DEFAULT);
  return s.empty() ? "no HDF5 error stack" : s;
}

[[noreturn]] void fail(const std::string& op, const std::string& file, const std::string& object,
                       const std::string& detail) {
  throw Hdf5Error(fmt::format("HDF5 {} failed: {}", op, detail), ErrorContext{.file = file, .keyword = object});
}

template <typename R>
R check(R r, const std::string& op, const std::string& file, const std::string& object) {
  if (r < 0) fail(op, file, object, error_stack());
  return r;
}

Handle own(hid_t id, Handle::Closer closer, const std::string& op, const std::string& file,
           const std::string& object) {
  return Handle(check(id, op, file, object), closer);
}

// The library prints its error stack to stderr by default; the wrapper reports it in exceptions instead.
void silence_auto_print() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string join(const std::string& base, const std::string& name) {
  if (!name.empty() && name.front() == '/') return name;
  if (name.empty() || name == ".") return base;
  return base == "/" || base.empty() ? "/" + name : base + "/" + name;
}

hsize_t product(const Dims& d) {
  return std::accumulate(d.begin(), d.end(), hsize_t{1}, std::multiplies<>());
}

Dims extent(hid_t space, const std::string& file, const std::string& object) {
  const int rank = check(H5Sget_simple_extent_ndims(space), "get dataspace rank", file, object);
  Dims d(static_cast<std::size_t>(rank));
  if (rank > 0) check(H5Sget_simple_extent_dims(space, d.data(), nullptr), "get dataspace dims", file, object);
  return d;
}

hsize_t npoints(hid_t space, const std::string& file, const std::string& object) {
  return static_cast<hsize_t>(check(H5Sget_simple_extent_npoints(space), "count dataspace points", file, object));
}

Handle make_space(const Dims& dims, const Dims& maxdims, const std::string& file, const std::string& object) {
  if (dims.empty()) return own(H5Screate(H5S_SCALAR), H5Sclose, "create scalar dataspace", file, object);
  return own(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.empty() ? nullptr : maxdims.data()),
             H5Sclose, "create dataspace", file, object);
}

// Link creation list that makes missing intermediate groups of a path and stores UTF-8 names.
Handle link_plist(const std::string& file, const std::string& object) {
  Handle p = own(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "create link property list", file, object);
  check(H5Pset_create_intermediate_group(p.id(), 1), "set intermediate group creation", file, object);
  check(H5Pset_char_encoding(p.id(), H5T_CSET_UTF8), "set link name encoding", file, object);
  return p;
}

Handle plist(hid_t cls, const std::string& file, const std::string& object) {
  return own(H5Pcreate(cls), H5Pclose, "create property list", file, object);
}

Handle vlen_string_type(const std::string& file, const std::string& object) {
  Handle t = own(H5Tcopy(H5T_C_S1), H5Tclose, "copy string type", file, object);
  check(H5Tset_size(t.id(), H5T_VARIABLE), "make string type variable-length", file, object);
  check(H5Tset_cset(t.id(), H5T_CSET_UTF8), "set string type to UTF-8", file, object);
  return t;
}

// Chunks for compressed whole-dataset writes: whole rows (up to 256 of them) unless that
// exceeds 1 MiB, HDF5's default chunk cache size, so that reading a chunk stays cached.
Dims auto_chunk(const Dims& dims, std::size_t elem) {
  constexpr hsize_t target = hsize_t{1} << 20;
  Dims c = dims;
  c[0] = std::min<hsize_t>(c[0], 256);
  auto bytes = [&] { return product(c) * elem; };
  for (std::size_t i = 0; i < c.size(); ++i)
    while (c[i] > 1 && bytes() > target) c[i] = (c[i] + 1) / 2;
  return c;
}

// Reads a string dataset or attribute (variable- or fixed-length) through `read(memtype, buffer)`.
template <typename ReadFn>
std::vector<std::string> read_string_data(hid_t ftype, hid_t space, ReadFn read, const std::string& file,
                                          const std::string& object) {
  if (check(H5Tget_class(ftype), "get datatype class", file, object) != H5T_STRING)
    fail("read strings", file, object, "the stored type is not a string type");
  const std::size_t n = npoints(space, file, object);
  std::vector<std::string> out;
  out.reserve(n);
  if (check(H5Tis_variable_str(ftype), "query string type", file, object) > 0) {
    Handle mt = vlen_string_type(file, object);
    std::vector<char*> ptrs(n, nullptr);
    if (n > 0) check(read(mt.id(), ptrs.data()), "read variable-length strings", file, object);
    // The library allocated each string; free them even if copying throws.
    struct Reclaim {
      hid_t type, space;
      std::vector<char*>& buf;
      ~Reclaim() {
#if H5_VERSION_GE(1, 12, 0)
        if (!buf.empty()) H5Treclaim(type, space, H5P_DEFAULT, buf.data());
#else
        if (!buf.empty()) H5Dvlen_reclaim(type, space, H5P_DEFAULT, buf.data());
#endif
      }
    } reclaim{mt.id(), space, ptrs};
    for (const char* p : ptrs) out.emplace_back(p ? p : "");
  } else {
    const std::size_t len = H5Tget_size(ftype);
    if (len == 0) fail("read strings", file, object, "fixed-length string type of size 0");
    Handle mt = own(H5Tcopy(H5T_C_S1), H5Tclose, "copy string type", file, object);
    check(H5Tset_size(mt.id(), len), "set string size", file, object);
    // Null padding of the full width keeps every character (null termination would drop the last).
    check(H5Tset_strpad(mt.id(), H5T_STR_NULLPAD), "set string padding", file, object);
    std::vector<char> buf(n * len);
    if (n > 0) check(read(mt.id(), buf.data()), "read fixed-length strings", file, object);
    for (std::size_t i = 0; i < n; ++i) {
      std::string s(buf.data() + i * len, len);
      s.erase(std::min(s.find('\0'), s.size()));
      s.erase(s.find_last_not_of(' ') + 1);  // FITS-style space padding
      out.push_back(std::move(s));
    }
  }
  return out;
}

// ---- attributes, shared by groups and datasets
std::string attr_op(const char* what, const std::string& name) { return fmt::format("{} attribute '{}'", what, name); }

void write_attr(hid_t obj, const std::string& name, hid_t type, const Dims& dims, const void* buf,
                const std::string& file, const std::string& object) {
  // Attributes cannot change type or shape in place, so a new value replaces the old attribute.
  if (check(H5Aexists(obj, name.c_str()), attr_op("check", name), file, object) > 0)
    check(H5Adelete(obj, name.c_str()), attr_op("delete", name), file, object);
  Handle space = make_space(dims, {}, file, object);
  Handle a = own(H5Acreate2(obj, name.c_str(), type, space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                 attr_op("create", name), file, object);
  check(H5Awrite(a.id(), type, buf), attr_op("write", name), file, object);
}

void write_attr_string(hid_t obj, const std::string& name, const std::string& v, const std::string& file,
                       const std::string& object) {
  Handle t = vlen_string_type(file, object);
  const char* p = v.c_str();
  write_attr(obj, name, t.id(), {}, &p, file, object);
}

bool attr_exists(hid_t obj, const std::string& name, const std::string& file, const std::string& object) {
  return check(H5Aexists(obj, name.c_str()), attr_op("check", name), file, object) > 0;
}

template <typename T>
std::vector<T> read_attr_numbers(hid_t obj, const std::string& name, const std::string& file,
                                 const std::string& object) {
  Handle a = own(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose, attr_op("open", name), file, object);
  Handle space = own(H5Aget_space(a.id()), H5Sclose, attr_op("get dataspace of", name), file, object);
  std::vector<T> v(npoints(space.id(), file, object));
  if (!v.empty()) check(H5Aread(a.id(), native_type<T>(), v.data()), attr_op("read", name), file, object);
  return v;
}

template <typename T>
T read_attr_scalar(hid_t obj, const std::string& name, const std::string& file, const std::string& object) {
  auto v = read_attr_numbers<T>(obj, name, file, object);
  if (v.size() != 1) fail(attr_op("read", name), file, object, fmt::format("holds {} values, not one", v.size()));
  return v[0];
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& file,
                             const std::string& object) {
  Handle a = own(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose, attr_op("open", name), file, object);
  Handle type = own(H5Aget_type(a.id()), H5Tclose, attr_op("get type of", name), file, object);
  Handle space = own(H5Aget_space(a.id()), H5Sclose, attr_op("get dataspace of", name), file, object);
  auto v = read_string_data(
      type.id(), space.id(), [&](hid_t mt, void* buf) { return H5Aread(a.id(), mt, buf); }, file, object);
  if (v.size() != 1) fail(attr_op("read", name), file, object, fmt::format("holds {} strings, not one", v.size()));
  return v[0];
}

}  // namespace

// ------------------------------------------------------------------ Handle

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    if (valid() && closer_) closer_(id_);
    id_ = o.id_;
    closer_ = o.closer_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

Handle::~Handle() {
  if (valid() && closer_) closer_(id_);
}

// ------------------------------------------------------------------ File

namespace {

Handle file_access(const MPI_Comm* comm, const std::string& path) {
  Handle fapl = plist(H5P_FILE_ACCESS, path, "/");
  // STRONG makes close() really close the file (objects still open are closed with it), which
  // write-then-rename relies on, and gives serial and MPI-IO files (default SEMI) the same behaviour.
  check(H5Pset_fclose_degree(fapl.id(), H5F_CLOSE_STRONG), "set file close degree", path, "/");
  if (comm) {
    check(H5Pset_fapl_mpio(fapl.id(), *comm, MPI_INFO_NULL), "set MPI-IO file driver", path, "/");
    check(H5Pset_all_coll_metadata_ops(fapl.id(), true), "set collective metadata reads", path, "/");
    check(H5Pset_coll_metadata_write(fapl.id(), true), "set collective metadata writes", path, "/");
  }
  return fapl;
}

Group open_root(hid_t file, const std::string& path, bool parallel) {
  return Group(own(H5Gopen2(file, "/", H5P_DEFAULT), H5Gclose, "open root group", path, "/"), path, "/", parallel);
}

}  // namespace

File File::create(const std::filesystem::path& path) {
  silence_auto_print();
  File f;
  f.path_ = path.string();
  Handle fapl = file_access(nullptr, f.path_);
  f.h_ = own(H5Fcreate(f.path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()), H5Fclose, "create file", f.path_, "/");
  f.root_ = open_root(f.h_.id(), f.path_, f.parallel_);
  return f;
}

File File::open(const std::filesystem::path& path, bool readwrite) {
  silence_auto_print();
  File f;
  f.path_ = path.string();
  Handle fapl = file_access(nullptr, f.path_);
  f.h_ = own(H5Fopen(f.path_.c_str(), readwrite ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.id()), H5Fclose, "open file",
             f.path_, "/");
  f.root_ = open_root(f.h_.id(), f.path_, f.parallel_);
  return f;
}

File File::create_parallel(const std::filesystem::path& path, MPI_Comm comm) {
  silence_auto_print();
  File f;
  f.path_ = path.string();
  f.parallel_ = true;
  Handle fapl = file_access(&comm, f.path_);
  f.h_ = own(H5Fcreate(f.path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()), H5Fclose, "create parallel file",
             f.path_, "/");
  f.root_ = open_root(f.h_.id(), f.path_, f.parallel_);
  return f;
}

File File::open_parallel(const std::filesystem::path& path, MPI_Comm comm, bool readwrite) {
  silence_auto_print();
  File f;
  f.path_ = path.string();
  f.parallel_ = true;
  Handle fapl = file_access(&comm, f.path_);
  f.h_ = own(H5Fopen(f.path_.c_str(), readwrite ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.id()), H5Fclose,
             "open parallel file", f.path_, "/");
  f.root_ = open_root(f.h_.id(), f.path_, f.parallel_);
  return f;
}

void File::flush() { check(H5Fflush(h_.id(), H5F_SCOPE_GLOBAL), "flush file", path_, "/"); }

void File::close() {
  if (!h_.valid()) return;
  root_ = Group{};
  check(H5Fclose(h_.release()), "close file", path_, "/");
}

// ------------------------------------------------------------------ Group: structure

bool Group::exists(const std::string& name) const {
  // H5Lexists fails, rather than answering false, when an intermediate link of a path is
  // missing, so walk the path one link at a time and require intermediates to be groups.
  std::string prefix = !name.empty() && name.front() == '/' ? "/" : "";
  std::size_t pos = 0;
  while (pos < name.size()) {
    std::size_t next = std::min(name.find('/', pos), name.size());
    std::string part = name.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty() || part == ".") continue;
    prefix += prefix.empty() || prefix.back() == '/' ? part : "/" + part;
    const std::string object = join(path_, prefix);
    if (check(H5Lexists(id(), prefix.c_str(), H5P_DEFAULT), "check link", file_, object) == 0) return false;
    if (name.find_first_not_of('/', next) != std::string::npos) {
      Handle o = own(H5Oopen(id(), prefix.c_str(), H5P_DEFAULT), H5Oclose, "open object", file_, object);
      if (H5Iget_type(o.id()) != H5I_GROUP) return false;
    }
  }
  return true;
}

Group Group::create_group(const std::string& name) {
  const std::string object = join(path_, name);
  Handle lcpl = link_plist(file_, object);
  return Group(own(H5Gcreate2(id(), name.c_str(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "create group",
                   file_, object),
               file_, object, parallel_);
}

Group Group::open_group(const std::string& name) const {
  const std::string object = join(path_, name);
  return Group(own(H5Gopen2(id(), name.c_str(), H5P_DEFAULT), H5Gclose, "open group", file_, object), file_, object,
               parallel_);
}

Group Group::require_group(const std::string& name) { return exists(name) ? open_group(name) : create_group(name); }

std::vector<std::string> Group::members() const {
  H5G_info_t info;
  check(H5Gget_info(id(), &info), "get group info", file_, path_);
  std::vector<std::string> names;
  names.reserve(info.nlinks);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = check(H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT),
                              "get link name", file_, path_);
    std::string s(static_cast<std::size_t>(len) + 1, '\0');
    check(H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(), H5P_DEFAULT),
          "get link name", file_, path_);
    s.resize(static_cast<std::size_t>(len));
    names.push_back(std::move(s));
  }
  std::sort(names.begin(), names.end());
  return names;
}

// ------------------------------------------------------------------ Group: whole datasets

template <Element T>
void Group::write(const std::string& name, const T* data, const Dims& dims, bool compress) {
  const std::string object = join(path_, name);
  if (exists(name)) check(H5Ldelete(id(), name.c_str(), H5P_DEFAULT), "delete existing dataset", file_, object);
  Handle space = make_space(dims, {}, file_, object);
  Handle dcpl = plist(H5P_DATASET_CREATE, file_, object);
  // No object timestamps: the same content gives the same bytes (reproducible outputs).
  check(H5Pset_obj_track_times(dcpl.id(), false), "disable time tracking", file_, object);
  // Filters in parallel files would need collective writes from every rank; whole-dataset
  // writes there are independent, so they stay unfiltered.
  if (compress && !dims.empty() && product(dims) > 0 && !parallel_) {
    const Dims chunk = auto_chunk(dims, sizeof(T));
    check(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()), "set chunking", file_, object);
    check(H5Pset_shuffle(dcpl.id()), "set shuffle filter", file_, object);
    check(H5Pset_deflate(dcpl.id(), 4), "set deflate filter", file_, object);
  }
  Handle lcpl = link_plist(file_, object);
  Handle ds = own(H5Dcreate2(id(), name.c_str(), native_type<T>(), space.id(), lcpl.id(), dcpl.id(), H5P_DEFAULT),
                  H5Dclose, "create dataset", file_, object);
  if (product(dims) > 0)
    check(H5Dwrite(ds.id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "write dataset", file_, object);
}

template <Element T>
std::vector<T> Group::read(const std::string& name, Dims* dims) const {
  const Dataset ds = open_dataset(name);
  const std::string object = join(path_, name);
  Handle space = own(H5Dget_space(ds.id()), H5Sclose, "get dataspace", file_, object);
  std::vector<T> v(npoints(space.id(), file_, object));
  if (!v.empty())
    check(H5Dread(ds.id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "read dataset", file_, object);
  if (dims) *dims = extent(space.id(), file_, object);
  return v;
}

template <Element T>
Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Group::read_array(const std::string& name) const {
  const Dataset ds = open_dataset(name);
  const std::string object = join(path_, name);
  const Dims d = ds.dims();
  if (d.size() != 2) fail("read 2D array", file_, object, fmt::format("dataset has {} dimensions, not 2", d.size()));
  Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> a(static_cast<Eigen::Index>(d[0]),
                                                                      static_cast<Eigen::Index>(d[1]));
  if (a.size() > 0)
    check(H5Dread(ds.id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, a.data()), "read dataset", file_, object);
  return a;
}

void Group::write_strings(const std::string& name, const std::vector<std::string>& v) {
  const std::string object = join(path_, name);
  if (exists(name)) check(H5Ldelete(id(), name.c_str(), H5P_DEFAULT), "delete existing dataset", file_, object);
  Handle type = vlen_string_type(file_, object);
  Handle space = make_space(Dims{v.size()}, {}, file_, object);
  Handle lcpl = link_plist(file_, object);
  Handle ds = own(H5Dcreate2(id(), name.c_str(), type.id(), space.id(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT),
                  H5Dclose, "create string dataset", file_, object);
  std::vector<const char*> ptrs;
  ptrs.reserve(v.size());
  for (const auto& s : v) ptrs.push_back(s.c_str());
  if (!ptrs.empty())
    check(H5Dwrite(ds.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), "write strings", file_, object);
}

std::vector<std::string> Group::read_strings(const std::string& name) const {
  const Dataset ds = open_dataset(name);
  const std::string object = join(path_, name);
  Handle type = own(H5Dget_type(ds.id()), H5Tclose, "get datatype", file_, object);
  Handle space = own(H5Dget_space(ds.id()), H5Sclose, "get dataspace", file_, object);
  return read_string_data(
      type.id(), space.id(), [&](hid_t mt, void* buf) { return H5Dread(ds.id(), mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf); },
      file_, object);
}

Dims Group::dims(const std::string& name) const { return open_dataset(name).dims(); }

// ------------------------------------------------------------------ Group: datasets for slab I/O

template <Element T>
Dataset Group::create_dataset(const std::string& name, const Dims& dims, const Dims& maxdims, const Dims& chunk,
                              bool fill) {
  const std::string object = join(path_, name);
  if (!maxdims.empty() && maxdims.size() != dims.size())
    fail("create dataset", file_, object, fmt::format("maxdims has {} entries for {} dims", maxdims.size(), dims.size()));
  if (!chunk.empty() && chunk.size() != dims.size())
    fail("create dataset", file_, object, fmt::format("chunk has {} entries for {} dims", chunk.size(), dims.size()));
  if (!maxdims.empty() && maxdims != dims && chunk.empty())
    fail("create dataset", file_, object, "an extendible dataset needs chunk dimensions");
  Handle space = make_space(dims, maxdims, file_, object);
  Handle dcpl = plist(H5P_DATASET_CREATE, file_, object);
  // No object timestamps: the same content gives the same bytes (reproducible outputs).
  check(H5Pset_obj_track_times(dcpl.id(), false), "disable time tracking", file_, object);
  if (!chunk.empty())
    check(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()), "set chunking", file_, object);
  if (!fill) check(H5Pset_fill_time(dcpl.id(), H5D_FILL_TIME_NEVER), "set fill time", file_, object);
  Handle lcpl = link_plist(file_, object);
  return Dataset(own(H5Dcreate2(id(), name.c_str(), native_type<T>(), space.id(), lcpl.id(), dcpl.id(), H5P_DEFAULT),
                     H5Dclose, "create dataset", file_, object),
                 file_, object, parallel_);
}

Dataset Group::open_dataset(const std::string& name) const {
  const std::string object = join(path_, name);
  return Dataset(own(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose, "open dataset", file_, object), file_,
                 object, parallel_);
}

// ------------------------------------------------------------------ Group: attributes

void Group::set_attr(const std::string& name, double v) { write_attr(id(), name, H5T_NATIVE_DOUBLE, {}, &v, file_, path_); }
void Group::set_attr(const std::string& name, long long v) {
  write_attr(id(), name, H5T_NATIVE_LLONG, {}, &v, file_, path_);
}
void Group::set_attr(const std::string& name, const std::string& v) { write_attr_string(id(), name, v, file_, path_); }
void Group::set_attr(const std::string& name, const std::vector<double>& v) {
  write_attr(id(), name, H5T_NATIVE_DOUBLE, Dims{v.size()}, v.data(), file_, path_);
}
bool Group::has_attr(const std::string& name) const { return attr_exists(id(), name, file_, path_); }
double Group::attr_double(const std::string& name) const { return read_attr_scalar<double>(id(), name, file_, path_); }
long long Group::attr_int(const std::string& name) const { return read_attr_scalar<long long>(id(), name, file_, path_); }
std::string Group::attr_string(const std::string& name) const { return read_attr_string(id(), name, file_, path_); }
std::vector<double> Group::attr_doubles(const std::string& name) const {
  return read_attr_numbers<double>(id(), name, file_, path_);
}

// ------------------------------------------------------------------ Dataset

Dims Dataset::dims() const {
  Handle space = own(H5Dget_space(id()), H5Sclose, "get dataspace", file_, path_);
  return extent(space.id(), file_, path_);
}

void Dataset::extend(const Dims& new_dims) {
  const Dims old = dims();
  if (new_dims.size() != old.size())
    fail("extend dataset", file_, path_, fmt::format("{} dims given for a rank-{} dataset", new_dims.size(), old.size()));
  check(H5Dset_extent(id(), new_dims.data()), "extend dataset", file_, path_);
}

namespace {

// Selects (offset, count) in the dataset's file space and builds the matching memory space;
// a count with a zero selects nothing in both, so the rank can still join collective I/O.
std::pair<Handle, Handle> slab_spaces(hid_t dset, const Dims& offset, const Dims& count, const std::string& file,
                                      const std::string& object) {
  Handle fspace = own(H5Dget_space(dset), H5Sclose, "get dataspace", file, object);
  const Dims d = extent(fspace.id(), file, object);
  if (offset.size() != d.size() || count.size() != d.size())
    fail("select slab", file, object,
         fmt::format("offset has {} and count {} entries for a rank-{} dataset", offset.size(), count.size(), d.size()));
  if (std::find(count.begin(), count.end(), hsize_t{0}) != count.end()) {
    const hsize_t one = 1;
    Handle mspace = own(H5Screate_simple(1, &one, nullptr), H5Sclose, "create memory dataspace", file, object);
    check(H5Sselect_none(mspace.id()), "select nothing in memory", file, object);
    check(H5Sselect_none(fspace.id()), "select nothing in file", file, object);
    return {std::move(fspace), std::move(mspace)};
  }
  if (!d.empty())
    check(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, offset.data(), nullptr, count.data(), nullptr),
          "select hyperslab", file, object);
  return {std::move(fspace), make_space(count, {}, file, object)};
}

}  // namespace

template <Element T>
void Dataset::write_slab(const T* data, const Dims& offset, const Dims& count, bool collective) {
  auto [fspace, mspace] = slab_spaces(id(), offset, count, file_, path_);
  Handle dxpl = plist(H5P_DATASET_XFER, file_, path_);
  const bool coll = collective && parallel_;
  if (coll) check(H5Pset_dxpl_mpio(dxpl.id(), H5FD_MPIO_COLLECTIVE), "set collective transfer", file_, path_);
  // An empty selection needs no data, but the library still wants a non-null buffer.
  const T dummy{};
  check(H5Dwrite(id(), native_type<T>(), mspace.id(), fspace.id(), dxpl.id(), data ? data : &dummy), "write slab",
        file_, path_);
  last_cause_ = H5D_MPIO_SET_INDEPENDENT;
  if (coll) {
    uint32_t local = 0, global = 0;
    check(H5Pget_mpio_no_collective_cause(dxpl.id(), &local, &global), "get no-collective cause", file_, path_);
    last_cause_ = local;
  }
}

template <Element T>
void Dataset::read_slab(T* data, const Dims& offset, const Dims& count) const {
  auto [fspace, mspace] = slab_spaces(id(), offset, count, file_, path_);
  T dummy{};
  check(H5Dread(id(), native_type<T>(), mspace.id(), fspace.id(), H5P_DEFAULT, data ? data : &dummy), "read slab",
        file_, path_);
}

void Dataset::set_attr(const std::string& name, const std::string& v) { write_attr_string(id(), name, v, file_, path_); }
void Dataset::set_attr(const std::string& name, double v) { write_attr(id(), name, H5T_NATIVE_DOUBLE, {}, &v, file_, path_); }
bool Dataset::has_attr(const std::string& name) const { return attr_exists(id(), name, file_, path_); }
double Dataset::attr_double(const std::string& name) const { return read_attr_scalar<double>(id(), name, file_, path_); }
std::string Dataset::attr_string(const std::string& name) const { return read_attr_string(id(), name, file_, path_); }

// ------------------------------------------------------------------ explicit instantiations

#define KSPECDR_H5_INSTANTIATE(T)                                                                                  \
  template void Group::write<T>(const std::string&, const T*, const Dims&, bool);                                  \
  template std::vector<T> Group::read<T>(const std::string&, Dims*) const;                                         \
  template Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Group::read_array<T>(const std::string&) \
      const;                                                                                                       \
  template Dataset Group::create_dataset<T>(const std::string&, const Dims&, const Dims&, const Dims&, bool);             \
  template void Dataset::write_slab<T>(const T*, const Dims&, const Dims&, bool);                                  \
  template void Dataset::read_slab<T>(T*, const Dims&, const Dims&) const;

KSPECDR_H5_INSTANTIATE(double)
KSPECDR_H5_INSTANTIATE(float)
KSPECDR_H5_INSTANTIATE(int)
KSPECDR_H5_INSTANTIATE(long)
KSPECDR_H5_INSTANTIATE(long long)
KSPECDR_H5_INSTANTIATE(unsigned char)
KSPECDR_H5_INSTANTIATE(unsigned short)
#undef KSPECDR_H5_INSTANTIATE

}  // namespace kspecdr::h5
