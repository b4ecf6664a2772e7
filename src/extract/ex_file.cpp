#include "kspecdr/extract/ex_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/apertures.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::extract {

namespace {

using K = FormatItem::Kind;

/// The float image HDUs, in file order; the primary first.
struct ImageHdu {
  const char* extname;
  ImageArray SpectrumSet::*member;
  const char* unit;
  const char* description;
};
const ImageHdu kImages[] = {
    {"PRIMARY", &SpectrumSet::flux, "electron", "extracted flux per detector column, sky subtracted (NAPER x NPIX)"},
    {"VARIANCE", &SpectrumSet::variance, "electron2", "total variance of the flux = VAR_STAR + VAR_SKY + VAR_READ + VAR_CAL; +inf where NODATA"},
    {"VAR_STAR", &SpectrumSet::var_star, "electron2", "variance from the star's photons (profile model x flux)"},
    {"VAR_SKY", &SpectrumSet::var_sky, "electron2", "variance from sky photons and from the error of the sky estimate"},
    {"VAR_READ", &SpectrumSet::var_read, "electron2", "variance from read noise"},
    {"VAR_CAL", &SpectrumSet::var_cal, "electron2", "variance from the noise of the master bias and flat (calibration)"},
    {"SKY", &SpectrumSet::sky, "electron", "sky subtracted from the flux, with the flux's weights"},
    {"OFFSET", &SpectrumSet::offset, "pixel", "light centroid minus trace centre in the aperture"},
    {"WIDTH", &SpectrumSet::width, "pixel", "Gaussian sigma of the spatial profile used"},
    {"PEAK", &SpectrumSet::peak, "electron", "highest good pixel value inside the aperture (sky included)"},
    {"MASKFRAC", &SpectrumSet::masked_fraction, "", "fraction of the profile on masked or rejected pixels"},
    {"REJECTED", &SpectrumSet::rejected, "", "pixels rejected as outliers against the profile model"},
};

struct DiagColumn {
  const char* name;
  double ApertureDiagnostics::*member;
  const char* unit;
  const char* description;
};
const DiagColumn kDiagDoubles[] = {
    {"TRACE_OFFSET", &ApertureDiagnostics::trace_offset_px, "pixel", "median light centroid minus trace centre"},
    {"SHIFT", &ApertureDiagnostics::shift_px, "pixel", "trace shift of this exposure against the master trace"},
    {"SHIFT_ERR", &ApertureDiagnostics::shift_err_px, "pixel", "uncertainty of SHIFT"},
    {"WIDTH_SCALE", &ApertureDiagnostics::width_scale, "", "profile sigma of this exposure over the master's"},
    {"WIDTH", &ApertureDiagnostics::width_px, "pixel", "median profile sigma"},
    {"PEAK", &ApertureDiagnostics::peak_e, "electron", "highest good pixel in the aperture"},
    {"MASKED_FRAC", &ApertureDiagnostics::masked_fraction, "", "mean fraction of the profile masked"},
    {"SNR", &ApertureDiagnostics::snr_median, "", "median per-pixel flux / sqrt(variance)"},
    {"SKY", &ApertureDiagnostics::sky_median_e, "electron", "median sky under the aperture per column"},
};


}  // namespace

const ExtraImageFormat kSkyImages[] = {
    {kSkyModelHdu, "electron", "optional (--sky.write-image): 2D sky model per pixel between the outer edges of "
                               "each aperture's sky windows, 0 elsewhere (NY x NX of the IM)"},
    {kSkyModelVarHdu, "electron2", "optional: variance of SKYMODEL (the error of the sky estimate)"},
    {kSkyWindowsHdu, "", "optional: sky windows, 1 = pixel used by a sky fit, 2 = in a window but excluded "
                         "(masked, near another trace, or rejected), 0 = outside"},
};

namespace {

std::vector<FormatItem> build_format() {
  std::vector<FormatItem> f;
  for (const auto& im : kImages)
    f.push_back({im.extname, K::Image, im.extname, "float32", im.unit, im.description});
  f.push_back({"MASK", K::Image, "MASK", "uint16", "", "mask bits per aperture and pixel (MASKBn keywords name them); 0 = good"});
  f.push_back({"PRIMARY", K::Keyword, "BUNIT", "string", "", "unit of the flux: electron, or erg/cm2/s/A once flux calibrated (variances in its square)"});
  f.push_back({"PRIMARY", K::Keyword, "NAPER", "int64", "", "number of apertures (rows)"});
  f.push_back({"PRIMARY", K::Keyword, "EXTMETH", "string", "", "extraction method: boxcar | optimal | joint"});
  f.push_back({"PRIMARY", K::Keyword, "DEBLEND", "logical", "", "overlapping neighbours fitted jointly per column"});
  f.push_back({"PRIMARY", K::Keyword, "EXTPROF", "string", "", "spatial profile of the optimal weights: gaussian | data"});
  f.push_back({"PRIMARY", K::Keyword, "SKYMETH", "string", "", "local sky method: none | median | poly"});
  // Set by the EX stage (kspecdr reduce); the primary header also carries every keyword of the IM.
  f.push_back({"PRIMARY", K::Keyword, "SETUP", "string", "", "setup key"});
  f.push_back({"PRIMARY", K::Keyword, "EXPNAME", "string", "", "exposure name ('master_flat' in calib/flat_ex)"});
  f.push_back({"PRIMARY", K::Keyword, "CFGHASH", "string", "", "hash of the resolved configuration (config-used.ini)"});
  f.push_back({"PRIMARY", K::Keyword, "DATE", "string", "", "UTC time the file was written"});
  f.push_back({"PRIMARY", K::Keyword, "KSPVER", "string", "", "kspecdr version that wrote this file"});
  f.push_back({"PRIMARY", K::Keyword, "KSPSHA", "string", "", "kspecdr git commit that wrote this file"});
  f.push_back({"PRIMARY", K::Keyword, "TRMEAS", "string", "", "trace centroid/width measure: gaussian | moments",
               "exposures"});
  f.push_back({"PRIMARY", K::Keyword, "TRACESET", "string", "", "object whose master traces were used ('' = fiber mode)",
               "exposures"});
  f.push_back({"PRIMARY", K::Keyword, "CALNOISE", "string", "",
               "master noise in the model variance (VAR_CAL): BIAS+FLAT | FLAT | BIAS | NONE", "exposures"});
  f.push_back({"PRIMARY", K::Keyword, "TRWIDFIX", "logical", "", "fiber widths fixed to the flat's", "fiber exposures"});
  f.push_back({"PRIMARY", K::Keyword, "CALHASH", "string", "", "CALHASH of the master flat extracted",
               "calib/flat_ex only"});
  f.push_back({"MASK", K::Keyword, "MASKBn", "string", "", "name of mask bit n"});
  f.push_back({"FIBRES", K::Column, "NAME", "string", "", "aperture (fiber or star) name"});
  f.push_back({"FIBRES", K::Column, "TYPE", "string", "", "P program, S sky, C calibration standard, F guide, N unused"});
  f.push_back({"FIBRES", K::Column, "RA", "float64", "deg", "right ascension (NaN when unknown)"});
  f.push_back({"FIBRES", K::Column, "DEC", "float64", "deg", "declination (NaN when unknown)"});
  f.push_back({"FIBRES", K::Column, "MAG_*", "float64", "mag", "catalogue magnitudes, one column per band known",
               "when the apertures have magnitudes"});
  f.push_back({"DIAGNOSTICS", K::Column, "NAME", "string", "", "aperture name (same order as FIBRES)"});
  for (const auto& c : kDiagDoubles) f.push_back({"DIAGNOSTICS", K::Column, c.name, "float64", c.unit, c.description});
  f.push_back({"DIAGNOSTICS", K::Column, "REJECTED", "int64", "", "pixels rejected against the profile model"});
  f.push_back({"DIAGNOSTICS", K::Column, "BAD_COLS", "int64", "", "columns flagged NODATA"});
  f.push_back({"DIAGNOSTICS", K::Column, "STATUS", "string", "", "'ok' or why the aperture is flagged"});
  return f;
}

}  // namespace

const std::vector<FormatItem>& ex_format() {
  static const std::vector<FormatItem> f = build_format();
  return f;
}

void check_extra_names(const SpectrumSet& sp, const std::string& path, const std::vector<std::string>& reserved) {
  for (std::size_t i = 0; i < sp.extra_images.size(); ++i) {
    const std::string& name = sp.extra_images[i].name;
    bool clash = name.empty() || name == "MASK" || name == "FIBRES" || name == "DIAGNOSTICS";
    for (const auto& im : kImages) clash = clash || name == im.extname;
    for (const auto& r : reserved) clash = clash || name == r;
    for (std::size_t j = 0; j < i; ++j) clash = clash || name == sp.extra_images[j].name;
    if (clash)
      throw DataError(fmt::format("extra image name '{}' is empty, repeated or an HDU of the file itself", name),
                      ErrorContext{.file = path, .hdu = name});
  }
}

void write_spectrum_hdus(fits::Fits& f, const SpectrumSet& sp) {
  // A BUNIT in the header (flux calibration sets one) is the unit of the flux and the sky; the variances
  // are in its square. Without one the spectra are in electrons.
  const std::string flux_unit = sp.header.get_string("BUNIT").value_or("electron");
  for (const auto& im : kImages) {
    const bool primary = std::string(im.extname) == "PRIMARY";
    Header h;
    if (primary) {
      h = sp.header;
      h.set("NAPER", static_cast<long long>(sp.naper()), "number of apertures");
      // The build that writes this file (the IM's keywords of the same names name the build that made the IM).
      h.set("KSPVER", version(), "kspecdr version that wrote this file");
      h.set("KSPSHA", git_sha(), "kspecdr git commit that wrote this file");
    }
    std::string unit = im.unit;
    if (flux_unit != "electron") {
      if (im.member == &SpectrumSet::flux || im.member == &SpectrumSet::sky) unit = flux_unit;
      else if (unit == "electron2") unit = "(" + flux_unit + ")**2";
    }
    if (!unit.empty()) h.set("BUNIT", unit, "unit of the values");
    f.write_image(sp.*(im.member), h, primary ? "" : im.extname);
    f.write_checksum();
  }
  f.write_image(sp.mask, fits::mask_header(), "MASK");
  f.write_checksum();

  // FIBRES: identity of each aperture, one MAG_* column per band that any aperture knows.
  fits::Table ft;
  io::add_aperture_columns(ft, sp.apertures);
  f.write_table(ft, Header{}, "FIBRES");
  f.write_checksum();

  fits::Table dt;
  dt.add_string("NAME", ft.column("NAME").strings);
  for (const auto& c : kDiagDoubles) {
    std::vector<double> v;
    for (const auto& d : sp.diagnostics) v.push_back(d.*(c.member));
    dt.add_double(c.name, v, c.unit);
  }
  std::vector<long long> rej, bad;
  std::vector<std::string> status;
  for (const auto& d : sp.diagnostics) {
    rej.push_back(d.rejected);
    bad.push_back(d.bad_columns);
    status.push_back(d.status);
  }
  dt.add_int("REJECTED", rej);
  dt.add_int("BAD_COLS", bad);
  dt.add_string("STATUS", status);
  f.write_table(dt, Header{}, "DIAGNOSTICS");
  f.write_checksum();

  for (const auto& e : sp.extra_images) {
    Header he;
    if (!e.unit.empty()) he.set("BUNIT", e.unit, "unit of the values");
    if (!e.description.empty()) he.set("EXTDESC", e.description, "what this image holds");
    f.write_image(e.data, he, e.name);
    f.write_checksum();
  }
}

void write_ex_file(const std::filesystem::path& path, const SpectrumSet& sp, bool overwrite) {
  sp.check_shapes(path.string());
  check_extra_names(sp, path.string(), {});
  io::AtomicOutput out(path, overwrite);
  {
    auto f = fits::Fits::create(out.temp_path());
    write_spectrum_hdus(f, sp);
    f.close();
  }
  out.commit();
}

namespace {
/// FIBRES and DIAGNOSTICS into `sp`, which has `expected` spectra (< 0: as many as FIBRES has rows).
void read_tables(fits::Fits& f, const std::string& path, SpectrumSet& sp, long long expected) {
  f.move_to("FIBRES");
  const fits::Table ft = f.read_table();
  const std::size_t naper = expected < 0 ? ft.nrows() : static_cast<std::size_t>(expected);
  if (ft.nrows() != naper)
    throw DataError(fmt::format("FIBRES has {} rows for {} spectra", ft.nrows(), naper),
                    ErrorContext{.file = path, .hdu = "FIBRES"});
  sp.apertures.resize(naper);
  for (std::size_t a = 0; a < naper; ++a) {
    sp.apertures[a] = io::aperture_from_row(ft, a);
  }
  f.move_to("DIAGNOSTICS");
  const fits::Table dt = f.read_table();
  if (dt.nrows() != naper)
    throw DataError(fmt::format("DIAGNOSTICS has {} rows for {} spectra", dt.nrows(), naper),
                    ErrorContext{.file = path, .hdu = "DIAGNOSTICS"});
  sp.diagnostics.resize(naper);
  for (std::size_t a = 0; a < naper; ++a) {
    auto& d = sp.diagnostics[a];
    for (const auto& c : kDiagDoubles) d.*(c.member) = dt.column(c.name).number(a);
    d.rejected = static_cast<long>(dt.column("REJECTED").number(a));
    d.bad_columns = static_cast<long>(dt.column("BAD_COLS").number(a));
    d.status = dt.column("STATUS").strings[a];
  }
}
}  // namespace

SpectrumSet read_spectrum_hdus(fits::Fits& f, const std::string& path, const std::vector<std::string>& skip) {
  SpectrumSet sp;
  for (const auto& im : kImages) {
    const bool primary = std::string(im.extname) == "PRIMARY";
    // EX files written before the calibration component existed have no VAR_CAL: their variance has no
    // calibration part, so the component is zero.
    if (&SpectrumSet::var_cal == im.member && !f.has_hdu(im.extname)) {
      sp.var_cal = ImageArray::Zero(sp.flux.rows(), sp.flux.cols());
      continue;
    }
    if (primary) f.move_to(0);
    else f.move_to(im.extname);
    if (primary) sp.header = f.read_header();
    sp.*(im.member) = f.read_image_float();
  }
  f.move_to("MASK");
  sp.mask = f.read_image_mask();
  // CFITSIO reads IEEE infinity as an undefined value (NaN); NODATA variances are written as +inf.
  const float inf = std::numeric_limits<float>::infinity();
  for (auto* v : {&sp.variance, &sp.var_star, &sp.var_sky, &sp.var_read, &sp.var_cal}) {
    if (v->rows() != sp.mask.rows() || v->cols() != sp.mask.cols()) continue;
    for (Eigen::Index i = 0; i < v->size(); ++i)
      if (std::isnan(v->data()[i]) && (sp.mask.data()[i] & kMaskNoData)) v->data()[i] = inf;
  }
  read_tables(f, path, sp, static_cast<long long>(sp.flux.rows()));
  // Every image HDU after the tables is an optional extra image.
  const int nhdu = f.num_hdus();
  for (int i = f.current_hdu() + 1; i < nhdu; ++i) {
    f.move_to(i);
    if (f.hdu_type() != fits::HduType::Image) continue;
    if (std::find(skip.begin(), skip.end(), f.extname()) != skip.end()) continue;
    const Header h = f.read_header();
    ExtraImage e;
    e.name = f.extname();
    e.unit = h.get_string("BUNIT").value_or("");
    e.description = h.get_string("EXTDESC").value_or("");
    e.data = f.read_image_float();
    sp.extra_images.push_back(std::move(e));
  }
  sp.check_shapes(path);
  return sp;
}

SpectrumSet read_spectrum_tables(fits::Fits& f, const std::string& path) {
  SpectrumSet sp;
  f.move_to(0);
  sp.header = f.read_header();
  read_tables(f, path, sp, -1);
  return sp;
}

SpectrumSet read_ex_file(const std::filesystem::path& path) {
  auto f = fits::Fits::open(path);
  return read_spectrum_hdus(f, path.string(), {});
}

SpectrumSet read_ex_tables(const std::filesystem::path& path) {
  auto f = fits::Fits::open(path);
  return read_spectrum_tables(f, path.string());
}


}  // namespace kspecdr::extract
