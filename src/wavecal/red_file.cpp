#include "kspecdr/wavecal/red_file.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::wavecal {

namespace {

const std::vector<std::string> kRedHdus = {"WAVELA", "COVAR", "WAVECAL"};

struct WaveColumn {
  const char* name;
  double ApertureWavelength::*member;
  const char* unit;
};
const WaveColumn kWaveDoubles[] = {
    {"RMS_PX", &ApertureWavelength::rms_px, "pixel"},
    {"RMS_A", &ApertureWavelength::rms_angstrom, "Angstrom"},
    {"FLEX_PX", &ApertureWavelength::flexure_px, "pixel"},
    {"FLEX_ERR", &ApertureWavelength::flexure_err_px, "pixel"},
    {"FLEX_OWN", &ApertureWavelength::flexure_own_px, "pixel"},
    {"FLEX_OWN_ERR", &ApertureWavelength::flexure_own_err_px, "pixel"},
};

}  // namespace

void write_red_file(const std::filesystem::path& path, const RedSpectra& red, bool overwrite) {
  const std::string file = path.string();
  red.spectra.check_shapes(file);
  extract::check_extra_names(red.spectra, file, kRedHdus);
  const auto naper = red.spectra.naper();
  if (red.spectra.npix() != static_cast<Eigen::Index>(red.grid.size()))
    throw DataError(fmt::format("RED spectra have {} pixels for a grid of {}", red.spectra.npix(), red.grid.size()),
                    ErrorContext{.file = file});
  if (red.wavela.rows() != naper || red.covariance_next.rows() != naper ||
      red.covariance_next.cols() != red.spectra.npix() || red.wave.size() != static_cast<std::size_t>(naper))
    throw DataError(fmt::format("RED: WAVELA has {} rows, COVAR {}×{}, WAVECAL {} rows for {} apertures × {} pixels",
                                red.wavela.rows(), red.covariance_next.rows(), red.covariance_next.cols(),
                                red.wave.size(), naper, red.spectra.npix()),
                    ErrorContext{.file = file});
  io::AtomicOutput out(path, overwrite);
  {
    auto f = fits::Fits::create(out.temp_path());
    SpectrumSet sp = red.spectra;
    set_wavelength_wcs(sp.header, red.grid);
    extract::write_spectrum_hdus(f, sp);
    Header hw;
    hw.set("BUNIT", "Angstrom", "unit of the values");
    hw.set("EXTDESC", "wavelength of each detector pixel of each aperture (flexure included); NaN = none",
           "what this image holds");
    f.write_image(red.wavela, hw, "WAVELA");
    f.write_checksum();
    Header hc;
    const std::string flux_unit = red.spectra.header.get_string("BUNIT").value_or("electron");
    hc.set("BUNIT", flux_unit == "electron" ? std::string("electron2") : "(" + flux_unit + ")**2",
           "unit of the values");
    hc.set("EXTDESC", "covariance of the flux of output pixels j and j+1 from resampling", "what this image holds");
    f.write_image(red.covariance_next, hc, "COVAR");
    f.write_checksum();
    fits::Table t;
    std::vector<std::string> names, status;
    std::vector<long long> nl, fl;
    for (Eigen::Index a = 0; a < naper; ++a) {
      const auto u = static_cast<std::size_t>(a);
      names.push_back(u < red.spectra.apertures.size() ? red.spectra.apertures[u].name : fmt::format("{}", a));
      status.push_back(red.wave[u].status);
      nl.push_back(red.wave[u].n_lines);
      fl.push_back(red.wave[u].flexure_lines);
    }
    t.add_string("NAME", names);
    t.add_string("STATUS", status);
    t.add_int("N_LINES", nl);
    for (const auto& c : kWaveDoubles) {
      std::vector<double> v;
      for (const auto& w : red.wave) v.push_back(w.*(c.member));
      t.add_double(c.name, v, c.unit);
    }
    t.add_int("FLEX_LINES", fl);
    f.write_table(t, Header{}, "WAVECAL");
    f.write_checksum();
    f.close();
  }
  out.commit();
}

RedSpectra read_red_file(const std::filesystem::path& path) {
  const std::string file = path.string();
  auto f = fits::Fits::open(path);
  RedSpectra red;
  red.spectra = extract::read_spectrum_hdus(f, file, kRedHdus);
  red.grid = grid_from_wcs(red.spectra.header, static_cast<long>(red.spectra.npix()), file);
  f.move_to("WAVELA");
  red.wavela = f.read_image_double();
  f.move_to("COVAR");
  red.covariance_next = f.read_image_float();
  f.move_to("WAVECAL");
  const fits::Table t = f.read_table();
  const auto naper = static_cast<std::size_t>(red.spectra.naper());
  if (t.nrows() != naper || static_cast<std::size_t>(red.wavela.rows()) != naper)
    throw DataError(fmt::format("WAVECAL has {} rows and WAVELA {} for {} spectra", t.nrows(), red.wavela.rows(),
                                naper),
                    ErrorContext{.file = file, .hdu = "WAVECAL"});
  red.wave.resize(naper);
  for (std::size_t a = 0; a < naper; ++a) {
    auto& w = red.wave[a];
    w.status = t.column("STATUS").strings[a];
    w.n_lines = static_cast<int>(t.column("N_LINES").number(a));
    w.flexure_lines = static_cast<int>(t.column("FLEX_LINES").number(a));
    for (const auto& c : kWaveDoubles) w.*(c.member) = t.column(c.name).number(a);
  }
  return red;
}

}  // namespace kspecdr::wavecal
