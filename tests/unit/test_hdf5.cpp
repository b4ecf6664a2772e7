#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using kspecdr::testing::TempDir;

namespace {

using Array2 = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Values near each type's limits, so a narrower storage type or a lossy conversion shows.
template <typename T>
std::vector<T> extreme_values() {
  using L = std::numeric_limits<T>;
  if constexpr (std::is_floating_point_v<T>)
    return {T(0), T(-1.5), T(1) / T(3), L::max(), L::lowest(), L::min(), L::epsilon()};
  else
    return {T(0), T(1), L::max(), L::min(), static_cast<T>(L::max() - 7), static_cast<T>(L::min() + 3)};
}

std::size_t stored_type_size(const h5::Group& g, const std::string& name) {
  h5::Dataset ds = g.open_dataset(name);
  h5::Handle type(H5Dget_type(ds.id()), H5Tclose);
  return H5Tget_size(type.id());
}

// Open identifiers of the kinds the wrapper creates; a leak shows as a larger count.
std::vector<int64_t> open_ids() {
  std::vector<int64_t> n;
  for (H5I_type_t t : {H5I_FILE, H5I_GROUP, H5I_DATASET, H5I_DATASPACE, H5I_DATATYPE, H5I_ATTR, H5I_GENPROP_LST}) {
    hsize_t k = 0;
    H5Inmembers(t, &k);
    n.push_back(static_cast<int64_t>(k));
  }
  return n;
}

bool have_h5py() { return kspecdr::testing::run_command("/usr/bin/python3 -c 'import h5py'") == 0; }

}  // namespace

template <typename T>
class hdf5_types : public ::testing::Test {};
using ElementTypes = ::testing::Types<double, float, std::int32_t, std::int64_t, long long, std::uint8_t, std::uint16_t>;
TYPED_TEST_SUITE(hdf5_types, ElementTypes);

TYPED_TEST(hdf5_types, RoundTripKeepsEveryValueAndTheStorageWidth) {
  using T = TypeParam;
  TempDir dir;
  const auto values = extreme_values<T>();
  {
    auto f = h5::File::create(dir / "types.h5");
    f.root().write("v", values);
    f.root().write_scalar("s", values[2]);
    f.close();
  }
  auto f = h5::File::open(dir / "types.h5");
  h5::Dims d{99};
  EXPECT_EQ(f.root().read<T>("v", &d), values);
  EXPECT_EQ(d, h5::Dims{values.size()});
  EXPECT_EQ(stored_type_size(f.root(), "v"), sizeof(T));
  const auto s = f.root().read<T>("s", &d);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0], values[2]);
  EXPECT_TRUE(d.empty());  // scalar dataspace
}

TEST(hdf5, ReadConvertsBetweenNumericTypes) {
  TempDir dir;
  auto f = h5::File::create(dir / "conv.h5");
  f.root().write("i", std::vector<int>{-3, 0, 70000});
  EXPECT_EQ(f.root().read<double>("i"), (std::vector<double>{-3.0, 0.0, 70000.0}));
}

TEST(hdf5, EigenArrayKeepsRowMajorShapeAndOrder) {
  TempDir dir;
  Array2 a(3, 5);
  for (Eigen::Index r = 0; r < a.rows(); ++r)
    for (Eigen::Index c = 0; c < a.cols(); ++c) a(r, c) = 10.0 * static_cast<double>(r) + static_cast<double>(c);
  auto f = h5::File::create(dir / "array.h5");
  f.root().write_array("a", a, false);
  EXPECT_EQ(f.root().dims("a"), (h5::Dims{3, 5}));
  const Array2 b = f.root().read_array<double>("a");
  ASSERT_EQ(b.rows(), 3);
  ASSERT_EQ(b.cols(), 5);
  EXPECT_TRUE((a == b).all());
  // HDF5 element (1, 2) sits at flat index 1*5 + 2, like numpy's a[1, 2].
  EXPECT_EQ(f.root().read<double>("a")[7], 12.0);
  // A 1D dataset is not silently reshaped.
  f.root().write("line", std::vector<double>{1, 2, 3});
  EXPECT_THROW(f.root().read_array<double>("line"), Hdf5Error);
}

TEST(hdf5, CompressedArrayIsChunkedDeflatedAndExact) {
  TempDir dir;
  Array2 a(600, 40);
  for (Eigen::Index r = 0; r < a.rows(); ++r)
    for (Eigen::Index c = 0; c < a.cols(); ++c) a(r, c) = static_cast<double>((r / 50) * 3 + c % 4);
  auto f = h5::File::create(dir / "z.h5");
  f.root().write_array("flux", a, true);
  EXPECT_TRUE((f.root().read_array<double>("flux") == a).all());

  h5::Dataset ds = f.root().open_dataset("flux");
  h5::Handle dcpl(H5Dget_create_plist(ds.id()), H5Pclose);
  ASSERT_EQ(H5Pget_layout(dcpl.id()), H5D_CHUNKED);
  h5::Dims chunk(2);
  ASSERT_EQ(H5Pget_chunk(dcpl.id(), 2, chunk.data()), 2);
  EXPECT_EQ(chunk, (h5::Dims{256, 40}));
  std::vector<H5Z_filter_t> filters;
  for (int i = 0; i < H5Pget_nfilters(dcpl.id()); ++i) {
    unsigned flags = 0;
    size_t nelem = 0;
    filters.push_back(H5Pget_filter2(dcpl.id(), static_cast<unsigned>(i), &flags, &nelem, nullptr, 0, nullptr, nullptr));
  }
  EXPECT_EQ(filters, (std::vector<H5Z_filter_t>{H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE}));
  EXPECT_LT(H5Dget_storage_size(ds.id()), static_cast<hsize_t>(a.size()) * sizeof(double) / 4);

  // Uncompressed writes stay contiguous.
  f.root().write_array("raw", a, false);
  h5::Handle raw_dcpl(H5Dget_create_plist(f.root().open_dataset("raw").id()), H5Pclose);
  EXPECT_EQ(H5Pget_layout(raw_dcpl.id()), H5D_CONTIGUOUS);
}

TEST(hdf5, GroupsAndPaths) {
  TempDir dir;
  auto f = h5::File::create(dir / "groups.h5");
  h5::Group c = f.root().create_group("a/b/c");
  EXPECT_FALSE(f.parallel() || c.parallel());
  EXPECT_EQ(c.path(), "/a/b/c");
  EXPECT_EQ(c.file(), (dir / "groups.h5").string());
  EXPECT_TRUE(f.root().exists("a"));
  EXPECT_TRUE(f.root().exists("a/b/c"));
  EXPECT_TRUE(f.root().exists("/a/b"));
  EXPECT_FALSE(f.root().exists("x"));
  EXPECT_FALSE(f.root().exists("a/x/y"));  // missing intermediate answers false, not an error

  f.root().write("a/b/data", std::vector<float>{1.f, 2.f});
  f.root().write("n/e/w", std::vector<int>{4});  // intermediate groups made on the way
  h5::Group b = f.root().open_group("a/b");
  EXPECT_EQ(b.members(), (std::vector<std::string>{"c", "data"}));
  EXPECT_EQ(f.root().members(), (std::vector<std::string>{"a", "n"}));
  EXPECT_FALSE(b.exists("data/z"));  // an intermediate that is a dataset
  EXPECT_EQ(b.read<float>("data"), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(f.root().read<int>("n/e/w"), std::vector<int>{4});

  EXPECT_EQ(f.root().require_group("a/b").path(), "/a/b");
  EXPECT_EQ(f.root().require_group("a/z").path(), "/a/z");
  EXPECT_TRUE(f.root().exists("a/z"));
  EXPECT_THROW(f.root().create_group("a/b"), Hdf5Error);
  EXPECT_THROW(f.root().open_group("nope"), Hdf5Error);

  // A write replaces an existing dataset, shape and type included.
  b.write("data", std::vector<double>{5, 6, 7});
  EXPECT_EQ(b.dims("data"), h5::Dims{3});
  EXPECT_EQ(b.read<double>("data"), (std::vector<double>{5, 6, 7}));
}

TEST(hdf5, Attributes) {
  TempDir dir;
  {
    auto f = h5::File::create(dir / "attrs.h5");
    h5::Group g = f.root().create_group("star");
    g.set_attr("exptime", 100.25);
    g.set_attr("naper", 7);
    g.set_attr("big", 1LL << 40);
    g.set_attr("name", "G93-48");
    g.set_attr("coeffs", std::vector<double>{1.5, -2.0, 3.25});
    g.set_attr("replaced", 1.0);
    g.set_attr("replaced", "now text");
    f.root().write("star/wave", std::vector<double>{4000, 4001});
    h5::Dataset w = g.open_dataset("wave");
    w.set_attr("units", "Angstrom");
    w.set_attr("step", 1.0);
    f.close();
  }
  auto f = h5::File::open(dir / "attrs.h5");
  h5::Group g = f.root().open_group("star");
  EXPECT_TRUE(g.has_attr("exptime"));
  EXPECT_FALSE(g.has_attr("missing"));
  EXPECT_EQ(g.attr_double("exptime"), 100.25);
  EXPECT_EQ(g.attr_int("naper"), 7);
  EXPECT_EQ(g.attr_int("big"), 1LL << 40);
  EXPECT_EQ(g.attr_string("name"), "G93-48");
  EXPECT_EQ(g.attr_doubles("coeffs"), (std::vector<double>{1.5, -2.0, 3.25}));
  EXPECT_EQ(g.attr_string("replaced"), "now text");
  EXPECT_THROW(g.attr_double("coeffs"), Hdf5Error);  // three values are not a scalar
  EXPECT_THROW(g.attr_string("exptime"), Hdf5Error);
  try {
    (void)g.attr_double("missing");
    ADD_FAILURE() << "reading a missing attribute did not throw";
  } catch (const Hdf5Error& e) {
    EXPECT_EQ(e.context().keyword, "/star");
    EXPECT_NE(e.message().find("'missing'"), std::string::npos) << e.what();
  }
  h5::Dataset w = g.open_dataset("wave");
  EXPECT_EQ(w.attr_string("units"), "Angstrom");
  EXPECT_TRUE(w.has_attr("step"));
  EXPECT_EQ(w.attr_double("step"), 1.0);
}

TEST(hdf5, StringsRoundTripIncludingUtf8AndEmpty) {
  TempDir dir;
  const std::vector<std::string> names{"fibre 1", "", "\xC3\x85ngstr\xC3\xB6m", std::string(300, 'x')};
  auto f = h5::File::create(dir / "strings.h5");
  f.root().write_strings("names", names);
  f.root().write_strings("none", {});
  EXPECT_EQ(f.root().read_strings("names"), names);
  EXPECT_TRUE(f.root().read_strings("none").empty());
  EXPECT_THROW(f.root().read<double>("names"), Hdf5Error);
  f.root().write("numbers", std::vector<double>{1});
  EXPECT_THROW(f.root().read_strings("numbers"), Hdf5Error);
}

TEST(hdf5, FixedLengthStringsWrittenByOthersAreRead) {
  TempDir dir;
  auto f = h5::File::create(dir / "fixed.h5");
  // Space padding as FITS-derived writers use it, and a full-width entry with no terminator.
  h5::Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id(), 6);
  H5Tset_strpad(type.id(), H5T_STR_SPACEPAD);
  const hsize_t n = 2;
  h5::Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  h5::Handle ds(H5Dcreate2(f.root().id(), "fixed", type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                H5Dclose);
  ASSERT_TRUE(ds.valid());
  const char data[] = "ab    sixsix";
  ASSERT_GE(H5Dwrite(ds.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  EXPECT_EQ(f.root().read_strings("fixed"), (std::vector<std::string>{"ab", "sixsix"}));
}

TEST(hdf5, ExtendibleDatasetGrowsAndKeepsWrittenSlices) {
  TempDir dir;
  const hsize_t nwave = 50;
  auto value = [](hsize_t w, hsize_t t) { return static_cast<float>(1000 * t + w) + 0.5f; };
  auto column = [&](hsize_t t) {
    std::vector<float> v(nwave);
    for (hsize_t w = 0; w < nwave; ++w) v[w] = value(w, t);
    return v;
  };
  {
    auto f = h5::File::create(dir / "grow.h5");
    h5::Dataset ds = f.root().create_dataset<float>("fluxlike/flux", {nwave, 0}, {nwave, H5S_UNLIMITED}, {nwave, 2});
    EXPECT_EQ(ds.dims(), (h5::Dims{nwave, 0}));
    for (hsize_t t = 0; t < 5; ++t) {
      ds.extend({nwave, t + 1});
      ds.write_slab(column(t).data(), {0, t}, {nwave, 1});
    }
    EXPECT_EQ(ds.last_no_collective_cause(), static_cast<uint32_t>(H5D_MPIO_SET_INDEPENDENT));
    ds.write_slab<float>(nullptr, {0, 0}, {nwave, 0});  // empty selection is a no-op
    EXPECT_THROW(ds.write_slab(column(5).data(), {0, 5}, {nwave, 1}), Hdf5Error);  // beyond the extent
    EXPECT_THROW(ds.write_slab(column(0).data(), {0}, {nwave}), Hdf5Error);        // wrong rank
    EXPECT_THROW(ds.extend({nwave}), Hdf5Error);
    EXPECT_THROW(f.root().create_dataset<float>("nochunk", {nwave, 0}, {nwave, H5S_UNLIMITED}), Hdf5Error);
    EXPECT_THROW(f.root().create_dataset<float>("fluxlike/flux", {nwave, 0}), Hdf5Error);  // exists
    f.close();
  }
  auto f = h5::File::open(dir / "grow.h5");
  h5::Dims d;
  const auto all = f.root().read<float>("fluxlike/flux", &d);
  ASSERT_EQ(d, (h5::Dims{nwave, 5}));
  bool ok = true;
  for (hsize_t w = 0; w < nwave; ++w)
    for (hsize_t t = 0; t < 5; ++t) ok = ok && all[w * 5 + t] == value(w, t);
  EXPECT_TRUE(ok);
  std::vector<double> part(2 * 3);
  f.root().open_dataset("fluxlike/flux").read_slab(part.data(), {10, 2}, {2, 3});
  EXPECT_EQ(part, (std::vector<double>{value(10, 2), value(10, 3), value(10, 4), value(11, 2), value(11, 3),
                                        value(11, 4)}));
}

TEST(hdf5, MissingFileThrowsNamingTheFile) {
  TempDir dir;
  const auto path = dir / "absent.h5";
  try {
    (void)h5::File::open(path);
    FAIL() << "opening a missing file did not throw";
  } catch (const Hdf5Error& e) {
    EXPECT_EQ(e.context().file, path.string());
    EXPECT_EQ(e.context().keyword, "/");
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("open file"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("H5Fopen"), std::string::npos) << "no HDF5 error stack in: " << e.what();
  }
}

TEST(hdf5, MissingDatasetThrowsNamingFileAndObject) {
  TempDir dir;
  const auto path = dir / "present.h5";
  auto f = h5::File::create(path);
  h5::Group g = f.root().create_group("grp");
  try {
    (void)g.read<double>("missing");
    FAIL() << "reading a missing dataset did not throw";
  } catch (const Hdf5Error& e) {
    EXPECT_EQ(e.context().file, path.string());
    EXPECT_EQ(e.context().keyword, "/grp/missing");
    EXPECT_NE(std::string(e.what()).find("/grp/missing"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("doesn't exist"), std::string::npos) << "no HDF5 error stack in: " << e.what();
  }
}

TEST(hdf5, NoIdentifierLeaksOnSuccessOrFailure) {
  TempDir dir;
  h5::File::create(dir / "warmup.h5").close();  // the library registers its own ids on first use
  const auto before = open_ids();
  {
    auto f = h5::File::create(dir / "leak.h5");
    const Array2 ones = Array2::Constant(20, 30, 1.0);
    f.root().write_array("a", ones, true);
    f.root().write_strings("s", {"a", "b"});
    f.root().create_group("g").set_attr("u", "x");
    (void)f.root().read_strings("s");
    (void)f.root().open_group("g").attr_string("u");
    auto ds = f.root().create_dataset<double>("e", {2, 0}, {2, H5S_UNLIMITED}, {2, 1});
    ds.extend({2, 1});
    const double v[2] = {1, 2};
    ds.write_slab(v, {0, 0}, {2, 1});
    EXPECT_THROW(f.root().read<double>("missing"), Hdf5Error);
    EXPECT_THROW(f.root().open_group("g").attr_double("u"), Hdf5Error);
    EXPECT_THROW(ds.write_slab(v, {0, 5}, {2, 1}), Hdf5Error);
    EXPECT_THROW(f.root().read_strings("a"), Hdf5Error);
    // Objects still open when the file closes are closed with it.
    f.close();
    EXPECT_EQ(open_ids(), before);
  }
  EXPECT_EQ(open_ids(), before);
  EXPECT_THROW(h5::File::open(dir / "absent.h5"), Hdf5Error);
  EXPECT_EQ(open_ids(), before);
}

TEST(hdf5, H5pyReadsTheFilesWithNoHelp) {
  if (!have_h5py()) GTEST_SKIP() << "/usr/bin/python3 with h5py is not installed";
  TempDir dir;
  const auto path = dir / "py.h5";
  {
    auto f = h5::File::create(path);
    h5::Group s = f.root().create_group("star1");
    s.set_attr("name", "G93-48");
    s.set_attr("n", 3);
    f.root().write("star1/wavelike/wavelength", std::vector<double>{4000.0, 4000.5});
    s.open_dataset("wavelike/wavelength").set_attr("units", "Angstrom");
    Array2 a(300, 4);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = static_cast<double>(i);
    s.write_array("fluxlike/flux", a, true);
    s.write_strings("names", {"a", "\xC3\x85"});
    f.close();
  }
  const std::string script =
      "import h5py, numpy as np\n"
      "f = h5py.File('" + path.string() + "', 'r')\n"
      "s = f['star1']\n"
      "assert s.attrs['name'] == 'G93-48', repr(s.attrs['name'])\n"
      "assert int(s.attrs['n']) == 3\n"
      "w = s['wavelike/wavelength']\n"
      "assert w.attrs['units'] == 'Angstrom', repr(w.attrs['units'])\n"
      "assert list(w[:]) == [4000.0, 4000.5]\n"
      "fl = s['fluxlike/flux']\n"
      "assert fl.shape == (300, 4) and fl.compression == 'gzip' and fl.shuffle\n"
      "assert fl[1, 2] == 6.0 and fl[299, 3] == 1199.0\n"
      "n = [x.decode() if isinstance(x, bytes) else x for x in s['names'][:]]\n"
      "assert n == ['a', '\\u00c5'], n\n"
      "print('h5py ok')\n";
  const auto script_path = dir / "check.py";
  {
    std::FILE* out = std::fopen(script_path.c_str(), "w");
    ASSERT_NE(out, nullptr);
    std::fputs(script.c_str(), out);
    std::fclose(out);
  }
  std::string output;
  EXPECT_EQ(kspecdr::testing::run_command("/usr/bin/python3 " + script_path.string(), &output), 0) << output;
  EXPECT_NE(output.find("h5py ok"), std::string::npos) << output;
}
