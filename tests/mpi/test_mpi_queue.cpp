// mpi::WorkQueue: every item is taken by exactly one rank, the counts add up on every rank, and on one node a
// rank that is slow takes fewer items than an even share (the faster ranks take the rest). Run at 1, 2, 3 and 4
// ranks.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "kspecdr/parallel/mpi.hpp"

using namespace kspecdr;

TEST(MpiQueue, EveryItemIsTakenOnceAndTheCountsAddUp) {
  const mpi::Comm& comm = mpi::world();
  for (long long n : {0LL, 1LL, 5LL, 37LL}) {
    mpi::WorkQueue queue(comm, n);
    std::vector<double> taken(static_cast<std::size_t>(n), 0.0);
    for (long long i; (i = queue.next()) >= 0;) {
      ASSERT_LT(i, n);
      taken[static_cast<std::size_t>(i)] += 1.0;
      queue.add(1, i % 3 == 0 ? 1 : 0);  // every third item "fails"
    }
    EXPECT_EQ(queue.next(), -1) << "an exhausted queue stays exhausted";
    const auto [done, failed] = queue.finish();
    comm.sum_inplace(taken);
    long long once = 0;
    for (double t : taken) once += t == 1.0;
    EXPECT_EQ(once, n) << "rank " << comm.rank() << " of " << comm.size();
    EXPECT_EQ(done, n);
    EXPECT_EQ(failed, (n + 2) / 3);
    EXPECT_TRUE(comm.all_true(once == n && done == n));
  }
}

TEST(MpiQueue, ASlowRankTakesFewerItems) {
  const mpi::Comm& comm = mpi::world();
  constexpr long long n = 40;
  mpi::WorkQueue queue(comm, n);
  long long mine = 0;
  for (long long i; (i = queue.next()) >= 0;) {
    ++mine;
    // Rank 0 is slow; the others' items cost nothing.
    if (comm.is_root()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    queue.add(1, 0);
  }
  const bool dynamic = queue.dynamic();
  const auto [done, failed] = queue.finish();
  EXPECT_EQ(done, n);
  EXPECT_EQ(failed, 0);
  if (comm.size() > 1 && comm.is_root()) {
    ASSERT_TRUE(dynamic) << "every rank of this test runs on one node: the queue is shared";
    EXPECT_LT(mine, n / comm.size()) << "the slow rank took " << mine << " of " << n << " items";
  }
  const long long total = comm.sum(mine);
  EXPECT_EQ(total, n);
  EXPECT_TRUE(comm.all_true(total == n));
}
