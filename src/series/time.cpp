#include "kspecdr/series/time.hpp"

#include <erfa.h>
#include <erfam.h>
#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "kspecdr/core/error.hpp"

namespace kspecdr::series {

double bjd_tdb(double mjd_utc, double ra_deg, double dec_deg, const Site& site) {
  if (!std::isfinite(mjd_utc) || !std::isfinite(ra_deg) || !std::isfinite(dec_deg))
    throw DataError(fmt::format("BJD_TDB of MJD {} at RA {} Dec {}: not finite", mjd_utc, ra_deg, dec_deg));
  constexpr double kDeg = std::numbers::pi / 180.0;
  const double utc1 = ERFA_DJM0, utc2 = mjd_utc;
  double tai1, tai2, tt1, tt2;
  if (eraUtctai(utc1, utc2, &tai1, &tai2) < 0)
    throw DataError(fmt::format("BJD_TDB: UTC MJD {} is outside ERFA's range", mjd_utc));
  eraTaitt(tai1, tai2, &tt1, &tt2);

  // The site in GCRS (m): ITRS position rotated by the celestial-to-terrestrial matrix (UT1 ≈ UTC).
  double itrs[3];
  if (eraGd2gc(ERFA_WGS84, site.longitude_deg * kDeg, site.latitude_deg * kDeg, site.height_m, itrs) != 0)
    throw DataError(fmt::format("BJD_TDB: site lon {} lat {} height {} m is not valid", site.longitude_deg,
                                site.latitude_deg, site.height_m));
  double rc2t[3][3];
  eraC2t06a(tt1, tt2, utc1, utc2, 0.0, 0.0, rc2t);
  double gcrs[3];
  eraTrxp(rc2t, itrs, gcrs);  // transpose: terrestrial → celestial

  // The Earth's barycentric position (au) at TT ≈ TDB (the difference changes it by < 1 mm).
  double pvh[2][3], pvb[2][3];
  eraEpv00(tt1, tt2, pvh, pvb);
  double r[3];
  for (int k = 0; k < 3; ++k) r[k] = pvb[0][k] * ERFA_DAU + gcrs[k];

  double s[3];
  eraS2c(ra_deg * kDeg, dec_deg * kDeg, s);
  const double romer_s = eraPdp(r, s) / ERFA_CMPS;

  // TDB − TT at the observatory (s): ut as the fraction of the UT1 day, u and v the site's distance from
  // the Earth's spin axis and north of the equatorial plane (km).
  const double ut = mjd_utc - std::floor(mjd_utc);
  const double u = std::hypot(itrs[0], itrs[1]) / 1000.0, v = itrs[2] / 1000.0;
  const double dtdb_s = eraDtdb(tt1, tt2, ut, site.longitude_deg * kDeg, u, v);
  return (tt1 + tt2) + (dtdb_s + romer_s) / ERFA_DAYSEC;
}

}  // namespace kspecdr::series
