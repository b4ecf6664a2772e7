#pragma once
// Frames split over the ranks by bands of detector rows: each rank works on its rows, then every rank
// receives the whole frame. The split is Comm::band_begin's; nothing here knows astronomy.
#include <Eigen/Core>

#include <utility>

#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::mpi {

/// Rows [begin, end) of this rank's band of an `ny`-row frame (all rows without `comm`).
inline std::pair<Eigen::Index, Eigen::Index> my_band(Eigen::Index ny, const Comm* comm) {
  if (!comm) return {0, ny};
  return {static_cast<Eigen::Index>(comm->band_begin(ny, comm->rank())),
          static_cast<Eigen::Index>(comm->band_begin(ny, comm->rank() + 1))};
}

/// The whole `ny`-row frame on every rank, from each rank's band (rows [y0, y0 + band.rows())); without `comm`
/// the band is the frame.
template <typename A>
A gather_band(const A& band, Eigen::Index y0, Eigen::Index ny, const Comm* comm) {
  if (!comm) return band;
  A full(ny, band.cols());
  if (band.rows() > 0) full.middleRows(y0, band.rows()) = band;
  comm->allgather_row_bands(full.data(), ny, static_cast<long long>(band.cols() * sizeof(typename A::Scalar)));
  return full;
}

/// This rank's band of an `ny`-row frame held whole by rank `root` (`full`, read on `root` only); without `comm` the
/// frame itself.
template <typename A>
A scatter_band(const A* full, Eigen::Index ny, Eigen::Index cols, int root, const Comm* comm) {
  if (!comm) return *full;
  const auto [y0, y1] = my_band(ny, comm);
  A band(y1 - y0, cols);
  comm->scatter_row_bands(comm->rank() == root ? full->data() : nullptr, band.data(), ny,
                          static_cast<long long>(cols * sizeof(typename A::Scalar)), root);
  return band;
}

}  // namespace kspecdr::mpi
