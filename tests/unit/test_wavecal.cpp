// Wavelength calibration on arcs made here from the IRAF HeNeAr and CuAr lists
// (a known cubic λ(x), Gaussian LSF integrated over pixels, Poisson + read
// noise, lamp lines missing from the list and list lines missing from the
// lamp), and on a real WHT/ISIS CuNe+CuAr arc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/wavecal/airvac.hpp"
#include "kspecdr/wavecal/linelist.hpp"
#include "kspecdr/wavecal/peaks.hpp"
#include "kspecdr/wavecal/solution.hpp"
#include "support/testing.hpp"

using namespace kspecdr;
using namespace kspecdr::wavecal;
namespace fs = std::filesystem;

namespace {

/// The IRAF line lists: Debian's iraf-noao, else the copy in ../shared; nullopt when neither exists.
std::optional<fs::path> linelist_dir() {
  const fs::path debian = "/usr/lib/iraf/noao/lib/linelists";
  if (fs::exists(debian / "henear.dat")) return debian;
  if (auto s = kspecdr::testing::shared_dir(); s && fs::exists(*s / "data/linelists/iraf/henear.dat"))
    return *s / "data/linelists/iraf";
  return std::nullopt;
}

#define REQUIRE_LINELISTS(var)                                                                             \
  const auto var##_opt = linelist_dir();                                                                   \
  if (!var##_opt)                                                                                          \
    GTEST_SKIP() << "IRAF line lists absent: neither /usr/lib/iraf/noao/lib/linelists (Debian iraf-noao) " \
                    "nor ../shared/data/linelists/iraf exists";                                            \
  const fs::path var = *var##_opt

double big_phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

/// A cubic λ(x) = c0 + c1 u + c2 u² + c3 u³ with u = (x − xc)/xc.
struct Truth {
  long npix = 2048;
  double c[4] = {6400.0, 1024.0, 6.0, -2.5};
  double xc() const { return 0.5 * static_cast<double>(npix - 1); }
  double lambda(double x) const {
    const double u = (x - xc()) / xc();
    return c[0] + u * (c[1] + u * (c[2] + u * c[3]));
  }
  double dispersion(double x) const {
    const double u = (x - xc()) / xc();
    return (c[1] + u * (2 * c[2] + 3 * u * c[3])) / xc();
  }
  double pixel(double lam) const {
    double x = xc() + (lam - c[0]) / dispersion(xc());
    for (int i = 0; i < 30; ++i) x -= (lambda(x) - lam) / dispersion(x);
    return x;
  }
};

struct ArcOptions {
  double sigma_px = 1.3;
  double peak_e = 20000.0;   ///< brightest line, e- in its central pixel
  double dynamic = 50.0;     ///< faintest / brightest = 1 / dynamic (log-uniform)
  double missing = 0.15;     ///< fraction of list lines the lamp does not show
  double extra = 0.10;       ///< lamp lines absent from the list, as a fraction of the list
  double background_e = 20.0;
  double read_noise_e = 4.0;
};

/// A noisy arc from `list` through `truth`; `expected` receives the noiseless electrons.
Spectrum1D make_arc(const Truth& t, const LineList& list, const ArcOptions& o, std::mt19937_64& rng,
                    std::vector<double>* expected = nullptr) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const double lo = std::min(t.lambda(-20), t.lambda(t.npix + 20)), hi = std::max(t.lambda(-20), t.lambda(t.npix + 20));
  std::vector<double> xs;
  for (const auto& l : list.lines)
    if (l.wavelength_angstrom > lo && l.wavelength_angstrom < hi && uni(rng) >= o.missing)
      xs.push_back(t.pixel(l.wavelength_angstrom));
  const auto nlist = static_cast<int>(xs.size());
  for (int k = 0; k < static_cast<int>(o.extra * nlist); ++k) xs.push_back(uni(rng) * static_cast<double>(t.npix - 1));
  std::vector<double> e(static_cast<std::size_t>(t.npix), o.background_e);
  const double norm = 1.0 / (big_phi(0.5 / o.sigma_px) - big_phi(-0.5 / o.sigma_px));
  for (double x0 : xs) {
    const double amp = o.peak_e * std::exp(-std::log(o.dynamic) * uni(rng)) * norm;
    for (long i = std::max(0L, static_cast<long>(x0 - 8 * o.sigma_px));
         i <= std::min(t.npix - 1, static_cast<long>(x0 + 8 * o.sigma_px)); ++i) {
      const double xi = static_cast<double>(i);
      e[static_cast<std::size_t>(i)] +=
          amp * (big_phi((xi + 0.5 - x0) / o.sigma_px) - big_phi((xi - 0.5 - x0) / o.sigma_px));
    }
  }
  Spectrum1D s;
  std::normal_distribution<double> g(0.0, 1.0);
  for (double v : e) {
    std::poisson_distribution<long> p(v);
    s.flux.push_back(static_cast<double>(p(rng)) + o.read_noise_e * g(rng) - o.background_e);
    s.variance.push_back(v + o.read_noise_e * o.read_noise_e);
    s.mask.push_back(0);
  }
  if (expected) *expected = e;
  return s;
}

/// Largest |λ_fit − λ_true| over the detector, in px, and the rms.
std::pair<double, double> error_vs_truth(const WavelengthSolution& s, const Truth& t) {
  double mx = 0, ss = 0;
  for (long x = 0; x < t.npix; ++x) {
    const double xd = static_cast<double>(x);
    const double d = (s.wavelength(xd) - t.lambda(xd)) / t.dispersion(xd);
    mx = std::max(mx, std::abs(d));
    ss += d * d;
  }
  return {mx, std::sqrt(ss / static_cast<double>(t.npix))};
}

Truth henear_truth() {
  Truth t;
  t.c[0] = 6400.0;
  t.c[1] = 1.05 * 1023.5;  // 1.05 Å/px
  return t;
}
Truth cuar_truth() {
  Truth t;
  t.c[0] = 4700.0;
  t.c[1] = 0.9 * 1023.5;
  t.c[2] = -5.0;
  t.c[3] = 2.0;
  return t;
}

}  // namespace

// ---------------------------------------------------------------- line lists and media

TEST(WavecalLineList, ReadsIrafFormatSortsAndFlagsBlends) {
  REQUIRE_LINELISTS(dir);
  const LineList sky = read_linelist(dir / "skylines.dat", Medium::Air);
  ASSERT_GT(sky.size(), 100u);
  EXPECT_TRUE(std::is_sorted(sky.lines.begin(), sky.lines.end(), [](const ArcLine& a, const ArcLine& b) {
    return a.wavelength_angstrom < b.wavelength_angstrom;
  }));
  EXPECT_EQ(sky.medium, Medium::Air);
  const LineList he = read_linelist(dir / "henear.dat", Medium::Air);
  const auto it = std::find_if(he.lines.begin(), he.lines.end(),
                               [](const ArcLine& l) { return std::abs(l.wavelength_angstrom - 7723.8) < 1e-6; });
  ASSERT_NE(it, he.lines.end());
  EXPECT_TRUE(it->blend);
  const auto ne = select_species(he, {"Ne"});
  ASSERT_FALSE(ne.empty());
  for (const auto& l : ne.lines) EXPECT_EQ(l.id.substr(0, 2), "Ne");
  const auto merged = merge_linelists({he, read_linelist(dir / "cuar.dat", Medium::Air)});
  EXPECT_GT(merged.size(), he.size());
  EXPECT_LT(merged.size(), he.size() + read_linelist(dir / "cuar.dat", Medium::Air).size());  // shared Ar lines
  kspecdr::testing::TempDir tmp("wavecal-list");
  std::ofstream(tmp / "bad.dat") << "# units Angstroms\nfoo 12\n";
  EXPECT_THROW(read_linelist(tmp / "bad.dat", Medium::Air), DataError);
  EXPECT_THROW(medium_from_string("water"), ConfigError);
}

TEST(WavecalAirVacuum, KnownValueAndRoundTrip) {
  // Hα: 6562.80 Å in air is 6564.61 Å in vacuum (Morton 2000 / NIST).
  EXPECT_NEAR(air_to_vacuum(6562.80), 6564.61, 0.01);
  EXPECT_NEAR(vacuum_to_air(6564.61), 6562.80, 0.01);
  // [O III] 5006.843 air ↔ 5008.240 vacuum.
  EXPECT_NEAR(air_to_vacuum(5006.843), 5008.240, 0.01);
  double worst = 0;
  for (double w = 2100.0; w < 25000.0; w += 37.3) worst = std::max(worst, std::abs(vacuum_to_air(air_to_vacuum(w)) - w));
  EXPECT_LT(worst, 1e-6);
  EXPECT_EQ(air_to_vacuum(1500.0), 1500.0);  // IAU: vacuum below 2000 Å
  EXPECT_DOUBLE_EQ(convert_medium(7000.0, Medium::Air, Medium::Air), 7000.0);
}

// ---------------------------------------------------------------- peaks

TEST(WavecalPeaks, CentroidsAndErrorsMatchTheNoise) {
  // Isolated lines at known sub-pixel positions, many realisations: pulls of the centres have width ≈ 1.
  Truth t;
  t.npix = 1000;
  std::vector<double> pulls;
  std::mt19937_64 rng(5);
  for (int rep = 0; rep < 40; ++rep) {
    LineList list;
    for (int k = 0; k < 12; ++k) list.lines.push_back({t.lambda(40.0 + 80.0 * k + 0.37 * k), 1.0, "", false});
    ArcOptions o;
    o.missing = o.extra = 0.0;
    o.dynamic = 1.0;
    o.peak_e = 3000.0;
    const Spectrum1D s = make_arc(t, list, o, rng);
    const auto peaks = find_peaks(s, PeakConfig{});
    ASSERT_EQ(peaks.size(), 12u);
    for (std::size_t k = 0; k < peaks.size(); ++k) {
      ASSERT_TRUE(peaks[k].usable());
      const double x0 = t.pixel(list.lines[k].wavelength_angstrom);
      pulls.push_back((peaks[k].x_px - x0) / peaks[k].x_err_px);
    }
  }
  const auto st = kspecdr::testing::pull_stats(pulls);
  // 480 pulls: the mean is known to ±0.05, the width to ±0.035 (1σ).
  EXPECT_LT(std::abs(st.mean), 0.15);
  EXPECT_NEAR(st.stddev, 1.0, 0.12);
}

TEST(WavecalPeaks, SaturatedAndBlendedLinesAreFlagged) {
  Truth t;
  t.npix = 400;
  LineList list;
  for (double x : {50.0, 150.0, 153.0, 300.0}) list.lines.push_back({t.lambda(x), 1.0, "", false});
  ArcOptions o;
  o.missing = o.extra = 0.0;
  o.dynamic = 1.0;
  std::mt19937_64 rng(1);
  Spectrum1D s = make_arc(t, list, o, rng);
  for (long i = 298; i <= 302; ++i) s.mask[static_cast<std::size_t>(i)] |= kMaskSaturated;
  const auto peaks = find_peaks(s, PeakConfig{});
  auto at = [&](double x) {
    return std::find_if(peaks.begin(), peaks.end(), [&](const ArcPeak& p) { return std::abs(p.x_px - x) < 1.5; });
  };
  ASSERT_NE(at(50.0), peaks.end());
  EXPECT_TRUE(at(50.0)->usable());
  ASSERT_NE(at(300.0), peaks.end());
  EXPECT_TRUE(at(300.0)->flags & kPeakSaturated);
  // The pair 3 px apart (2.3 σ): either found as two blended peaks or as one too-wide peak.
  int blended = 0;
  for (const auto& p : peaks)
    if (p.x_px > 145 && p.x_px < 158) {
      EXPECT_TRUE(p.flags & kPeakBlended) << "peak at " << p.x_px;
      ++blended;
    }
  EXPECT_GE(blended, 1);
}

TEST(WavecalPeaks, CombineIsInverseVarianceMean) {
  Spectrum1D a{{10.0, 5.0, 1.0}, {1.0, 4.0, 1.0}, {0, 0, kMaskCosmic}};
  Spectrum1D b{{20.0, 7.0, 3.0}, {4.0, 4.0, 1.0}, {kMaskSaturated, 0, 0}};
  const auto c = combine_spectra({a, b});
  EXPECT_NEAR(c.flux[0], (10.0 / 1 + 20.0 / 4) / (1.0 + 0.25), 1e-12);
  EXPECT_NEAR(c.variance[0], 1.0 / 1.25, 1e-12);
  EXPECT_TRUE(c.mask[0] & kMaskSaturated);  // saturation in any frame is carried
  EXPECT_NEAR(c.flux[1], 6.0, 1e-12);
  EXPECT_NEAR(c.variance[1], 2.0, 1e-12);
  EXPECT_NEAR(c.flux[2], 3.0, 1e-12);  // the cosmic-ray pixel of `a` is left out
  EXPECT_EQ(c.mask[2], 0);
  EXPECT_THROW(combine_spectra({a, Spectrum1D{{1.0}, {1.0}, {0}}}), DataError);
}

// ---------------------------------------------------------------- identification

TEST(WavecalIdentify, RecoversTheTrueSolutionToItsPredictedError) {
  REQUIRE_LINELISTS(dir);
  for (const char* name : {"henear.dat", "cuar.dat"}) {
    const LineList list = read_linelist(dir / name, Medium::Air);
    const Truth t = std::string(name) == "henear.dat" ? henear_truth() : cuar_truth();
    std::mt19937_64 rng(11);
    ArcOptions o;
    o.extra = 0.0;  // unlisted lamp lines can blend with listed ones: left to the robustness test
    const Spectrum1D arc = make_arc(t, list, o, rng);
    DispersionHint hint{t.lambda(t.xc()), t.dispersion(t.xc()), t.xc()};
    WavecalConfig cfg;
    const auto s = calibrate_arc(arc, list, hint, cfg);
    const auto [mx, rms] = error_vs_truth(s, t);
    // Expected: the centroid errors propagated through the weighted fit (predicted_error_px). With
    // line peaks of 400–20000 e- the centroids are good to 0.002–0.03 px and ~40 lines average them.
    RecordProperty(std::string(name) + "_rms_truth_px", std::to_string(rms));
    std::printf("%s: %d lines used, %d rejected, rms %.4f px (%.4f Å); vs truth rms %.4f px, max %.4f px; "
                "predicted %.4f px; expected line rms %.4f px\n",
                name, s.n_used, s.n_rejected, s.rms_px, s.rms_angstrom, rms, mx, s.predicted_error_px,
                s.expected_rms_px);
    EXPECT_LT(s.predicted_error_px, 0.02) << name;
    EXPECT_LT(rms, 0.02) << name;
    EXPECT_LT(rms, 3.0 * s.predicted_error_px + 0.002) << name;
    EXPECT_GT(rms, 0.2 * s.predicted_error_px) << name;  // the prediction is not wildly pessimistic
    EXPECT_GE(s.n_used, 20) << name;
    EXPECT_FALSE(s.reversed);
    // Residuals of the used lines scatter as their centroid errors say (with the floor in the weights).
    EXPECT_LT(s.rms_px, 3.0 * s.expected_rms_px + 0.01) << name;
    EXPECT_EQ(s.n_matched, s.n_used + s.n_rejected);
    EXPECT_EQ(static_cast<int>(s.lines.size()), s.n_matched);
  }
}

TEST(WavecalIdentify, RobustToWrongHintsAndNeverWrong) {
  REQUIRE_LINELISTS(dir);
  const LineList lists[2] = {read_linelist(dir / "henear.dat", Medium::Air),
                             read_linelist(dir / "cuar.dat", Medium::Air)};
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> disp_err(-0.10, 0.10), shift(-100.0, 100.0);
  int ok = 0, no_solution = 0, wrong = 0;
  double worst_ok = 0;
  const int trials = 200;
  for (int k = 0; k < trials; ++k) {
    const bool he = k % 2 == 0;
    const Truth t = he ? henear_truth() : cuar_truth();
    ArcOptions o;
    o.peak_e = 5000.0;
    const Spectrum1D arc = make_arc(t, lists[he ? 0 : 1], o, rng);
    const double e = disp_err(rng), sh = shift(rng);
    DispersionHint hint{t.lambda(t.xc()) + sh * t.dispersion(t.xc()), t.dispersion(t.xc()) * (1.0 + e), t.xc()};
    try {
      const auto s = calibrate_arc(arc, lists[he ? 0 : 1], hint, WavecalConfig{});
      const double mx = error_vs_truth(s, t).first;
      if (mx < 0.5) {
        ++ok;
        worst_ok = std::max(worst_ok, mx);
      } else {
        ++wrong;
        ADD_FAILURE() << "trial " << k << ": wrong solution (max error " << mx << " px, rms " << s.rms_px
                      << " px, " << s.n_used << " lines, used x " << [&] {
                         double lo = 1e9, hi = -1e9;
                         for (const auto& m : s.lines)
                           if (m.used) lo = std::min(lo, m.x_px), hi = std::max(hi, m.x_px);
                         return std::to_string(lo) + ".." + std::to_string(hi);
                       }() << ", tol " << s.match_tolerance_px << ") for dispersion error " << e << ", shift " << sh;
      }
    } catch (const DataError& ex) {
      ++no_solution;
      std::printf("trial %d (disp %+.3f, shift %+.1f px): %s\n", k, e, sh, ex.what());
    } catch (const NumericalError& ex) {
      ++no_solution;
      std::printf("trial %d (disp %+.3f, shift %+.1f px): %s\n", k, e, sh, ex.what());
    }
  }
  std::printf("identification: %d/%d solved, %d no solution, %d wrong; worst max error %.3f px\n", ok, trials,
              no_solution, wrong, worst_ok);
  EXPECT_EQ(wrong, 0);
  EXPECT_GE(ok, static_cast<int>(std::ceil(0.99 * trials)));
}

TEST(WavecalIdentify, FindsAReversedDispersionAndSaysSo) {
  REQUIRE_LINELISTS(dir);
  const LineList list = read_linelist(dir / "henear.dat", Medium::Air);
  Truth t = henear_truth();
  t.c[1] = -t.c[1];  // λ decreases with x
  std::mt19937_64 rng(3);
  const Spectrum1D arc = make_arc(t, list, ArcOptions{}, rng);
  DispersionHint hint{t.lambda(t.xc()) + 30.0, -t.dispersion(t.xc()), t.xc()};
  const auto s = calibrate_arc(arc, list, hint, WavecalConfig{});
  EXPECT_TRUE(s.reversed);
  EXPECT_LT(error_vs_truth(s, t).first, 0.1);
  WavecalConfig strict;
  strict.allow_reversed = false;
  EXPECT_THROW(calibrate_arc(arc, list, hint, strict), NumericalError);
}

// Ranks share the solutions they computed as bytes: the copy must be the solution, bit for bit.
TEST(WavecalIdentify, PackedSolutionsComeBackBitForBit) {
  REQUIRE_LINELISTS(dir);
  const LineList list = read_linelist(dir / "henear.dat", Medium::Air);
  const Truth t = henear_truth();
  std::mt19937_64 rng(5);
  const Spectrum1D arc = make_arc(t, list, ArcOptions{}, rng);
  const auto s = calibrate_arc(arc, list, DispersionHint{t.lambda(t.xc()), t.dispersion(t.xc()), t.xc()},
                               WavecalConfig{});
  ASSERT_GT(s.lines.size(), 5u);
  const auto c = unpack_solution(pack(s));
  EXPECT_EQ(pack(c), pack(s));  // every field, every bit
  EXPECT_EQ(c.lambda.coeffs, s.lambda.coeffs);
  EXPECT_EQ(c.status, s.status);
  EXPECT_EQ(c.message, s.message);
  EXPECT_EQ(c.lines.size(), s.lines.size());
  EXPECT_EQ(c.lines.back().id, s.lines.back().id);
  for (double x : {0.0, 100.5, static_cast<double>(s.npix - 1)}) EXPECT_EQ(c.wavelength(x), s.wavelength(x));
  std::string cut = pack(s);
  cut.pop_back();
  EXPECT_THROW(unpack_solution(cut), Error);
}

TEST(WavecalIdentify, NoSolutionIsAnErrorNotAWrongAnswer) {
  REQUIRE_LINELISTS(dir);
  const LineList list = read_linelist(dir / "henear.dat", Medium::Air);
  const Truth t = henear_truth();
  std::mt19937_64 rng(4);
  const Spectrum1D arc = make_arc(t, list, ArcOptions{}, rng);
  // Hints 1500 Å off: the lines there are a different pattern.
  DispersionHint far{t.lambda(t.xc()) + 1500.0, t.dispersion(t.xc()), t.xc()};
  EXPECT_THROW(calibrate_arc(arc, list, far, WavecalConfig{}), NumericalError);
  // Pure noise: nothing to identify.
  Spectrum1D noise;
  std::normal_distribution<double> g(0.0, 5.0);
  for (int i = 0; i < 2048; ++i) {
    noise.flux.push_back(g(rng));
    noise.variance.push_back(25.0);
    noise.mask.push_back(0);
  }
  DispersionHint hint{t.lambda(t.xc()), t.dispersion(t.xc()), t.xc()};
  try {
    calibrate_arc(noise, list, hint, WavecalConfig{});
    ADD_FAILURE() << "a solution from pure noise";
  } catch (const DataError&) {
  } catch (const NumericalError&) {
  }
}

// ---------------------------------------------------------------- real data: WHT/ISIS red, CuNe+CuAr

namespace {

/// The 1D arc of r2701259 without the pipeline: overscan-subtracted, median of 20 columns around the slit
/// centre, along raw y (the dispersion axis), in e- with the variance of a median of 20 values.
Spectrum1D isis_arc(const fs::path& file) {
  auto f = fits::Fits::open(file);
  f.move_to(1);
  const Header h = f.read_header();
  const ImageArray raw = f.read_image_float();  // rows = raw y (4200), columns = raw x (966)
  const double gain = h.get_double("GAIN").value_or(0.98);
  const double rn = h.get_double("READNOIS").value_or(4.0);
  const double sat = h.get_double("SATURATE").value_or(65535.0);
  std::vector<double> os;
  for (Eigen::Index y = 4109; y <= 4189; ++y)
    for (Eigen::Index x = 473; x <= 492; ++x) os.push_back(raw(y, x));
  std::nth_element(os.begin(), os.begin() + static_cast<long>(os.size() / 2), os.end());
  const double bias = os[os.size() / 2];
  Spectrum1D s;
  std::vector<double> col;
  for (Eigen::Index y = 0; y < 4096; ++y) {
    col.clear();
    MaskPixel m = 0;
    for (Eigen::Index x = 473; x <= 492; ++x) {
      col.push_back((raw(y, x) - bias) * gain);
      if (raw(y, x) >= sat) m |= kMaskSaturated;
    }
    std::nth_element(col.begin(), col.begin() + 10, col.end());
    const double med = col[10];
    s.flux.push_back(med);
    s.variance.push_back(1.5708 * (std::max(med, 0.0) + rn * rn) / 20.0);
    s.mask.push_back(m);
  }
  return s;
}

}  // namespace

TEST(WavecalRealData, IsisCuNeCuArArcIdentifiedFromProfileHints) {
  KSPECDR_REQUIRE_SHARED(shared);
  REQUIRE_LINELISTS(dir);
  const fs::path file = shared / "data/real/wht-isis-red/r2701259.fit.gz";
  if (!fs::exists(file)) GTEST_SKIP() << "WHT/ISIS arc " << file << " is absent";
  const InstrumentProfile prof = load_instrument("wht-isis-red");
  const Spectrum1D arc = isis_arc(file);
  const DispersionHint hint = hint_from_profile(prof, static_cast<long>(arc.size()));
  // Ar lines from cuar.dat; the Ne lines from idhenear.dat, which lists 20 Ne I lines in 7000–9600 Å
  // against henear.dat's 6 (He lines are left out: the lamps hold no helium).
  const LineList ar = read_linelist(dir / "cuar.dat", Medium::Air);
  const LineList ne = select_species(read_linelist(dir / "idhenear.dat", Medium::Air), {"Ne"});
  const LineList list = merge_linelists({ar, ne});
  WavecalConfig cfg;
  const auto peaks = find_peaks(arc, cfg.peaks);
  const auto s = identify(peaks, static_cast<long>(arc.size()), list, hint, cfg);
  std::printf("ISIS r2701259: %zu peaks (%d usable), %d lines used, %d rejected, rms %.4f px = %.4f Å, "
              "predicted line rms %.4f px, dλ/dx at centre %.4f Å/px, λ(0) = %.2f Å, λ(4095) = %.2f Å, "
              "reversed vs profile: %s\n",
              peaks.size(), s.n_peaks, s.n_used, s.n_rejected, s.rms_px, s.rms_angstrom, s.expected_rms_px,
              s.dispersion(2047.5), s.wavelength(0), s.wavelength(4095), s.reversed ? "yes" : "no");
  for (const auto& m : s.lines)
    std::printf("  x %8.2f ± %.3f  λ %9.3f  %-8s residual %+.3f px%s\n", m.x_px, m.x_err_px, m.wavelength_angstrom,
                m.id.c_str(), m.residual_px, m.used ? "" : "  (rejected)");
  RecordProperty("isis_rms_angstrom", std::to_string(s.rms_angstrom));
  RecordProperty("isis_lines_used", s.n_used);
  EXPECT_GE(s.n_used, 25);
  EXPECT_LT(s.rms_angstrom, 0.1);  // ASPIRED/RASCAL: 0.55 Å with ~30 lines
  EXPECT_NEAR(std::abs(s.dispersion(2047.5)), 0.93, 0.05);
}
