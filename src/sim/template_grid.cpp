#include "kspecdr/sim/template_grid.hpp"

#include <fmt/format.h>

#include <cmath>

#include "kspecdr/core/error.hpp"
#include "kspecdr/sim/spectra.hpp"

namespace kspecdr::sim {

fluxcal::TemplateGrid make_synthetic_template_grid(const SynthGridSpec& spec) {
  if (spec.teff_k.empty() || spec.logg.empty() || spec.mh.empty() || spec.alpha.empty())
    throw ConfigError("synthetic template grid: every parameter needs at least one value");
  if (!(spec.step_angstrom > 0) || !(spec.lambda_max > spec.lambda_min) || spec.lambda_min <= 0)
    throw ConfigError(fmt::format("synthetic template grid: bad wavelength range {}..{} step {}", spec.lambda_min,
                                  spec.lambda_max, spec.step_angstrom));
  for (double t : spec.teff_k)
    if (!(t >= 2000.0 && t <= 50000.0)) throw ConfigError(fmt::format("synthetic template grid: Teff {} K", t));
  fluxcal::TemplateGrid g;
  g.synthetic = true;
  g.wavelength_medium = "air";
  g.resolving_power = 0.0;
  const auto nw = static_cast<long>(std::floor((spec.lambda_max - spec.lambda_min) / spec.step_angstrom + 1e-9)) + 1;
  for (long j = 0; j < nw; ++j) g.wavelength_angstrom.push_back(spec.lambda_min + static_cast<double>(j) * spec.step_angstrom);
  for (double a : spec.alpha)
    for (double m : spec.mh)
      for (double lg : spec.logg)
        for (double t : spec.teff_k) g.params.push_back({t, lg, m, a});
  const auto n = static_cast<Eigen::Index>(g.params.size());
  g.flux.resize(n, nw);
  g.continuum.resize(n, nw);
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto& p = g.params[static_cast<std::size_t>(i)];
    StarTemplate s;
    s.teff_k = p.teff_k;
    s.logg = p.logg;
    s.mh = p.mh;
    s.alpha = p.alpha;
    for (long j = 0; j < nw; ++j) {
      const double l = g.wavelength_angstrom[static_cast<std::size_t>(j)];
      g.flux(i, j) = static_cast<float>(s.surface_flux(l, true));
      g.continuum(i, j) = static_cast<float>(s.surface_flux(l, false));
    }
  }
  g.source = fmt::format(
      "SYNTHETIC parametric grid of the kspecdr simulator (blackbody x Gaussian lines; not a model atmosphere): "
      "{} models, Teff {}..{} K, logg {}..{}, [M/H] {}..{}, [alpha/M] {}..{}, {}..{} A step {} A (air)",
      n, spec.teff_k.front(), spec.teff_k.back(), spec.logg.front(), spec.logg.back(), spec.mh.front(), spec.mh.back(),
      spec.alpha.front(), spec.alpha.back(), spec.lambda_min, spec.lambda_max, spec.step_angstrom);
  return g;
}

}  // namespace kspecdr::sim
