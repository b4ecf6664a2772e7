// The collectives the row-band split of the master calibrations stands on: the median and k-th value of
// numbers spread over the ranks equal those of all numbers on one rank, exactly, and a frame whose row bands
// were filled by different ranks arrives whole on every rank. Run at 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kspecdr/core/image.hpp"
#include "kspecdr/core/stats.hpp"
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
