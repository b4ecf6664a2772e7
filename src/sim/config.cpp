#include "kspecdr/sim/config.hpp"

#include <fmt/format.h>

#include <cmath>

#include "kspecdr/core/error.hpp"

namespace kspecdr::sim {
namespace {

void require(bool ok, const std::string& option, const std::string& message) {
  if (!ok) throw ConfigError(fmt::format("simulate: {} ({})", message, option), ErrorContext{.keyword = option});
}

}  // namespace

void resolve_mode_defaults(SimConfig& c) {
  const bool fiber = c.mode == SpectroMode::Fiber;
  if (c.ny == 0) c.ny = fiber ? 400 : 200;
  if (c.n_science == 0) c.n_science = fiber ? 3 : 12;
  if (c.science_exptime_s == 0.0) c.science_exptime_s = fiber ? 600.0 : 240.0;
  // Calibrations start in the evening twilight of each site (Siding Spring / La Palma).
  if (c.mjd_start == 0.0) c.mjd_start = fiber ? 60384.36 : 60384.86;
  if (c.sky_continuum_photons == 0.0) c.sky_continuum_photons = fiber ? 1.2 : 0.4;
}

void validate(const SimConfig& c) {
  require(!c.out_dir.empty(), "out", "an output folder is required (--out DIR)");
  require(c.nx >= 128 && c.nx <= 8192, "nx", fmt::format("nx = {} must be within 128..8192 pixels", c.nx));
  require(c.ny >= 32 && c.ny <= 8192, "ny", fmt::format("ny = {} must be within 32..8192 pixels", c.ny));
  require(c.overscan_px >= 4 && c.overscan_px <= 512, "overscan-px", "overscan-px must be within 4..512");
  require(c.n_bias >= 1 && c.n_flat >= 1 && c.n_arc >= 1 && c.n_science >= 1, "n-bias/n-flat/n-arc/n-science",
          "a night needs at least one bias, flat, arc and science exposure");
  require(c.n_bias + c.n_flat + c.n_arc + c.n_science <= 9999, "n-science", "at most 9999 exposures in a night");
  require(c.flat_exptime_s > 0 && c.arc_exptime_s > 0 && c.science_exptime_s > 0, "*-exptime-s",
          "exposure times must be positive");
  require(c.overhead_s >= 0, "overhead-s", "overhead-s must not be negative");
  require(c.mjd_start > 40000 && c.mjd_start < 100000, "mjd-start", "mjd-start must be a modern MJD");
  for (double b : c.bias_level_dn)
    require(b > 50 && b < 20000, "bias-level-dn", fmt::format("bias level {} DN must be within 50..20000", b));
  require(c.bias_gradient_dn >= 0 && c.bias_gradient_dn < 100, "bias-gradient-dn", "bias-gradient-dn must be 0..100");
  require(c.bias_edge_dn >= 0 && c.bias_edge_dn < 100, "bias-edge-dn", "bias-edge-dn must be 0..100");
  require(c.pixel_flat_rms >= 0 && c.pixel_flat_rms < 0.2, "pixel-flat-rms", "pixel-flat-rms must be 0..0.2");
  require(c.hot_column_e_per_s >= 0, "hot-column-e-per-s", "hot-column-e-per-s must not be negative");
  require(c.cosmic_rate_per_px_s >= 0 && c.cosmic_rate_per_px_s < 1e-3, "cosmic-rate-per-px-s",
          "cosmic-rate-per-px-s must be 0..1e-3");
  require(c.cosmic_extra_s >= 0, "cosmic-extra-s", "cosmic-extra-s must not be negative");
  require(c.flat_peak_e > 0 && c.flat_peak_e < 2e5, "flat-peak-e", "flat-peak-e must be within 0..2e5 electrons");
  require(c.arc_peak_e_per_s > 0, "arc-peak-e-per-s", "arc-peak-e-per-s must be positive");
  require(c.lsf_sigma_px >= 0.5 && c.lsf_sigma_px <= 10, "lsf-sigma-px", "lsf-sigma-px must be within 0.5..10");
  require(c.telescope_area_cm2 > 0 && c.throughput_peak > 0 && c.throughput_peak <= 1,
          "telescope-area-cm2/throughput-peak", "the collecting area must be positive and the throughput 0..1");
  require(c.sky_continuum_photons >= 0 && c.sky_line_scale >= 0, "sky-continuum-photons/sky-line-scale",
          "sky levels must not be negative");
  if (c.mode == SpectroMode::Fiber) {
    require(c.n_fibers >= 3 && c.n_fibers <= 2000, "n-fibers", "n-fibers must be within 3..2000");
    require(c.n_sky_fibers >= 0 && c.n_standard_fibers >= 0 &&
                c.n_sky_fibers + c.n_standard_fibers + 1 <= c.n_fibers,
            "n-sky-fibers/n-standard-fibers",
            fmt::format("{} sky + {} standard + 1 dead fiber do not fit in {} fibers", c.n_sky_fibers,
                        c.n_standard_fibers, c.n_fibers));
    require(c.n_fiber_blocks >= 1 && c.n_fiber_blocks <= c.n_fibers, "n-fiber-blocks",
            "n-fiber-blocks must be within 1..n-fibers");
    require(c.fiber_sigma_px >= 0.7 && c.fiber_sigma_px <= 10, "fiber-sigma-px", "fiber-sigma-px must be 0.7..10");
    require(c.fiber_gap_px >= 0, "fiber-gap-px", "fiber-gap-px must not be negative");
    // Same geometry as make_spectrograph: traces must stay apart by ~4 sigma.
    const double margin = 6.0 * c.fiber_sigma_px + 5.0;
    const double need = std::max(5.0, 4.0 * c.fiber_sigma_px);
    const double spacing =
        (static_cast<double>(c.ny) - 2.0 * margin - (c.n_fiber_blocks - 1) * c.fiber_gap_px) / c.n_fibers;
    const double ny_min = 2.0 * margin + (c.n_fiber_blocks - 1) * c.fiber_gap_px + c.n_fibers * need;
    require(spacing >= need, "ny",
            fmt::format("ny = {} is too small for {} fibers of sigma {} px in {} blocks: fibers would be {:.1f} px "
                        "apart (at least {:.1f} needed); use ny >= {:.0f} or fewer fibers",
                        c.ny, c.n_fibers, c.fiber_sigma_px, c.n_fiber_blocks, spacing, need, std::ceil(ny_min)));
  } else {
    require(c.n_stars >= 1 && c.n_stars <= 5, "n-stars", "n-stars must be within 1..5");
    require(c.ny >= 64, "ny", fmt::format("ny = {} is too small for a long slit with stars (at least 64)", c.ny));
    require(c.transit_depth >= 0 && c.transit_depth < 0.5, "transit-depth", "transit-depth must be within 0..0.5");
    require(c.seeing_fwhm_arcsec > 0.2 && c.seeing_fwhm_arcsec < 5, "seeing-fwhm-arcsec",
            "seeing-fwhm-arcsec must be within 0.2..5");
    require(c.plate_scale_arcsec_per_px > 0.01 && c.plate_scale_arcsec_per_px < 5, "plate-scale-arcsec-per-px",
            "plate-scale-arcsec-per-px must be within 0.01..5");
    require(c.slit_width_arcsec > 0, "slit-width-arcsec", "slit-width-arcsec must be positive");
    require(std::abs(c.drift_px) < 0.05 * static_cast<double>(c.ny), "drift-px",
            "drift-px must be well below the slit length");
    require(std::abs(c.flexure_px) <= 5.0, "flexure-px", "flexure-px must be within -5..5 px");
    // The widest star profile (seeing peaks 20 % above median) must fit between the stars.
    const double sigma_px = 1.3 * c.seeing_fwhm_arcsec / 2.3548 / c.plate_scale_arcsec_per_px;
    require(c.n_stars == 1 || 0.52 * static_cast<double>(c.ny) / (c.n_stars - 1) > 10.0 * sigma_px, "ny",
            fmt::format("ny = {} is too small to keep {} stars of seeing {}\" apart", c.ny, c.n_stars,
                        c.seeing_fwhm_arcsec));
  }
}

}  // namespace kspecdr::sim
