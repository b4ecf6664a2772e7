#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/pipeline/obslog.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

TEST(ObservingLog, ClassifiesAllFourteenRealWhtIsisFrames) {
  KSPECDR_REQUIRE_SHARED(shared);
  const fs::path raw = shared / "data/real/wht-isis-red";
  InstrumentProfile p = load_instrument("wht-isis-red");
  ObservingLog log = build_observing_log(raw, p);
  ASSERT_EQ(log.frames.size(), 14u);
  EXPECT_TRUE(log.unreadable.empty());
  // The classes stated in the data's README (arcs are OBSTYPE=TARGET with the lamps on).
  const std::map<std::string, FrameClass> expected = {
      {"r2700982", FrameClass::Bias},    {"r2700984", FrameClass::Bias},    {"r2700986", FrameClass::Bias},
      {"r2701253", FrameClass::Science}, {"r2701255", FrameClass::Science}, {"r2701257", FrameClass::Science},
      {"r2701259", FrameClass::Arc},     {"r2701261", FrameClass::Arc},     {"r2701262", FrameClass::Arc},
      {"r2701242", FrameClass::Science}, {"r2701244", FrameClass::Science}, {"r2701247", FrameClass::Arc},
      {"r2701248", FrameClass::Arc},     {"r2701249", FrameClass::Arc}};
  for (const auto& f : log.frames) {
    ASSERT_TRUE(expected.count(f.name)) << f.name;
    EXPECT_EQ(to_string(f.frame_class), to_string(expected.at(f.name))) << f.name;
    EXPECT_EQ(f.ny, 4200);
    EXPECT_EQ(f.nx, 966);
  }
  ASSERT_EQ(log.sets.size(), 1u);
  const auto& set = log.sets.begin()->second;
  EXPECT_EQ(set.bias.size(), 3u);
  EXPECT_EQ(set.arc.size(), 6u);
  EXPECT_EQ(set.science.size(), 5u);
  EXPECT_EQ(set.flat.size(), 0u);
}

TEST(ObservingLog, MidExposureMjdAgreesWithTheHeaderMjdObs) {
  KSPECDR_REQUIRE_SHARED(shared);
  InstrumentProfile p = load_instrument("wht-isis-red");
  const fs::path f = shared / "data/real/wht-isis-red/r2701259.fit.gz";
  FrameInfo fi = read_frame_info(f, p);
  fits::Fits file = fits::Fits::open(f);
  double mjd_obs = *file.read_header().get_double("MJD-OBS");
  // MJD-OBS is the telescope's approximate start (UTOBS, 03:07:02.9); DATE-OBS + UTSTART is the
  // integration start (03:07:02.981). They agree to better than a second.
  EXPECT_NEAR(fi.mjd_start, mjd_obs, 1.0 / 86400.0);
  EXPECT_NEAR(fi.mjd_start, 58332.0 + (3 * 3600 + 7 * 60 + 2.981) / 86400.0, 1e-9);
  EXPECT_NEAR(fi.mjd_mid - fi.mjd_start, 4.01 / 2 / 86400.0, 1e-9);
  EXPECT_NEAR(fi.airmass, 1.135931, 1e-9);
  EXPECT_NEAR(fi.ra_deg, (21 + 52 / 60.0 + 25.507 / 3600.0) * 15, 1e-6);  // RA '21:52:25.507'
  EXPECT_NEAR(fi.dec_deg, 2 + 23 / 60.0 + 23.40 / 3600.0, 1e-6);
}

TEST(ObservingLog, UnreadableFramesAreListedAndNeverStopTheScan) {
  KSPECDR_REQUIRE_SHARED(shared);
  kspecdr::testing::TempDir dir;
  fs::copy_file(shared / "data/real/wht-isis-red/r2700982.fit.gz", dir / "r2700982.fit.gz");
  // A truncated file: the first 20000 bytes of a real gzip frame.
  {
    std::ifstream in(shared / "data/real/wht-isis-red/r2700984.fit.gz", std::ios::binary);
    std::string bytes(20000, '\0');
    in.read(bytes.data(), 20000);
    std::ofstream out(dir / "truncated.fit.gz", std::ios::binary);
    out << bytes;
  }
  { std::ofstream(dir / "notfits.fits") << "this is not a FITS file\n"; }
  // A frame without EXPTIME.
  {
    fits::Fits f = fits::Fits::create(dir / "noexptime.fits");
    Header h;
    h.set("OBSTYPE", "TARGET");
    h.set("DATE-OBS", "2018-08-02");
    h.set("UTSTART", "03:00:00");
    f.write_image(ImageArray(ImageArray::Zero(4, 4)), h, "");
  }
  InstrumentProfile p = load_instrument("wht-isis-red");
  ObservingLog log = build_observing_log(dir.path(), p);
  ASSERT_EQ(log.frames.size(), 1u);
  ASSERT_EQ(log.unreadable.size(), 3u);
  bool named_exptime = false;
  for (const auto& u : log.unreadable) {
    EXPECT_NE(u.reason.find(u.file.string()), std::string::npos) << "reason must name the file: " << u.reason;
    if (u.file.filename() == "noexptime.fits") named_exptime = u.reason.find("EXPTIME") != std::string::npos;
  }
  EXPECT_TRUE(named_exptime);
}

TEST(ObservingLog, EcsvIsReadByAstropyWithUnits) {
  KSPECDR_REQUIRE_SHARED(shared);
  kspecdr::testing::TempDir dir;
  InstrumentProfile p = load_instrument("wht-isis-red");
  ObservingLog log = build_observing_log(shared / "data/real/wht-isis-red", p);
  write_log_ecsv(log, dir / "log.ecsv");
  write_log_csv(log, dir / "log.csv");
  std::string out;
  int rc = kspecdr::testing::run_command(
      "/usr/bin/python3 -c \"from astropy.table import Table; t=Table.read('" + (dir / "log.ecsv").string() +
          "'); print(len(t), t['exptime'].unit, t['mjd_mid'].unit, sum(t['class']=='arc'))\"",
      &out);
  if (rc != 0 && out.find("No module named") != std::string::npos) GTEST_SKIP() << "astropy absent: " << out;
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("14 s d 6"), std::string::npos) << out;
}

TEST(ObservingLog, DatesParseWithErfaAndBadDatesNameTheText) {
  // 2018-08-02T03:07:02.981 UTC → MJD 58332 + (3 h 7 m 2.981 s)/86400.
  EXPECT_NEAR(iso_to_mjd("2018-08-02", "03:07:02.981"), 58332.0 + (3 * 3600 + 7 * 60 + 2.981) / 86400.0, 1e-10);
  EXPECT_NEAR(iso_to_mjd("2000-01-01T12:00:00"), 51544.5, 1e-12);
  try {
    iso_to_mjd("02/08/2018");
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("02/08/2018"), std::string::npos);
  }
  EXPECT_NEAR(parse_angle_deg("-00:30:00", false), -0.5, 1e-12);
  EXPECT_NEAR(parse_angle_deg("01:00:00", true), 15.0, 1e-12);
}

TEST(InstrumentProfile, ShippedProfilesLoad) {
  for (const char* name : {"wht-isis-red", "kosmos"}) {
    InstrumentProfile p = load_instrument(name);
    EXPECT_EQ(p.name, name);
    EXPECT_FALSE(p.amplifiers.empty());
    EXPECT_FALSE(p.rules.empty());
  }
  InstrumentProfile k = load_instrument("kosmos");
  EXPECT_DOUBLE_EQ(k.amplifiers[0].gain, 0.6);
}

TEST(InstrumentProfile, RuleOnTwoKeywordsMakesALampFrameAnArc) {
  InstrumentProfile p = load_instrument("wht-isis-red");
  Header h;
  h.set("OBSTYPE", "TARGET");
  h.set("CAGLAMPS", "Off");
  EXPECT_EQ(p.classify(h), FrameClass::Science);
  h.set("CAGLAMPS", "CuNe+CuAr");
  EXPECT_EQ(p.classify(h), FrameClass::Arc);
  h.set("OBSTYPE", "BIAS");
  EXPECT_EQ(p.classify(h), FrameClass::Bias);
}

TEST(InstrumentProfile, BadProfilesFailNamingFileAndKey) {
  kspecdr::testing::TempDir dir;
  try {
    load_instrument("no-such-instrument");
    FAIL() << "no exception";
  } catch (const ConfigError& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("no-such-instrument"), std::string::npos);
    EXPECT_NE(w.find("wht-isis-red"), std::string::npos) << "should list known profiles: " << w;
  }
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  const std::string base =
      "[instrument]\nname = t\nmode = slit\n[detector]\namplifiers = 1\n[amplifier.1]\ndatasec = [1:10,1:10]\n"
      "biassec = [11:12,1:10]\ngain = 1\n[keywords]\nframe_type = OBSTYPE\n";
  std::string missing_rules = write("norules.ini", base);
  EXPECT_THROW(load_instrument(missing_rules), ConfigError);
  std::string bad_rule = write("badrule.ini", base + "[classify]\nrule1 = arc OBSTYPE == ARC\n");
  try {
    load_instrument(bad_rule);
    FAIL() << "no exception";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.context().file, bad_rule);
    EXPECT_NE(e.context().keyword.find("rule1"), std::string::npos);
  }
  std::string typo = write("typo.ini", base + "[classify]\nrule1 = arc: OBSTYPE == ARC\n[site]\nlatitude = 3\n");
  try {
    load_instrument(typo);
    FAIL() << "no exception";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("latitude"), std::string::npos);
  }
  std::string bad_mode = write("mode.ini", "[instrument]\nname = t\nmode = echelle\n");
  EXPECT_THROW(load_instrument(bad_mode), ConfigError);
}
