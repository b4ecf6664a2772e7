#include "kspecdr/core/spectrum.hpp"

#include <fmt/format.h>

#include <limits>

#include "kspecdr/core/error.hpp"

namespace kspecdr {

SpectrumSet::SpectrumSet(Eigen::Index naper, Eigen::Index npix)
    : flux(ImageArray::Zero(naper, npix)),
      variance(ImageArray::Zero(naper, npix)),
      var_star(ImageArray::Zero(naper, npix)),
      var_sky(ImageArray::Zero(naper, npix)),
      var_read(ImageArray::Zero(naper, npix)),
      var_cal(ImageArray::Zero(naper, npix)),
      sky(ImageArray::Zero(naper, npix)),
      mask(MaskArray::Zero(naper, npix)),
      offset(ImageArray::Zero(naper, npix)),
      width(ImageArray::Zero(naper, npix)),
      peak(ImageArray::Zero(naper, npix)),
      masked_fraction(ImageArray::Zero(naper, npix)),
      rejected(ImageArray::Zero(naper, npix)),
      apertures(static_cast<std::size_t>(naper)),
      diagnostics(static_cast<std::size_t>(naper)) {}

void SpectrumSet::check_shapes(const std::string& what) const {
  const auto same = [&](const auto& a) { return a.rows() == flux.rows() && a.cols() == flux.cols(); };
  if (!same(variance) || !same(var_star) || !same(var_sky) || !same(var_read) || !same(var_cal) || !same(sky) || !same(mask) ||
      !same(offset) || !same(width) || !same(peak) || !same(masked_fraction) || !same(rejected))
    throw DataError(fmt::format("{}: the per-pixel arrays do not all have the flux shape {}x{}", what,
                                flux.rows(), flux.cols()));
  if (apertures.size() != static_cast<std::size_t>(flux.rows()) ||
      diagnostics.size() != static_cast<std::size_t>(flux.rows()))
    throw DataError(fmt::format("{}: {} apertures and {} diagnostics rows for {} spectra", what, apertures.size(),
                                diagnostics.size(), flux.rows()));
}

void SpectrumSet::set_no_data(Eigen::Index a, Eigen::Index p) {
  // Infinite variance gives the pixel zero weight in every inverse-variance sum downstream,
  // and the mask bit says why; a finite flux keeps sums NaN-free.
  const float inf = std::numeric_limits<float>::infinity();
  flux(a, p) = 0.0f;
  variance(a, p) = inf;
  var_star(a, p) = inf;
  var_sky(a, p) = inf;
  var_read(a, p) = inf;
  var_cal(a, p) = inf;
  sky(a, p) = 0.0f;
  mask(a, p) = static_cast<MaskPixel>(mask(a, p) | kMaskNoData);
}

}  // namespace kspecdr
