// wavecal::solve_shared: the apertures' solutions dealt over the ranks one at a time. Every aperture is solved by
// exactly one rank and every rank ends with every solution bit for bit; a solve that throws, on any rank and of any
// exception type, makes every rank throw the error of the earliest failed aperture (never a hang, the same error at
// any number of ranks). Run at 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/wavecal/solution.hpp"

using namespace kspecdr;

namespace {

/// A solution that only aperture i has: its numbers are functions of i that no other aperture shares.
wavecal::WavelengthSolution solution_of(std::size_t i) {
  wavecal::WavelengthSolution s;
  const double x = static_cast<double>(i);
  s.lambda.xmin = 0.0;
  s.lambda.xmax = 4095.0;
  s.lambda.coeffs = {5000.0 + x, 1.0 / (x + 3.0), -1e-7 * x};
  s.npix = 4096;
  s.status = wavecal::SolutionStatus::Ok;
  s.rms_px = 0.01 + 1e-3 / (x + 1.0);
  s.n_used = static_cast<int>(10 + i);
  s.message = "aperture " + std::to_string(i);
  return s;
}

/// What every rank threw from solve_shared ("" when nothing), and whether it was a DataError.
struct Thrown {
  std::string what;
  bool data_error = false;
};

Thrown run_failing(std::size_t n, const std::vector<std::size_t>& data_errors, std::size_t runtime_error) {
  std::vector<wavecal::WavelengthSolution> sol(n);
  Thrown t;
  try {
    wavecal::solve_shared(sol, &mpi::world(), [&](std::size_t i) {
      for (std::size_t k : data_errors)
        if (i == k) throw DataError("arc lines of aperture " + std::to_string(i) + " not found");
      if (i == runtime_error) throw std::runtime_error("aperture " + std::to_string(i) + " ran out of something");
      sol[i] = solution_of(i);
    });
  } catch (const DataError& e) {
    t.what = e.what();
    t.data_error = true;
  } catch (const std::exception& e) {
    t.what = e.what();
  }
  return t;
}

}  // namespace

TEST(WavecalShared, EveryApertureSolvedOnceAndSharedBitForBit) {
  const mpi::Comm& comm = mpi::world();
  for (std::size_t n : {0u, 1u, 7u, 40u}) {
    std::vector<wavecal::WavelengthSolution> sol(n);
    std::vector<double> solved_here(n, 0.0);
    wavecal::solve_shared(sol, &comm, [&](std::size_t i) {
      solved_here[i] += 1.0;
      sol[i] = solution_of(i);
    });
    comm.sum_inplace(solved_here);
    bool ok = true;
    for (std::size_t i = 0; i < n; ++i) {
      const auto expect = solution_of(i);
      ok = ok && solved_here[i] == 1.0 && wavecal::pack(sol[i]) == wavecal::pack(expect);
    }
    EXPECT_TRUE(comm.all_true(ok)) << n << " apertures on " << comm.size() << " ranks";
  }
}

TEST(WavecalShared, TheEarliestFailedApertureIsThrownOnEveryRankWhateverItsType) {
  const mpi::Comm& comm = mpi::world();
  // DataErrors at 5 and 11, a std::runtime_error at 8: every rank throws the DataError of aperture 5.
  const Thrown a = run_failing(16, {11, 5}, 8);
  EXPECT_TRUE(comm.all_true(a.data_error && a.what.find("aperture 5 ") != std::string::npos)) << a.what;
  // Only a std::runtime_error (not a kspecdr::Error) at 3: every rank throws an Error with its message.
  const Thrown b = run_failing(16, {}, 3);
  EXPECT_TRUE(comm.all_true(!b.data_error && b.what.find("aperture 3 ran out") != std::string::npos)) << b.what;
  // Nothing fails: nothing is thrown, and the collective that follows is reached by every rank.
  const Thrown c = run_failing(16, {}, 99);
  EXPECT_TRUE(comm.all_true(c.what.empty())) << c.what;
}
