#pragma once
// MPI for the lifetime of a one-process gtest program whose tests call collective code (reduce_night, the
// cube writer) over MPI_COMM_WORLD of size 1. Include it once in such a test file: it registers itself.
#include <gtest/gtest.h>

#include <memory>

#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::testing {

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { env_ = std::make_unique<mpi::Environment>(argc_, argv_); }
  void TearDown() override { env_.reset(); }

 private:
  int argc_ = 0;
  char** argv_ = nullptr;
  std::unique_ptr<mpi::Environment> env_;
};

[[maybe_unused]] inline ::testing::Environment* const kMpiEnvironment =
    ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

}  // namespace kspecdr::testing
