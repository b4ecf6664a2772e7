#pragma once
// The only place that calls MPI directly: thin wrappers that throw instead of
// returning codes (in the spirit of heffte::mpi). Nothing here knows astronomy.
#include <mpi.h>

#include <string>
#include <vector>

namespace kspecdr::mpi {

/// MPI_Init / MPI_Finalize for the lifetime of the object. Safe to create when
/// MPI is already initialised (then it neither initialises nor finalises).
class Environment {
 public:
  Environment(int& argc, char**& argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

 private:
  bool owns_ = false;
};

class Comm {
 public:
  explicit Comm(MPI_Comm c = MPI_COMM_WORLD, bool owned = false) : c_(c), owned_(owned) {}
  ~Comm();
  Comm(Comm&& o) noexcept : c_(o.c_), owned_(o.owned_) { o.owned_ = false; }
  Comm& operator=(Comm&& o) noexcept;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  MPI_Comm get() const { return c_; }
  int rank() const;
  int size() const;
  bool is_root() const { return rank() == 0; }
  void barrier() const;
  /// MPI_Comm_split; the returned communicator is freed with the object.
  Comm split(int color, int key) const;

  /// True on every rank iff `ok` is true on every rank (MPI_LAND). Use before asserting in tests.
  bool all_true(bool ok) const;
  double sum(double v) const;
  long long sum(long long v) const;
  double max(double v) const;
  long long max(long long v) const;
  double min(double v) const;
  void sum_inplace(std::vector<double>& v) const;
  void bcast(std::string& s, int root = 0) const;
  void bcast(std::vector<double>& v, int root = 0) const;
  void bcast(double& v, int root = 0) const;
  void bcast(long long& v, int root = 0) const;
  /// Every rank's string, in rank order, on every rank.
  std::vector<std::string> allgather(const std::string& s) const;
  /// Every rank's vector concatenated in rank order (sizes may differ), on every rank.
  std::vector<double> allgatherv(const std::vector<double>& v) const;

 private:
  MPI_Comm c_;
  bool owned_;
};

/// MPI_COMM_WORLD (not owned).
Comm& world();
/// True once MPI_Init has run.
bool initialized();

}  // namespace kspecdr::mpi
