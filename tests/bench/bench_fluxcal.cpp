// Template search of the in-field flux calibration: one standard star's spectrum (5000–7000 Å, 2 Å pixels,
// FWHM 5.2 Å, S/N ≈ 100 per pixel, RV 37 km/s, parameters between grid points) against a grid of 1000
// labelled-synthetic models (20 Teff × 5 log g × 5 [M/H] × 2 [α/M], 4500–7500 Å at 0.5 Å):
//  - BM_FitStar1000:      every model scored (convolution, RV by cross-correlation, continuum, χ²), the best
//                         refined between grid points, the final RV by χ² — the whole search of one star;
//  - BM_ScoreOneTemplate: one model scored, for the cost per template.
// `kspecdr fluxcal` spreads the candidates of a star over ranks when ranks outnumber the stars, so the
// search time per star divides by the ranks given to it.
#include <benchmark/benchmark.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <random>

#include "kspecdr/fluxcal/template_fit.hpp"
#include "kspecdr/sim/template_grid.hpp"

using namespace kspecdr;
using namespace kspecdr::fluxcal;

namespace {

struct Setup {
  TemplateGrid grid;
  ObservedSpectrum obs;
  FitConfig cfg;
  std::vector<std::size_t> all;
};

const Setup& setup() {
  static const Setup s = [] {
    spdlog::set_level(spdlog::level::warn);
    Setup st;
    sim::SynthGridSpec gs;
    gs.teff_k.clear();
    for (int i = 0; i < 20; ++i) gs.teff_k.push_back(4500.0 + 250.0 * i);
    gs.logg = {3.0, 3.5, 4.0, 4.5, 5.0};
    gs.mh = {-1.5, -1.0, -0.5, 0.0, 0.5};
    gs.alpha = {0.0, 0.4};
    gs.lambda_min = 4500.0;
    gs.lambda_max = 7500.0;
    st.grid = sim::make_synthetic_template_grid(gs);
    st.cfg.resolution.fwhm_poly_angstrom = {5.2};
    for (std::size_t i = 0; i < st.grid.size(); ++i) st.all.push_back(i);
    std::vector<double> model;
    interpolate_model(st.grid, TemplateParams{6130.0, 4.3, -0.2, 0.1}, model);
    for (double l = 5000.0; l <= 7000.0; l += 2.0) st.obs.wavelength_angstrom.push_back(l);
    const PreparedModel pm = prepare_model(st.grid.wavelength_angstrom, model, st.cfg.resolution, 0.0, 4990.0, 7010.0);
    const auto clean = resample_model(pm, 37.0, st.obs.wavelength_angstrom);
    std::mt19937_64 rng(3);
    std::normal_distribution<double> g(0.0, 1.0);
    double peak = 0;
    for (double v : clean) peak = std::max(peak, v);
    for (double v : clean) {
      const double counts = 1.0e4 * v / peak;  // e-
      const double var = counts + 25.0;
      st.obs.flux.push_back(counts + std::sqrt(var) * g(rng));
      st.obs.variance.push_back(var);
      st.obs.good.push_back(1);
    }
    st.obs.name = "bench";
    return st;
  }();
  return s;
}

void BM_FitStar1000(benchmark::State& state) {
  const Setup& s = setup();
  for (auto _ : state) {
    const FitResult r = fit_template(s.obs, s.grid, s.all, s.cfg);
    benchmark::DoNotOptimize(r.rv.rv_km_s);
  }
  state.counters["templates"] = static_cast<double>(s.all.size());
}
BENCHMARK(BM_FitStar1000)->Unit(benchmark::kSecond)->Iterations(3);

void BM_ScoreOneTemplate(benchmark::State& state) {
  const Setup& s = setup();
  const auto flux = s.grid.flux_of(s.all.size() / 2);
  for (auto _ : state) {
    const TemplateScore t = score_model(s.obs, s.grid.wavelength_angstrom, flux, s.grid.resolving_power, s.cfg);
    benchmark::DoNotOptimize(t.score);
  }
}
BENCHMARK(BM_ScoreOneTemplate)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
