#include "kspecdr/parallel/mpi.hpp"

#include <atomic>
#include <exception>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "kspecdr/core/error.hpp"

namespace kspecdr::mpi {
namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(fmt::format("MPI call {} failed: {}", what, std::string(text, static_cast<std::size_t>(len))));
}
}  // namespace

Environment::Environment(int& argc, char**& argv) {
  int flag = 0;
  MPI_Initialized(&flag);
  if (!flag) {
    int provided = 0;
    check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owns_ = true;
  }
}

Environment::~Environment() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

bool initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

Comm::~Comm() {
  if (owned_ && c_ != MPI_COMM_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&c_);
  }
}

Comm& Comm::operator=(Comm&& o) noexcept {
  if (this != &o) {
    if (owned_ && c_ != MPI_COMM_NULL) MPI_Comm_free(&c_);
    c_ = o.c_;
    owned_ = o.owned_;
    o.owned_ = false;
  }
  return *this;
}

int Comm::rank() const {
  int r = 0;
  check(MPI_Comm_rank(c_, &r), "MPI_Comm_rank");
  return r;
}
int Comm::size() const {
  int s = 1;
  check(MPI_Comm_size(c_, &s), "MPI_Comm_size");
  return s;
}
void Comm::barrier() const { check(MPI_Barrier(c_), "MPI_Barrier"); }

Comm Comm::split(int color, int key) const {
  MPI_Comm out = MPI_COMM_NULL;
  check(MPI_Comm_split(c_, color, key, &out), "MPI_Comm_split");
  return Comm(out, true);
}

bool Comm::all_true(bool ok) const {
  int in = ok ? 1 : 0, out = 0;
  check(MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LAND, c_), "MPI_Allreduce(LAND)");
  return out != 0;
}
double Comm::sum(double v) const {
  double out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_SUM, c_), "MPI_Allreduce(SUM)");
  return out;
}
long long Comm::sum(long long v) const {
  long long out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_LONG_LONG, MPI_SUM, c_), "MPI_Allreduce(SUM)");
  return out;
}
double Comm::max(double v) const {
  double out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, c_), "MPI_Allreduce(MAX)");
  return out;
}
long long Comm::max(long long v) const {
  long long out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_LONG_LONG, MPI_MAX, c_), "MPI_Allreduce(MAX)");
  return out;
}
double Comm::min(double v) const {
  double out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MIN, c_), "MPI_Allreduce(MIN)");
  return out;
}
void Comm::sum_inplace(std::vector<double>& v) const {
  check(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM, c_),
        "MPI_Allreduce(SUM, vector)");
}

void Comm::bcast(std::string& s, int root) const {
  long long n = static_cast<long long>(s.size());
  bcast(n, root);
  s.resize(static_cast<std::size_t>(n));
  if (n) check(MPI_Bcast(s.data(), static_cast<int>(n), MPI_CHAR, root, c_), "MPI_Bcast(string)");
}
void Comm::bcast(std::vector<double>& v, int root) const {
  long long n = static_cast<long long>(v.size());
  bcast(n, root);
  v.resize(static_cast<std::size_t>(n));
  if (n) check(MPI_Bcast(v.data(), static_cast<int>(n), MPI_DOUBLE, root, c_), "MPI_Bcast(vector)");
}
void Comm::bcast(double& v, int root) const { check(MPI_Bcast(&v, 1, MPI_DOUBLE, root, c_), "MPI_Bcast(double)"); }
void Comm::bcast(long long& v, int root) const {
  check(MPI_Bcast(&v, 1, MPI_LONG_LONG, root, c_), "MPI_Bcast(long long)");
}

std::vector<std::string> Comm::allgather(const std::string& s) const {
  int n = size();
  int len = static_cast<int>(s.size());
  std::vector<int> lens(static_cast<std::size_t>(n)), displs(static_cast<std::size_t>(n));
  check(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, c_), "MPI_Allgather(lengths)");
  int total = 0;
  for (int i = 0; i < n; ++i) {
    displs[static_cast<std::size_t>(i)] = total;
    total += lens[static_cast<std::size_t>(i)];
  }
  std::string all(static_cast<std::size_t>(total), '\0');
  check(MPI_Allgatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, c_),
        "MPI_Allgatherv(strings)");
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i)
    out.push_back(all.substr(static_cast<std::size_t>(displs[static_cast<std::size_t>(i)]),
                             static_cast<std::size_t>(lens[static_cast<std::size_t>(i)])));
  return out;
}

std::vector<double> Comm::allgatherv(const std::vector<double>& v) const {
  int n = size();
  int len = static_cast<int>(v.size());
  std::vector<int> lens(static_cast<std::size_t>(n)), displs(static_cast<std::size_t>(n));
  check(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, c_), "MPI_Allgather(lengths)");
  int total = 0;
  for (int i = 0; i < n; ++i) {
    displs[static_cast<std::size_t>(i)] = total;
    total += lens[static_cast<std::size_t>(i)];
  }
  std::vector<double> out(static_cast<std::size_t>(total));
  check(MPI_Allgatherv(v.data(), len, MPI_DOUBLE, out.data(), lens.data(), displs.data(), MPI_DOUBLE, c_),
        "MPI_Allgatherv(doubles)");
  return out;
}

long long Comm::band_begin(long long nrows, int r) const {
  return nrows * static_cast<long long>(r) / static_cast<long long>(size());
}

namespace {
/// A datatype of one row of `row_bytes` bytes and the bands' counts and displacements in rows.
struct RowBands {
  MPI_Datatype row = MPI_DATATYPE_NULL;
  std::vector<int> counts, displs;
  RowBands(const Comm& comm, long long nrows, long long row_bytes) {
    const int n = comm.size();
    check(MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row), "MPI_Type_contiguous(row)");
    check(MPI_Type_commit(&row), "MPI_Type_commit(row)");
    for (int r = 0; r < n; ++r) {
      displs.push_back(static_cast<int>(comm.band_begin(nrows, r)));
      counts.push_back(static_cast<int>(comm.band_begin(nrows, r + 1) - comm.band_begin(nrows, r)));
    }
  }
  ~RowBands() { MPI_Type_free(&row); }
  RowBands(const RowBands&) = delete;
  RowBands& operator=(const RowBands&) = delete;
};
}  // namespace

void Comm::allgather_row_bands(void* buf, long long nrows, long long row_bytes) const {
  if (size() == 1 || nrows == 0) return;
  RowBands b(*this, nrows, row_bytes);
  check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, b.counts.data(), b.displs.data(), b.row, c_),
        "MPI_Allgatherv(row bands)");
}

void Comm::scatter_row_bands(const void* full, void* band, long long nrows, long long row_bytes, int root) const {
  if (nrows == 0) return;
  RowBands b(*this, nrows, row_bytes);
  const auto me = static_cast<std::size_t>(rank());
  check(MPI_Scatterv(full, b.counts.data(), b.displs.data(), b.row, band, b.counts[me], b.row, root, c_),
        "MPI_Scatterv(row bands)");
}

namespace {
/// A key whose unsigned order is the order of the doubles (negative values bit-flipped, positive ones with the
/// sign bit set).
std::uint64_t order_key(double v) {
  std::uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : (b | (1ull << 63));
}
double from_key(std::uint64_t k) {
  const std::uint64_t b = (k >> 63) ? (k & ~(1ull << 63)) : ~k;
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}
}  // namespace

double Comm::kth_smallest(const std::vector<double>& local, long long k) const {
  std::vector<std::uint64_t> keys(local.size());
  for (std::size_t i = 0; i < local.size(); ++i) keys[i] = order_key(local[i]);
  // The smallest key with at least k + 1 values at or below it.
  std::uint64_t lo = 0, hi = ~0ull;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    long long c = 0;
    for (auto key : keys) c += key <= mid;
    if (sum(c) >= k + 1)
      hi = mid;
    else
      lo = mid + 1;
  }
  return from_key(lo);
}

double Comm::median(const std::vector<double>& local) const {
  const long long n = sum(static_cast<long long>(local.size()));
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const long long h = n / 2;
  const double upper = kth_smallest(local, h);
  if (n % 2) return upper;
  return 0.5 * (kth_smallest(local, h - 1) + upper);
}

WorkQueue::WorkQueue(const Comm& comm, long long n) : comm_(comm), n_(n), next_static_(comm.rank()) {
  if (comm.size() == 1) return;  // one rank takes every item in order
  // Every rank on one node? Then a shared window holds the counters.
  MPI_Comm node = MPI_COMM_NULL;
  check(MPI_Comm_split_type(comm.get(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int node_size = 0;
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  if (node_size != comm.size()) return;
  void* base = nullptr;
  const MPI_Aint bytes = comm.is_root() ? static_cast<MPI_Aint>(3 * sizeof(long long)) : 0;
  check(MPI_Win_allocate_shared(bytes, sizeof(long long), MPI_INFO_NULL, comm.get(), &base, &win_),
        "MPI_Win_allocate_shared");
  MPI_Aint size = 0;
  int disp = 0;
  check(MPI_Win_shared_query(win_, 0, &size, &disp, &base), "MPI_Win_shared_query");
  counters_ = static_cast<long long*>(base);
  if (comm.is_root())
    for (int i = 0; i < 3; ++i) std::atomic_ref<long long>(counters_[i]).store(0);
  comm.barrier();  // the counters are zero before any rank takes an item
}

WorkQueue::~WorkQueue() {
  if (win_ != MPI_WIN_NULL) MPI_Win_free(&win_);
}

long long WorkQueue::next() {
  long long i = 0;
  if (counters_) {
    i = std::atomic_ref<long long>(counters_[0]).fetch_add(1);
  } else {
    i = next_static_;
    next_static_ += comm_.size();
  }
  return i < n_ ? i : -1;
}

void WorkQueue::add(long long done, long long failed) {
  if (counters_) {
    std::atomic_ref<long long>(counters_[1]).fetch_add(done);
    std::atomic_ref<long long>(counters_[2]).fetch_add(failed);
  } else {
    done_ += done;
    failed_ += failed;
  }
}

std::pair<long long, long long> WorkQueue::totals() const {
  if (counters_)
    return {std::atomic_ref<long long>(counters_[1]).load(), std::atomic_ref<long long>(counters_[2]).load()};
  return {done_, failed_};
}

std::pair<long long, long long> WorkQueue::finish() {
  if (counters_) {
    comm_.barrier();  // every rank has added its counts
    const auto t = totals();
    comm_.barrier();  // and every rank has read them before the window goes
    MPI_Win_free(&win_);
    win_ = MPI_WIN_NULL;
    counters_ = nullptr;
    finished_ = true;
    done_ = t.first, failed_ = t.second;
    return t;
  }
  if (!finished_) {
    done_ = comm_.sum(done_);
    failed_ = comm_.sum(failed_);
    finished_ = true;
  }
  return {done_, failed_};
}

void throw_earliest(const Comm& comm, long long key, const std::exception_ptr& error) {
  if (comm.size() == 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  std::string mine;  // 20-digit key, type letter, message
  if (error) {
    char type = 'E';
    std::string what;
    try {
      std::rethrow_exception(error);
    } catch (const ConfigError& e) {
      type = 'C', what = e.what();
    } catch (const DataError& e) {
      type = 'D', what = e.what();
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception that is not a std::exception";
    }
    mine = fmt::format("{:020d}{}{}", key, type, what);
  }
  std::string first;
  for (auto& e : comm.allgather(mine))
    if (!e.empty() && (first.empty() || e.compare(0, 20, first, 0, 20) < 0)) first = std::move(e);
  if (first.empty()) return;
  const std::string what = first.substr(21);
  if (first[20] == 'C') throw ConfigError(what);
  if (first[20] == 'D') throw DataError(what);
  throw Error(what);
}

void all_or_throw(const Comm& comm, const std::function<void()>& work) {
  if (comm.size() == 1) {
    work();
    return;
  }
  std::exception_ptr error;
  try {
    work();
  } catch (const std::exception&) {
    error = std::current_exception();
  }
  throw_earliest(comm, comm.rank(), error);
}

std::vector<int> group_sizes(const std::vector<double>& weights, int nranks) {
  const std::size_t n = weights.size();
  if (n == 0 || static_cast<long long>(n) > nranks)
    throw Error(fmt::format("rank groups: {} items cannot be dealt to {} ranks (one rank at least per item)", n,
                            nranks));
  for (double w : weights)
    if (!(w > 0) || !std::isfinite(w)) throw Error(fmt::format("rank groups: item weight {} is not positive", w));
  std::vector<int> sizes(n, 1);
  for (int extra = nranks - static_cast<int>(n); extra > 0; --extra) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < n; ++i)
      if (weights[i] / sizes[i] > weights[best] / sizes[best]) best = i;
    ++sizes[best];
  }
  return sizes;
}

Comm& world() {
  static Comm w(MPI_COMM_WORLD, false);
  return w;
}

Comm& self() {
  static Comm s(MPI_COMM_SELF, false);
  return s;
}

}  // namespace kspecdr::mpi
