#pragma once
// The only place that calls MPI directly: thin wrappers that throw instead of
// returning codes (in the spirit of heffte::mpi). Nothing here knows astronomy.
#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
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
  /// In-place gather of row bands: `buf` holds `nrows` rows of `row_bytes` bytes on every rank; rank r has
  /// filled rows [band_begin(r), band_begin(r + 1)) and receives every other rank's band.
  void allgather_row_bands(void* buf, long long nrows, long long row_bytes) const;
  /// The inverse: `root` holds all `nrows` rows in `full` (ignored elsewhere); every rank receives its band, rows
  /// [band_begin(rank), band_begin(rank + 1)), in `band`.
  void scatter_row_bands(const void* full, void* band, long long nrows, long long row_bytes, int root) const;
  /// First row of rank r's band when `nrows` rows are split into size() contiguous bands (r = size(): nrows).
  long long band_begin(long long nrows, int r) const;
  /// The k-th smallest (0-based) of the values of all ranks together, exact and the same on every rank whatever
  /// the number of ranks (bisection over the order of the doubles; NaNs must be left out by the caller).
  double kth_smallest(const std::vector<double>& local, long long k) const;
  /// The median of the values of all ranks together (mean of the two middle values for an even count; NaN for
  /// none): the same number as a median of the concatenated values on one rank.
  double median(const std::vector<double>& local) const;

 private:
  MPI_Comm c_;
  bool owned_;
};

/// Sums of (done, failed) counts per round of work, reduced without waiting: each rank adds its round's counts
/// with add() (an MPI_Iallreduce; every rank calls add() once per round, in the same order), goes on with its
/// next item, and reads the totals of the rounds completed so far with totals(). finish() waits for the rest.
/// So ranks are never held in step by the progress count, only by the work itself.
class RoundSums {
 public:
  explicit RoundSums(const Comm& comm) : comm_(comm) {}
  ~RoundSums();
  RoundSums(const RoundSums&) = delete;
  RoundSums& operator=(const RoundSums&) = delete;
  void add(long long done, long long failed);
  /// Totals of the rounds whose reductions have completed (tests the outstanding ones, in order).
  std::pair<long long, long long> totals();
  /// Waits for every round; the totals of all rounds.
  std::pair<long long, long long> finish();

 private:
  struct Round {
    long long in[2] = {0, 0}, out[2] = {0, 0};
    MPI_Request request = MPI_REQUEST_NULL;
  };
  const Comm& comm_;
  std::vector<std::unique_ptr<Round>> rounds_;  // stable addresses for MPI
  std::size_t completed_ = 0;
  long long done_ = 0, failed_ = 0;
};

/// Runs `work` on every rank of `comm` (it may call collectives) and makes any rank's failure the failure of all:
/// the first failing rank's error (in rank order) is thrown on every rank, as the same type (ConfigError,
/// DataError or Error), so that no rank waits in a later collective that another has left. Collective. On a
/// communicator of one rank `work` simply runs: its exception leaves unchanged.
void all_or_throw(const Comm& comm, const std::function<void()>& work);

/// How many ranks each item of a round gets when the items are fewer than the ranks: item i gets sizes[i] >= 1
/// ranks, the sizes add up to `nranks`, and the largest load per rank, weights[i] / sizes[i], is as small as whole
/// ranks allow (each further rank goes to the item with the largest load per rank; ties to the earlier item).
/// Equal weights give every item floor(n / E) or ceil(n / E) ranks, the earlier items the larger groups. Group i
/// holds the ranks [sum of sizes[0..i), sum of sizes[0..i]). Throws Error when there are no items, more items than
/// ranks, or a weight that is not positive and finite.
std::vector<int> group_sizes(const std::vector<double>& weights, int nranks);

/// MPI_COMM_WORLD (not owned).
Comm& world();
/// MPI_COMM_SELF (not owned): this rank alone.
Comm& self();
/// True once MPI_Init has run.
bool initialized();

}  // namespace kspecdr::mpi
