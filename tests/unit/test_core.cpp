#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/header.hpp"
#include "kspecdr/core/memory.hpp"
#include "kspecdr/core/section.hpp"

using namespace kspecdr;

TEST(Section, ParsesFitsSectionsOneBasedInclusive) {
  Section s = parse_fits_section("[1:966,4110:4190]");
  EXPECT_EQ(s.x0, 0);
  EXPECT_EQ(s.x1, 966);
  EXPECT_EQ(s.y0, 4109);
  EXPECT_EQ(s.y1, 4190);
  EXPECT_EQ(s.nx(), 966);
  EXPECT_EQ(s.ny(), 81);
  EXPECT_EQ(s.to_fits(), "[1:966,4110:4190]");
  Section f = parse_fits_section("[100:1,1:10]");
  EXPECT_TRUE(f.flip_x);
  EXPECT_EQ(f.nx(), 100);
}

TEST(Section, RejectsMalformedText) {
  EXPECT_THROW(parse_fits_section("1:10,1:10"), ConfigError);
  EXPECT_THROW(parse_fits_section("[0:10,1:10]"), ConfigError);
}

TEST(Header, TypedValuesRoundTrip) {
  Header h;
  h.set("OBJECT", "G93-48");
  h.set("EXPTIME", 100.01);
  h.set("NCOMBINE", 3);
  h.set("FLUXCAL", false);
  h.set("QUOTE", "it's");
  EXPECT_EQ(h.get_string("object").value(), "G93-48");
  EXPECT_DOUBLE_EQ(h.get_double("EXPTIME").value(), 100.01);
  EXPECT_EQ(h.get_int("NCOMBINE").value(), 3);
  EXPECT_FALSE(h.get_bool("FLUXCAL").value());
  EXPECT_EQ(h.get_string("QUOTE").value(), "it's");
  EXPECT_FALSE(h.get_double("MISSING").has_value());
}

TEST(Header, WrongTypeAndMissingKeywordNameTheKeyword) {
  Header h;
  h.set("OBJECT", "star");
  try {
    h.get_double("OBJECT");
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_EQ(e.context().keyword, "OBJECT");
  }
  try {
    h.require_double("AIRMASS");
    FAIL() << "no exception";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("AIRMASS"), std::string::npos);
  }
}

TEST(Error, ContextIsAddedWithoutLosingInnerDetail) {
  DataError e("too few lines", ErrorContext{.keyword = "CAGLAMPS"});
  e.add_context(ErrorContext{.file = "r1.fits", .keyword = "ignored", .exposure = "r1"});
  EXPECT_EQ(e.context().keyword, "CAGLAMPS");
  EXPECT_EQ(e.context().file, "r1.fits");
  std::string w = e.what();
  EXPECT_NE(w.find("r1.fits"), std::string::npos);
  EXPECT_NE(w.find("too few lines"), std::string::npos);
}

#if defined(__GLIBC__)
// A freed frame-sized block is kept for the next one: no block is mapped on its own, and the memory in use by
// the heap does not fall back to the system after a free of 64 MB (the size of a 4k x 4k float image).
TEST(Memory, FreedImageBlocksStayForReuse) {
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_MAX_") || std::getenv("MALLOC_TRIM_THRESHOLD_"))
    GTEST_SKIP() << "the environment sets glibc's allocator: keep_freed_memory leaves it alone";
  ASSERT_TRUE(kspecdr::keep_freed_memory());
  const std::size_t n = std::size_t{16} << 20;  // floats: 64 MB
  auto* a = new std::vector<float>(n, 1.0f);
  EXPECT_EQ(mallinfo2().hblks, 0u) << "a 64 MB block was mapped on its own";
  const std::size_t arena_with = mallinfo2().arena;
  delete a;
  EXPECT_GE(mallinfo2().arena, arena_with) << "the heap was trimmed after the free";
  EXPECT_GE(mallinfo2().fordblks, n * sizeof(float)) << "the freed block is not free in the heap for reuse";
}
#endif
