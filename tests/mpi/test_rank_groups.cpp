// Rank groups, what a night stands on when the ranks outnumber the exposures: how many ranks each exposure gets,
// sub-communicators that hold exactly their group's ranks, a failure on one rank of a group that becomes the
// failure of that group (and of no other), and an extraction shared by the ranks of a group that gives the same
// numbers, bit for bit, as one rank alone — for the joint fit of overlapping fibers (columns shared) and for slit
// stars with a local sky and data profiles (apertures shared). Run at 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/core/trace.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/extract/sky.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/trace/profile.hpp"

using namespace kspecdr;

namespace {

/// Traces at rows y0[i] (a gentle tilt and curvature, σ growing along x) and an image of those stars over a sky
/// with emission lines, with Poisson and read noise, a few masked pixels and unflagged cosmic rays.
struct Frame {
  Image im;
  TraceSet traces;
};

Frame make_frame(long nx, long ny, const std::vector<double>& y0, const std::vector<double>& flux, double sigma,
                 double sky_level, unsigned seed) {
  Frame f;
  f.traces.nx = nx, f.traces.ny = ny;
  const double xm = static_cast<double>(nx - 1);
  for (std::size_t i = 0; i < y0.size(); ++i) {
    Trace t;
    t.info.name = "ap" + std::to_string(i + 1);
    t.info.type = i % 3 == 2 ? aperture_type::kSky : aperture_type::kProgram;
    t.centre.xmin = t.sigma.xmin = 0.0;
    t.centre.xmax = t.sigma.xmax = xm;
    t.centre.coeffs = {y0[i], 0.8, 0.4};
    t.sigma.coeffs = {sigma, 0.05 * sigma};
    f.traces.traces.push_back(std::move(t));
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  f.im = Image(ny, nx);
  for (long x = 0; x < nx; ++x) {
    const double xd = static_cast<double>(x);
    double s = sky_level;
    for (double xl = 23.0; xl < xd + 10; xl += 71.0) s += 8 * sky_level * std::exp(-0.5 * std::pow((xd - xl) / 1.2, 2));
    for (long r = 0; r < ny; ++r) {
      double e = s;
      for (std::size_t i = 0; i < y0.size(); ++i) {
        const Trace& t = f.traces[i];
        e += flux[i] * (1.0 + 0.3 * std::sin(xd / 17.0 + static_cast<double>(i))) *
             trace::pixel_gaussian(static_cast<double>(r), t.y(xd), t.sigma(xd));
      }
      const double v = static_cast<double>(std::poisson_distribution<long>(e)(rng)) + 4.0 * g(rng);
      f.im.data(r, x) = static_cast<float>(v);
      f.im.variance(r, x) = static_cast<float>(16.0 + std::max(v, 0.0));
    }
  }
  std::uniform_int_distribution<long> rx(0, nx - 1), ry(0, ny - 1);
  for (int k = 0; k < 40; ++k) f.im.data(ry(rng), rx(rng)) += 3000.0f;  // cosmic rays nobody flagged
  for (int k = 0; k < 40; ++k) f.im.mask(ry(rng), rx(rng)) = kMaskBad;
  return f;
}

/// Number of values that differ between two arrays (NaN equals NaN; -1 for different shapes).
template <typename A>
long differences(const A& a, const A& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return -1;
  long n = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const auto x = a.data()[i], y = b.data()[i];
    if (!(x == y) && !(x != x && y != y)) ++n;
  }
  return n;
}

bool same_double(double a, double b) { return a == b || (a != a && b != b); }

/// Every per-pixel array and every diagnostics field of two extractions, value for value.
long spectra_differences(const SpectrumSet& a, const SpectrumSet& b) {
  long n = 0;
  const ImageArray SpectrumSet::*arrays[] = {&SpectrumSet::flux,   &SpectrumSet::variance, &SpectrumSet::var_star,
                                             &SpectrumSet::var_sky, &SpectrumSet::var_read, &SpectrumSet::var_cal,
                                             &SpectrumSet::sky,    &SpectrumSet::offset,   &SpectrumSet::width,
                                             &SpectrumSet::peak,   &SpectrumSet::masked_fraction,
                                             &SpectrumSet::rejected};
  for (auto m : arrays) {
    const long d = differences(a.*m, b.*m);
    n += d < 0 ? 1000000 : d;
  }
  const long dm = differences(a.mask, b.mask);
  n += dm < 0 ? 1000000 : dm;
  if (a.diagnostics.size() != b.diagnostics.size()) return n + 1000000;
  for (std::size_t i = 0; i < a.diagnostics.size(); ++i) {
    const auto &p = a.diagnostics[i], &q = b.diagnostics[i];
    n += !same_double(p.trace_offset_px, q.trace_offset_px) + !same_double(p.width_px, q.width_px) +
         !same_double(p.peak_e, q.peak_e) + !same_double(p.masked_fraction, q.masked_fraction) +
         !same_double(p.snr_median, q.snr_median) + !same_double(p.sky_median_e, q.sky_median_e) +
         (p.rejected != q.rejected) + (p.bad_columns != q.bad_columns) + (p.status != q.status) +
         (a.apertures[i].name != b.apertures[i].name);
  }
  return n;
}

}  // namespace

TEST(RankGroups, SizesGiveEveryRankWorkAndTheLargerItemsTheLargerGroups) {
  EXPECT_EQ(mpi::group_sizes({1, 1}, 4), (std::vector<int>{2, 2}));
  EXPECT_EQ(mpi::group_sizes({1, 1}, 3), (std::vector<int>{2, 1}));
  EXPECT_EQ(mpi::group_sizes({1, 1, 1}, 4), (std::vector<int>{2, 1, 1}));
  EXPECT_EQ(mpi::group_sizes({5, 5, 5}, 8), (std::vector<int>{3, 3, 2}));
  EXPECT_EQ(mpi::group_sizes({1}, 4), (std::vector<int>{4}));
  EXPECT_EQ(mpi::group_sizes({2, 2}, 2), (std::vector<int>{1, 1}));
  // A frame three times the size of the other gets three of four ranks, whichever comes first.
  EXPECT_EQ(mpi::group_sizes({3, 1}, 4), (std::vector<int>{3, 1}));
  EXPECT_EQ(mpi::group_sizes({1, 3}, 4), (std::vector<int>{1, 3}));
  // Every item keeps one rank however light it is.
  EXPECT_EQ(mpi::group_sizes({100, 1, 1}, 5), (std::vector<int>{3, 1, 1}));
  EXPECT_THROW(mpi::group_sizes({1, 1, 1}, 2), Error);
  EXPECT_THROW(mpi::group_sizes({}, 2), Error);
  EXPECT_THROW(mpi::group_sizes({1, 0}, 4), Error);
}

TEST(RankGroups, SplitGivesEachGroupExactlyItsRanksInOrder) {
  const mpi::Comm& world = mpi::world();
  const int n = world.size();
  const int items = std::max(1, n / 2);
  const std::vector<int> sizes = mpi::group_sizes(std::vector<double>(static_cast<std::size_t>(items), 1.0), n);
  int item = 0, first = 0;
  while (world.rank() >= first + sizes[static_cast<std::size_t>(item)]) first += sizes[static_cast<std::size_t>(item++)];
  const mpi::Comm group = world.split(item, world.rank());
  bool ok = group.size() == sizes[static_cast<std::size_t>(item)] && group.rank() == world.rank() - first;
  // The group's sum of world ranks is that of its own block of ranks, and nothing of the other groups.
  const long long want = static_cast<long long>(group.size()) * first + group.size() * (group.size() - 1) / 2;
  ok = ok && group.sum(static_cast<long long>(world.rank())) == want;
  EXPECT_TRUE(world.all_true(ok)) << "rank " << world.rank() << " in group " << item << " of size " << group.size();
}

TEST(RankGroups, AFailureOnOneRankOfAGroupIsTheFailureOfThatGroupOnly) {
  const mpi::Comm& world = mpi::world();
  const int n = world.size();
  const std::vector<int> sizes = mpi::group_sizes(std::vector<double>(n > 1 ? 2u : 1u, 1.0), n);
  const int item = world.rank() < sizes[0] ? 0 : 1;
  const mpi::Comm group = world.split(item, world.rank());
  std::string caught;
  try {
    // The last rank of group 0 fails; every rank of group 0 must learn it, group 1 must not.
    mpi::all_or_throw(group, [&] {
      if (item == 0 && group.rank() == group.size() - 1) throw DataError("exposure x: its IM cannot be read");
    });
  } catch (const DataError& e) {
    caught = e.what();
  }
  const bool ok = item == 0 ? caught.find("exposure x: its IM cannot be read") != std::string::npos : caught.empty();
  EXPECT_TRUE(world.all_true(ok)) << "rank " << world.rank() << " (group " << item << ") caught '" << caught << "'";
}

TEST(RankGroups, JointExtractionOfOverlappingFibersSharedByColumnsEqualsOneRank) {
  const mpi::Comm& world = mpi::world();
  // Seven fibers 5 px apart with σ 1.6 px: their windows overlap, so the fit is joint (deblend auto).
  const Frame f = make_frame(301, 50, {7, 12, 17, 22, 27, 32, 37}, {900, 150, 1200, 60, 700, 400, 50}, 1.6, 20.0, 7);
  extract::ExtractConfig cfg;
  cfg.read_noise.value_e = 4.0;
  ASSERT_TRUE(extract::apertures_overlap(f.traces, cfg));
  const SpectrumSet alone = extract::extract_spectra(f.im, f.traces, nullptr, cfg, "fibers");
  const SpectrumSet shared = extract::extract_spectra(f.im, f.traces, nullptr, cfg, "fibers", &world);
  ASSERT_EQ(alone.header.get_string("EXTMETH").value_or(""), "joint");
  ASSERT_EQ(shared.header.get_string("EXTMETH").value_or(""), "joint");
  long rejected = 0;
  for (const auto& d : alone.diagnostics) rejected += d.rejected;
  EXPECT_GT(rejected, 0) << "the cosmic rays should have been rejected somewhere";
  const long diff = spectra_differences(alone, shared);
  EXPECT_TRUE(world.all_true(diff == 0)) << diff << " values differ on rank " << world.rank() << " of "
                                         << world.size();
}

TEST(RankGroups, SlitExtractionWithSkyAndDataProfilesSharedByAperturesEqualsOneRank) {
  const mpi::Comm& world = mpi::world();
  // Five stars far apart (no deblending), a local sky beside each, the profile measured from the data.
  const Frame f = make_frame(400, 160, {18, 48, 80, 110, 140}, {3000, 500, 8000, 200, 1500}, 1.8, 40.0, 11);
  extract::ExtractConfig cfg;
  cfg.read_noise.value_e = 4.0;
  cfg.profile = extract::ProfileSource::Data;
  cfg.deblend = extract::Deblend::Off;
  extract::SkyConfig skc;
  skc.method = extract::SkyMethod::ClippedPoly;
  skc.poly_order = 1;
  skc.distance_sigma = 4.0;
  skc.width_px = 6.0;
  const extract::SkyModel sky = extract::fit_slit_sky(f.im, f.traces, skc, cfg.read_noise);
  const SpectrumSet alone = extract::extract_spectra(f.im, f.traces, &sky, cfg, "stars");
  const SpectrumSet shared = extract::extract_spectra(f.im, f.traces, &sky, cfg, "stars", &world);
  ASSERT_EQ(alone.header.get_string("EXTPROF").value_or(""), "data");
  ASSERT_FALSE(alone.header.get_bool("DEBLEND").value_or(true));
  const long diff = spectra_differences(alone, shared);
  EXPECT_TRUE(world.all_true(diff == 0)) << diff << " values differ on rank " << world.rank() << " of "
                                         << world.size();
  // A group smaller than the world (ranks split in two) gives the same numbers too.
  const mpi::Comm half = world.split(world.rank() % 2, world.rank());
  const SpectrumSet in_half = extract::extract_spectra(f.im, f.traces, &sky, cfg, "stars", &half);
  const long diff_half = spectra_differences(alone, in_half);
  EXPECT_TRUE(world.all_true(diff_half == 0)) << diff_half << " values differ in a group of " << half.size();
}
