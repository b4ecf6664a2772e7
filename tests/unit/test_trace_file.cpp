// The trace map file: a round trip of every field (series of different orders, dead and failed
// traces, NaN bins, magnitudes), the format table against the file's columns and keywords,
// checksums, the atomic write's refusal to replace, and errors that name file and HDU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <string>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/trace/trace_file.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Trace make_trace(const std::string& name, char type, TraceStatus status, std::size_t ncentre, std::size_t nbins) {
  Trace t;
  t.info.name = name;
  t.info.type = type;
  t.info.ra_deg = 150.25;
  t.info.dec_deg = -12.5;
  t.info.mags = {{"MAG_G", 15.5}, {"MAG_R", kNaN}};
  t.status = status;
  t.message = status == TraceStatus::Ok ? "" : "only 3 of 64 bins measured (0 with the window off the detector)";
  t.centre.xmin = 0.0;
  t.centre.xmax = 1023.0;
  for (std::size_t k = 0; k < ncentre; ++k) t.centre.coeffs.push_back(100.0 / static_cast<double>(k + 1) - 3.0);
  t.sigma.xmin = 0.0;
  t.sigma.xmax = 1023.0;
  t.sigma.coeffs = {2.1, 0.05, -0.01};
  for (std::size_t b = 0; b < nbins; ++b) {
    const double x = 8.0 + 16.0 * static_cast<double>(b);
    const bool bad = b % 7 == 3;
    t.bin_x.push_back(x);
    t.bin_centre.push_back(bad ? kNaN : 100.0 + 0.01 * x);
    t.bin_centre_err.push_back(bad ? kNaN : 0.02);
    t.bin_sigma.push_back(bad ? kNaN : 2.0 + 1e-4 * x);
    t.bin_sigma_err.push_back(bad ? kNaN : 0.03);
    t.bin_used_centre.push_back(bad ? 0 : 1);
    t.bin_used_sigma.push_back(bad || b % 5 == 0 ? 0 : 1);
  }
  t.centre_rms_px = status == TraceStatus::Ok ? 0.021 : kNaN;
  t.sigma_rms_px = status == TraceStatus::Ok ? 0.034 : kNaN;
  return t;
}

TraceSet make_set() {
  TraceSet ts;
  ts.nx = 1024;
  ts.ny = 200;
  ts.traces.push_back(make_trace("star1", 'P', TraceStatus::Ok, 4, 64));
  ts.traces.push_back(make_trace("fib-07", 'N', TraceStatus::Dead, 2, 0));
  ts.traces.push_back(make_trace("star2", 'C', TraceStatus::Failed, 3, 64));
  ts.traces.push_back(make_trace("star3", 'S', TraceStatus::Ok, 1, 64));
  return ts;
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

}  // namespace

TEST(TraceFile, RoundTripKeepsEveryField) {
  kspecdr::testing::TempDir dir("kspecdr-trace-file");
  const TraceSet ts = make_set();
  trace::TraceConfig cfg;
  cfg.bin_px = 16;
  cfg.window_sigma = 3.5;
  Header h;
  h.set("SETUP", "R316R|8651", "setup key");
  const fs::path path = dir / "traces_R316R_8651.fits";
  trace::write_trace_file(path, ts, cfg, h, false);

  const trace::TraceFile back = trace::read_trace_file(path);
  EXPECT_EQ(back.header.get_string("SETUP").value_or(""), "R316R|8651");
  EXPECT_EQ(back.header.get_int("TRBINPX").value_or(0), 16);
  EXPECT_DOUBLE_EQ(back.header.get_double("TRWINSIG").value_or(0.0), 3.5);
  EXPECT_EQ(back.header.get_string("TRMEAS").value_or(""), "gaussian");
  const TraceSet& rs = back.traces;
  EXPECT_EQ(rs.nx, ts.nx);
  EXPECT_EQ(rs.ny, ts.ny);
  ASSERT_EQ(rs.size(), ts.size());
  for (std::size_t a = 0; a < ts.size(); ++a) {
    SCOPED_TRACE(ts[a].info.name);
    const Trace &w = ts[a], &r = rs[a];
    EXPECT_EQ(r.info.name, w.info.name);
    EXPECT_EQ(r.info.type, w.info.type);
    EXPECT_EQ(r.status, w.status);
    EXPECT_EQ(r.message, w.message);
    EXPECT_DOUBLE_EQ(r.info.ra_deg, w.info.ra_deg);
    EXPECT_DOUBLE_EQ(r.info.dec_deg, w.info.dec_deg);
    ASSERT_EQ(r.info.mags.size(), 2u);
    EXPECT_EQ(r.info.mags[0].first, "MAG_G");
    EXPECT_DOUBLE_EQ(r.info.mags[0].second, 15.5);
    EXPECT_TRUE(std::isnan(r.info.mags[1].second));
    EXPECT_EQ(r.centre.coeffs, w.centre.coeffs);  // each trace keeps its own order
    EXPECT_EQ(r.sigma.coeffs, w.sigma.coeffs);
    EXPECT_DOUBLE_EQ(r.centre.xmax, w.centre.xmax);
    EXPECT_TRUE(same(r.centre_rms_px, w.centre_rms_px));
    EXPECT_TRUE(same(r.sigma_rms_px, w.sigma_rms_px));
    ASSERT_EQ(r.bin_x.size(), w.bin_x.size());
    for (std::size_t b = 0; b < w.bin_x.size(); ++b) {
      EXPECT_EQ(r.bin_x[b], w.bin_x[b]);
      EXPECT_TRUE(same(r.bin_centre[b], w.bin_centre[b]));
      EXPECT_TRUE(same(r.bin_centre_err[b], w.bin_centre_err[b]));
      EXPECT_TRUE(same(r.bin_sigma[b], w.bin_sigma[b]));
      EXPECT_TRUE(same(r.bin_sigma_err[b], w.bin_sigma_err[b]));
      EXPECT_EQ(r.bin_used_centre[b], w.bin_used_centre[b]);
      EXPECT_EQ(r.bin_used_sigma[b], w.bin_used_sigma[b]);
    }
    // The series evaluate alike: what a reader of the file draws is what the stage used.
    for (double x : {0.0, 311.5, 1023.0}) {
      EXPECT_DOUBLE_EQ(r.y(x), w.y(x));
      EXPECT_DOUBLE_EQ(r.width(x), w.width(x));
    }
  }
  auto f = fits::Fits::open(path);
  EXPECT_TRUE(f.verify_checksums());
}

TEST(TraceFile, FormatTableNamesEveryColumnAndKeyword) {
  kspecdr::testing::TempDir dir("kspecdr-trace-file");
  const fs::path path = dir / "t.fits";
  trace::write_trace_file(path, make_set(), trace::TraceConfig{}, Header{}, false);
  const auto& fmt = trace::trace_file_format();
  std::set<std::string> documented;
  for (const auto& it : fmt) documented.insert(it.hdu + "/" + it.name);
  auto f = fits::Fits::open(path);
  const Header ph = f.read_header();
  for (const auto& it : fmt)
    if (it.kind == extract::FormatItem::Kind::Keyword) EXPECT_TRUE(ph.has(it.name)) << it.name;
  for (const std::string hdu : {"TRACES", "BINS"}) {
    f.move_to(hdu);
    const fits::Table t = f.read_table();
    for (const auto& c : t.columns) {
      const std::string key = c.name.rfind("MAG_", 0) == 0 ? hdu + "/MAG_*" : hdu + "/" + c.name;
      EXPECT_TRUE(documented.count(key)) << key << " is written but not in trace_file_format()";
    }
    for (const auto& it : fmt)
      if (it.hdu == hdu && it.name != "MAG_*") EXPECT_TRUE(t.has(it.name)) << it.name << " documented, not written";
  }
}

TEST(TraceFile, RefusesToReplaceAndNamesTheFileOnBadInput) {
  kspecdr::testing::TempDir dir("kspecdr-trace-file");
  const fs::path path = dir / "t.fits";
  const TraceSet ts = make_set();
  trace::write_trace_file(path, ts, trace::TraceConfig{}, Header{}, false);
  EXPECT_THROW(trace::write_trace_file(path, ts, trace::TraceConfig{}, Header{}, false), Error);
  EXPECT_NO_THROW(trace::write_trace_file(path, ts, trace::TraceConfig{}, Header{}, true));

  TraceSet bad = ts;
  bad[0].bin_sigma.pop_back();
  try {
    trace::write_trace_file(dir / "bad.fits", bad, trace::TraceConfig{}, Header{}, false);
    ADD_FAILURE() << "per-bin arrays of different lengths were written";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("star1"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "bad.fits"));

  // An IM-like file is not a trace map: the error names the file.
  Image im(4, 5);
  fits::write_image_file(dir / "im.fits", im, false);
  try {
    trace::read_trace_file(dir / "im.fits");
    ADD_FAILURE() << "an image was read as a trace map";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("im.fits"), std::string::npos) << e.what();
  }
}
