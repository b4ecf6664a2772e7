// Exchanging the rows of a SpectrumSet between the ranks of a group that shared its apertures.
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/parallel/mpi.hpp"

namespace kspecdr::extract {

namespace {

template <typename T>
void put(std::string& out, const T& v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

template <typename T>
T take(const std::string& in, std::size_t& pos) {
  if (pos + sizeof(T) > in.size()) throw Error("aperture diagnostics exchanged between ranks are cut short");
  T v;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

std::string pack(const ApertureDiagnostics& d) {
  std::string out;
  for (double v : {d.trace_offset_px, d.shift_px, d.shift_err_px, d.width_scale, d.width_px, d.peak_e,
                   d.masked_fraction, d.snr_median, d.sky_median_e})
    put(out, v);
  put(out, static_cast<std::int64_t>(d.rejected));
  put(out, static_cast<std::int64_t>(d.bad_columns));
  put(out, static_cast<std::uint64_t>(d.status.size()));
  out += d.status;
  return out;
}

ApertureDiagnostics unpack(const std::string& in, std::size_t& pos) {
  ApertureDiagnostics d;
  for (double* v : {&d.trace_offset_px, &d.shift_px, &d.shift_err_px, &d.width_scale, &d.width_px, &d.peak_e,
                    &d.masked_fraction, &d.snr_median, &d.sky_median_e})
    *v = take<double>(in, pos);
  d.rejected = static_cast<long>(take<std::int64_t>(in, pos));
  d.bad_columns = static_cast<long>(take<std::int64_t>(in, pos));
  const auto n = static_cast<std::size_t>(take<std::uint64_t>(in, pos));
  if (pos + n > in.size()) throw Error("aperture diagnostics exchanged between ranks are cut short");
  d.status = in.substr(pos, n);
  pos += n;
  return d;
}

}  // namespace

void share_aperture_bands(SpectrumSet& s, const mpi::Comm& group) {
  const int n = group.size();
  if (n == 1) return;
  s.check_shapes("spectra shared between ranks");
  const long long na = s.naper();
  auto share = [&](auto& a) {
    using Scalar = typename std::decay_t<decltype(a)>::Scalar;
    group.allgather_row_bands(a.data(), na, static_cast<long long>(a.cols() * sizeof(Scalar)));
  };
  for (ImageArray* a : {&s.flux, &s.variance, &s.var_star, &s.var_sky, &s.var_read, &s.var_cal, &s.sky, &s.offset,
                        &s.width, &s.peak, &s.masked_fraction, &s.rejected})
    share(*a);
  share(s.mask);
  const int me = group.rank();
  std::string mine;
  for (long long a = group.band_begin(na, me); a < group.band_begin(na, me + 1); ++a)
    mine += pack(s.diagnostics[static_cast<std::size_t>(a)]);
  const std::vector<std::string> all = group.allgather(mine);
  for (int r = 0; r < n; ++r) {
    std::size_t pos = 0;
    for (long long a = group.band_begin(na, r); a < group.band_begin(na, r + 1); ++a)
      s.diagnostics[static_cast<std::size_t>(a)] = unpack(all[static_cast<std::size_t>(r)], pos);
  }
}

}  // namespace kspecdr::extract
