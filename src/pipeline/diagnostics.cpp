#include "kspecdr/pipeline/diagnostics.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/spectrum.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/wavecal/arc_file.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr {

namespace fs = std::filesystem;

namespace {

struct DiagDouble {
  const char* name;
  double ApertureDiagnostics::*member;
  const char* unit;
  const char* description;
};
const DiagDouble kDoubles[] = {
    {"trace_offset_px", &ApertureDiagnostics::trace_offset_px, "pixel", "median light centroid minus trace centre"},
    {"shift_px", &ApertureDiagnostics::shift_px, "pixel", "trace shift of the exposure against the master trace"},
    {"shift_err_px", &ApertureDiagnostics::shift_err_px, "pixel", "uncertainty of shift_px"},
    {"width_scale", &ApertureDiagnostics::width_scale, "", "profile sigma of the exposure over the master's"},
    {"width_px", &ApertureDiagnostics::width_px, "pixel", "median profile sigma"},
    {"peak_e", &ApertureDiagnostics::peak_e, "electron", "highest good pixel in the aperture"},
    {"masked_fraction", &ApertureDiagnostics::masked_fraction, "", "mean fraction of the profile masked"},
    {"snr_median", &ApertureDiagnostics::snr_median, "", "median per-pixel flux / sqrt(variance)"},
    {"sky_median_e", &ApertureDiagnostics::sky_median_e, "electron", "median sky under the aperture per column"},
};

using K = io::FormatItem::Kind;

std::vector<io::FormatItem> build_format() {
  std::vector<io::FormatItem> v;
  auto attr = [&](const char* obj, const char* name, const char* type, const char* unit, const char* what,
                  const char* when = "") { v.push_back({obj, K::Attribute, name, type, unit, what, when}); };
  auto ds = [&](const char* group, const char* name, const char* type, const char* unit, const char* what,
                const char* when = "") { v.push_back({group, K::Dataset, name, type, unit, what, when}); };
  const char* E = "exposures/<run>";
  attr(E, "class", "string", "", "frame class: bias, flat, arc, science ...");
  attr(E, "setup", "string", "", "setup key");
  attr(E, "object", "string", "", "object name");
  attr(E, "mjd_utc", "float64", "d", "MJD (UTC) at mid-exposure");
  attr(E, "exptime_s", "float64", "s", "exposure time");
  attr(E, "airmass", "float64", "", "airmass (0 when absent)");
  attr(E, "status", "string", "", "ok | failed: <reason> | not reduced (+ a note when a file was unreadable)");
  attr(E, "stage", "string", "", "last file made: raw | im | ex | red");
  attr(E, "flexure_px", "float64", "pixel", "flexure shift applied (RED FLEXPX)", "with a RED file");
  attr(E, "flexure_err_px", "float64", "pixel", "its uncertainty (RED FLEXERR; NaN when none)", "with a RED file");
  attr(E, "flexure_method", "string", "", "flexure method (RED FLEXMETH)", "with a RED file");
  const char* A = "exposures/<run>/apertures";
  const char* ex = "with an EX or RED file";
  ds(A, "name", "string", "", "aperture name", ex);
  ds(A, "type", "string", "", "aperture type: P, S, C, F, N", ex);
  ds(A, "status", "string", "", "'ok' or why the aperture is flagged", ex);
  for (const auto& c : kDoubles) ds(A, c.name, "float64", c.unit, c.description, ex);
  ds(A, "rejected", "int64", "", "pixels rejected against the profile model", ex);
  ds(A, "bad_columns", "int64", "", "columns flagged NODATA", ex);
  ds(A, "wave_rms_px", "float64", "pixel", "rms of the arc solution (RED WAVECAL RMS_PX)", "with a RED file");
  ds(A, "wave_lines", "int64", "", "arc lines in the solution (RED WAVECAL N_LINES)", "with a RED file");
  const char* C = "calibration/<arcsol>";
  attr(C, "setup", "string", "", "setup key of the arc solution");
  attr(C, "traceset", "string", "", "its trace set ('' = fiber mode)");
  ds(C, "name", "string", "", "aperture name");
  ds(C, "status", "string", "", "ok | smoothed | failed");
  ds(C, "rms_px", "float64", "pixel", "rms of the used lines about the solution");
  ds(C, "rms_angstrom", "float64", "Angstrom", "the same in Angstrom");
  ds(C, "predicted_error_px", "float64", "pixel", "predicted rms error of the solution");
  ds(C, "n_used", "int64", "", "lines used by the fit");
  ds(C, "n_rejected", "int64", "", "lines rejected by the clipped fit");
  ds("failures", "exposure", "string", "", "exposure that failed");
  ds("failures", "file", "string", "", "file it failed on");
  ds("failures", "reason", "string", "", "why");
  attr("*/<dataset>", "units", "string", "", "unit of every numeric dataset (the unit column; '' = dimensionless)");
  return v;
}

/// A numeric dataset with its unit attribute.
template <typename T>
void write_with_unit(h5::Group& g, const std::string& name, const std::vector<T>& v, const std::string& unit) {
  g.write(name, v);
  g.open_dataset(name).set_attr("units", unit);
}

/// The unit of a dataset of `group` in the table.
std::string unit_of(const char* group, const std::string& name) {
  for (const auto& it : diagnostics_format())
    if (it.kind == K::Dataset && it.hdu == group && it.name == name) return it.unit;
  throw Error(fmt::format("diagnostics: no dataset {}/{} in the format table", group, name));
}

void write_apertures(h5::Group& g, const SpectrumSet& s) {
  std::vector<std::string> names, types, status;
  std::vector<long long> rejected, bad;
  for (std::size_t a = 0; a < s.apertures.size(); ++a) {
    names.push_back(s.apertures[a].name);
    types.push_back(std::string(1, s.apertures[a].type));
  }
  for (const auto& d : s.diagnostics) {
    status.push_back(d.status);
    rejected.push_back(d.rejected);
    bad.push_back(d.bad_columns);
  }
  g.write_strings("name", names);
  g.write_strings("type", types);
  g.write_strings("status", status);
  for (const auto& c : kDoubles) {
    std::vector<double> v;
    for (const auto& d : s.diagnostics) v.push_back(d.*(c.member));
    write_with_unit(g, c.name, v, c.unit);
  }
  write_with_unit(g, "rejected", rejected, "");
  write_with_unit(g, "bad_columns", bad, "");
}

}  // namespace

const std::vector<io::FormatItem>& diagnostics_format() {
  static const std::vector<io::FormatItem> f = build_format();
  return f;
}

void write_night_diagnostics(const fs::path& path, const fs::path& out_dir,
                             const std::vector<DiagnosticsExposure>& exposures,
                             const std::vector<std::vector<std::string>>& failures) {
  io::AtomicOutput out(path, true);
  {
    h5::File f = h5::File::create(out.temp_path());
    h5::Group ex = f.root().create_group("exposures");
    for (const auto& e : exposures) {
      h5::Group g = ex.create_group(e.name);
      g.set_attr("class", e.frame_class);
      g.set_attr("setup", e.setup);
      g.set_attr("object", e.object);
      g.set_attr("mjd_utc", e.mjd_utc);
      g.set_attr("exptime_s", e.exptime_s);
      g.set_attr("airmass", e.airmass);
      std::string status = e.status, stage = "raw";
      for (const char* st : {"im", "ex", "red"})
        if (fs::exists(out_dir / st / (e.name + "." + st + ".fits"))) stage = st;
      const fs::path exf = out_dir / "ex" / (e.name + ".ex.fits"), redf = out_dir / "red" / (e.name + ".red.fits");
      try {
        if (fs::exists(redf)) {
          const auto red = wavecal::read_red_tables(redf);
          h5::Group a = g.create_group("apertures");
          write_apertures(a, red.spectra);
          std::vector<double> rms;
          std::vector<long long> lines;
          for (const auto& w : red.wave) {
            rms.push_back(w.rms_px);
            lines.push_back(w.n_lines);
          }
          write_with_unit(a, "wave_rms_px", rms, unit_of("exposures/<run>/apertures", "wave_rms_px"));
          write_with_unit(a, "wave_lines", lines, "");
          g.set_attr("flexure_px", red.spectra.header.get_double("FLEXPX").value_or(NAN));
          g.set_attr("flexure_err_px", red.spectra.header.get_double("FLEXERR").value_or(NAN));
          g.set_attr("flexure_method", red.spectra.header.get_string("FLEXMETH").value_or(""));
        } else if (fs::exists(exf)) {
          const SpectrumSet s = extract::read_ex_tables(exf);
          h5::Group a = g.create_group("apertures");
          write_apertures(a, s);
        }
      } catch (const std::exception& x) {
        status += fmt::format(" (diagnostics unreadable: {})", x.what());
      }
      g.set_attr("status", status);
      g.set_attr("stage", stage);
    }
    h5::Group cal = f.root().create_group("calibration");
    if (fs::is_directory(out_dir / "calib"))
      for (const auto& e : fs::directory_iterator(out_dir / "calib")) {
        const std::string fn = e.path().filename().string();
        if (fn.rfind("arcsol_", 0) != 0) continue;
        try {
          const auto arc = wavecal::read_arc_file(e.path());
          h5::Group g = cal.create_group(e.path().stem().string());
          std::vector<std::string> names, status;
          std::vector<double> rms, rmsa, pred;
          std::vector<long long> used, rej;
          for (std::size_t a = 0; a < arc.naper(); ++a) {
            names.push_back(arc.apertures[a].name);
            const auto& s = arc.solutions[a];
            status.push_back(wavecal::to_string(s.status));
            rms.push_back(s.rms_px);
            rmsa.push_back(s.rms_angstrom);
            pred.push_back(s.predicted_error_px);
            used.push_back(s.n_used);
            rej.push_back(s.n_rejected);
          }
          g.write_strings("name", names);
          g.write_strings("status", status);
          const char* C = "calibration/<arcsol>";
          write_with_unit(g, "rms_px", rms, unit_of(C, "rms_px"));
          write_with_unit(g, "rms_angstrom", rmsa, unit_of(C, "rms_angstrom"));
          write_with_unit(g, "predicted_error_px", pred, unit_of(C, "predicted_error_px"));
          write_with_unit(g, "n_used", used, "");
          write_with_unit(g, "n_rejected", rej, "");
          g.set_attr("setup", arc.setup);
          g.set_attr("traceset", arc.traceset);
        } catch (const std::exception& x) {
          spdlog::warn("diagnostics: arc solution {} unreadable: {}", fn, x.what());
        }
      }
    std::vector<std::string> fe, ff, fr;
    for (const auto& v : failures) {
      fe.push_back(v.size() > 0 ? v[0] : "");
      ff.push_back(v.size() > 1 ? v[1] : "");
      fr.push_back(v.size() > 2 ? v[2] : "");
    }
    h5::Group fg = f.root().create_group("failures");
    fg.write_strings("exposure", fe);
    fg.write_strings("file", ff);
    fg.write_strings("reason", fr);
    f.close();
  }
  out.commit();
}

}  // namespace kspecdr
