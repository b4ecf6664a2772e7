#pragma once
// The only place that calls MPI directly: thin wrappers that throw instead of
// returning codes (in the spirit of heffte::mpi). Nothing here knows astronomy.
#include <mpi.h>

#include <exception>
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

/// Work items 0 … n−1 dealt to the ranks of `comm` as they become free (dynamic dealing): each rank takes the next
/// item with next() when it has finished the last one, so a faster rank (a less loaded core, a cheaper item) takes
/// more, and the ranks finish together. On one node the next item and the (done, failed) counts are counters in
/// memory shared by the ranks (MPI_Win_allocate_shared), changed atomically. Across nodes, where there is no
/// shared memory, rank r takes items r, r + R, r + 2R … (static dealing). Which rank does which item may change
/// from run to run; nothing else does. Construction and finish() are collective; next(), add() and totals() are not.
class WorkQueue {
 public:
  WorkQueue(const Comm& comm, long long n);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;
  /// The next item for this rank, or -1 when none is left.
  long long next();
  /// Counts an item this rank finished (done items, of which failed).
  void add(long long done, long long failed);
  /// The (done, failed) counts of all ranks so far (on one node; elsewhere this rank's own).
  std::pair<long long, long long> totals() const;
  /// Waits for every rank; the (done, failed) totals of all ranks. Collective.
  std::pair<long long, long long> finish();
  /// True when the items are dealt dynamically (every rank on one node).
  bool dynamic() const { return counters_ != nullptr; }

 private:
  const Comm& comm_;
  long long n_;
  MPI_Win win_ = MPI_WIN_NULL;
  long long* counters_ = nullptr;  ///< shared: next item, done, failed
  long long next_static_ = 0, done_ = 0, failed_ = 0;
  bool finished_ = false;
};

/// Runs `work` on every rank of `comm` (it may call collectives) and makes any rank's failure the failure of all:
/// the first failing rank's error (in rank order) is thrown on every rank, as the same type (ConfigError,
/// DataError or Error), so that no rank waits in a later collective that another has left. Collective. On a
/// communicator of one rank `work` simply runs: its exception leaves unchanged.
void all_or_throw(const Comm& comm, const std::function<void()>& work);

/// Every rank of `comm` throws the error with the smallest `key` among those the ranks hold (`error` null: none
/// here; keys ≥ 0), as the same type (ConfigError, DataError or Error), or returns on every rank when none holds
/// one. all_or_throw keys by rank; a step whose items are dealt to ranks keys by item, so the error named does not
/// depend on the number of ranks. Collective. On one rank `error` is rethrown unchanged.
void throw_earliest(const Comm& comm, long long key, const std::exception_ptr& error);

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
