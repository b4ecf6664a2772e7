#pragma once
// Extracted spectra on detector pixels (the EX stage): NAPER × NPIX arrays of
// flux and its variance, the variance split by source (star photons, sky
// photons, read noise, master bias and flat noise, each including its share of
// the sky estimate's error — the four add up to the total), the sky that was
// subtracted, mask bits, and per-pixel and per-aperture diagnostics. Fluxes are
// electrons per detector column.
#include <Eigen/Core>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "kspecdr/core/header.hpp"
#include "kspecdr/core/image.hpp"
#include "kspecdr/core/trace.hpp"

namespace kspecdr {

/// Numbers that summarise one aperture of one exposure (the DIAGNOSTICS table).
struct ApertureDiagnostics {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double trace_offset_px = kNaN;    ///< median offset of the light centroid from the trace centre (px)
  double shift_px = kNaN;           ///< this exposure's trace shift against the master trace (px)
  double shift_err_px = kNaN;
  double width_scale = kNaN;        ///< this exposure's σ / the master trace's σ
  double width_px = kNaN;           ///< median profile σ used for the extraction (px)
  double peak_e = kNaN;             ///< highest good pixel value inside the aperture (e-)
  double masked_fraction = kNaN;    ///< mean fraction of the profile lost to masked pixels
  long rejected = 0;                ///< pixels rejected as outliers against the profile model
  double snr_median = kNaN;         ///< median per-pixel flux / sqrt(variance) of good pixels
  double sky_median_e = kNaN;       ///< median sky under the aperture (e- per column)
  long bad_columns = 0;             ///< columns flagged NODATA
  std::string status = "ok";        ///< "ok", or the reason the aperture is flagged
};

/// A 2D image carried in the EX file beside the spectra, with the shape of the extracted image (ny × nx):
/// e.g. the sky model of a slit exposure, so that figures and checks read it instead of fitting it again.
struct ExtraImage {
  std::string name;         ///< EXTNAME (upper case, unique, not one of the EX file's own HDUs)
  ImageArray data;
  std::string unit;         ///< BUNIT; "" when dimensionless
  std::string description;  ///< what the values are (the HDU's EXTDESC keyword)
};

struct SpectrumSet {
  ImageArray flux;        ///< e- per column (sky subtracted)
  ImageArray variance;    ///< total variance of flux (e-²); NaN-free, +inf where NODATA
  ImageArray var_star;    ///< part of `variance` from the star's photons
  ImageArray var_sky;     ///< part from sky photons (in the aperture and in the sky estimate)
  ImageArray var_read;    ///< part from read noise (in the aperture and in the sky estimate)
  ImageArray var_cal;     ///< part from the noise of the master bias and flat (in the aperture and the sky estimate)
  ImageArray sky;         ///< sky subtracted from `flux` (e- per column, same weights as the flux)
  MaskArray mask;         ///< MaskBit flags per aperture and pixel; 0 = good
  ImageArray offset;      ///< light centroid − trace centre in the aperture (px)
  ImageArray width;       ///< profile σ used (px)
  ImageArray peak;        ///< highest good pixel value in the aperture (e-)
  ImageArray masked_fraction;  ///< fraction of the profile on masked pixels
  ImageArray rejected;    ///< number of pixels rejected against the profile model
  std::vector<ApertureInfo> apertures;
  std::vector<ApertureDiagnostics> diagnostics;
  std::vector<ExtraImage> extra_images;  ///< optional 2D images (none unless a stage is asked for them)
  Header header;

  SpectrumSet() = default;
  /// Zero-filled arrays for naper apertures of npix pixels.
  SpectrumSet(Eigen::Index naper, Eigen::Index npix);
  Eigen::Index naper() const { return flux.rows(); }
  Eigen::Index npix() const { return flux.cols(); }
  /// Throws DataError if the arrays or the aperture lists disagree in shape.
  void check_shapes(const std::string& what = "spectra") const;
  /// Sets one pixel to "no data": flux 0, variance components +inf, mask |= NODATA.
  void set_no_data(Eigen::Index aperture, Eigen::Index pixel);
};

}  // namespace kspecdr
