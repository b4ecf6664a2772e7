#include "kspecdr/pipeline/diagnostics.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

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
};
const DiagDouble kDoubles[] = {
    {"trace_offset_px", &ApertureDiagnostics::trace_offset_px}, {"shift_px", &ApertureDiagnostics::shift_px},
    {"shift_err_px", &ApertureDiagnostics::shift_err_px},       {"width_scale", &ApertureDiagnostics::width_scale},
    {"width_px", &ApertureDiagnostics::width_px},               {"peak_e", &ApertureDiagnostics::peak_e},
    {"masked_fraction", &ApertureDiagnostics::masked_fraction}, {"snr_median", &ApertureDiagnostics::snr_median},
    {"sky_median_e", &ApertureDiagnostics::sky_median_e},
};

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
    g.write(c.name, v);
  }
  g.write("rejected", rejected);
  g.write("bad_columns", bad);
}

}  // namespace

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
          const auto red = wavecal::read_red_file(redf);
          h5::Group a = g.create_group("apertures");
          write_apertures(a, red.spectra);
          std::vector<double> rms;
          std::vector<long long> lines;
          for (const auto& w : red.wave) {
            rms.push_back(w.rms_px);
            lines.push_back(w.n_lines);
          }
          a.write("wave_rms_px", rms);
          a.write("wave_lines", lines);
          g.set_attr("flexure_px", red.spectra.header.get_double("FLEXPX").value_or(NAN));
          g.set_attr("flexure_err_px", red.spectra.header.get_double("FLEXERR").value_or(NAN));
          g.set_attr("flexure_method", red.spectra.header.get_string("FLEXMETH").value_or(""));
        } else if (fs::exists(exf)) {
          const SpectrumSet s = extract::read_ex_file(exf);
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
          g.write("rms_px", rms);
          g.write("rms_angstrom", rmsa);
          g.write("predicted_error_px", pred);
          g.write("n_used", used);
          g.write("n_rejected", rej);
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
