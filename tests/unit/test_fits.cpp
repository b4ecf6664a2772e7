#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using kspecdr::testing::TempDir;
namespace fs = std::filesystem;

namespace {
/// Integer-valued pixels that fit every pixel type (0..250), plus a negative where signed types allow.
ImageArrayD pattern(long ny, long nx, bool allow_negative) {
  ImageArrayD a(ny, nx);
  for (long y = 0; y < ny; ++y)
    for (long x = 0; x < nx; ++x) a(y, x) = static_cast<double>((y * 31 + x * 7) % 251) - (allow_negative && x == 0 ? 100 : 0);
  return a;
}
}  // namespace

class FitsRoundTrip : public ::testing::TestWithParam<std::tuple<fits::PixelType, bool, std::string>> {};

TEST_P(FitsRoundTrip, EveryBitpixPlainGzipAndTileCompressed) {
  auto [type, tile, suffix] = GetParam();
  TempDir dir;
  const bool is_signed = type != fits::PixelType::UInt8 && type != fits::PixelType::UInt16;
  ImageArrayD a = pattern(37, 53, is_signed);
  if (type == fits::PixelType::UInt16) a(3, 4) = 65535;  // needs BZERO 32768 to be stored
  if (type == fits::PixelType::Float32 || type == fits::PixelType::Float64) a(5, 6) = 0.1259765625;  // 2^-3 + 2^-10: exact in float
  Header h;
  h.set("OBJECT", "round trip");
  h.set("EXPTIME", 12.5);
  h.add_history("made by the round-trip test");
  const fs::path path = dir / ("img" + suffix);
  {
    fits::Fits f = fits::Fits::create(path, tile);
    f.write_image(a, h, "", type);
    fits::Table t;
    t.add_string("NAME", {"a", "bb", "ccc"});
    t.add_double("MAGS", {1, 2, 3, 4, 5, 6}, "mag", 2);
    t.add_int("ID", {7, 8, 9});
    t.add_logical("OK", {true, false, true});
    f.write_table(t, Header{}, "FIBRES");
    f.close();
  }
  fits::Fits f = fits::Fits::open(path);
  int hdu = f.first_image_hdu();
  f.move_to(hdu);
  EXPECT_EQ(f.image_shape(), (std::vector<long>{37, 53}));
  ImageArrayD b = f.read_image_double();
  EXPECT_EQ((a - b).abs().maxCoeff(), 0.0) << "pixel type " << fits::bitpix_of(type) << " tile " << tile;
  Header rh = f.read_header();
  EXPECT_EQ(rh.get_string("OBJECT").value_or(""), "round trip");
  EXPECT_DOUBLE_EQ(rh.get_double("EXPTIME").value_or(0), 12.5);
  ASSERT_EQ(rh.history().size(), 1u);
  f.move_to("FIBRES");
  fits::Table t = f.read_table();
  ASSERT_EQ(t.nrows(), 3u);
  EXPECT_EQ(t.column("NAME").strings[2], "ccc");
  EXPECT_EQ(t.column("mags").repeat, 2);
  EXPECT_DOUBLE_EQ(t.column("MAGS").number(2, 1), 6.0);
  EXPECT_EQ(t.column("MAGS").unit, "mag");
  EXPECT_DOUBLE_EQ(t.column("ID").number(1), 8.0);
  EXPECT_FALSE(t.column("OK").logicals[1]);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, FitsRoundTrip,
    ::testing::Values(std::make_tuple(fits::PixelType::UInt8, false, ".fits"),
                      std::make_tuple(fits::PixelType::Int16, false, ".fits"),
                      std::make_tuple(fits::PixelType::UInt16, false, ".fits"),
                      std::make_tuple(fits::PixelType::Int32, false, ".fits"),
                      std::make_tuple(fits::PixelType::Int64, false, ".fits"),
                      std::make_tuple(fits::PixelType::Float32, false, ".fits"),
                      std::make_tuple(fits::PixelType::Float64, false, ".fits"),
                      std::make_tuple(fits::PixelType::UInt16, false, ".fits.gz"),
                      std::make_tuple(fits::PixelType::Float32, false, ".fits.gz"),
                      std::make_tuple(fits::PixelType::Int16, true, ".fits.fz"),
                      std::make_tuple(fits::PixelType::UInt16, true, ".fits.fz"),
                      std::make_tuple(fits::PixelType::Int32, true, ".fits.fz"),
                      std::make_tuple(fits::PixelType::Float32, true, ".fits.fz")));

TEST(Fits, RealUnsigned16BitGzipFrameReadsWithBzeroApplied) {
  KSPECDR_REQUIRE_SHARED(shared);
  fits::Fits f = fits::Fits::open(shared / "data/real/wht-isis-red/r2700982.fit.gz");
  EXPECT_EQ(f.num_hdus(), 2);
  EXPECT_EQ(f.first_image_hdu(), 1);
  EXPECT_EQ(f.image_equiv_bitpix(), 20);  // USHORT_IMG: BITPIX 16 + BZERO 32768
  ImageArray a = f.read_image_float();
  EXPECT_EQ(a.rows(), 4200);
  EXPECT_EQ(a.cols(), 966);
  EXPECT_GT(a.minCoeff(), 0.0f);  // without BZERO the bias level would read negative
  EXPECT_EQ(f.read_header().get_string("BIASSEC").value_or(""), "[1:966,4110:4190]");
}

TEST(Fits, ImageFileWithVarianceAndMaskRoundTrips) {
  TempDir dir;
  Image im(20, 30);
  im.data.setRandom();
  im.variance = im.data.abs() + 1.0f;
  im.mask(2, 3) = kMaskCosmic | kMaskSaturated;
  im.header.set("OBJECT", "x");
  fits::write_image_file(dir / "im.fits", im, false);
  Image back = fits::read_image_file(dir / "im.fits");
  EXPECT_EQ((im.data - back.data).abs().maxCoeff(), 0.0f);
  EXPECT_EQ((im.variance - back.variance).abs().maxCoeff(), 0.0f);
  EXPECT_EQ(back.mask(2, 3), kMaskCosmic | kMaskSaturated);
  EXPECT_EQ(back.unit, "electron");
  fits::Fits f = fits::Fits::open(dir / "im.fits");
  EXPECT_TRUE(f.verify_checksums());
  // Existing outputs are never overwritten without --overwrite.
  EXPECT_THROW(fits::write_image_file(dir / "im.fits", im, false), Error);
  EXPECT_NO_THROW(fits::write_image_file(dir / "im.fits", im, true));
  // No temporary file is left behind.
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++n;
  EXPECT_EQ(n, 1);
}

TEST(Fits, MissingTruncatedAndCorruptFilesGiveClearErrors) {
  TempDir dir;
  try {
    fits::Fits::open(dir / "missing.fits");
    FAIL();
  } catch (const FitsError& e) {
    EXPECT_EQ(e.context().file, (dir / "missing.fits").string());
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos);
  }
  Image im(64, 64);
  fits::write_image_file(dir / "full.fits", im, false);
  std::string bytes;
  {
    std::ifstream in(dir / "full.fits", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  {
    std::ofstream out(dir / "cut.fits", std::ios::binary);
    out.write(bytes.data(), 2880 + 4000);  // header + part of the data
  }
  // Cut at an HDU boundary (VARIANCE and MASK gone): opens cleanly, but is refused by name, not read
  // as an image without variance.
  const std::size_t variance_at = bytes.find("XTENSION=");
  const std::size_t mask_at = bytes.rfind("XTENSION=", bytes.find("EXTNAME = 'MASK"));
  for (const std::size_t cut_at : {variance_at, mask_at}) {
    ASSERT_NE(cut_at, std::string::npos);
    ASSERT_EQ(cut_at % 2880, 0u);
    { std::ofstream(dir / "hdu_cut.fits", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut_at)); }
    try {
      (void)fits::read_image_file(dir / "hdu_cut.fits");
      ADD_FAILURE() << "a file cut at byte " << cut_at << " (an HDU boundary) was read";
    } catch (const DataError& e) {
      EXPECT_EQ(e.context().file, (dir / "hdu_cut.fits").string());
      EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(cut_at == variance_at ? "VARIANCE" : "MASK"), std::string::npos) << e.what();
    }
  }
  fits::Fits cut = fits::Fits::open(dir / "cut.fits");
  EXPECT_THROW(cut.check_last_pixel(), FitsError);
  EXPECT_THROW(cut.read_image_float(), FitsError);
  { std::ofstream(dir / "text.fits") << "SIMPLE = nonsense\n"; }
  EXPECT_THROW(fits::Fits::open(dir / "text.fits"), FitsError);
  fits::Fits ok = fits::Fits::open(dir / "full.fits");
  try {
    ok.move_to("NOSUCH");
    FAIL();
  } catch (const FitsError& e) {
    EXPECT_EQ(e.context().hdu, "NOSUCH");
  }
}

TEST(Fits, NanPixelsSurviveAndBlankIntegersBecomeNan) {
  TempDir dir;
  ImageArray a = ImageArray::Constant(4, 4, 1.0f);
  a(1, 1) = std::numeric_limits<float>::quiet_NaN();
  {
    fits::Fits f = fits::Fits::create(dir / "nan.fits");
    f.write_image(a, Header{}, "");
  }
  fits::Fits f = fits::Fits::open(dir / "nan.fits");
  ImageArray b = f.read_image_float();
  EXPECT_TRUE(std::isnan(b(1, 1)));
  EXPECT_EQ(b(0, 0), 1.0f);
}
