#include "kspecdr/series/time.hpp"

#include <erfa.h>
#include <erfam.h>
#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "kspecdr/core/error.hpp"

namespace kspecdr::series {

namespace {
constexpr double kDeg = std::numbers::pi / 180.0;

void check_target(double ra_deg, double dec_deg) {
  if (!std::isfinite(ra_deg) || !std::isfinite(dec_deg))
    throw DataError(fmt::format("BJD_TDB at RA {} Dec {}: not finite", ra_deg, dec_deg));
}
}  // namespace

BarycentricObserver barycentric_observer(double mjd_utc, const Site& site) {
  if (!std::isfinite(mjd_utc)) throw DataError(fmt::format("BJD_TDB of MJD {}: not finite", mjd_utc));
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
  BarycentricObserver o;
  for (int k = 0; k < 3; ++k) o.position_m[k] = pvb[0][k] * ERFA_DAU + gcrs[k];

  // TDB − TT at the observatory (s): ut as the fraction of the UT1 day, u and v the site's distance from
  // the Earth's spin axis and north of the equatorial plane (km).
  const double ut = mjd_utc - std::floor(mjd_utc);
  const double u = std::hypot(itrs[0], itrs[1]) / 1000.0, v = itrs[2] / 1000.0;
  o.tdb_minus_tt_s = eraDtdb(tt1, tt2, ut, site.longitude_deg * kDeg, u, v);
  o.jd_tt = tt1 + tt2;
  return o;
}

double bjd_tdb(const BarycentricObserver& o, double ra_deg, double dec_deg) {
  check_target(ra_deg, dec_deg);
  double s[3];
  eraS2c(ra_deg * kDeg, dec_deg * kDeg, s);
  double r[3] = {o.position_m[0], o.position_m[1], o.position_m[2]};
  const double romer_s = eraPdp(r, s) / ERFA_CMPS;
  return o.jd_tt + (o.tdb_minus_tt_s + romer_s) / ERFA_DAYSEC;
}

double bjd_tdb(double mjd_utc, double ra_deg, double dec_deg, const Site& site) {
  check_target(ra_deg, dec_deg);
  return bjd_tdb(barycentric_observer(mjd_utc, site), ra_deg, dec_deg);
}

}  // namespace kspecdr::series
