// Detector-stage throughput on full-size frames:
//  - 5 x 4096^2 median and clipped-mean combine (the core of master bias and flat);
//  - raw -> IM (calibrate_frame with master bias and flat, cosmic rays on, IM written) against
//    the floor of merely reading the raw file and writing an IM file of the same size; with
//    20000 cosmic-ray hits (about 10x a long exposure, the stress case) and with 2000 (typical).
// Requirement: raw -> IM on one core within 3x the floor.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "kspecdr/core/memory.hpp"
#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/combine.hpp"
#include "kspecdr/detector/cosmic.hpp"
#include "kspecdr/detector/raw.hpp"
#include "kspecdr/io/fits.hpp"

using namespace kspecdr;
using namespace kspecdr::detector;
namespace fs = std::filesystem;

namespace {

constexpr long kN = 4096;
constexpr long kOs = 64;

std::vector<ImageArray> noise_frames(int n) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(1000.0f, 5.0f);
  std::vector<ImageArray> f(static_cast<std::size_t>(n), ImageArray(kN, kN));
  for (auto& a : f)
    for (Eigen::Index i = 0; i < a.size(); ++i) a(i) = g(rng);
  return f;
}

void combine_bench(benchmark::State& state, CombineMethod method) {
  static std::vector<ImageArray> frames = noise_frames(5);
  std::vector<const ImageArray*> p;
  for (auto& a : frames) p.push_back(&a);
  for (auto _ : state) {
    CombinedBand c = combine(p, {method, 3.0});
    benchmark::DoNotOptimize(c.value.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 5 * kN * kN * 4);
}

void BM_Combine5x4k_Median(benchmark::State& s) { combine_bench(s, CombineMethod::Median); }
void BM_Combine5x4k_ClippedMean(benchmark::State& s) { combine_bench(s, CombineMethod::ClippedMean); }

/// A 4096 x (4096 + 64) uint16 raw frame with sky, lines, a trace and `nhits` cosmic rays, a
/// profile for it, and in-memory master bias and flat.
struct RawSetup {
  fs::path dir;
  fs::path raw;
  InstrumentProfile profile;
  MasterBias bias;
  MasterFlat flat;

  explicit RawSetup(int nhits)
      : dir(fs::temp_directory_path() / fmt::format("kspecdr-bench-detector-{}", nhits)), raw(dir / "raw.fits") {
    fs::create_directories(dir);
    std::ofstream(dir / "p.ini") << fmt::format(R"(
[instrument]
name = bench
mode = slit
[detector]
amplifiers = 1
[amplifier.1]
name = A
datasec = [1:{0},1:{0}]
biassec = [{1}:{2},1:{0}]
gain = 1.5
read_noise = 4.0
[keywords]
frame_type = IMAGETYP
[classify]
r1 = science: IMAGETYP exists
)",
                                                kN, kN + 1, kN + kOs);
    profile = load_instrument((dir / "p.ini").string());
    std::mt19937 rng(2);
    std::normal_distribution<float> g;
    std::uniform_int_distribution<long> u(0, kN - 1);
    ImageArray a(kN, kN + kOs);
    for (long y = 0; y < kN; ++y)
      for (long x = 0; x < kN + kOs; ++x) {
        double e = x < kN ? 400.0 : 0.0;
        if (x < kN && x % 97 < 2) e += 5000.0;  // emission lines
        if (x < kN && std::abs(y - 2000) < 3) e += 20000.0;  // a trace
        a(y, x) = std::round(static_cast<float>(1000.0 + (e + std::sqrt(e + 16.0) * g(rng)) / 1.5));
      }
    for (int c = 0; c < nhits; ++c) a(u(rng), u(rng)) = 30000.0f;  // cosmic rays
    Header h;
    h.set("IMAGETYP", "object");
    fits::Fits f = fits::Fits::create(raw);
    f.write_image(a, h, "", fits::PixelType::UInt16);
    f.close();

    bias.image = Image(kN, kN);
    bias.image.variance.setConstant(0.5f);
    bias.amps = {AmplifierBias{"A", 1.5, 1000.0, 0.01, 4.0, 0.01}};
    bias.calhash = "bench";
    flat.pixel_flat = Image(kN, kN);
    flat.pixel_flat.data.setOnes();
    flat.pixel_flat.variance.setConstant(1e-5f);
    flat.illumination = ImageArray::Ones(kN, kN);
    flat.calhash = "bench";
  }
  ~RawSetup() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

constexpr int kStressHits = 20000;
constexpr int kTypicalHits = 2000;

RawSetup& setup(int nhits = kStressHits) {
  if (nhits == kTypicalHits) {
    static RawSetup typical(kTypicalHits);
    return typical;
  }
  static RawSetup stress(kStressHits);
  return stress;
}

void BM_ReadRawWriteIM_Floor(benchmark::State& state) {
  auto& s = setup();
  for (auto _ : state) {
    RawFrame r = load_raw(s.raw, s.profile);
    Image im(kN, kN);
    im.data = r.data.leftCols(kN);
    fits::write_image_file(s.dir / "floor_im.fits", im, true);
  }
}

void calibrate_bench(benchmark::State& state, int nhits) {
  auto& s = setup(nhits);
  DetectorConfig cfg;
  for (auto _ : state) {
    Image im = calibrate_frame(s.raw, s.profile, &s.bias, &s.flat, cfg);
    write_im(s.dir / "cal_im.fits", im, true);
    state.counters["NCOSMIC"] = static_cast<double>(im.header.get_int("NCOSMIC").value_or(0));
  }
}

void BM_CalibrateFrame4k(benchmark::State& state) { calibrate_bench(state, kStressHits); }
void BM_CalibrateFrame4k_TypicalHits(benchmark::State& state) { calibrate_bench(state, kTypicalHits); }

/// Cosmic-ray detection alone, on the calibrated frame with 2000 hits (its share of raw -> IM).
void BM_DetectCosmics4k_TypicalHits(benchmark::State& state) {
  auto& s = setup(kTypicalHits);
  DetectorConfig cfg;
  cfg.cosmic_enable = false;
  const Image im = calibrate_frame(s.raw, s.profile, &s.bias, &s.flat, cfg);
  cfg.cosmic_enable = true;
  for (auto _ : state) {
    MaskArray mask = im.mask;
    const CosmicResult r = detect_cosmics(im.data, im.variance, mask, cfg);
    state.counters["NCOSMIC"] = static_cast<double>(r.npix);
  }
}

void BM_CalibrateFrame4k_NoCosmics(benchmark::State& state) {
  auto& s = setup();
  DetectorConfig cfg;
  cfg.cosmic_enable = false;
  for (auto _ : state) {
    Image im = calibrate_frame(s.raw, s.profile, &s.bias, &s.flat, cfg);
    write_im(s.dir / "cal_im.fits", im, true);
  }
}

}  // namespace

BENCHMARK(BM_Combine5x4k_Median)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_Combine5x4k_ClippedMean)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_ReadRawWriteIM_Floor)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_CalibrateFrame4k_NoCosmics)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_CalibrateFrame4k)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_CalibrateFrame4k_TypicalHits)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_DetectCosmics4k_TypicalHits)->Unit(benchmark::kMillisecond)->Iterations(5);

int main(int argc, char** argv) {
  // As the kspecdr program does: freed frame-sized blocks are reused, by the floor and the stage alike, as when
  // a rank reduces one frame after another.
  kspecdr::keep_freed_memory();
  spdlog::set_level(spdlog::level::warn);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
