// `kspecdr extract IMFILE --out EXFILE`: the one-frame command, run as a program
// on a small IM built here (two stars on a uniform sky, Poisson and read noise).
// It must write an EX file carrying the timing keywords, recover the fluxes that
// went in within their own noise, and refuse bad input with the documented exit
// codes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/trace/profile.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

constexpr long kNx = 256, kNy = 80;
constexpr double kReadNoise = 4.5, kSky = 120.0, kSigma = 1.9;
const double kStarY[] = {27.3, 51.8};
const double kStarFlux[] = {9000.0, 4000.0};  // e- per column

double centre(double y0, long x) { return y0 + 0.8 * (2.0 * static_cast<double>(x) / (kNx - 1) - 1.0); }

/// An IM as the detector stage writes it: electrons, model variance, empty mask, one amplifier.
fs::path write_im(const fs::path& path) {
  std::mt19937_64 rng(20240611);
  std::normal_distribution<double> gauss(0.0, 1.0);
  Image im(kNy, kNx);
  for (long x = 0; x < kNx; ++x)
    for (long y = 0; y < kNy; ++y) {
      double expected = kSky;
      for (int s = 0; s < 2; ++s)
        expected += kStarFlux[s] * trace::pixel_gaussian(static_cast<double>(y), centre(kStarY[s], x), kSigma);
      std::poisson_distribution<long> poisson(expected);
      const double value = static_cast<double>(poisson(rng)) + kReadNoise * gauss(rng);
      im.data(y, x) = static_cast<float>(value);
      im.variance(y, x) = static_cast<float>(expected + kReadNoise * kReadNoise);
    }
  im.header.set("NAMP", 1, "amplifiers");
  im.header.set("AMPSEC1", "[1:256,1:80]", "pixels read by amplifier 1");
  im.header.set("RDNOISE1", kReadNoise, "read noise of amplifier 1 (e-)");
  fits::write_image_file(path, im, true);
  return path;
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

}  // namespace

TEST(ExtractCommand, WritesTimedExFileWithFluxesWithinTheirNoise) {
  kspecdr::testing::TempDir dir("kspecdr-extract-cmd");
  const fs::path im = write_im(dir / "frame.im.fits");
  const fs::path ex = dir / "frame.ex.fits", tr = dir / "frame.traces.fits";
  std::string out;
  const int rc = kspecdr::testing::run_command(quoted(kspecdr::testing::kspecdr_bin()) + " extract " + quoted(im) +
                                                   " --out " + quoted(ex) + " --traces " + quoted(tr) +
                                                   " --trace.stars 2 --repeat 3",
                                               &out);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_TRUE(fs::exists(ex)) << out;
  EXPECT_TRUE(fs::exists(tr)) << out;

  const SpectrumSet s = extract::read_ex_file(ex);
  for (const char* key : {"TTRACEMS", "TEXTRMS"}) {
    auto v = s.header.get_double(key);
    ASSERT_TRUE(v.has_value()) << key << " missing from the EX header";
    EXPECT_GT(*v, 0.0) << key;
  }
  EXPECT_EQ(s.header.get_int("TREPEAT").value_or(0), 3);

  // Both stars, in increasing y; the pulls of the fluxes against what went in, in their own σ.
  ASSERT_EQ(s.naper(), 2);
  for (Eigen::Index a = 0; a < 2; ++a) {
    std::vector<double> pulls;
    for (Eigen::Index x = 0; x < s.npix(); ++x)
      if (s.mask(a, x) == 0) pulls.push_back((s.flux(a, x) - kStarFlux[a]) / std::sqrt(s.variance(a, x)));
    ASSERT_GT(pulls.size(), static_cast<std::size_t>(kNx * 9 / 10)) << "aperture " << a;
    const auto st = kspecdr::testing::pull_stats(pulls);
    // n ≈ 256 unit pulls: the mean has σ ≈ 0.06 and the width a relative σ ≈ 0.045; 4σ bounds.
    EXPECT_LT(std::abs(st.mean), 0.25) << "aperture " << a;
    EXPECT_NEAR(st.stddev, 1.0, 0.18) << "aperture " << a;
  }
}

TEST(ExtractCommand, MissingImFileIsNamed) {
  kspecdr::testing::TempDir dir("kspecdr-extract-cmd");
  const fs::path missing = dir / "no-such-frame.im.fits";
  std::string out;
  const int rc = kspecdr::testing::run_command(quoted(kspecdr::testing::kspecdr_bin()) + " extract " +
                                                   quoted(missing) + " --out " + quoted(dir / "x.ex.fits"),
                                               &out);
  EXPECT_TRUE(rc == 1 || rc == 2) << "exit code " << rc << "\n" << out;
  EXPECT_NE(out.find("no-such-frame.im.fits"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "x.ex.fits"));
}

TEST(ExtractCommand, UnknownOptionIsAUsageError) {
  kspecdr::testing::TempDir dir("kspecdr-extract-cmd");
  const fs::path im = write_im(dir / "frame.im.fits");
  std::string out;
  const int rc = kspecdr::testing::run_command(quoted(kspecdr::testing::kspecdr_bin()) + " extract " + quoted(im) +
                                                   " --out " + quoted(dir / "x.ex.fits") + " --no-such-option 3",
                                               &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_FALSE(fs::exists(dir / "x.ex.fits"));
}
