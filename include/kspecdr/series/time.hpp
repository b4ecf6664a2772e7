#pragma once
// Times of a time series: mid-exposure UTC to Barycentric Julian Date in the
// TDB time scale (BJD_TDB), the convention of exoplanet timing (Eastman et al.
// 2010), with ERFA (the IAU SOFA library in C).
namespace kspecdr::series {

/// An observatory: geodetic longitude (deg, east positive), latitude (deg) and height above the WGS84
/// ellipsoid (m).
struct Site {
  double longitude_deg = 0.0;
  double latitude_deg = 0.0;
  double height_m = 0.0;
};

/// BJD_TDB (Julian Date, days) at which light that reached `site` at UTC `mjd_utc` (MJD) from a target
/// at ICRS (ra_deg, dec_deg) reached the solar-system barycentre:
///   BJD_TDB = JD_TT + (TDB − TT) + (r_obs · ŝ) / c,
/// with r_obs the observatory's barycentric position (Earth from eraEpv00, the site from eraGd2gc rotated
/// to GCRS with eraC2t06a; UT1 ≈ UTC and no polar motion, which moves the site by < 30 m), ŝ the unit
/// vector to the target, TDB − TT from eraDtdb. Accurate to ~1 ms (the Rømer delay of the Earth's position
/// from eraEpv00 is good to ~ 50 m); no proper motion, parallax or Shapiro delay (< 0.1 ms).
/// Throws DataError when the date is outside ERFA's leap-second table range or not finite.
double bjd_tdb(double mjd_utc, double ra_deg, double dec_deg, const Site& site);

/// What bjd_tdb needs of the time and the site, whatever the target: many targets observed at one time
/// (the apertures of an exposure) share it, and only the projection on each target's direction differs.
struct BarycentricObserver {
  double jd_tt = 0.0;            ///< JD_TT + (TDB − TT) in days (two parts summed: tt1 + tt2)
  double tdb_minus_tt_s = 0.0;   ///< TDB − TT at the site (s)
  double position_m[3] = {0, 0, 0};  ///< barycentric position of the site (m), ICRS axes
};
/// The observer of bjd_tdb at UTC `mjd_utc` (MJD) at `site`; throws as bjd_tdb does.
BarycentricObserver barycentric_observer(double mjd_utc, const Site& site);
/// bjd_tdb for a target at ICRS (ra_deg, dec_deg) seen by `observer` (the same number bjd_tdb gives).
double bjd_tdb(const BarycentricObserver& observer, double ra_deg, double dec_deg);

}  // namespace kspecdr::series
