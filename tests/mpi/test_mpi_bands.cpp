// The collectives the row-band split of the master calibrations stands on: the median and k-th value of
// numbers spread over the ranks equal those of all numbers on one rank, exactly, and a frame whose row bands
// were filled by different ranks arrives whole on every rank, and the mean of science IMs read by row bands over
// the ranks equals the one rank's mean bit for bit. Run at 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/core/stats.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/pipeline/extract_stage.hpp"
#include "kspecdr/parallel/mpi.hpp"

using namespace kspecdr;

namespace {

/// The same values on every rank count: a fixed sequence with duplicates, negative values, zeros of both
/// signs and tiny and huge magnitudes.
std::vector<double> all_values(std::size_t n) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> g(0.0, 3.0);
  std::vector<double> v;
  for (std::size_t i = 0; i < n; ++i) {
    switch (i % 7) {
      case 0: v.push_back(std::round(g(rng))); break;  // many duplicates
      case 1: v.push_back(i % 2 ? 0.0 : -0.0); break;
      case 2: v.push_back(1e-300 * g(rng)); break;
      case 3: v.push_back(1e300 * g(rng)); break;
      default: v.push_back(g(rng));
    }
  }
  return v;
}

/// Rank r's share: the values at indices r, r + n, r + 2n ... (an uneven split when n does not divide the count).
std::vector<double> share(const std::vector<double>& all, const mpi::Comm& comm) {
  std::vector<double> mine;
  for (std::size_t i = static_cast<std::size_t>(comm.rank()); i < all.size(); i += static_cast<std::size_t>(comm.size()))
    mine.push_back(all[i]);
  return mine;
}

}  // namespace

TEST(MpiBands, MedianAndKthValueOverTheRanksEqualTheSerialOnes) {
  const mpi::Comm& comm = mpi::world();
  bool ok = true;
  for (std::size_t n : {1u, 2u, 7u, 1000u, 1001u}) {
    const std::vector<double> all = all_values(n);
    const std::vector<double> mine = share(all, comm);
    std::vector<double> serial = all;
    const double want = median_inplace(serial);
    const double got = comm.median(mine);
    ok = ok && (got == want);
    EXPECT_EQ(got, want) << n << " values on " << comm.size() << " ranks";
    std::vector<double> sorted = all;
    std::sort(sorted.begin(), sorted.end());
    for (long long k : {0LL, static_cast<long long>(n / 3), static_cast<long long>(n - 1)}) {
      const double kth = comm.kth_smallest(mine, k);
      ok = ok && kth == sorted[static_cast<std::size_t>(k)];
      EXPECT_EQ(kth, sorted[static_cast<std::size_t>(k)]) << "k = " << k << " of " << n;
    }
  }
  EXPECT_TRUE(std::isnan(comm.median({})));
  EXPECT_TRUE(comm.all_true(ok));
}

TEST(MpiBands, RowBandsGatherIntoTheWholeFrameOnEveryRank) {
  const mpi::Comm& comm = mpi::world();
  const long long ny = 37, nx = 5;  // more rows than ranks, not a multiple of any rank count tested
  ImageArray frame = ImageArray::Constant(ny, nx, -1.0f);
  const long long y0 = comm.band_begin(ny, comm.rank()), y1 = comm.band_begin(ny, comm.rank() + 1);
  EXPECT_EQ(comm.band_begin(ny, 0), 0);
  EXPECT_EQ(comm.band_begin(ny, comm.size()), ny);
  for (long long y = y0; y < y1; ++y)
    for (long long x = 0; x < nx; ++x) frame(y, x) = static_cast<float>(100 * y + x);
  comm.allgather_row_bands(frame.data(), ny, nx * static_cast<long long>(sizeof(float)));
  long wrong = 0;
  for (long long y = 0; y < ny; ++y)
    for (long long x = 0; x < nx; ++x) wrong += frame(y, x) != static_cast<float>(100 * y + x);
  EXPECT_EQ(wrong, 0) << "rank " << comm.rank();
  EXPECT_TRUE(comm.all_true(wrong == 0));
}

// The slit master traces' image: each rank reads only its rows of every IM and the bands are gathered.
TEST(MpiBands, MeanOfScienceFilesReadByBandsEqualsTheOneRankMean) {
  namespace fs = std::filesystem;
  const mpi::Comm& comm = mpi::world();
  // Every rank writes the same frames into its own folder (no file is shared between ranks).
  const fs::path dir = fs::temp_directory_path() /
                       ("kspecdr-test-bands-" + std::to_string(::getpid()) + "-" + std::to_string(comm.rank()));
  fs::create_directories(dir);
  std::mt19937 rng(7);
  std::normal_distribution<float> g(100.0f, 10.0f);
  std::uniform_int_distribution<int> u(0, 9);
  std::vector<Image> frames;
  std::vector<fs::path> files;
  for (int k = 0; k < 5; ++k) {
    Image im(37, 11);  // more rows than ranks, not a multiple of any rank count tested
    for (Eigen::Index i = 0; i < im.data.size(); ++i) {
      im.data(i) = g(rng);
      im.variance(i) = 100.0f + static_cast<float>(k);
      im.mask(i) = u(rng) == 0 ? kMaskCosmic : 0;  // some pixels bad in one frame, a few in all
    }
    frames.push_back(im);
    files.push_back(dir / ("f" + std::to_string(k) + ".im.fits"));
    fits::write_image_file(files.back(), im, true);
  }
  const Image want = mean_science_image(frames);
  const Image got = mean_science_image(files, &comm);
  long wrong = 0;
  for (Eigen::Index i = 0; i < want.data.size(); ++i)
    wrong += got.data(i) != want.data(i) || got.variance(i) != want.variance(i) || got.mask(i) != want.mask(i);
  EXPECT_EQ(wrong, 0) << "rank " << comm.rank() << " of " << comm.size();
  EXPECT_EQ(got.ny(), 37);
  EXPECT_EQ(got.nx(), 11);

  // A frame cut short: the ranks whose rows are still in the file could read them, the others cannot; every
  // rank must fail with the file named, none wait for the others.
  {
    // Cut in the middle of the first HDU's pixels: after its header (the 2880-byte blocks up to the END card)
    // and half of its rows.
    std::ifstream in(files[3], std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::size_t end = 0;
    while (end + 80 <= bytes.size() && bytes.compare(end, 8, "END     ") != 0) end += 80;
    ASSERT_LT(end + 80, bytes.size()) << "no END card";
    const std::size_t data_start = (end / 2880 + 1) * 2880;
    fs::resize_file(files[3], data_start + 18 * 11 * sizeof(float));
  }
  bool failed = false, named = false;
  try {
    (void)mean_science_image(files, &comm);
  } catch (const Error& e) {
    failed = true;
    named = std::string(e.what()).find("f3.im.fits") != std::string::npos;
  }
  EXPECT_TRUE(failed) << "rank " << comm.rank();
  EXPECT_TRUE(named) << "rank " << comm.rank();
  EXPECT_TRUE(comm.all_true(wrong == 0 && failed && named));
  fs::remove_all(dir);
}
