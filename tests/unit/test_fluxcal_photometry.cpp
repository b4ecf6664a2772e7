// Synthetic AB photometry through the real PS1 and Gaia DR2 filter curves (../shared/data/filters).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/fluxcal/photometry.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
namespace fs = std::filesystem;

namespace {
const char* const kBands[] = {"ps1_g", "ps1_r", "ps1_i", "ps1_z", "ps1_y", "gaia_g", "gaia_bp", "gaia_rp"};
}

TEST(FluxcalPhotometry, A3631JanskySourceIsABZeroInEveryRealBand) {
  KSPECDR_REQUIRE_SHARED(shared);
  std::vector<double> w, f;
  for (double x = 2000.0; x <= 12000.0; x += 0.7) {
    w.push_back(x);
    f.push_back(fluxcal::ab_flambda(x));
  }
  for (const char* b : kBands) {
    const auto filter = fluxcal::read_filter_curve(shared / "data/filters" / (std::string(b) + ".dat"), "um", b);
    const double m = fluxcal::synthetic_ab_mag(w, f, filter);
    std::printf("%-8s pivot %.1f A: AB = %+.6f\n", b, fluxcal::pivot_wavelength(filter), m);
    EXPECT_NEAR(m, 0.0, 0.001) << b;
    // 10x fainter is 2.5 mag fainter.
    std::vector<double> f10(f);
    for (auto& v : f10) v /= 10.0;
    EXPECT_NEAR(fluxcal::synthetic_ab_mag(w, f10, filter), 2.5, 0.001) << b;
  }
}

TEST(FluxcalPhotometry, APartlyCoveredBandIsRefused) {
  KSPECDR_REQUIRE_SHARED(shared);
  const auto filter = fluxcal::read_filter_curve(shared / "data/filters/ps1_i.dat", "um", "ps1_i");
  std::vector<double> w, f;
  for (double x = 5000.0; x <= 7800.0; x += 1.0) {  // ps1_i runs to ~8300 A
    w.push_back(x);
    f.push_back(fluxcal::ab_flambda(x));
  }
  EXPECT_THROW(fluxcal::synthetic_ab_mag(w, f, filter), DataError);
}

TEST(FluxcalPhotometry, BadFilterFilesAreClearErrors) {
  kspecdr::testing::TempDir dir("kspecdr-filter");
  {
    std::ofstream o(dir / "dec.dat");
    o << "0.5 0.1\n0.4 0.2\n0.6 0.3\n";
  }
  EXPECT_THROW(fluxcal::read_filter_curve(dir / "dec.dat", "um"), DataError);
  EXPECT_THROW(fluxcal::read_filter_curve(dir / "missing.dat", "um"), DataError);
  EXPECT_THROW(fluxcal::read_filter_curve(dir / "dec.dat", "furlong"), ConfigError);
}

TEST(FluxcalPhotometry, PivotWavelengthsOfPs1AreTonry2012s) {
  KSPECDR_REQUIRE_SHARED(shared);
  // Tonry et al. 2012 (ApJ 750, 99), Table 4: λ_p of the PS1 bands in Å.
  const std::pair<const char*, double> pivots[] = {
      {"ps1_g", 4849.0}, {"ps1_r", 6201.0}, {"ps1_i", 7535.0}, {"ps1_z", 8674.0}, {"ps1_y", 9628.0}};
  for (const auto& [b, lp] : pivots) {
    const auto filter = fluxcal::read_filter_curve(shared / "data/filters" / (std::string(b) + ".dat"), "um", b);
    EXPECT_NEAR(fluxcal::pivot_wavelength(filter), lp, 3.0) << b;
  }
}
