// Times of the time series: BJD_TDB from ERFA against astropy (Time.tdb + light_travel_time, which uses
// the same IAU models through its own code path), for the La Palma site of the simulated instruments.
#include <gtest/gtest.h>

#include <cmath>

#include "kspecdr/core/error.hpp"
#include "kspecdr/series/time.hpp"

using namespace kspecdr;

namespace {
// astropy 5.2 (Debian 12): EarthLocation.from_geodetic(-17.8816 deg, 28.7606 deg, 2332 m);
// t = Time(mjd, format='mjd', scale='utc', location=loc); (t.tdb + t.light_travel_time(SkyCoord(ra, dec))).jd
struct Case {
  double mjd_utc, ra_deg, dec_deg, bjd_tdb;
};
const Case kCases[] = {
    {60384.8918865741 + 120.0 / 86400.0, 93.4137653290447, 3.7606, 2460385.394828341607},
    {59000.25, 180.0, -30.0, 2459000.753648084518},
    {61000.7, 10.5, 62.3, 2461001.204219524487},
};
const series::Site kLaPalma{-17.8816, 28.7606, 2332.0};
}  // namespace

TEST(SeriesTime, BjdTdbAgreesWithAstropyToTenMilliseconds) {
  for (const auto& c : kCases) {
    const double bjd = series::bjd_tdb(c.mjd_utc, c.ra_deg, c.dec_deg, kLaPalma);
    const double diff_s = (bjd - c.bjd_tdb) * 86400.0;
    std::printf("MJD %.6f RA %.2f Dec %.2f: BJD_TDB %.9f, astropy %.9f, diff %.4f s\n", c.mjd_utc, c.ra_deg,
                c.dec_deg, bjd, c.bjd_tdb, diff_s);
    EXPECT_LT(std::abs(diff_s), 0.01);
  }
}

TEST(SeriesTime, TheBarycentricCorrectionMovesWithTheTarget) {
  // The Rømer delay spans ±8.3 min over the sky: two opposite directions differ by up to ~1000 s.
  const double a = series::bjd_tdb(60000.0, 0.0, 0.0, kLaPalma), b = series::bjd_tdb(60000.0, 180.0, 0.0, kLaPalma);
  EXPECT_GT(std::abs(a - b) * 86400.0, 100.0);
  EXPECT_LT(std::abs(a - b) * 86400.0, 1000.0);
}

TEST(SeriesTime, NonFiniteInputIsAnError) {
  EXPECT_THROW(series::bjd_tdb(NAN, 10.0, 10.0, kLaPalma), DataError);
  EXPECT_THROW(series::bjd_tdb(60000.0, NAN, 10.0, kLaPalma), DataError);
}
