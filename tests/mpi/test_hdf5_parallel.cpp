// Collective parallel HDF5 as the Rainbow writer uses it: every rank creates the same
// datasets, each writes the time slices it owns, ranks with nothing left write an empty
// selection, and the file read back holds exactly what the formula produced.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "support/testing.hpp"

using namespace kspecdr;

namespace {

constexpr hsize_t kNwave = 50;
constexpr hsize_t kNtime = 7;
constexpr hsize_t kNok = 3;  // fewer slices than ranks at 4 ranks: rank 3 owns none

double flux(hsize_t w, hsize_t t) { return 1000.0 * static_cast<double>(t) + static_cast<double>(w) + 0.25; }
std::uint8_t ok_flag(hsize_t t) { return static_cast<std::uint8_t>(t % 2 == 0 ? 1 : 0); }

// A folder that every rank sees: rank 0 makes it, the others learn its name.
struct SharedDir {
  std::optional<kspecdr::testing::TempDir> dir;
  std::string path;
  SharedDir() {
    if (mpi::world().is_root()) {
      dir.emplace("kspecdr-h5par");
      path = dir->path().string();
    }
    mpi::world().bcast(path);
  }
  // Nobody may still be reading when rank 0 removes the folder.
  ~SharedDir() { mpi::world().barrier(); }
};

}  // namespace

TEST(hdf5_parallel, RoundRobinTimeSlicesWithEmptySelections) {
  SharedDir shared;
  const std::string path = shared.path + "/rainbow.h5";
  const auto rank = static_cast<hsize_t>(mpi::world().rank());
  const auto size = static_cast<hsize_t>(mpi::world().size());

  bool wrote_collectively = true;  // every non-empty collective write reported cause 0
  std::vector<uint32_t> causes;
  {
    auto f = h5::File::create_parallel(path, mpi::world().get());
    EXPECT_TRUE(f.parallel());
    h5::Group star = f.root().create_group("star1");
    star.set_attr("name", "G93-48");
    // Whole-dataset writes in a parallel file are independent; every rank writes the same values.
    std::vector<double> wave(kNwave);
    for (hsize_t w = 0; w < kNwave; ++w) wave[w] = 4000.0 + static_cast<double>(w);
    star.write("wavelike/wavelength", wave.data(), {kNwave}, true);
    h5::Dataset wl = star.open_dataset("wavelike/wavelength");
    wl.set_attr("units", "Angstrom");
    EXPECT_TRUE(star.parallel() && wl.parallel());
    h5::Handle dcpl(H5Dget_create_plist(wl.id()), H5Pclose);
    EXPECT_EQ(H5Pget_nfilters(dcpl.id()), 0) << "compression asked for in a parallel file must be ignored";

    h5::Dataset fl = star.create_dataset<double>("fluxlike/flux", {kNwave, 0}, {kNwave, H5S_UNLIMITED}, {kNwave, 2});
    h5::Dataset ok = star.create_dataset<std::uint8_t>("timelike/ok", {0}, {H5S_UNLIMITED}, {4});
    fl.extend({kNwave, kNtime});
    ok.extend({kNok});

    // Collective writes need every rank in every call, so all ranks loop the same number of
    // rounds; a rank whose round-robin slice is past the end writes an empty selection.
    const hsize_t rounds = (kNtime + size - 1) / size;
    for (hsize_t j = 0; j < rounds; ++j) {
      const hsize_t t = rank + j * size;
      const bool mine = t < kNtime;
      std::vector<double> column(kNwave);
      for (hsize_t w = 0; w < kNwave; ++w) column[w] = flux(w, t);
      fl.write_slab(mine ? column.data() : nullptr, {0, mine ? t : 0}, {kNwave, mine ? hsize_t{1} : 0}, true);
      causes.push_back(fl.last_no_collective_cause());
      if (mine) wrote_collectively = wrote_collectively && fl.last_no_collective_cause() == 0;
    }
    for (hsize_t j = 0; j < (kNok + size - 1) / size; ++j) {
      const hsize_t t = rank + j * size;
      const bool mine = t < kNok;
      const std::uint8_t flag = ok_flag(t);
      ok.write_slab(mine ? &flag : nullptr, {mine ? t : 0}, {mine ? hsize_t{1} : 0}, true);
      if (mine) wrote_collectively = wrote_collectively && ok.last_no_collective_cause() == 0;
    }
    f.close();
  }
  std::string cause_text;
  for (auto c : causes) cause_text += std::to_string(c) + " ";
  EXPECT_TRUE(mpi::world().all_true(wrote_collectively)) << "rank " << rank << " causes: " << cause_text;

  // Every rank reads the whole file back through MPI-IO (reads are collective metadata ops).
  bool same = true;
  {
    auto f = h5::File::open_parallel(path, mpi::world().get());
    const h5::Group star = f.root().open_group("star1");
    h5::Dims d;
    const auto all = star.read<double>("fluxlike/flux", &d);
    same = same && d == h5::Dims{kNwave, kNtime};
    for (hsize_t w = 0; w < kNwave && same; ++w)
      for (hsize_t t = 0; t < kNtime; ++t) same = same && all[w * kNtime + t] == flux(w, t);
    const auto ok = star.read<std::uint8_t>("timelike/ok", &d);
    same = same && d == h5::Dims{kNok};
    for (hsize_t t = 0; t < kNok && same; ++t) same = same && ok[t] == ok_flag(t);
    same = same && star.attr_string("name") == "G93-48";
    same = same && star.open_dataset("wavelike/wavelength").attr_string("units") == "Angstrom";
    const auto wave = star.read<double>("wavelike/wavelength");
    same = same && wave.size() == kNwave && wave.back() == 4000.0 + static_cast<double>(kNwave - 1);
    f.close();
  }
  EXPECT_TRUE(mpi::world().all_true(same));

  // Rank 0 alone also reads it as an ordinary serial file.
  bool serial_ok = true;
  if (mpi::world().is_root()) {
    auto f = h5::File::open(path);
    std::vector<double> col(kNwave);
    f.root().open_dataset("star1/fluxlike/flux").read_slab(col.data(), {0, kNtime - 1}, {kNwave, 1});
    for (hsize_t w = 0; w < kNwave; ++w) serial_ok = serial_ok && col[w] == flux(w, kNtime - 1);
  }
  EXPECT_TRUE(mpi::world().all_true(serial_ok));
}

TEST(hdf5_parallel, GrowingOneTimeSliceAtATimeCollectively) {
  SharedDir shared;
  const std::string path = shared.path + "/grow.h5";
  const auto rank = static_cast<hsize_t>(mpi::world().rank());
  const auto size = static_cast<hsize_t>(mpi::world().size());
  // Each new exposure adds one time column; the rank that owns it writes, the others join empty.
  {
    auto f = h5::File::create_parallel(path, mpi::world().get());
    h5::Dataset fl = f.root().create_dataset<float>("flux", {kNwave, 0}, {kNwave, H5S_UNLIMITED}, {kNwave, 1});
    for (hsize_t t = 0; t < kNtime; ++t) {
      fl.extend({kNwave, t + 1});
      const bool mine = t % size == rank;
      std::vector<float> column(kNwave);
      for (hsize_t w = 0; w < kNwave; ++w) column[w] = static_cast<float>(flux(w, t));
      fl.write_slab(column.data(), {0, t}, {kNwave, mine ? hsize_t{1} : 0}, true);
    }
    f.close();
  }
  bool same = true;
  {
    auto f = h5::File::open_parallel(path, mpi::world().get());
    h5::Dims d;
    const auto all = f.root().read<float>("flux", &d);
    same = d == h5::Dims{kNwave, kNtime};
    for (hsize_t w = 0; w < kNwave && same; ++w)
      for (hsize_t t = 0; t < kNtime; ++t) same = same && all[w * kNtime + t] == static_cast<float>(flux(w, t));
  }
  EXPECT_TRUE(mpi::world().all_true(same));
}

TEST(hdf5_parallel, ErrorsInParallelFilesAreHdf5Errors) {
  SharedDir shared;
  bool threw = false;
  try {
    (void)h5::File::open_parallel(shared.path + "/absent.h5", mpi::world().get());
  } catch (const Hdf5Error& e) {
    threw = e.context().file == shared.path + "/absent.h5";
  }
  EXPECT_TRUE(mpi::world().all_true(threw));
}
