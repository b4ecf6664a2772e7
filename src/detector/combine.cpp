#include "kspecdr/detector/combine.hpp"

#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/detector/stats.hpp"

namespace kspecdr::detector {

namespace {

// Pixels are handled in chunks of a row: the stack of a chunk is sorted column-wise by an
// odd-even transposition network whose compare-exchanges run over whole chunk arrays, so the
// compiler turns them into SIMD min/max and no per-pixel branch or allocation is needed.
constexpr Eigen::Index kChunk = 256;

/// Rejection thresholds for the leave-one-out test: the Student-t quantile (k-1 degrees of
/// freedom for k other values) with the tail probability of kappa sigma of a Gaussian, so that
/// a clean stack of a few frames loses a value as rarely as a large one does at kappa.
const std::vector<double>& t_thresholds(double kappa) {
  thread_local double cached_kappa = -1.0;
  thread_local std::vector<double> t;
  if (kappa != cached_kappa) {
    cached_kappa = kappa;
    t.assign(66000, kappa);
    const double p = boost::math::cdf(boost::math::normal_distribution<double>(), kappa);
    for (int k = 2; k < 200; ++k)
      t[static_cast<std::size_t>(k)] = boost::math::quantile(boost::math::students_t_distribution<double>(k - 1), p);
    for (std::size_t k = 200; k < t.size(); ++k) t[k] = t[199];
  }
  return t;
}

/// Clipped mean of sorted values v[0..n): the extreme farthest from the median is rejected while
/// it lies beyond the t threshold in standard deviations of the other values from their mean.
/// Testing one value against the others keeps a single outlier from inflating the scale it is
/// judged by, which matters for the 3-10 frames of a calibration stack.
float clipped_mean_sorted(const float* v, int n, double kappa, std::uint16_t& used) {
  const std::vector<double>& tcrit = t_thresholds(kappa);
  int lo = 0, hi = n;
  double s = 0, ss = 0;
  for (int i = 0; i < n; ++i) {
    s += v[i];
    ss += static_cast<double>(v[i]) * v[i];
  }
  while (hi - lo >= 3) {
    const int m = hi - lo;
    const double med = (m % 2) ? v[lo + m / 2] : 0.5 * (static_cast<double>(v[lo + m / 2 - 1]) + v[lo + m / 2]);
    const bool test_low = (med - v[lo]) > (v[hi - 1] - med);
    const double e = test_low ? v[lo] : v[hi - 1];
    const double so = s - e, sso = ss - e * e;
    const double k = m - 1;
    const double mean_o = so / k;
    const double var_o = std::max(0.0, (sso - so * so / k) / (k - 1));
    const double d = std::abs(e - mean_o);
    // var_o == 0 means identical others: reject e only if it differs from them.
    if (!(d > tcrit[static_cast<std::size_t>(m - 1)] * std::sqrt(var_o * (1.0 + 1.0 / k)))) break;
    s = so;
    ss = sso;
    if (test_low)
      ++lo;
    else
      --hi;
  }
  used = static_cast<std::uint16_t>(hi - lo);
  return static_cast<float>(s / (hi - lo));
}

float median_sorted(const float* v, int n) {
  if (n == 0) return std::numeric_limits<float>::quiet_NaN();
  return (n % 2) ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

/// Slow path for a chunk with non-finite values: per-pixel insertion sort of the finite ones.
void combine_chunk_scalar(const std::vector<const float*>& rows, Eigen::Index x0, Eigen::Index nx,
                          const CombineOptions& opt, float* out, std::uint16_t* used, std::vector<float>& tmp) {
  const int n = static_cast<int>(rows.size());
  for (Eigen::Index x = 0; x < nx; ++x) {
    int m = 0;
    for (int k = 0; k < n; ++k) {
      float v = rows[static_cast<std::size_t>(k)][x0 + x];
      if (!std::isfinite(v)) continue;
      int j = m++;
      while (j > 0 && tmp[static_cast<std::size_t>(j - 1)] > v) {
        tmp[static_cast<std::size_t>(j)] = tmp[static_cast<std::size_t>(j - 1)];
        --j;
      }
      tmp[static_cast<std::size_t>(j)] = v;
    }
    if (m == 0) {
      out[x] = std::numeric_limits<float>::quiet_NaN();
      used[x] = 0;
    } else if (opt.method == CombineMethod::Median) {
      out[x] = median_sorted(tmp.data(), m);
      used[x] = static_cast<std::uint16_t>(m);
    } else {
      out[x] = clipped_mean_sorted(tmp.data(), m, opt.clip_sigma, used[x]);
    }
  }
}

}  // namespace

double combined_variance_ratio(CombineMethod method, int used) {
  if (used <= 0) return std::numeric_limits<double>::infinity();
  if (method == CombineMethod::Median) return median_variance_factor(used) / used;
  return 1.0 / used;
}

CombinedBand combine_rows(const std::vector<const ImageArray*>& frames, Eigen::Index row_begin,
                          Eigen::Index row_end, const CombineOptions& opt) {
  if (frames.empty()) throw DataError("cannot combine an empty stack of frames");
  if (frames.size() > 65535) throw DataError(fmt::format("cannot combine {} frames (at most 65535)", frames.size()));
  const Eigen::Index ny = frames.front()->rows(), nx = frames.front()->cols();
  for (std::size_t k = 0; k < frames.size(); ++k)
    if (frames[k]->rows() != ny || frames[k]->cols() != nx)
      throw DataError(fmt::format("frame {} of the stack is {}x{}, the first is {}x{}", k, frames[k]->rows(),
                                  frames[k]->cols(), ny, nx));
  if (row_begin < 0 || row_end > ny || row_begin > row_end)
    throw DataError(fmt::format("row band [{}, {}) lies outside frames of {} rows", row_begin, row_end, ny));

  const int n = static_cast<int>(frames.size());
  CombinedBand band;
  band.row_begin = row_begin;
  band.value.resize(row_end - row_begin, nx);
  band.used.resize(row_end - row_begin, nx);

  std::vector<float> buf(static_cast<std::size_t>(n * kChunk));
  std::vector<float> tmp(static_cast<std::size_t>(n));
  std::vector<const float*> rows(static_cast<std::size_t>(n));
  for (Eigen::Index y = row_begin; y < row_end; ++y) {
    for (int k = 0; k < n; ++k) rows[static_cast<std::size_t>(k)] = frames[static_cast<std::size_t>(k)]->data() + y * nx;
    float* out_row = band.value.data() + (y - row_begin) * nx;
    std::uint16_t* used_row = band.used.data() + (y - row_begin) * nx;
    for (Eigen::Index x0 = 0; x0 < nx; x0 += kChunk) {
      const Eigen::Index w = std::min(kChunk, nx - x0);
      int nonfinite = 0;
      for (int k = 0; k < n; ++k) {
        const float* src = rows[static_cast<std::size_t>(k)] + x0;
        float* dst = buf.data() + k * kChunk;
        for (Eigen::Index x = 0; x < w; ++x) {
          dst[x] = src[x];
          nonfinite += !(std::fabs(src[x]) <= FLT_MAX);
        }
      }
      if (nonfinite) {
        combine_chunk_scalar(rows, x0, w, opt, out_row + x0, used_row + x0, tmp);
        continue;
      }
      // Odd-even transposition sort: n passes of compare-exchange between neighbouring frames.
      for (int pass = 0; pass < n; ++pass) {
        for (int k = pass % 2; k + 1 < n; k += 2) {
          float* a = buf.data() + k * kChunk;
          float* b = a + kChunk;
          for (Eigen::Index x = 0; x < w; ++x) {
            const float lo = std::min(a[x], b[x]);
            const float hi = std::max(a[x], b[x]);
            a[x] = lo;
            b[x] = hi;
          }
        }
      }
      if (opt.method == CombineMethod::Median) {
        const float* m1 = buf.data() + (n / 2) * kChunk;
        if (n % 2) {
          for (Eigen::Index x = 0; x < w; ++x) out_row[x0 + x] = m1[x];
        } else {
          const float* m0 = m1 - kChunk;
          for (Eigen::Index x = 0; x < w; ++x) out_row[x0 + x] = 0.5f * (m0[x] + m1[x]);
        }
        for (Eigen::Index x = 0; x < w; ++x) used_row[x0 + x] = static_cast<std::uint16_t>(n);
      } else {
        for (Eigen::Index x = 0; x < w; ++x) {
          for (int k = 0; k < n; ++k) tmp[static_cast<std::size_t>(k)] = buf[static_cast<std::size_t>(k * kChunk + x)];
          out_row[x0 + x] = clipped_mean_sorted(tmp.data(), n, opt.clip_sigma, used_row[x0 + x]);
        }
      }
    }
  }
  return band;
}

CombinedBand combine(const std::vector<const ImageArray*>& frames, const CombineOptions& opt) {
  if (frames.empty()) throw DataError("cannot combine an empty stack of frames");
  return combine_rows(frames, 0, frames.front()->rows(), opt);
}

std::string to_string(CombineMethod m) { return m == CombineMethod::Median ? "median" : "clipped-mean"; }

CombineMethod combine_method_from_string(const std::string& s) {
  std::string l;
  for (char c : s) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l == "median") return CombineMethod::Median;
  if (l == "mean" || l == "clipped-mean" || l == "clippedmean" || l == "clipped_mean") return CombineMethod::ClippedMean;
  throw ConfigError(fmt::format("combine method '{}' must be median or clipped-mean", s),
                    ErrorContext{.keyword = "combine"});
}

}  // namespace kspecdr::detector
