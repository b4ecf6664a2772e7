#pragma once
// A labelled-synthetic model grid made from the simulator's parametric star family
// (StarTemplate: blackbody × lines, four parameters), in the pipeline's template-grid
// format: for the demo and the tests, where the real BOSZ library cannot be downloaded.
// The simulated standard stars are drawn from the same family *between* its grid points.
#include <vector>

#include "kspecdr/fluxcal/templates.hpp"

namespace kspecdr::sim {

struct SynthGridSpec {
  std::vector<double> teff_k = {4000, 4250, 4500, 4750, 5000, 5250, 5500, 5750, 6000, 6250, 6500,
                                6750, 7000, 7250, 7500, 7750, 8000, 8250, 8500, 8750, 9000};
  std::vector<double> logg = {3.5, 4.0, 4.5, 5.0};
  std::vector<double> mh = {-1.0, -0.5, 0.0, 0.5};
  std::vector<double> alpha = {0.0, 0.4};
  double lambda_min = 3000.0, lambda_max = 11000.0;  ///< air Å
  double step_angstrom = 0.5;
};

/// Every combination of the spec's parameters (Teff fastest-varying last), surface flux and continuum
/// on an even air-wavelength grid; `synthetic` = true and `source` says what it is.
fluxcal::TemplateGrid make_synthetic_template_grid(const SynthGridSpec& spec);

}  // namespace kspecdr::sim
