#include "kspecdr/pipeline/extract_stage.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cmath>
#include <tuple>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/section.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/extract/sky.hpp"
#include "kspecdr/io/apertures.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/parallel/bands.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/trace/trace.hpp"

namespace kspecdr {
namespace fs = std::filesystem;

extract::ReadNoise read_noise_from_header(const Image& im, const std::string& file) {
  auto namp = im.header.get_int("NAMP");
  if (!namp || *namp < 1)
    throw DataError("IM header has no NAMP keyword: the per-pixel read noise cannot be rebuilt (was the file made "
                    "by kspecdr's detector stage?)",
                    ErrorContext{.file = file, .keyword = "NAMP"});
  extract::ReadNoise rn;
  rn.map_e = ImageArray::Constant(im.ny(), im.nx(), std::numeric_limits<float>::quiet_NaN());
  for (long long a = 1; a <= *namp; ++a) {
    const std::string ks = fmt::format("AMPSEC{}", a), kr = fmt::format("RDNOISE{}", a);
    auto sec = im.header.get_string(ks);
    auto r = im.header.get_double(kr);
    if (!sec || !r)
      throw DataError(fmt::format("IM header lacks {} or {}", ks, kr), ErrorContext{.file = file, .keyword = ks});
    Section s = parse_fits_section(*sec);
    if (!s.inside(static_cast<long>(im.nx()), static_cast<long>(im.ny())))
      throw DataError(fmt::format("{} = {} lies outside the {}x{} image", ks, *sec, im.ny(), im.nx()),
                      ErrorContext{.file = file, .keyword = ks});
    rn.map_e.block(s.y0, s.x0, s.ny(), s.nx()).setConstant(static_cast<float>(*r));
  }
  // Pixels no amplifier claims (none in a well-formed IM) get the largest read noise: conservative.
  const float worst = rn.map_e.isNaN().select(0.0f, rn.map_e).maxCoeff();
  rn.map_e = rn.map_e.isNaN().select(worst, rn.map_e);
  return rn;
}

std::vector<ApertureInfo> read_fibre_table(const fs::path& raw, const InstrumentProfile& profile) {
  fits::Fits f = fits::Fits::open(raw);
  if (!f.has_hdu(profile.fibre_table_hdu))
    throw DataError(fmt::format("fiber-mode frame has no {} table HDU (the profile's fibre_table_hdu)",
                                profile.fibre_table_hdu),
                    ErrorContext{.file = raw.string(), .hdu = profile.fibre_table_hdu});
  f.move_to(profile.fibre_table_hdu);
  fits::Table t = f.read_table();
  std::vector<ApertureInfo> out;
  try {
    for (std::size_t r = 0; r < t.nrows(); ++r) out.push_back(io::aperture_from_row(t, r));
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = raw.string(), .hdu = profile.fibre_table_hdu});
    throw;
  }
  if (out.empty())
    throw DataError("the fiber table is empty", ErrorContext{.file = raw.string(), .hdu = profile.fibre_table_hdu});
  return out;
}

namespace {
/// Sums of the good pixels of frames of one shape (rows of a band or whole frames), in the order added.
struct GoodMean {
  Image sum;
  ImageArray weight;
  void add(const Image& im) {
    if (weight.size() == 0) {
      sum = Image(im.ny(), im.nx());
      weight = ImageArray::Zero(im.ny(), im.nx());
    }
    auto good = (im.mask == 0).cast<float>();
    sum.data += im.data * good;
    sum.variance += im.variance * good;
    weight += good;
  }
  /// The mean, its variance and kMaskNoData where no frame is good.
  void finish() {
    sum.data = (weight > 0).select(sum.data / weight.max(1.0f), 0.0f);
    sum.variance = (weight > 0).select(sum.variance / (weight * weight).max(1.0f), 0.0f);
    sum.mask = (weight > 0).select(MaskArray::Zero(sum.ny(), sum.nx()),
                                   MaskArray::Constant(sum.ny(), sum.nx(), kMaskNoData));
  }
};

DataError shape_mismatch(Eigen::Index ny, Eigen::Index nx, Eigen::Index ny0, Eigen::Index nx0) {
  return DataError(fmt::format("science frames differ in shape ({}x{} vs {}x{})", ny, nx, ny0, nx0));
}
}  // namespace

Image mean_science_image(const std::vector<Image>& science) {
  if (science.empty()) throw DataError("slit mode needs at least one science frame to find the stars");
  GoodMean m;
  for (const auto& im : science) {
    if (im.ny() != science.front().ny() || im.nx() != science.front().nx())
      throw shape_mismatch(im.ny(), im.nx(), science.front().ny(), science.front().nx());
    m.add(im);
  }
  m.finish();
  return std::move(m.sum);
}

Image mean_science_image(const std::vector<fs::path>& files, const mpi::Comm* comm) {
  if (files.empty()) throw DataError("slit mode needs at least one science frame to find the stars");
  std::vector<long> shape0;
  Eigen::Index y0 = 0, y1 = 0;
  GoodMean m;
  auto read_all = [&] {
    for (const auto& f : files) {
      try {
        std::vector<long> shape;
        if (shape0.empty()) {
          fits::Fits h = fits::Fits::open(f);
          h.move_to(h.first_image_hdu());
          shape0 = h.image_shape();
          if (shape0.size() != 2) throw DataError("the science IM holds no 2-dimensional image");
          std::tie(y0, y1) = mpi::my_band(shape0[0], comm);
        }
        Image band = fits::read_image_rows(f, y0, y1, &shape);
        if (shape != shape0) throw shape_mismatch(shape.at(0), shape.at(1), shape0[0], shape0[1]);
        m.add(band);
      } catch (Error& e) {
        e.add_context(ErrorContext{.file = f.string()});
        throw;
      }
    }
  };
  if (comm) mpi::all_or_throw(*comm, read_all);
  else read_all();
  if (m.weight.size() == 0) m.add(Image(y1 - y0, shape0[1]));  // an empty band: nothing good
  m.finish();
  Image mean;
  mean.data = mpi::gather_band(m.sum.data, y0, shape0[0], comm);
  mean.variance = mpi::gather_band(m.sum.variance, y0, shape0[0], comm);
  mean.mask = mpi::gather_band(m.sum.mask, y0, shape0[0], comm);
  return mean;
}

TraceSet build_master_traces(const InstrumentProfile& profile, const Image* slit_mean, const Image* flat_image,
                             const std::vector<ApertureInfo>& fibres, const ExStageConfig& cfg) {
  if (profile.mode == SpectroMode::Fiber) {
    if (!flat_image)
      throw DataError("fiber mode needs a master flat to find the fibers; the night has no flat frames");
    return trace::trace_fibers(*flat_image, fibres, cfg.trace);
  }
  if (!slit_mean) throw DataError("slit mode needs at least one science frame to find the stars");
  return trace::trace_slit(*slit_mean, cfg.trace);
}

extract::CalibrationNoise calibration_noise_for(const Image& im, const detector::MasterFlat* flat,
                                                const detector::MasterBias* bias, const std::string& file) {
  extract::CalibrationNoise cal;
  const std::string what = file.empty() ? std::string("IM") : file;
  auto same_shape = [&](const Image& m, const char* name) {
    if (m.ny() != im.ny() || m.nx() != im.nx())
      throw DataError(fmt::format("master {} is {}x{} but the image is {}x{}", name, m.ny(), m.nx(), im.ny(), im.nx()),
                      ErrorContext{.file = file});
  };
  // Only the master the IM was made with says what noise its pixels carry.
  auto applied = [&](bool corrected, const char* hash_key, const std::string& calhash, const char* name) {
    if (!corrected) return false;
    const auto hash = im.header.get_string(hash_key);
    if (hash && *hash == calhash) return true;
    spdlog::warn("{}: made with master {} {} = '{}', not this one ('{}'): its noise is left out of the model variance",
                 what, name, hash_key, hash.value_or(""), calhash);
    return false;
  };
  const bool use_flat =
      flat && applied(im.header.get_bool("FLATCORR").value_or(false), "FLATHASH", flat->calhash, "flat");
  const bool use_bias =
      bias && applied(im.header.get_string("BIASCORR").value_or("") == "MASTER", "BIASHASH", bias->calhash, "bias");
  if (use_flat) same_shape(flat->pixel_flat, "flat");
  if (use_bias) same_shape(bias->image, "bias");
  // The detector stage divides by f only where f > 0 (the other pixels are masked): the same here.
  auto f2 = [&](Eigen::Index i) {
    const float f = use_flat ? flat->pixel_flat.data(i) : 1.0f;
    return f > 0 && std::isfinite(f) ? f * f : 1.0f;
  };
  auto clean = [](float v) { return std::isfinite(v) && v > 0 ? v : 0.0f; };
  if (use_flat) {
    cal.flat_relvar.resize(im.ny(), im.nx());
    for (Eigen::Index i = 0; i < cal.flat_relvar.size(); ++i) {
      const float f = flat->pixel_flat.data(i);
      cal.flat_relvar(i) = f > 0 && std::isfinite(f) ? clean(flat->pixel_flat.variance(i)) / f2(i) : 0.0f;
    }
  }
  if (use_bias) {
    cal.bias_var.resize(im.ny(), im.nx());
    for (Eigen::Index i = 0; i < cal.bias_var.size(); ++i) cal.bias_var(i) = clean(bias->image.variance(i)) / f2(i);
  }
  return cal;
}

SpectrumSet extract_exposure(const Image& im, const TraceSet& master, const InstrumentProfile& profile,
                             const ExStageConfig& cfg, const std::string& exposure, bool is_science,
                             const std::string& file, const detector::MasterFlat* flat,
                             const detector::MasterBias* bias, const mpi::Comm* group) {
  const mpi::Comm& together = group ? *group : mpi::self();
  extract::ExtractConfig ecfg = cfg.extract;
  // Slit apertures are extracted alone against their local sky; fibers overlapping their neighbours are
  // fitted jointly per column (deblend auto, see extract/joint.cpp).
  if (profile.mode == SpectroMode::Slit) ecfg.deblend = extract::Deblend::Off;
  TraceSet traces = master;
  std::vector<TraceShift> shifts;
  const bool fiber = profile.mode == SpectroMode::Fiber;
  const bool slit_sky = profile.mode == SpectroMode::Slit && cfg.sky.method != extract::SkyMethod::None;
  extract::SkyModel sky;
  // What every aperture needs (the noise model, the trace shift, the slit sky fitted beside every trace) is
  // computed whole by every rank of a group; an error on one is the error of all.
  mpi::all_or_throw(together, [&] {
    ecfg.read_noise = read_noise_from_header(im, file);
    ecfg.calibration_noise = calibration_noise_for(im, flat, bias, file);
    if (is_science && cfg.measure_shifts) {
      shifts = trace::measure_trace_shifts(im, master, cfg.trace);
      // A fiber's output profile is set by the fiber and the spectrograph, not by the seeing: the flat's
      // widths hold for every exposure. A width measured here with a free background absorbs the
      // neighbouring fibers' wings and comes out too narrow, which would bias faint fibers' fluxes low.
      if (fiber)
        for (auto& sh : shifts) sh.width_scale = 1.0, sh.width_scale_err = 0.0;
      traces = trace::apply_trace_shifts(master, shifts);
    }
    if (slit_sky) sky = extract::fit_slit_sky(im, traces, cfg.sky, ecfg.read_noise, ecfg.calibration_noise, exposure);
  });
  // The extraction itself is shared by the group's ranks (apertures, or the joint fit's columns).
  SpectrumSet s = extract::extract_spectra(im, traces, slit_sky ? &sky : nullptr, ecfg, exposure, group);
  if (slit_sky && cfg.write_sky_image) {
    const auto& f = extract::kSkyImages;
    s.extra_images.push_back({f[0].extname, std::move(sky.sky), f[0].unit, f[0].description});
    s.extra_images.push_back({f[1].extname, std::move(sky.variance), f[1].unit, f[1].description});
    s.extra_images.push_back({f[2].extname, sky.windows.cast<float>(), f[2].unit, f[2].description});
  }
  if (!shifts.empty()) extract::record_trace_shifts(s, shifts);
  // Carry the IM's identity and provenance; the stage's own settings follow.
  for (const auto& c : im.header.cards())
    if (!s.header.has(c.key)) s.header.set_raw(c.key, c.value, c.comment);
  // EXTMETH and DEBLEND come from the extraction: "optimal" becomes "joint" when overlapping fibers were
  // fitted together.
  s.header.set("SKYMETH", profile.mode == SpectroMode::Slit ? extract::to_string(cfg.sky.method) : std::string("none"),
               "local sky method (fiber mode: master sky after wavelength alignment)");
  s.header.set("TRMEAS", trace::to_string(cfg.trace.measure), "trace centroid/width measure");
  if (fiber) s.header.set("TRWIDFIX", true, "fiber widths fixed to the flat's");
  const auto& cn = ecfg.calibration_noise;
  s.header.set("CALNOISE",
               cn.bias_var.size() && cn.flat_relvar.size() ? std::string("BIAS+FLAT")
               : cn.flat_relvar.size()                     ? std::string("FLAT")
               : cn.bias_var.size()                        ? std::string("BIAS")
                                                           : std::string("NONE"),
               "master noise in the model variance (VAR_CAL)");
  return s;
}

}  // namespace kspecdr
