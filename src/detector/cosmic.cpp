#include "kspecdr/detector/cosmic.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "kspecdr/core/error.hpp"

namespace kspecdr::detector {

namespace {

// Sorting networks on a fixed-size array: fully unrolled min/max, which the compiler turns
// into SIMD across the pixels of a row.
template <int K>
inline float median_of(std::array<float, K>& v) {
  for (int i = 0; i < K; ++i)
    for (int j = 0; j + 1 < K - i; ++j) {
      const float lo = std::min(v[j], v[j + 1]);
      const float hi = std::max(v[j], v[j + 1]);
      v[j] = lo;
      v[j + 1] = hi;
    }
  return v[K / 2];
}

template <int K>
void median_rows(const ImageArray& in, ImageArray& out) {
  constexpr int h = K / 2;
  const Eigen::Index ny = in.rows(), nx = in.cols();
  for (Eigen::Index y = 0; y < ny; ++y) {
    const float* src = in.data() + y * nx;
    float* dst = out.data() + y * nx;
    auto at = [&](Eigen::Index x) { return src[std::clamp<Eigen::Index>(x, 0, nx - 1)]; };
    const Eigen::Index lo = std::min<Eigen::Index>(h, nx), hi = std::max<Eigen::Index>(lo, nx - h);
    for (Eigen::Index x = 0; x < lo; ++x) {
      std::array<float, K> v;
      for (int k = 0; k < K; ++k) v[k] = at(x + k - h);
      dst[x] = median_of<K>(v);
    }
    for (Eigen::Index x = lo; x < hi; ++x) {
      std::array<float, K> v;
      for (int k = 0; k < K; ++k) v[k] = src[x + k - h];
      dst[x] = median_of<K>(v);
    }
    for (Eigen::Index x = hi; x < nx; ++x) {
      std::array<float, K> v;
      for (int k = 0; k < K; ++k) v[k] = at(x + k - h);
      dst[x] = median_of<K>(v);
    }
  }
}

template <int K>
void median_cols(const ImageArray& in, ImageArray& out) {
  constexpr int h = K / 2;
  const Eigen::Index ny = in.rows(), nx = in.cols();
  std::array<const float*, K> p;
  for (Eigen::Index y = 0; y < ny; ++y) {
    for (int k = 0; k < K; ++k) p[k] = in.data() + std::clamp<Eigen::Index>(y + k - h, 0, ny - 1) * nx;
    float* dst = out.data() + y * nx;
    for (Eigen::Index x = 0; x < nx; ++x) {
      std::array<float, K> v;
      for (int k = 0; k < K; ++k) v[k] = p[k][x];
      dst[x] = median_of<K>(v);
    }
  }
}

/// Laplacian of the 2x-subsampled image, negatives clipped, averaged back onto the original
/// grid. A subsampled pixel's Laplacian involves its own block twice and one neighbour block
/// in each of x and y, so the four sub-pixels give 2v - (up|down) - (left|right).
void laplacian_plus(const ImageArray& w, ImageArray& lp) {
  const Eigen::Index ny = w.rows(), nx = w.cols();
  auto term = [](float v2, float a, float b) { return std::max(0.0f, v2 - a - b); };
  for (Eigen::Index y = 0; y < ny; ++y) {
    const float* c = w.data() + y * nx;
    const float* u = w.data() + std::max<Eigen::Index>(0, y - 1) * nx;
    const float* d = w.data() + std::min<Eigen::Index>(ny - 1, y + 1) * nx;
    float* o = lp.data() + y * nx;
    auto edge = [&](Eigen::Index x) {
      const float v2 = 2.0f * c[x];
      const float l = c[std::max<Eigen::Index>(0, x - 1)], r = c[std::min<Eigen::Index>(nx - 1, x + 1)];
      o[x] = 0.25f * (term(v2, u[x], l) + term(v2, u[x], r) + term(v2, d[x], l) + term(v2, d[x], r));
    };
    edge(0);
    // Interior without index clamps, so that the loop vectorises.
    for (Eigen::Index x = 1; x + 1 < nx; ++x) {
      const float v2 = 2.0f * c[x];
      o[x] = 0.25f * (term(v2, u[x], c[x - 1]) + term(v2, u[x], c[x + 1]) + term(v2, d[x], c[x - 1]) +
                      term(v2, d[x], c[x + 1]));
    }
    if (nx > 1) edge(nx - 1);
  }
}

/// 3x3 dilation of `in` (0/1), ANDed with `allow`.
void dilate_and(const std::vector<std::uint8_t>& in, const std::vector<std::uint8_t>& allow, Eigen::Index ny,
                Eigen::Index nx, std::vector<std::uint8_t>& out) {
  out.assign(in.size(), 0);
  for (Eigen::Index y = 0; y < ny; ++y)
    for (Eigen::Index x = 0; x < nx; ++x) {
      const auto i = static_cast<std::size_t>(y * nx + x);
      if (!in[i]) continue;
      for (Eigen::Index dy = -1; dy <= 1; ++dy) {
        const Eigen::Index yy = y + dy;
        if (yy < 0 || yy >= ny) continue;
        for (Eigen::Index dx = -1; dx <= 1; ++dx) {
          const Eigen::Index xx = x + dx;
          if (xx < 0 || xx >= nx) continue;
          const auto j = static_cast<std::size_t>(yy * nx + xx);
          out[j] = static_cast<std::uint8_t>(out[j] | allow[j]);
        }
      }
    }
}

/// Replaces the flagged pixels of `w` (working copy only) by the median of the unflagged pixels
/// within 2 px along x or along y, whichever set varies less. In spectra, features are aligned
/// with the axes (lines along y, traces along x); a square box would cut a hole into a line
/// and the next pass would see its edges as new hits.
void clean_flagged(ImageArray& w, const std::vector<std::uint8_t>& flagged, const std::vector<std::size_t>& which) {
  const Eigen::Index ny = w.rows(), nx = w.cols();
  std::vector<std::pair<std::size_t, float>> repl;
  std::vector<float> bx, by;
  auto median = [](std::vector<float>& v) {
    auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    return *mid;
  };
  auto spread = [](const std::vector<float>& v) {
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return *hi - *lo;
  };
  for (std::size_t i : which) {
    const Eigen::Index y = static_cast<Eigen::Index>(i) / nx, x = static_cast<Eigen::Index>(i) % nx;
    bx.clear();
    by.clear();
    for (Eigen::Index d = -2; d <= 2; ++d) {
      if (d == 0) continue;
      const Eigen::Index xx = x + d, yy = y + d;
      if (xx >= 0 && xx < nx && !flagged[static_cast<std::size_t>(y * nx + xx)]) bx.push_back(w(y, xx));
      if (yy >= 0 && yy < ny && !flagged[static_cast<std::size_t>(yy * nx + x)]) by.push_back(w(yy, x));
    }
    if (bx.size() < 2 && by.size() < 2) {
      // Inside a large flagged blob: fall back to the 5x5 box.
      for (Eigen::Index yy = std::max<Eigen::Index>(0, y - 2); yy <= std::min<Eigen::Index>(ny - 1, y + 2); ++yy)
        for (Eigen::Index xx = std::max<Eigen::Index>(0, x - 2); xx <= std::min<Eigen::Index>(nx - 1, x + 2); ++xx)
          if (!flagged[static_cast<std::size_t>(yy * nx + xx)]) bx.push_back(w(yy, xx));
      if (!bx.empty()) repl.emplace_back(i, median(bx));
      continue;
    }
    const bool use_x = by.size() < 2 || (bx.size() >= 2 && spread(bx) <= spread(by));
    repl.emplace_back(i, median(use_x ? bx : by));
  }
  for (auto [i, v] : repl) w(static_cast<Eigen::Index>(i)) = v;
}

/// Significance of a point-like peak at (y, x): the curvature along x in excess of the curvature
/// along x two rows above and below, and the curvature along y in excess of that two columns left
/// and right; the smaller of the two, over its noise (3 sigma). An emission line (sharp in x,
/// smooth in y), a star trace (sharp in y, smooth in x), their sum where a line crosses a trace,
/// and a slowly tilted line all cancel; a cosmic ray, sharp in both, does not.
float point_sharpness(const ImageArray& w, float var, Eigen::Index y, Eigen::Index x) {
  const Eigen::Index ny = w.rows(), nx = w.cols();
  auto at = [&](Eigen::Index yy, Eigen::Index xx) {
    return w(std::clamp<Eigen::Index>(yy, 0, ny - 1), std::clamp<Eigen::Index>(xx, 0, nx - 1));
  };
  auto cx = [&](Eigen::Index yy, Eigen::Index xx) { return 2.0f * at(yy, xx) - at(yy, xx - 1) - at(yy, xx + 1); };
  auto cy = [&](Eigen::Index yy, Eigen::Index xx) { return 2.0f * at(yy, xx) - at(yy - 1, xx) - at(yy + 1, xx); };
  const float ex = cx(y, x) - 0.5f * (cx(y - 2, x) + cx(y + 2, x));
  const float ey = cy(y, x) - 0.5f * (cy(y, x - 2) + cy(y, x + 2));
  return std::min(std::max(ex, 0.0f), std::max(ey, 0.0f)) / (3.0f * std::sqrt(std::max(var, 1e-6f)));
}

/// The separable 7x7 median of `m3` at one pixel (the large-scale part of the fine-structure
/// image), computed only where a candidate needs it.
float median7_at(const ImageArray& m3, Eigen::Index y, Eigen::Index x) {
  const Eigen::Index ny = m3.rows(), nx = m3.cols();
  std::array<float, 7> col;
  for (int j = 0; j < 7; ++j) {
    const Eigen::Index yy = std::clamp<Eigen::Index>(y + j - 3, 0, ny - 1);
    std::array<float, 7> row;
    for (int k = 0; k < 7; ++k) row[static_cast<std::size_t>(k)] = m3(yy, std::clamp<Eigen::Index>(x + k - 3, 0, nx - 1));
    col[static_cast<std::size_t>(j)] = median_of<7>(row);
  }
  return median_of<7>(col);
}

}  // namespace

namespace {
/// separable_median into caller-owned buffers: the detection loop reuses them on every pass
/// instead of faulting in fresh 64 MB arrays for a 4k x 4k frame.
void separable_median_into(const ImageArray& in, int k, ImageArray& tmp, ImageArray& out) {
  tmp.resize(in.rows(), in.cols());
  out.resize(in.rows(), in.cols());
  switch (k) {
    case 3: median_rows<3>(in, tmp); median_cols<3>(tmp, out); break;
    case 5: median_rows<5>(in, tmp); median_cols<5>(tmp, out); break;
    case 7: median_rows<7>(in, tmp); median_cols<7>(tmp, out); break;
    default: throw DataError(fmt::format("separable median of size {} (3, 5 or 7 supported)", k));
  }
}
}  // namespace

ImageArray separable_median(const ImageArray& in, int k) {
  ImageArray tmp, out;
  separable_median_into(in, k, tmp, out);
  return out;
}

CosmicResult detect_cosmics(const ImageArray& data, const ImageArray& variance, MaskArray& mask,
                            const DetectorConfig& cfg) {
  const Eigen::Index ny = data.rows(), nx = data.cols();
  if (variance.rows() != ny || variance.cols() != nx || mask.rows() != ny || mask.cols() != nx)
    throw DataError("cosmic-ray detection: data, variance and mask differ in shape");
  CosmicResult res;
  if (ny < 3 || nx < 3) return res;
  const std::size_t n = static_cast<std::size_t>(ny * nx);
  const MaskPixel unusable = kMaskBad | kMaskNoData;
  const MaskPixel never = unusable | kMaskSaturated;

  std::vector<std::uint8_t> cosmic(n, 0), eligible(n, 0), dead(n, 0);
  std::vector<std::size_t> dead_list;
  ImageArray w = data;
  for (std::size_t i = 0; i < n; ++i) {
    const auto ii = static_cast<Eigen::Index>(i);
    eligible[i] = (mask(ii) & never) ? 0 : 1;
    if ((mask(ii) & unusable) || !std::isfinite(w(ii))) {
      dead[i] = 1;
      dead_list.push_back(i);
    }
  }
  if (!dead_list.empty()) {
    for (std::size_t i : dead_list) w(static_cast<Eigen::Index>(i)) = 0.0f;
    clean_flagged(w, dead, dead_list);
  }

  // Noise per pixel from the variance image, median-filtered so that a hit's own Poisson term
  // does not hide it; floored so that empty (zero-variance) regions do not divide by zero.
  ImageArray var = variance;
  for (Eigen::Index i = 0; i < var.size(); ++i)
    if (!std::isfinite(var(i)) || var(i) < 0) var(i) = 0.0f;
  ImageArray noise = separable_median(var, 5).sqrt().max(1e-3f);

  const float sigclip = static_cast<float>(cfg.cosmic_sigclip);
  const float sigcliplow = static_cast<float>(cfg.cosmic_sigfrac * cfg.cosmic_sigclip);
  const float objlim = static_cast<float>(cfg.cosmic_objlim);
  ImageArray lp(ny, nx), sarr(ny, nx), sp(ny, nx), m3(ny, nx), scratch(ny, nx);
  std::vector<std::uint8_t> flagged(n);
  std::vector<std::uint8_t> cand(n), above(n), grow1, grow2;
  std::vector<std::size_t> fresh;
  for (int it = 0; it < cfg.cosmic_niter; ++it) {
    res.iterations = it + 1;
    laplacian_plus(w, lp);
    sarr = lp / (2.0f * noise);
    separable_median_into(sarr, 5, scratch, sp);
    sp = sarr - sp;
    separable_median_into(w, 3, scratch, m3);
    // Sharp against the fine structure (L.A.Cosmic), or a point sharp along both axes, which
    // finds hits on top of bright lines and traces whose own fine structure hides them. The
    // point-sharpness floors (1 and 0.3 sigma) keep the wings of lines and traces, where the
    // fine-structure image is ~0 and the contrast test is void, from passing on noise. The costly
    // terms are evaluated only where S' passes the threshold that the decision needs.
    auto contrast = [&](Eigen::Index ii, float& p) {
      const Eigen::Index y = ii / nx, x = ii % nx;
      p = point_sharpness(w, var(ii), y, x);
      const float f = std::max(0.01f, (m3(ii) - median7_at(m3, y, x)) / noise(ii));
      return sp(ii) / f;
    };
    for (std::size_t i = 0; i < n; ++i) {
      const auto ii = static_cast<Eigen::Index>(i);
      cand[i] = above[i] = 0;
      if (!eligible[i] || !(sp(ii) > sigclip)) continue;
      float p = 0;
      const float r = contrast(ii, p);
      cand[i] = (r > objlim && p > 1.0f) || p > sigclip;
      above[i] = (r > 1.0f && p > 0.3f) || p > sigcliplow;
    }
    dilate_and(cand, above, ny, nx, grow1);
    for (std::size_t i = 0; i < n; ++i) grow1[i] |= cand[i];
    // Second growth, down to sigfrac * sigclip, only around what the first one found.
    grow2.assign(n, 0);
    for (std::size_t i = 0; i < n; ++i) {
      if (!grow1[i]) continue;
      grow2[i] = 1;
      const Eigen::Index y = static_cast<Eigen::Index>(i) / nx, x = static_cast<Eigen::Index>(i) % nx;
      for (Eigen::Index yy = std::max<Eigen::Index>(0, y - 1); yy <= std::min(ny - 1, y + 1); ++yy)
        for (Eigen::Index xx = std::max<Eigen::Index>(0, x - 1); xx <= std::min(nx - 1, x + 1); ++xx) {
          const auto j = static_cast<std::size_t>(yy * nx + xx);
          if (grow2[j] || grow1[j] || !eligible[j] || !(sp(yy, xx) > sigcliplow)) continue;
          float p = 0;
          const float r = contrast(static_cast<Eigen::Index>(j), p);
          grow2[j] = (r > 1.0f && p > 0.3f) || p > sigcliplow;
        }
    }
    fresh.clear();
    for (std::size_t i = 0; i < n; ++i)
      if ((grow2[i] || grow1[i]) && !cosmic[i]) {
        cosmic[i] = 1;
        fresh.push_back(i);
      }
    if (fresh.empty()) break;
    res.npix += fresh.size();
    for (std::size_t i = 0; i < n; ++i) flagged[i] = cosmic[i] | dead[i];
    clean_flagged(w, flagged, fresh);
  }
  for (std::size_t i = 0; i < n; ++i)
    if (cosmic[i]) mask(static_cast<Eigen::Index>(i)) |= kMaskCosmic;
  return res;
}

}  // namespace kspecdr::detector
