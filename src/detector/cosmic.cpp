#include "kspecdr/detector/cosmic.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "kspecdr/core/error.hpp"

namespace kspecdr::detector {

namespace {

/// A vector of n value-initialised elements whose memory was offered huge pages before its first
/// touch (see advise_huge_pages).
template <typename T>
std::vector<T> large_vector(std::size_t n) {
  std::vector<T> v;
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(T));
  v.resize(n);
  return v;
}

// Median selection networks (Devillard, "Fast median search", 1998): straight-line min/max on
// scalars, which the compiler turns into SIMD across the pixels of a row. Checked against every
// permutation and every 0/1 input.
inline void ce(float& a, float& b) {
  const float lo = std::min(a, b);
  b = std::max(a, b);
  a = lo;
}
inline float median3(float a, float b, float c) {
  ce(a, b);
  ce(b, c);
  ce(a, b);
  return b;
}
inline float median5(float a, float b, float c, float d, float e) {
  ce(a, b), ce(d, e), ce(a, d), ce(b, e), ce(b, c), ce(c, d), ce(b, c);
  return c;
}
inline float median7(float p0, float p1, float p2, float p3, float p4, float p5, float p6) {
  ce(p0, p5), ce(p0, p3), ce(p1, p6), ce(p2, p4), ce(p0, p1), ce(p3, p5), ce(p2, p6);
  ce(p2, p3), ce(p3, p6), ce(p4, p5), ce(p1, p4), ce(p1, p3), ce(p3, p4);
  return p3;
}

/// Median of K values read through `at(k)`, k = 0..K-1.
template <int K, typename At>
inline float median_k(At&& at) {
  static_assert(K == 3 || K == 5 || K == 7);
  if constexpr (K == 3)
    return median3(at(0), at(1), at(2));
  else if constexpr (K == 5)
    return median5(at(0), at(1), at(2), at(3), at(4));
  else
    return median7(at(0), at(1), at(2), at(3), at(4), at(5), at(6));
}

/// Median of four values (mean of the middle two), branch-free.
inline float median4(float a, float b, float c, float d) {
  return 0.5f * (std::max(std::min(a, b), std::min(c, d)) + std::min(std::max(a, b), std::max(c, d)));
}

template <int K>
void median_rows(const ImageArray& in, ImageArray& out) {
  constexpr int h = K / 2;
  const Eigen::Index ny = in.rows(), nx = in.cols();
  for (Eigen::Index y = 0; y < ny; ++y) {
    const float* src = in.data() + y * nx;
    float* dst = out.data() + y * nx;
    auto edge = [&](Eigen::Index x) {
      return median_k<K>([&](int k) { return src[std::clamp<Eigen::Index>(x + k - h, 0, nx - 1)]; });
    };
    const Eigen::Index lo = std::min<Eigen::Index>(h, nx), hi = std::max<Eigen::Index>(lo, nx - h);
    for (Eigen::Index x = 0; x < lo; ++x) dst[x] = edge(x);
    for (Eigen::Index x = lo; x < hi; ++x) dst[x] = median_k<K>([&](int k) { return src[x + k - h]; });
    for (Eigen::Index x = hi; x < nx; ++x) dst[x] = edge(x);
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
    for (Eigen::Index x = 0; x < nx; ++x) dst[x] = median_k<K>([&](int k) { return p[k][x]; });
  }
}

/// The neighbour at offset d of position i along an axis of n pixels; beyond an edge, the one on
/// the other side (a replicated edge would make the pixel its own neighbour).
inline Eigen::Index neighbour(Eigen::Index i, Eigen::Index d, Eigen::Index n) {
  const Eigen::Index j = (i + d < 0 || i + d >= n) ? i - d : i + d;
  return std::clamp<Eigen::Index>(j, 0, n - 1);
}

/// Median of the four neighbours at distance 1 and 2 along x.
void neighbour_median_x(const ImageArray& in, ImageArray& out) {
  const Eigen::Index ny = in.rows(), nx = in.cols();
  for (Eigen::Index y = 0; y < ny; ++y) {
    const float* s = in.data() + y * nx;
    float* o = out.data() + y * nx;
    auto at = [&](Eigen::Index x, Eigen::Index d) { return s[neighbour(x, d, nx)]; };
    const Eigen::Index lo = std::min<Eigen::Index>(2, nx), hi = std::max<Eigen::Index>(lo, nx - 2);
    for (Eigen::Index x = 0; x < lo; ++x) o[x] = median4(at(x, -2), at(x, -1), at(x, 1), at(x, 2));
    for (Eigen::Index x = lo; x < hi; ++x) o[x] = median4(s[x - 2], s[x - 1], s[x + 1], s[x + 2]);
    for (Eigen::Index x = hi; x < nx; ++x) o[x] = median4(at(x, -2), at(x, -1), at(x, 1), at(x, 2));
  }
}

/// Median of the four neighbours at distance 1 and 2 along y.
void neighbour_median_y(const ImageArray& in, ImageArray& out) {
  const Eigen::Index ny = in.rows(), nx = in.cols();
  for (Eigen::Index y = 0; y < ny; ++y) {
    auto row = [&](Eigen::Index d) { return in.data() + neighbour(y, d, ny) * nx; };
    const float *a = row(-2), *b = row(-1), *c = row(1), *d = row(2);
    float* o = out.data() + y * nx;
    for (Eigen::Index x = 0; x < nx; ++x) o[x] = median4(a[x], b[x], c[x], d[x]);
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

// The state of a frame pixel during detection, as bits of one byte per pixel (one frame-sized
// array rather than three: on a 4k frame each costs more in page faults than the work on it).
// A pixel flagged on its own evidence (kHitConfirmed) seeds growth into its neighbours in later
// passes; one flagged only for standing out beside such a hit (kHitGrown) does not, so that growth
// cannot creep outwards pass after pass on noise. kReplaced: bad, no-data or a hit, its value in
// the working image replaced by its neighbours'; kEligible: neither bad, no-data nor saturated.
constexpr std::uint8_t kHitConfirmed = 1, kHitGrown = 2, kHit = kHitConfirmed | kHitGrown, kReplaced = 4,
                       kEligible = 8;

/// Replaces the flagged pixels of `w` (working copy only) by the median of the unflagged pixels
/// within 2 px along x or along y, whichever set varies less. In spectra, features are aligned
/// with the axes (lines along y, traces along x); a square box would cut a hole into a line
/// and the next pass would see its edges as new hits.
/// When `uncertainty` is given (as long as `which`), it receives for each replaced pixel the square
/// of half the range of the set used: how well the neighbours pin the value down.
void clean_flagged(ImageArray& w, const std::vector<std::uint8_t>& state, const std::vector<std::size_t>& which,
                   std::vector<float>* uncertainty = nullptr) {
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
  for (std::size_t k = 0; k < which.size(); ++k) {
    const std::size_t i = which[k];
    const Eigen::Index y = static_cast<Eigen::Index>(i) / nx, x = static_cast<Eigen::Index>(i) % nx;
    bx.clear();
    by.clear();
    for (Eigen::Index d = -2; d <= 2; ++d) {
      if (d == 0) continue;
      const Eigen::Index xx = x + d, yy = y + d;
      if (xx >= 0 && xx < nx && !(state[static_cast<std::size_t>(y * nx + xx)] & kReplaced)) bx.push_back(w(y, xx));
      if (yy >= 0 && yy < ny && !(state[static_cast<std::size_t>(yy * nx + x)] & kReplaced)) by.push_back(w(yy, x));
    }
    if (bx.size() < 2 && by.size() < 2) {
      // Inside a large flagged blob: fall back to the 5x5 box.
      for (Eigen::Index yy = std::max<Eigen::Index>(0, y - 2); yy <= std::min<Eigen::Index>(ny - 1, y + 2); ++yy)
        for (Eigen::Index xx = std::max<Eigen::Index>(0, x - 2); xx <= std::min<Eigen::Index>(nx - 1, x + 2); ++xx)
          if (!(state[static_cast<std::size_t>(yy * nx + xx)] & kReplaced)) bx.push_back(w(yy, xx));
      if (!bx.empty()) {
        if (uncertainty) (*uncertainty)[k] = 0.25f * spread(bx) * spread(bx);
        repl.emplace_back(i, median(bx));
      }
      continue;
    }
    const bool use_x = by.size() < 2 || (bx.size() >= 2 && spread(bx) <= spread(by));
    if (uncertainty) {
      const float r = spread(use_x ? bx : by);
      (*uncertainty)[k] = 0.25f * r * r;
    }
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
  std::array<Eigen::Index, 7> xs;
  for (int k = 0; k < 7; ++k) xs[static_cast<std::size_t>(k)] = std::clamp<Eigen::Index>(x + k - 3, 0, nx - 1);
  return median_k<7>([&](int j) {
    const float* row = m3.data() + std::clamp<Eigen::Index>(y + j - 3, 0, ny - 1) * nx;
    return median_k<7>([&](int k) { return row[xs[static_cast<std::size_t>(k)]]; });
  });
}

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

// ---- The PSF sharpness bound

/// Fraction of a Gaussian of width `sigma` centred at `d` that falls on pixel k (pixel-integrated).
double pixel_gauss(int k, double d, double sigma) {
  const double s = std::sqrt(2.0) * sigma;
  return 0.5 * (std::erf((k + 0.5 - d) / s) - std::erf((k - 0.5 - d) / s));
}

/// log p(0) - (log p(-1) + log p(1)) / 2 of a pixel-integrated Gaussian centred at d.
double log_curvature(double sigma, double d) {
  return std::log(pixel_gauss(0, d, sigma)) - 0.5 * (std::log(pixel_gauss(-1, d, sigma)) + std::log(pixel_gauss(1, d, sigma)));
}

/// The sigma whose pixel-integrated Gaussian, centred at d, has log-curvature c (decreasing in
/// sigma), within [0.2, 20] px. Newton steps from the unsampled approximation
/// c = 1 / (2 (sigma^2 + 1/12)), kept inside a shrinking bracket (a bisection step where Newton
/// would leave it), to 1e-12 relative.
double sigma_from_curvature(double c, double d) {
  double lo = 0.2, hi = 20.0;
  double s = std::clamp(std::sqrt(std::max(0.5 / std::max(c, 1e-12) - 1.0 / 12.0, 0.04)), lo, hi);
  for (int i = 0; i < 100 && hi - lo > 1e-12 * s; ++i) {
    const double f = log_curvature(s, d) - c;
    (f > 0 ? lo : hi) = s;
    const double h = 1e-6 * s;
    const double df = (log_curvature(s + h, d) - log_curvature(s - h, d)) / (2.0 * h);
    double next = s - f / df;
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
    if (std::abs(next - s) < 1e-12 * s) return next;
    s = next;
  }
  return s;
}

/// Largest p(0) / mean(p(-1), p(1)) of a pixel-integrated Gaussian over its centring. By the
/// mediant inequality no non-negative sum of such profiles (blends, a pedestal) exceeds it.
double max_neighbour_ratio(double sigma) {
  double r = 0.0;
  for (int i = 0; i <= 50; ++i) {
    const double d = 0.01 * i;
    r = std::max(r, pixel_gauss(0, d, sigma) / (0.5 * (pixel_gauss(-1, d, sigma) + pixel_gauss(1, d, sigma))));
  }
  return r;
}

constexpr Eigen::Index kPsfBand = 16;    // rows (columns) averaged into one profile
constexpr int kPsfBandMedian = 5;        // adjacent bands whose median removes cosmic rays
constexpr Eigen::Index kPsfWindow = 5;   // a peak is the maximum within +-5 px
constexpr double kPsfMinSnr = 20.0;      // peak above its pedestal, in units of its noise
constexpr double kPsfIsolation = 0.2;    // profile beyond 2.5 sigma + 1 px below this fraction of the peak
constexpr std::size_t kPsfMinFeatures = 3;   // fewer: the axis has the default bound
constexpr std::size_t kPsfMinWindows = 3;    // band windows a feature must be found in
constexpr double kPsfOutlier = 0.25;         // see measure_axis
// A profile narrower than this is a single pixel (a hot column or row), not an optical image:
// a Gaussian of sigma 0.5 px puts 68 % of its light on one pixel.
constexpr double kPsfUndersampled = 0.5;

/// Profiles of the frame along one axis (x when `along_x`, else y): the mean over each band of
/// kPsfBand rows (columns) without unusable pixels, then for each band the median of the
/// kPsfBandMedian bands around it (clamped at the ends), which removes cosmic rays.
struct BandProfiles {
  Eigen::Index nb = 0, len = 0;      ///< bands, pixels along the profile
  std::vector<float> p, noise;       ///< nb x len, band-major
  std::vector<std::uint8_t> good;    ///< every band of the median has 3/4 usable pixels there
  float at(Eigen::Index k, Eigen::Index i) const { return p[static_cast<std::size_t>(k * len + i)]; }
};

/// The band profiles along x and along y in one pass over the frame (rows, where the memory is
/// contiguous). Each profile pixel sums over its band the median of a pixel and its two
/// neighbours along the collapsed axis: for a profile that is a product (or sum) of one along
/// each axis it changes only the amplitude, and it removes cosmic rays that are not long along the
/// collapsed axis. Unusable and non-finite pixels are left out. Then each band takes the median of
/// the kPsfBandMedian bands around it (clamped at the ends), which removes the rest.
std::pair<BandProfiles, BandProfiles> band_profiles(const ImageArray& data, const ImageArray& var,
                                                    const MaskArray& mask) {
  const MaskPixel unusable = kMaskBad | kMaskNoData | kMaskSaturated;
  const Eigen::Index ny = data.rows(), nx = data.cols();
  BandProfiles px, py;  // along x (bands of rows), along y (bands of columns)
  px.len = nx;
  px.nb = ny / kPsfBand;
  py.len = ny;
  py.nb = nx / kPsfBand;
  const bool do_x = px.nb >= kPsfBandMedian, do_y = py.nb >= kPsfBandMedian;
  if (!do_x && !do_y) return {px, py};
  // A band's mean and the variance of the mean, and whether 3/4 of its pixels are usable; each
  // band profile pixel is finished as soon as its sums are complete, so that no frame-sized
  // arrays of sums are needed.
  struct Means {
    std::vector<float> prof, pvar;
    std::vector<std::uint8_t> good;
    void finish(std::size_t q, double sum, double vsum, int n) {
      good[q] = n * 4 >= 3 * kPsfBand;
      prof[q] = n ? static_cast<float>(sum / n) : 0.0f;
      pvar[q] = n ? static_cast<float>(vsum / (static_cast<double>(n) * n)) : 0.0f;
    }
  };
  auto means = [](const BandProfiles& bp, bool on) {
    const auto m = on ? static_cast<std::size_t>(bp.nb * bp.len) : 0;
    return Means{large_vector<float>(m), large_vector<float>(m), std::vector<std::uint8_t>(m)};
  };
  Means sx = means(px, do_x), sy = means(py, do_y);
  // The sums of the current band of rows (profiles along x).
  std::vector<double> bsum(do_x ? static_cast<std::size_t>(nx) : 0), bvsum(bsum.size());
  std::vector<int> bcount(bsum.size());
  // One row's usable flags (1 or 0), and its medians along y and along x and variances where
  // usable (0 elsewhere), in simple loops over floats that vectorise.
  const auto unx = static_cast<std::size_t>(nx);
  std::vector<float> okf(unx), medx(unx), medy(unx), vrow(unx);
  std::vector<double> acc_s(static_cast<std::size_t>(std::max<Eigen::Index>(py.nb, 1))), acc_v(acc_s.size());
  std::vector<int> acc_n(acc_s.size());
  auto finite = [](float v) { return std::abs(v) <= std::numeric_limits<float>::max(); };
  for (Eigen::Index y = 0; y < ny; ++y) {
    const float* d = data.data() + y * nx;
    const float* dm = data.data() + std::max<Eigen::Index>(y - 1, 0) * nx;
    const float* dp = data.data() + std::min(y + 1, ny - 1) * nx;
    const float* v = var.data() + y * nx;
    const MaskPixel* m = mask.data() + y * nx;
    float* o = okf.data();
    float* mx = medx.data();
    float* my = medy.data();
    float* vr = vrow.data();
    for (std::size_t x = 0; x < unx; ++x) o[x] = (m[x] & unusable) ? 0.0f : 1.0f;
    [](std::size_t n, const float* __restrict dd, const float* __restrict dmm, const float* __restrict dpp,
       const float* __restrict vv, float* __restrict oo, float* __restrict vro, float* __restrict mxo) {
      auto fin = [](float t) { return std::abs(t) <= std::numeric_limits<float>::max(); };
      for (std::size_t x = 0; x < n; ++x) {
        const float c = dd[x], vc = vv[x], a = dmm[x], b = dpp[x], o0 = oo[x];
        const bool ok = (o0 != 0.0f) & fin(c) & fin(vc);
        const float med3 = median3(a, c, b), vpos = std::max(vc, 0.0f);
        const float med = (fin(a) & fin(b)) ? med3 : c;
        oo[x] = ok ? 1.0f : 0.0f;
        vro[x] = ok ? vpos : 0.0f;
        mxo[x] = ok ? med : 0.0f;
      }
    }(unx, d, dm, dp, v, o, vr, mx);
    auto along_row = [&](std::size_t x, float l, float r) {
      const float c = d[x];
      const float med = (finite(l) & finite(r)) ? median3(l, c, r) : c;
      my[x] = o[x] != 0.0f ? med : 0.0f;
    };
    along_row(0, d[0], d[std::min<std::size_t>(1, unx - 1)]);
    for (std::size_t x = 1; x + 1 < unx; ++x) along_row(x, d[x - 1], d[x + 1]);
    if (unx > 1) along_row(unx - 1, d[unx - 2], d[unx - 1]);
    if (do_x) {
      // The last band takes the rest.
      const Eigen::Index band = std::min(y / kPsfBand, px.nb - 1);
      if (y == band * kPsfBand) {
        std::fill(bsum.begin(), bsum.end(), 0.0);
        std::fill(bvsum.begin(), bvsum.end(), 0.0);
        std::fill(bcount.begin(), bcount.end(), 0);
      }
      double* su = bsum.data();
      double* vs = bvsum.data();
      int* cn = bcount.data();
      for (std::size_t x = 0; x < unx; ++x) {
        su[x] += mx[x];
        vs[x] += vr[x];
        cn[x] += static_cast<int>(o[x]);
      }
      if (y + 1 == ny || std::min((y + 1) / kPsfBand, px.nb - 1) != band) {
        const auto q0 = static_cast<std::size_t>(band * nx);
        for (std::size_t x = 0; x < unx; ++x) sx.finish(q0 + x, su[x], vs[x], cn[x]);
      }
    }
    if (do_y) {
      // Each band sums its pixels in order; the bands side by side, so that the sums do not wait
      // on one another. The last band takes the rest.
      const auto nb = static_cast<std::size_t>(py.nb);
      std::fill(acc_s.begin(), acc_s.end(), 0.0);
      std::fill(acc_v.begin(), acc_v.end(), 0.0);
      std::fill(acc_n.begin(), acc_n.end(), 0);
      for (std::size_t j = 0; j < static_cast<std::size_t>(kPsfBand); ++j)
        for (std::size_t k = 0; k < nb; ++k) {
          const std::size_t x = k * static_cast<std::size_t>(kPsfBand) + j;
          acc_s[k] += my[x];
          acc_v[k] += vr[x];
          acc_n[k] += static_cast<int>(o[x]);
        }
      for (std::size_t x = nb * static_cast<std::size_t>(kPsfBand); x < unx; ++x) {
        acc_s[nb - 1] += my[x];
        acc_v[nb - 1] += vr[x];
        acc_n[nb - 1] += static_cast<int>(o[x]);
      }
      for (std::size_t k = 0; k < nb; ++k)
        sy.finish(k * static_cast<std::size_t>(ny) + static_cast<std::size_t>(y), acc_s[k], acc_v[k], acc_n[k]);
    }
  }
  auto finish = [](BandProfiles& bp, const Means& st) {
    const Eigen::Index nb = bp.nb, len = bp.len;
    const std::vector<float>&prof = st.prof, &pvar = st.pvar;
    const std::vector<std::uint8_t>& good = st.good;
    bp.p = large_vector<float>(prof.size());
    bp.noise = large_vector<float>(prof.size());
    bp.good.resize(prof.size());
    constexpr int h = kPsfBandMedian / 2;
    for (Eigen::Index k = 0; k < nb; ++k) {
      const Eigen::Index k0 = std::clamp<Eigen::Index>(k - h, 0, nb - kPsfBandMedian);
      for (Eigen::Index i = 0; i < len; ++i) {
        std::array<float, kPsfBandMedian> b;
        bool g = true;
        for (int m = 0; m < kPsfBandMedian; ++m) {
          const auto q = static_cast<std::size_t>((k0 + m) * len + i);
          b[static_cast<std::size_t>(m)] = prof[q];
          g = g && good[q];
        }
        const auto q = static_cast<std::size_t>(k * len + i);
        bp.p[q] = median5(b[0], b[1], b[2], b[3], b[4]);
        // Noise of a median of five band means: about 1.2 times that of one.
        bp.noise[q] = 1.2f * std::sqrt(pvar[q]);
        bp.good[q] = g;
      }
    }
  };
  if (do_x) finish(px, sx);
  if (do_y) finish(py, sy);
  return {px, py};
}

/// The bound of a Gaussian of width sigma: its largest neighbour ratio and log-curvature (at most
/// 1/(2 sigma^2) for any centring of a pixel-integrated Gaussian).
struct AxisBound {
  double ratio = 0.0, curvature = 0.0;
  int features = 0;
};
AxisBound gaussian_bound(double sigma) { return {max_neighbour_ratio(sigma), 0.5 / (sigma * sigma), 0}; }

/// One peak of a band profile: its position, the Gaussian width of its central log-curvature (to
/// recognise single-pixel profiles) and its largest neighbour ratio and log-curvature.
struct Peak {
  Eigen::Index pos = 0;
  double sigma = 0.0, ratio = 0.0, curvature = 0.0;
};

// Pixels of a feature down to this fraction of its peak enter its ratio and curvature: the core,
// where the shoulders of a flat-topped profile are; fainter pixels are noisy enough to inflate
// the largest value over the windows.
constexpr double kPsfCoreFraction = 0.5;

/// The bound along the profile axis (x when `along_x`, else y); see measure_psf_bound.
AxisBound measure_axis(const BandProfiles& bp) {
  const Eigen::Index nb = bp.nb, len = bp.len;
  if (nb < kPsfBandMedian || len < 2 * kPsfWindow + 3) return gaussian_bound(kDefaultPsfSigma);
  std::vector<Peak> found;
  constexpr int h = kPsfBandMedian / 2;
  for (Eigen::Index k = h; k + h < nb; ++k) {
    const float* p = bp.p.data() + k * len;
    const std::uint8_t* good = bp.good.data() + k * len;
    auto P = [&](Eigen::Index i) { return static_cast<double>(p[static_cast<std::size_t>(i)]); };
    auto all_good = [&](Eigen::Index a, Eigen::Index e) {
      for (Eigen::Index i = a; i <= e; ++i)
        if (!good[static_cast<std::size_t>(i)]) return false;
      return true;
    };
    for (Eigen::Index i = kPsfWindow; i + kPsfWindow < len; ++i) {
      if (!(P(i) > P(i - 1) && P(i) >= P(i + 1))) continue;
      if (!all_good(i - kPsfWindow, i + kPsfWindow)) continue;
      double top = P(i), ped = P(i);
      for (Eigen::Index j = i - kPsfWindow; j <= i + kPsfWindow; ++j) {
        top = std::max(top, P(j));
        ped = std::min(ped, P(j));
      }
      if (top > P(i)) continue;
      const double q0 = P(i) - ped, qm = P(i - 1) - ped, qp = P(i + 1) - ped;
      const double noise = bp.noise[static_cast<std::size_t>(k * len + i)];
      if (!(q0 > kPsfMinSnr * noise) || !(qm > 0) || !(qp > 0)) continue;
      const double c = std::log(q0) - 0.5 * (std::log(qm) + std::log(qp));
      if (!(c > 0)) continue;
      const double d = (std::log(qp) - std::log(qm)) / (4.0 * c);
      if (std::abs(d) > 0.5) continue;
      const double sigma = sigma_from_curvature(c, d);
      if (sigma < kPsfUndersampled) continue;
      const auto reach = static_cast<Eigen::Index>(std::ceil(2.5 * sigma + 1.0));
      if (i - reach < 0 || i + reach >= len || !all_good(i - reach, i + reach)) continue;
      if (std::max(P(i - reach), P(i + reach)) - ped > kPsfIsolation * q0) continue;
      // The profile need not be a Gaussian (a wide slit gives a flat top with steep shoulders):
      // the ratio and curvature are taken over every pixel of the feature's core.
      Peak pk{i, sigma, 0.0, 0.0};
      for (Eigen::Index j = i - reach + 1; j <= i + reach - 1; ++j) {
        const double a = P(j - 1) - ped, q = P(j) - ped, e = P(j + 1) - ped;
        if (q < kPsfCoreFraction * q0 || !(a > 0) || !(e > 0)) continue;
        pk.ratio = std::max(pk.ratio, q / (0.5 * (a + e)));
        pk.curvature = std::max(pk.curvature, std::log(q) - 0.5 * (std::log(a) + std::log(e)));
      }
      found.push_back(pk);
    }
  }
  // One value per feature: peaks at the same or adjacent positions in different band windows. A feature seen in fewer than kPsfMinWindows windows is a
  // coincidence of cosmic rays in neighbouring bands.
  std::sort(found.begin(), found.end(), [](const Peak& l, const Peak& r) { return l.pos < r.pos; });
  std::vector<Peak> features;
  std::vector<double> sg, ra, cu;
  auto median = [](std::vector<double>& v) {
    auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    return *mid;
  };
  for (std::size_t a = 0; a < found.size();) {
    std::size_t e = a + 1;
    while (e < found.size() && found[e].pos - found[e - 1].pos <= 1) ++e;
    if (e - a >= kPsfMinWindows) {
      sg.clear();
      ra.clear();
      cu.clear();
      for (std::size_t j = a; j < e; ++j) {
        sg.push_back(found[j].sigma);
        ra.push_back(found[j].ratio);
        cu.push_back(found[j].curvature);
      }
      // A line that is tilted or curved changes its centring from window to window; the bound
      // must hold at every centring, so the largest ratio and curvature over the windows count.
      // A line that is tilted or curved changes its centring from window to window; the bound
      // must hold at every centring, so the largest ratio and curvature over the windows count.
      features.push_back({found[a].pos, median(sg), *std::max_element(ra.begin(), ra.end()),
                          *std::max_element(cu.begin(), cu.end())});
    }
    a = e;
  }
  if (features.size() < kPsfMinFeatures) return gaussian_bound(kDefaultPsfSigma);
  // Coincidences of cosmic rays that the band median kept are far narrower than the rest: a
  // feature more than 5 MAD and more than kPsfOutlier below the median width is dropped.
  sg.clear();
  for (const auto& f : features) sg.push_back(f.sigma);
  const double med = median(sg);
  for (auto& t : sg) t = std::abs(t - med);
  const double floor = med - std::max(5.0 * 1.4826 * median(sg), kPsfOutlier * med);
  std::erase_if(features, [&](const Peak& f) { return f.sigma < floor; });
  // The bound must hold for the sharpest real feature of the frame.
  AxisBound out;
  for (const auto& f : features) {
    out.ratio = std::max(out.ratio, f.ratio);
    out.curvature = std::max(out.curvature, f.curvature);
  }
  out.features = static_cast<int>(features.size());
  return out;
}

// The column model: a pixel predicted by the pixels of its column at +-7, +-10 and +-13 rows,
// as the median of the three symmetric pair means, where those pair means agree within
// kColumnAgreement sigma (the column is flat or has a constant gradient there: an emission line
// along a slit, away from star traces, fiber traces and slit ends). A track along a line, which
// no sharpness test sees, stands out of it. The offsets exceed the length of most tracks.
constexpr std::array<Eigen::Index, 3> kColumnOffsets = {7, 10, 13};
constexpr float kColumnAgreement = 3.0f;
// Noise of a pixel's prediction by the mean of its three pair means, with the pixel's own: about
// 1.3 times the pixel's (as the line-and-trace model).
constexpr float kModelNoise = 1.3f;

// A hit must exceed the PSF bound along at least one direction by this many sigma of the
// difference (the noise of the pixel and of its two neighbours).
constexpr float kPsfSigmaClip = 3.0f;
// The bound holds for the light above any level that does not exceed the smooth background under
// the lines and traces; the lowest pixel within this many pixels along the direction (floored at
// 0) is taken for it. Nearer, it can lie on the wing of a neighbouring line of a blend.
constexpr int kPedestalReach = 8;

// Noise of the residuals of the profile models, in units of the pixel's own noise: a median of
// four neighbours has about 0.3 of one pixel's variance, so v - m has 1.3 (1.14 sigma). The
// two-axis residual v - mx - my + mxy would have 1.7 for equal neighbours; on the wings of lines
// and traces the medians follow single pixels, and 1.5 sigma keeps the false rate there as low
// as on the continuum.
constexpr float kAxisResidualNoise = 1.14f;
constexpr float kCrossResidualNoise = 1.5f;

// Floor of the fine-structure contrast F (in noise units); at the floor the contrast test says
// nothing, and a candidate must also stand out of the profile models by this many sigma.
constexpr float kMinFine = 0.01f;
constexpr float kVoidContrastZ = 2.0f;

// Every decision about a pixel depends on the working image within this many pixels (the 7x7
// median of the 3x3 median, evaluated for neighbours of neighbours during growth), except the
// line-and-trace model, which reads the frame itself. Blocks are processed with this halo, so
// that a block's result equals that of the whole frame.
constexpr Eigen::Index kHalo = 8;
// A later pass can change a verdict only this close to a pixel cleaned by the pass before.
constexpr Eigen::Index kReach = std::max(kHalo, kColumnOffsets.back());


/// Bad or no-data pixels (frame indices, increasing) and the variance of the values that replaced
/// them in the working image; a few per cent of a frame at most, so kept sparse.
struct DeadPixels {
  std::vector<std::size_t> index;
  std::vector<float> var;
  float variance(std::size_t i) const {
    const auto it = std::lower_bound(index.begin(), index.end(), i);
    return it != index.end() && *it == i ? var[static_cast<std::size_t>(it - index.begin())] : 0.0f;
  }
};

/// The frame-wide inputs of one detection pass.
struct PassInput {
  const ImageArray& w;            ///< working image (previous hits cleaned)
  const ImageArray& var;          ///< variance as given (non-finite and negative values allowed)
  const std::vector<std::uint8_t>& state;  ///< per pixel: kEligible, kReplaced, hits of earlier passes (kHit)
  bool earlier_hits;              ///< whether `state` holds any hit
  const DeadPixels& dead;          ///< bad or no-data pixels and the variance of the values that replaced them
  float sigclip, sigcliplow, objlim;
  float ratio_x, ratio_y, ratio_diag;  ///< largest p(0)/mean(neighbours) a PSF allows per direction
  float psf_route;  ///< excess over the PSF bound that makes a Laplacian candidate a hit on its own (sigclip)
};

/// Scratch arrays for one block (core rectangle plus halo), reused from block to block.
struct BlockBuffers {
  ImageArray w, v, lp, sarr, tmp, sp, m3, mx, my, mxy;
  ImageArray z;      ///< profile-model significance as z |z|
  ImageArray noise;  ///< sqrt of the 5x5 median of the variance
  std::vector<std::uint8_t> above, state;
  std::vector<Eigen::Index> cand, grow1;
  std::vector<std::uint8_t> line_gate;  ///< a line may run along the column (line-and-trace model)
  std::vector<std::uint8_t> trace_gate; ///< the pixel stands out of its row (trace-track model)
};

/// One detection pass on the rectangle [cy0, cy1) x [cx0, cx1) of the frame; appends the frame
/// indices of new hits in it to `fresh` (own evidence) or `grown` (beside a confirmed hit).
void detect_block(const PassInput& in, Eigen::Index cy0, Eigen::Index cy1, Eigen::Index cx0, Eigen::Index cx1,
                  BlockBuffers& b, std::vector<std::size_t>& fresh, std::vector<std::size_t>& grown) {
  const Eigen::Index ny = in.w.rows(), nx = in.w.cols();
  const Eigen::Index y0 = std::max<Eigen::Index>(0, cy0 - kHalo), y1 = std::min(ny, cy1 + kHalo);
  const Eigen::Index x0 = std::max<Eigen::Index>(0, cx0 - kHalo), x1 = std::min(nx, cx1 + kHalo);
  const Eigen::Index h = y1 - y0, wd = x1 - x0;
  // At a frame edge the block edge is the frame edge, so the replicated edges of the block
  // filters are those of the frame; inside the frame the halo absorbs the block-edge effects.
  b.w = in.w.block(y0, x0, h, wd);
  for (auto* a : {&b.lp, &b.sarr, &b.tmp, &b.sp, &b.m3, &b.mx, &b.my, &b.mxy, &b.z, &b.noise}) a->resize(h, wd);
  // Non-finite and negative variances count as 0 (written so that it vectorises: NaN fails both).
  b.v = in.var.block(y0, x0, h, wd);
  float* vp = b.v.data();
  for (Eigen::Index i = 0, m = b.v.size(); i < m; ++i) {
    const float v = vp[i];
    vp[i] = (v >= 0.0f && v <= std::numeric_limits<float>::max()) ? v : 0.0f;
  }
  // Noise per pixel from the variance, median-filtered so that a hit's own Poisson term does not
  // hide it; floored so that empty (zero-variance) regions do not divide by zero. Computed per
  // block: it is needed within kHalo - 2 of the core only.
  median_rows<5>(b.v, b.tmp);
  median_cols<5>(b.tmp, b.noise);
  b.noise = b.noise.sqrt().max(1e-3f);

  laplacian_plus(b.w, b.lp);
  b.sarr = b.lp / (2.0f * b.noise);
  median_rows<5>(b.sarr, b.tmp);
  median_cols<5>(b.tmp, b.sp);
  b.sp = b.sarr - b.sp;
  median_rows<3>(b.w, b.tmp);
  median_cols<3>(b.tmp, b.m3);

  // Profile-model significance. Along y a line is the same from row to row and along x a
  // trace is the same from column to column, so a pixel is predicted by the median of its
  // neighbours along y (lines) or along x (traces), and by the two-axis additive model
  // mx + my - mxy, which also holds where a line crosses a trace. The significance is the excess
  // over the additive model, capped by the excess over the better one-axis model, over the noise
  // of the pixel predicted by the same additive model of the variance. On the steep wing of a
  // line the model along x is meaningless (negative), so the cap takes the better of the two.
  // The variance medians reuse the lp/tmp/sarr buffers, which are free at this point.
  neighbour_median_x(b.w, b.mx);
  neighbour_median_y(b.w, b.my);
  neighbour_median_x(b.my, b.mxy);
  neighbour_median_x(b.v, b.lp);
  neighbour_median_y(b.v, b.tmp);
  neighbour_median_x(b.tmp, b.sarr);
  {
    // Plain pointers: through the Eigen members the compiler assumes aliasing and stays scalar.
    // z is kept as a signed square (z |z|) and compared with squared thresholds: a square root
    // per pixel does not vectorise without relaxing errno semantics.
    const float *wp = b.w.data(), *mx = b.mx.data(), *my = b.my.data(), *mxy = b.mxy.data();
    const float *vx = b.lp.data(), *vy = b.tmp.data(), *vxy = b.sarr.data();
    float* zp = b.z.data();
    const Eigen::Index size = b.z.size();
    constexpr float kx = 1.0f / kAxisResidualNoise, kr = 1.0f / kCrossResidualNoise;
    for (Eigen::Index i = 0; i < size; ++i) {
      const float v = wp[i];
      const float ex = (v - mx[i]) * kx;
      const float ey = (v - my[i]) * kx;
      const float er = (v - mx[i] - my[i] + mxy[i]) * kr;
      // Where the additive model of the variance fails (it can cancel to ~0), the smaller of the
      // two one-axis predictions is used instead.
      const float vm = std::max(std::max(vx[i] + vy[i] - vxy[i], std::min(vx[i], vy[i])), 1e-6f);
      const float e = std::max(std::min(ex, er), std::min(ey, er));
      zp[i] = e * std::abs(e) / vm;
    }
  }

  const auto n = static_cast<std::size_t>(h * wd);
  b.above.assign(n, 0);
  b.state.assign(n, 0);
  b.cand.clear();
  b.grow1.clear();
  auto frame_index = [&](Eigen::Index li) {
    return static_cast<std::size_t>((y0 + li / wd) * nx + x0 + li % wd);
  };
  // Sharp against the fine structure (L.A.Cosmic), a point sharp along both axes, or standing
  // out of the profile models: the last two find hits on top of bright lines and traces whose
  // own fine structure hides them. The point-sharpness floors (1 and 0.3 sigma) keep the wings
  // of lines and traces, where the fine-structure image is ~0 and the contrast test is void,
  // from passing on noise; where the contrast test is void (F at its floor) the profile models
  // must agree a little too. The costly terms are evaluated only where a threshold needs them.
  auto sharpness = [&](Eigen::Index li) { return point_sharpness(b.w, b.v(li), li / wd, li % wd); };
  auto contrast = [&](Eigen::Index li) {
    const Eigen::Index ly = li / wd, lx = li % wd;
    const float f = std::max(kMinFine, (b.m3(li) - median7_at(b.m3, ly, lx)) / b.noise(li));
    return b.sp(li) / f;
  };
  // Sharper than the PSF by `need` sigma along x, y or a diagonal: the pixel above a local
  // pedestal (the lowest pixel within kPedestalReach px in that direction, floored at 0) exceeds
  // the mean of its two neighbours above the same pedestal times the largest ratio the PSF allows
  // by `need` times the noise of the difference. The pedestal reaches beyond the block halo, so it
  // is read from the frame.
  auto psf_sharper = [&](Eigen::Index li, float need) {
    const Eigen::Index ly = li / wd, lx = li % wd, fy = y0 + ly, fx = x0 + lx;
    const float p0 = b.w(li), n0 = b.noise(li);
    constexpr int dirs[4][2] = {{0, 1}, {1, 0}, {1, 1}, {1, -1}};
    const float ratio[4] = {in.ratio_x, in.ratio_y, in.ratio_diag, in.ratio_diag};
    for (int a = 0; a < 4; ++a) {
      // Beyond a frame edge, the pixel mirrored across that edge (each axis on its own).
      auto at = [&](int j) {
        Eigen::Index yy = fy + j * dirs[a][0], xx = fx + j * dirs[a][1];
        if (yy < 0 || yy >= ny) yy = fy - j * dirs[a][0];
        if (xx < 0 || xx >= nx) xx = fx - j * dirs[a][1];
        return std::pair{std::clamp<Eigen::Index>(yy, 0, ny - 1), std::clamp<Eigen::Index>(xx, 0, nx - 1)};
      };
      const auto [ym, xm] = at(-1);
      const auto [yp, xp] = at(1);
      const float pm = in.w(ym, xm), pp = in.w(yp, xp);
      const float r = ratio[a];
      // A bad neighbour holds an estimate from its own neighbours; its uncertainty counts (on a
      // line beside a bad column the estimate is poor and would make the line look sharp).
      float vn = std::max(in.var(ym, xm), 0.0f) + std::max(in.var(yp, xp), 0.0f);
      vn = std::isfinite(vn) ? vn : 0.0f;
      const float vd = in.dead.variance(static_cast<std::size_t>(ym * nx + xm)) +
                       in.dead.variance(static_cast<std::size_t>(yp * nx + xp));
      // The pixel's own noise without a hit: the local level, or on the core of a line or trace
      // (where the 5x5 median sees the fainter surroundings) that of its neighbours times the
      // ratio the PSF allows.
      const float v0 = std::max(n0 * n0, 0.5f * r * vn);
      const float lim = need * std::sqrt(std::max(v0 + 0.25f * r * r * (vn + vd), 1e-6f));
      // The excess grows with the pedestal, which is at most the lower neighbour: a direction that
      // fails even then needs no pedestal.
      const float mean = 0.5f * (pm + pp);
      auto excess = [&](float ped) { return (p0 - ped) - r * (mean - ped); };
      float ped = std::max(std::min(pm, pp), 0.0f);
      if (!(excess(ped) > lim)) continue;
      for (int j = 2; j <= kPedestalReach; ++j) {
        const auto [ya, xa] = at(-j);
        const auto [yb, xb] = at(j);
        ped = std::min({ped, in.w(ya, xa), in.w(yb, xb)});
      }
      if (excess(std::max(ped, 0.0f)) > lim) return true;
    }
    return false;
  };
  // Excess over the additive line-and-trace model C + R - D: C and R predict the pixel from its
  // column and its row (median of the pair means at kColumnOffsets, which must agree), D is the
  // background at the four corners (+-10, +-10). Used only where a line runs along the column
  // (C - D significant): elsewhere the sharpness tests see a hit, and a spot (a line within a
  // fiber trace, a product rather than a sum of line and trace) has nothing above D in its column.
  // Over the noise of the pixel and of the model; -inf where the model does not apply.
  // The first test of column_excess for every pixel at once, in loops along rows that
  // vectorise: the column's prediction above the background by kColumnAgreement of the local
  // noise. Pixels within kColumnOffsets.back() of a frame edge never pass.
  const Eigen::Index cly0 = cy0 - y0, cly1 = cy1 - y0, clx0 = cx0 - x0, clx1 = cx1 - x0;
  constexpr Eigen::Index reach = kColumnOffsets.back();
  b.line_gate.assign(static_cast<std::size_t>(h * wd), 0);
  for (Eigen::Index ly = std::max<Eigen::Index>(0, cly0 - 3); ly < std::min(h, cly1 + 3); ++ly) {
    const Eigen::Index fy = y0 + ly;
    if (fy < reach || fy + reach >= ny) continue;
    const Eigen::Index lxa = std::max<Eigen::Index>(std::max<Eigen::Index>(0, clx0 - 3), reach - x0);
    const Eigen::Index lxb = std::min(std::min(wd, clx1 + 3), nx - reach - x0);
    auto row = [&](Eigen::Index d) { return in.w.data() + (fy + d) * nx + x0; };
    const float *a0 = row(-kColumnOffsets[0]), *a1 = row(kColumnOffsets[0]), *b0 = row(-kColumnOffsets[1]),
                *b1 = row(kColumnOffsets[1]), *c0 = row(-kColumnOffsets[2]), *c1 = row(kColumnOffsets[2]);
    constexpr Eigen::Index dd = kColumnOffsets[1];
    const float* nz = b.noise.data() + ly * wd;
    std::uint8_t* g = b.line_gate.data() + ly * wd;
    for (Eigen::Index lx = lxa; lx < lxb; ++lx) {
      const float col = median3(0.5f * (a0[lx] + a1[lx]), 0.5f * (b0[lx] + b1[lx]), 0.5f * (c0[lx] + c1[lx]));
      const float bg = median4(b0[lx - dd], b0[lx + dd], b1[lx - dd], b1[lx + dd]);
      g[lx] = col - bg > kColumnAgreement * nz[lx];
    }
  }
  // The trace-track model: a pixel predicted by its row at kColumnOffsets columns (median of
  // the pair means, which must agree: a trace is smooth along x, and no line lies within reach).
  // A track along a trace stands out of it and is one row high; a line crossing the trace stands
  // out too, but its excess follows the trace across the rows, as the PSF bound along y allows.
  // The gate, for every pixel at once: the excess over the row's prediction above sigclip of the
  // local noise. Pixels within kColumnOffsets.back() + 1 of a frame edge never pass.
  b.trace_gate.assign(static_cast<std::size_t>(h * wd), 0);
  auto row_prediction = [&](const float* r, Eigen::Index lx) {
    return median3(0.5f * (r[lx - kColumnOffsets[0]] + r[lx + kColumnOffsets[0]]),
                   0.5f * (r[lx - kColumnOffsets[1]] + r[lx + kColumnOffsets[1]]),
                   0.5f * (r[lx - kColumnOffsets[2]] + r[lx + kColumnOffsets[2]]));
  };
  for (Eigen::Index ly = std::max<Eigen::Index>(0, cly0 - 3); ly < std::min(h, cly1 + 3); ++ly) {
    const Eigen::Index fy = y0 + ly;
    if (fy < 1 || fy + 1 >= ny) continue;
    const Eigen::Index lxa = std::max<Eigen::Index>(std::max<Eigen::Index>(0, clx0 - 3), reach - x0);
    const Eigen::Index lxb = std::min(std::min(wd, clx1 + 3), nx - reach - x0);
    const float* r = in.w.data() + fy * nx + x0;
    const float* nz = b.noise.data() + ly * wd;
    std::uint8_t* g = b.trace_gate.data() + ly * wd;
    const float lim = in.sigclip * kModelNoise;
    for (Eigen::Index lx = lxa; lx < lxb; ++lx) g[lx] = r[lx] - row_prediction(r, lx) > lim * nz[lx];
  }
  // A track along a trace: the excess over the row model exceeds sigclip of its noise, and the
  // excess of the rows above and below, times the largest ratio the PSF allows along y, by
  // kPsfSigmaClip. The noise of a pixel from the variance along its row at the nearest offsets
  // (the pixel's own includes the hit), at least the local level; the model's adds kModelNoise.
  auto trace_track = [&](Eigen::Index li) {
    const Eigen::Index fy = y0 + li / wd, fx = x0 + li % wd;
    const float* r0 = in.w.data() + fy * nx;
    std::array<float, 3> mr;
    for (std::size_t j = 0; j < 3; ++j) {
      const Eigen::Index d = kColumnOffsets[j];
      mr[j] = 0.5f * (r0[fx - d] + r0[fx + d]);
    }
    auto variance_at = [&](Eigen::Index yy) {
      const float v = median3(in.var(yy, fx - kColumnOffsets[0]), in.var(yy, fx + kColumnOffsets[0]),
                              in.var(yy, fx - kColumnOffsets[1]));
      return kModelNoise * kModelNoise * std::max(b.noise(li) * b.noise(li), std::isfinite(v) ? v : 0.0f);
    };
    const float v0 = variance_at(fy);
    const auto [lo, hi] = std::minmax({mr[0], mr[1], mr[2]});
    if (hi - lo > kColumnAgreement * std::sqrt(v0)) return false;
    const float e0 = r0[fx] - median3(mr[0], mr[1], mr[2]);
    if (!(e0 > in.sigclip * std::sqrt(v0))) return false;
    const float em = in.w(fy - 1, fx) - row_prediction(in.w.data() + (fy - 1) * nx, fx);
    const float ep = in.w(fy + 1, fx) - row_prediction(in.w.data() + (fy + 1) * nx, fx);
    const float r = in.ratio_y;
    const float vn = variance_at(fy - 1) + variance_at(fy + 1);
    return e0 - r * 0.5f * (em + ep) > kPsfSigmaClip * std::sqrt(v0 + 0.25f * r * r * vn);
  };
  auto column_excess = [&](Eigen::Index li) {
    constexpr float none = -std::numeric_limits<float>::infinity();
    if (!b.line_gate[static_cast<std::size_t>(li)]) return none;
    const Eigen::Index fy = y0 + li / wd, fx = x0 + li % wd;
    // Cheapest tests first: most pixels have no line along their column.
    std::array<float, 3> mc, mr;
    for (std::size_t j = 0; j < 3; ++j) {
      const Eigen::Index d = kColumnOffsets[j];
      mc[j] = 0.5f * (in.w(fy - d, fx) + in.w(fy + d, fx));
    }
    constexpr Eigen::Index dd = kColumnOffsets[1];
    const float bg = median4(in.w(fy - dd, fx - dd), in.w(fy - dd, fx + dd), in.w(fy + dd, fx - dd), in.w(fy + dd, fx + dd));
    const float col = median3(mc[0], mc[1], mc[2]);
    const float n0 = b.noise(li);
    // The noise of the pixel as its column predicts it (on a line the 5x5 median of the variance
    // sees the fainter surroundings), at least the local level.
    const float vc = median3(in.var(fy - kColumnOffsets[0], fx), in.var(fy + kColumnOffsets[0], fx),
                             in.var(fy - kColumnOffsets[1], fx));
    const float sd = std::sqrt(std::max(n0 * n0, std::isfinite(vc) ? vc : 0.0f));
    if (!(col - bg > kColumnAgreement * sd)) return none;
    const auto [clo, chi] = std::minmax({mc[0], mc[1], mc[2]});
    if (chi - clo > kColumnAgreement * sd) return none;
    for (std::size_t j = 0; j < 3; ++j) {
      const Eigen::Index d = kColumnOffsets[j];
      mr[j] = 0.5f * (in.w(fy, fx - d) + in.w(fy, fx + d));
    }
    const auto [rlo, rhi] = std::minmax({mr[0], mr[1], mr[2]});
    if (rhi - rlo > kColumnAgreement * sd) return none;
    const float row = median3(mr[0], mr[1], mr[2]);
    return (b.w(li) - col - row + bg) / (1.3f * sd);
  };
  const float void_contrast = in.objlim / kMinFine;
  const float sigclip2 = in.sigclip * in.sigclip, sigcliplow2 = in.sigcliplow * in.sigcliplow;
  // Decisions are needed on the core plus 3 (candidates), 2 (first growth) and 1 (second growth)
  // pixels; `inside(li, m)` tells whether a block pixel lies in the core grown by m.
  auto inside = [&](Eigen::Index li, Eigen::Index m) {
    const Eigen::Index ly = li / wd, lx = li % wd;
    return ly >= cly0 - m && ly < cly1 + m && lx >= clx0 - m && lx < clx1 + m;
  };
  const Eigen::Index ylo = std::max<Eigen::Index>(0, cly0 - 3), yhi = std::min(h, cly1 + 3);
  const Eigen::Index xlo = std::max<Eigen::Index>(0, clx0 - 3), xhi = std::min(wd, clx1 + 3);
  const float* zp = b.z.data();
  const float* spp = b.sp.data();
  for (Eigen::Index ly = ylo; ly < yhi; ++ly) {
    const std::uint8_t* gate = b.line_gate.data() + ly * wd;
    const std::uint8_t* tgate = b.trace_gate.data() + ly * wd;
    const std::uint8_t* pstate = in.state.data() + (y0 + ly) * nx + x0;
    for (Eigen::Index lx = xlo; lx < xhi; ++lx) {
      const Eigen::Index li = ly * wd + lx;
      const float z2 = zp[li], s = spp[li];
      // Most pixels pass none of the tests: one cheap test for all of them.
      if (!(gate[lx] | tgate[lx] | (z2 > sigclip2) | (s > in.sigclip)) || !(pstate[lx] & kEligible)) continue;
      // A hit on a line that stands out of the line-and-trace model; the only route without the
      // PSF bound (a track along a line is not sharper than the line).
      if ((gate[lx] && column_excess(li) > in.sigclip) || (tgate[lx] && trace_track(li))) {
        b.cand.push_back(li);
        continue;
      }
      if (!(z2 > sigclip2) && !(s > in.sigclip)) continue;
      const float p = sharpness(li);
      const float r = contrast(li);
      // A hit stands out of the profile models and is sharper than the line or trace profile
      // along both axes (a model broken by a hit two pixels away does not give a point), and
      // sharper than the fine structure: a line segment inside a fiber trace is a resolved spot,
      // which the profile models do not describe but the fine-structure image does.
      bool c = z2 > sigclip2 && p > 1.0f && r > 1.0f;
      if (s > in.sigclip) {
        c = c || (r > in.objlim && p > 1.0f && (r < void_contrast || z2 > kVoidContrastZ * kVoidContrastZ)) ||
            p > in.sigclip;
        b.above[static_cast<std::size_t>(li)] = (r > 1.0f && p > 0.3f) || p > in.sigcliplow;
      }
      // A hit is sharper than the PSF along at least one direction; lines, traces, arc spots and
      // their blends are not.
      if (c) {
        c = psf_sharper(li, kPsfSigmaClip);
      } else if (s > in.sigclip) {
        // Sharp against the Laplacian's noise but resolved for the fine-structure image and not
        // a point: a track along a line or a trace. A hit if it is far sharper than the PSF.
        c = psf_sharper(li, in.psf_route);
      }
      if (c) b.cand.push_back(li);
    }
  }
  // Growth to neighbours above sigclip-level evidence, then down to sigfrac * sigclip; then
  // neighbours of any confirmed hit (this pass or an earlier one) whose excess over the profile
  // models exceeds sigfrac * sigclip of the local noise and that are not flatter than the line
  // or trace profile (point sharpness > 0): charge shared with the next pixel. Each step visits
  // only the neighbours of what the step before found.
  enum : std::uint8_t { kNone = 0, kGrow1 = 1, kGrow2 = 2, kTested = 3, kDone = 4 };
  auto for_neighbours = [&](Eigen::Index li, auto&& f) {
    const Eigen::Index ly = li / wd, lx = li % wd;
    for (Eigen::Index yy = std::max<Eigen::Index>(0, ly - 1); yy <= std::min(h - 1, ly + 1); ++yy)
      for (Eigen::Index xx = std::max<Eigen::Index>(0, lx - 1); xx <= std::min(wd - 1, lx + 1); ++xx) f(yy * wd + xx);
  };
  auto st = [&](Eigen::Index li) -> std::uint8_t& { return b.state[static_cast<std::size_t>(li)]; };
  for (Eigen::Index c : b.cand)
    if (inside(c, 2) && st(c) != kGrow1) {
      st(c) = kGrow1;
      b.grow1.push_back(c);
    }
  for (Eigen::Index c : b.cand)
    for_neighbours(c, [&](Eigen::Index q) {
      if (st(q) != kGrow1 && b.above[static_cast<std::size_t>(q)] && inside(q, 2)) {
        st(q) = kGrow1;
        b.grow1.push_back(q);
      }
    });
  for (Eigen::Index g : b.grow1)
    for_neighbours(g, [&](Eigen::Index q) {
      if (st(q) != kNone || !inside(q, 1)) return;
      st(q) = kTested;
      if (!(b.sp(q) > in.sigcliplow) || !(in.state[frame_index(q)] & kEligible)) return;
      const float p = sharpness(q);
      if (p > in.sigcliplow || (p > 0.3f && contrast(q) > 1.0f)) st(q) = kGrow2;
    });
  // Output, core pixels only, each once.
  auto emit = [&](Eigen::Index li, bool own) {
    const std::size_t fi = frame_index(li);
    if ((in.state[fi] & kHit) || !(in.state[fi] & kEligible)) return;
    (own ? fresh : grown).push_back(fi);
  };
  for (Eigen::Index g : b.grow1) {
    if (inside(g, 0)) emit(g, true);
    for_neighbours(g, [&](Eigen::Index q) {
      if (st(q) == kGrow2 && inside(q, 0)) {
        st(q) = kDone;
        emit(q, false);
      }
    });
  }
  auto grow_beside = [&](Eigen::Index seed) {
    for_neighbours(seed, [&](Eigen::Index q) {
      if (!inside(q, 0) || st(q) == kGrow1 || st(q) == kDone) return;
      st(q) = kDone;
      if (zp[q] > sigcliplow2 && sharpness(q) > 0.0f) emit(q, false);
    });
  };
  for (Eigen::Index g : b.grow1)
    if (inside(g, 1)) grow_beside(g);
  if (!in.earlier_hits) return;
  for (Eigen::Index ly = std::max<Eigen::Index>(0, cly0 - 1); ly < std::min(h, cly1 + 1); ++ly) {
    const std::uint8_t* row = in.state.data() + (y0 + ly) * nx + x0;
    for (Eigen::Index lx = std::max<Eigen::Index>(0, clx0 - 1); lx < std::min(wd, clx1 + 1); ++lx)
      if ((row[lx] & kHit) == kHitConfirmed) grow_beside(ly * wd + lx);
  }
}

}  // namespace

PsfBound measure_psf_bound(const ImageArray& data, const ImageArray& variance, const MaskArray& mask) {
  if (variance.rows() != data.rows() || variance.cols() != data.cols() || mask.rows() != data.rows() ||
      mask.cols() != data.cols())
    throw DataError("PSF bound measurement: data, variance and mask differ in shape");
  const auto [profiles_x, profiles_y] = band_profiles(data, variance, mask);
  const AxisBound bx = measure_axis(profiles_x);
  const AxisBound by = measure_axis(profiles_y);
  return {bx.ratio, by.ratio, bx.curvature, by.curvature, bx.features, by.features};
}

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

  std::vector<std::uint8_t> state = large_vector<std::uint8_t>(n);
  DeadPixels dead;
  ImageArray w(ny, nx);
  advise_huge_pages(w);
  w = data;
  {
    // Branch-free, so that it vectorises; the few dead pixels are listed by a second scan.
    const MaskPixel* m = mask.data();
    const float* wp = w.data();
    for (std::size_t i = 0; i < n; ++i) {
      const bool replaced = (m[i] & unusable) || !(std::abs(wp[i]) <= std::numeric_limits<float>::max());
      state[i] = static_cast<std::uint8_t>((m[i] & never ? 0 : kEligible) | (replaced ? kReplaced : 0));
    }
    for (std::size_t i = 0; i < n; ++i)
      if (state[i] & kReplaced) dead.index.push_back(i);
  }
  if (!dead.index.empty()) {
    for (std::size_t i : dead.index) w(static_cast<Eigen::Index>(i)) = 0.0f;
    dead.var.assign(dead.index.size(), 0.0f);
    clean_flagged(w, state, dead.index, &dead.var);
  }

  res.psf = measure_psf_bound(data, variance, mask);
  PassInput in{w,
                     variance,
                     state,
                     false,
                     dead,
                     static_cast<float>(cfg.cosmic_sigclip),
                     static_cast<float>(cfg.cosmic_sigfrac * cfg.cosmic_sigclip),
                     static_cast<float>(cfg.cosmic_objlim),
                     static_cast<float>(res.psf.ratio_x),
                     static_cast<float>(res.psf.ratio_y),
                     // Along a diagonal, a product of profiles along x and y keeps to the sum of
                     // the log-curvatures, and the mean of two neighbours is at least their
                     // geometric mean.
                     static_cast<float>(std::exp(res.psf.curvature_x + res.psf.curvature_y)),
                     static_cast<float>(cfg.cosmic_sigclip)};
  BlockBuffers buf;
  std::vector<std::size_t> fresh, grown, hits;
  // The first pass covers the frame in blocks whose scratch arrays stay in the core's cache
  // (kFirstRows x kFirstCols plus the halo: about 2 MB for the thirteen of them, the size of a core's L2). A later pass can
  // only change its verdict within kReach of a pixel cleaned by the pass before, so it visits only
  // the tiles there; the result is the same as a full pass.
  constexpr Eigen::Index kFirstRows = 128, kFirstCols = 256, kTile = 32;
  const Eigen::Index nty = (ny + kTile - 1) / kTile, ntx = (nx + kTile - 1) / kTile;
  std::vector<std::uint8_t> dirty;
  for (int it = 0; it < cfg.cosmic_niter; ++it) {
    res.iterations = it + 1;
    fresh.clear();
    grown.clear();
    if (it == 0) {
      for (Eigen::Index y = 0; y < ny; y += kFirstRows)
        for (Eigen::Index x = 0; x < nx; x += kFirstCols)
          detect_block(in, y, std::min(ny, y + kFirstRows), x, std::min(nx, x + kFirstCols), buf, fresh, grown);
    } else {
      for (Eigen::Index ty = 0; ty < nty; ++ty)
        for (Eigen::Index tx = 0; tx < ntx;) {
          if (!dirty[static_cast<std::size_t>(ty * ntx + tx)]) {
            ++tx;
            continue;
          }
          Eigen::Index te = tx + 1;
          while (te < ntx && dirty[static_cast<std::size_t>(ty * ntx + te)]) ++te;
          detect_block(in, ty * kTile, std::min(ny, (ty + 1) * kTile), tx * kTile, std::min(nx, te * kTile), buf,
                       fresh, grown);
          tx = te;
        }
    }
    if (fresh.empty() && grown.empty()) break;
    res.npix += fresh.size() + grown.size();
    for (std::size_t i : fresh) state[i] = static_cast<std::uint8_t>((state[i] & ~kHit) | kHitConfirmed);
    for (std::size_t i : grown) state[i] = static_cast<std::uint8_t>((state[i] & ~kHit) | kHitGrown);
    in.earlier_hits = in.earlier_hits || !fresh.empty();
    fresh.insert(fresh.end(), grown.begin(), grown.end());
    hits.insert(hits.end(), fresh.begin(), fresh.end());
    for (std::size_t i : fresh) state[i] |= kReplaced;
    if (it + 1 == cfg.cosmic_niter) break;
    clean_flagged(w, state, fresh);
    dirty.assign(static_cast<std::size_t>(nty * ntx), 0);
    for (std::size_t i : fresh) {
      const Eigen::Index y = static_cast<Eigen::Index>(i) / nx, x = static_cast<Eigen::Index>(i) % nx;
      for (Eigen::Index ty = std::max<Eigen::Index>(0, y - kReach) / kTile; ty <= std::min(ny - 1, y + kReach) / kTile; ++ty)
        for (Eigen::Index tx = std::max<Eigen::Index>(0, x - kReach) / kTile; tx <= std::min(nx - 1, x + kReach) / kTile;
             ++tx)
          dirty[static_cast<std::size_t>(ty * ntx + tx)] = 1;
    }
  }
  for (std::size_t i : hits) mask(static_cast<Eigen::Index>(i)) |= kMaskCosmic;
  return res;
}

}  // namespace kspecdr::detector
