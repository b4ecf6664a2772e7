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
  const char* description;
};
const WaveColumn kWaveDoubles[] = {
    {"RMS_PX", &ApertureWavelength::rms_px, "pixel", "rms of the arc lines about the solution"},
    {"RMS_A", &ApertureWavelength::rms_angstrom, "Angstrom", "the same in Angstrom"},
    {"FLEX_PX", &ApertureWavelength::flexure_px, "pixel", "flexure shift applied (x = x_arc + FLEX_PX)"},
    {"FLEX_ERR", &ApertureWavelength::flexure_err_px, "pixel", "uncertainty of FLEX_PX"},
    {"FLEX_OWN", &ApertureWavelength::flexure_own_px, "pixel", "this aperture's own flexure measurement (NaN = none)"},
    {"FLEX_OWN_ERR", &ApertureWavelength::flexure_own_err_px, "pixel", "uncertainty of FLEX_OWN"},
};

/// The RED file's own images, after the EX layout.
struct RedImage {
  const char* extname;
  const char* type;
  const char* unit;
  const char* description;
};
const RedImage kWavela = {"WAVELA", "float64", "Angstrom",
                          "wavelength of each detector pixel of each aperture (flexure included); NaN = none"};
const RedImage kCovar = {"COVAR", "float32", "electron2",
                         "covariance of the flux of output pixels j and j+1 from resampling"};

using io::FormatItem;
using K = FormatItem::Kind;

std::vector<FormatItem> build_format() {
  // The EX layout, on the wavelength grid: NAPER x NWAVE images.
  std::vector<FormatItem> f;
  for (auto it : extract::ex_format()) {
    if (it.when == "calib/flat_ex only") continue;
    if (it.when == "exposures") it.when.clear();  // every RED is an exposure's
    if (it.when == "fiber exposures") it.when = "fiber mode";
    if (it.kind == K::Image && it.hdu != "MASK") {
      const auto p = it.description.find("(NAPER x NPIX)");
      if (p != std::string::npos) it.description.replace(p, 14, "(NAPER x NWAVE)");
    }
    f.push_back(it);
  }
  auto kw = [&](const char* name, const char* type, const char* unit, const char* what, const char* when = "") {
    f.push_back({"PRIMARY", K::Keyword, name, type, unit, what, when});
  };
  // Wavelength WCS of axis 1 (set_wavelength_wcs).
  kw("CTYPE1", "string", "", "WAVE (linear steps) or WAVE-LOG (logarithmic steps)");
  kw("CUNIT1", "string", "", "Angstrom");
  kw("CRPIX1", "float64", "pixel", "reference pixel (1-based): 1");
  kw("CRVAL1", "float64", "Angstrom", "wavelength at CRPIX1");
  kw("CDELT1", "float64", "Angstrom", "step at CRPIX1");
  // The RED stage (pipeline/red_stage.cpp) and reduce.
  kw("WAVECAL", "logical", "", "wavelength calibrated and resampled");
  kw("WAVEMED", "string", "", "medium of the wavelengths: air | vacuum");
  kw("SPECSYS", "string", "", "TOPOCENT: wavelengths as observed (no barycentric correction)");
  kw("ARCSETUP", "string", "", "setup of the arc solution");
  kw("ARCTRSET", "string", "", "trace set of the arc solution", "slit mode");
  kw("ARCLIST", "string", "", "arc line lists");
  kw("NARCAP", "int64", "", "apertures with a wavelength solution");
  kw("ARCRMS", "float64", "pixel", "median rms of the arc solutions", "when some aperture has a solution");
  kw("FLEXMETH", "string", "", "flexure method used (none for non-science exposures)");
  kw("FLEXPX", "float64", "pixel", "flexure shift applied (x = x_arc + FLEXPX)");
  kw("FLEXERR", "float64", "pixel", "uncertainty of FLEXPX", "when the flexure was measured");
  kw("FLEXNLIN", "int64", "", "sky lines behind FLEXPX");
  kw("FLEXREF", "string", "", "cross-correlation reference exposure", "when one was used");
  kw("RESAMPLE", "string", "", "flux-conserving resampling (counts per output pixel): linear | log");
  kw("SKYSUB", "string", "", "sky subtracted: LOCAL (slit, EX stage) | MASTER (fiber, master sky)",
     "slit mode and fiber science exposures");
  kw("NSKYFIB", "int64", "", "sky fibers offered to the master sky", "fiber mode");
  kw("THPTSRC", "string", "", "source of the relative fiber throughputs", "fiber mode");
  for (const auto* im : {&kWavela, &kCovar}) {
    f.push_back({im->extname, K::Image, im->extname, im->type, im->unit, im->description});
    f.push_back({im->extname, K::Keyword, "BUNIT", "string", "", std::string("unit of the values: ") + im->unit});
    f.push_back({im->extname, K::Keyword, "EXTDESC", "string", "", "what this image holds"});
  }
  auto col = [&](const char* name, const char* type, const char* unit, const char* what) {
    f.push_back({"WAVECAL", K::Column, name, type, unit, what});
  };
  col("NAME", "string", "", "aperture name (same order as FIBRES)");
  col("STATUS", "string", "", "the arc solution's status: ok | smoothed | failed");
  col("N_LINES", "int64", "", "arc lines in the solution");
  for (const auto& c : kWaveDoubles) col(c.name, "float64", c.unit, c.description);
  col("FLEX_LINES", "int64", "", "sky lines this aperture's own flexure measurement used");
  return f;
}

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
    hw.set("BUNIT", kWavela.unit, "unit of the values");
    hw.set("EXTDESC", kWavela.description, "what this image holds");
    f.write_image(red.wavela, hw, kWavela.extname);
    f.write_checksum();
    Header hc;
    // The covariance is in the flux unit squared: electron2 until a flux calibration sets another BUNIT.
    const std::string flux_unit = red.spectra.header.get_string("BUNIT").value_or("electron");
    hc.set("BUNIT", flux_unit == "electron" ? std::string(kCovar.unit) : "(" + flux_unit + ")**2",
           "unit of the values");
    hc.set("EXTDESC", kCovar.description, "what this image holds");
    f.write_image(red.covariance_next, hc, kCovar.extname);
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

const std::vector<io::FormatItem>& red_format() {
  static const std::vector<io::FormatItem> f = build_format();
  return f;
}

namespace {
/// The WAVECAL table into `red.wave` (`naper` rows expected).
void read_wavecal(fits::Fits& f, const std::string& file, RedSpectra& red, std::size_t naper) {
  f.move_to("WAVECAL");
  const fits::Table t = f.read_table();
  if (t.nrows() != naper)
    throw DataError(fmt::format("WAVECAL has {} rows for {} spectra", t.nrows(), naper),
                    ErrorContext{.file = file, .hdu = "WAVECAL"});
  red.wave.resize(naper);
  for (std::size_t a = 0; a < naper; ++a) {
    auto& w = red.wave[a];
    w.status = t.column("STATUS").strings[a];
    w.n_lines = static_cast<int>(t.column("N_LINES").number(a));
    w.flexure_lines = static_cast<int>(t.column("FLEX_LINES").number(a));
    for (const auto& c : kWaveDoubles) w.*(c.member) = t.column(c.name).number(a);
  }
}
}  // namespace

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
  const auto naper = static_cast<std::size_t>(red.spectra.naper());
  if (static_cast<std::size_t>(red.wavela.rows()) != naper)
    throw DataError(fmt::format("WAVELA has {} rows for {} spectra", red.wavela.rows(), naper),
                    ErrorContext{.file = file, .hdu = "WAVELA"});
  read_wavecal(f, file, red, naper);
  return red;
}

RedSpectra read_red_tables(const std::filesystem::path& path) {
  const std::string file = path.string();
  auto f = fits::Fits::open(path);
  RedSpectra red;
  red.spectra = extract::read_spectrum_tables(f, file);
  f.move_to(0);
  const std::vector<long> shape = f.image_shape();  // {naper, nwave}
  if (shape.size() != 2)
    throw DataError(fmt::format("the primary image has {} axes, not 2 (NAPER x NWAVE)", shape.size()),
                    ErrorContext{.file = file, .hdu = "PRIMARY"});
  red.grid = grid_from_wcs(red.spectra.header, shape[1], file);
  read_wavecal(f, file, red, red.spectra.apertures.size());
  return red;
}

}  // namespace kspecdr::wavecal
