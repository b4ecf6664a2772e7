#include "kspecdr/fluxcal/sensitivity.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kspecdr/core/error.hpp"

namespace kspecdr::fluxcal {

bool BandMask::contains(double angstrom) const {
  for (const auto& [lo, hi] : bands_angstrom)
    if (angstrom >= lo && angstrom <= hi) return true;
  return false;
}

BandMask read_band_mask(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open the band mask file", {.file = path.string()});
  BandMask mask;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::istringstream row(line);
    double lo = 0, hi = 0;
    if (!(row >> lo)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      throw DataError(fmt::format("line {}: expected two wavelengths 'lam_lo lam_hi' in Å", line_no),
                      {.file = path.string()});
    }
    if (!(row >> hi) || !std::isfinite(lo) || !std::isfinite(hi))
      throw DataError(fmt::format("line {}: expected two wavelengths 'lam_lo lam_hi' in Å", line_no),
                      {.file = path.string()});
    if (!(lo < hi))
      throw DataError(fmt::format("line {}: band {} – {} Å is empty (lam_lo must be below lam_hi)", line_no, lo, hi),
                      {.file = path.string()});
    mask.bands_angstrom.emplace_back(lo, hi);
  }
  return mask;
}

std::size_t CalVector::n_good() const {
  return static_cast<std::size_t>(std::count(good.begin(), good.end(), static_cast<unsigned char>(1)));
}

void CalVector::check() const {
  const std::size_t n = wavelength_angstrom.size();
  if (cal.size() != n || variance.size() != n || good.size() != n)
    throw DataError(fmt::format("calibration vector '{}': arrays of different lengths (wavelength {}, cal {}, "
                                "variance {}, good {})",
                                source, n, cal.size(), variance.size(), good.size()));
  for (std::size_t i = 1; i < n; ++i)
    if (!(wavelength_angstrom[i] > wavelength_angstrom[i - 1]))
      throw DataError(fmt::format("calibration vector '{}': wavelengths do not increase at pixel {}", source, i));
}

CalVector make_cal_vector(const std::vector<double>& wavelength_angstrom,
                          const std::vector<double>& pixel_width_angstrom,
                          const std::vector<double>& model_flambda, const std::vector<double>& model_variance,
                          const std::vector<double>& counts_e, const std::vector<double>& counts_variance,
                          double exptime_s, const BandMask& mask, const std::string& source) {
  const std::size_t n = wavelength_angstrom.size();
  if (pixel_width_angstrom.size() != n || model_flambda.size() != n || model_variance.size() != n ||
      counts_e.size() != n || counts_variance.size() != n)
    throw DataError(fmt::format("calibration vector '{}': inputs of different lengths (wavelength {}, pixel width "
                                "{}, model {}, model variance {}, counts {}, counts variance {})",
                                source, n, pixel_width_angstrom.size(), model_flambda.size(),
                                model_variance.size(), counts_e.size(), counts_variance.size()));
  if (!std::isfinite(exptime_s) || exptime_s <= 0)
    throw DataError(fmt::format("calibration vector '{}': exposure time {} s is not positive", source, exptime_s),
                    {.keyword = "EXPTIME"});
  CalVector out;
  out.wavelength_angstrom = wavelength_angstrom;
  out.cal.assign(n, CalVector::kNaN);
  out.variance.assign(n, CalVector::kNaN);
  out.good.assign(n, 0);
  out.source = source;
  for (std::size_t i = 0; i < n; ++i) {
    const double lam = wavelength_angstrom[i], dlam = pixel_width_angstrom[i];
    const double model = model_flambda[i], var_model = model_variance[i];
    const double c = counts_e[i], var_c = counts_variance[i];
    const bool ok = std::isfinite(lam) && std::isfinite(dlam) && dlam > 0 && std::isfinite(model) && model > 0 &&
                    std::isfinite(var_model) && var_model >= 0 && std::isfinite(c) && c > 0 &&
                    std::isfinite(var_c) && var_c > 0 && !mask.contains(lam);
    if (!ok) continue;
    const double cal = model * exptime_s * dlam / c;
    out.cal[i] = cal;
    out.variance[i] = cal * cal * (var_model / (model * model) + var_c / (c * c));
    out.good[i] = 1;
  }
  out.check();
  if (out.n_good() == 0)
    throw DataError(fmt::format("calibration vector '{}': no usable pixel (counts or model non-positive or "
                                "non-finite everywhere, or all inside mask bands)",
                                source));
  return out;
}

CalVector interpolate(const CalVector& cal, const std::vector<double>& wavelength_angstrom) {
  cal.check();
  CalVector out;
  out.wavelength_angstrom = wavelength_angstrom;
  out.source = cal.source;
  out.airmass = cal.airmass;
  const std::size_t n = wavelength_angstrom.size();
  out.cal.assign(n, CalVector::kNaN);
  out.variance.assign(n, CalVector::kNaN);
  out.good.assign(n, 0);
  const auto& x = cal.wavelength_angstrom;
  if (x.empty()) return out;
  for (std::size_t j = 0; j < n; ++j) {
    const double u = wavelength_angstrom[j];
    if (!(u >= x.front() && u <= x.back())) continue;
    auto it = std::lower_bound(x.begin(), x.end(), u);
    auto i1 = static_cast<std::size_t>(it - x.begin());
    if (x[i1] == u) {  // on a source pixel: copy it exactly
      if (cal.good[i1]) {
        out.cal[j] = cal.cal[i1];
        out.variance[j] = cal.variance[i1];
        out.good[j] = 1;
      }
      continue;
    }
    const std::size_t i0 = i1 - 1;
    if (!cal.good[i0] || !cal.good[i1]) continue;
    const double w1 = (u - x[i0]) / (x[i1] - x[i0]), w0 = 1.0 - w1;
    out.cal[j] = w0 * cal.cal[i0] + w1 * cal.cal[i1];
    out.variance[j] = w0 * cal.variance[i0] + w1 * cal.variance[i1];
    out.good[j] = 1;
  }
  return out;
}

}  // namespace kspecdr::fluxcal
