#include "kspecdr/detector/calibrate.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/detector/cosmic.hpp"
#include "kspecdr/detector/raw.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::detector {
namespace fs = std::filesystem;

namespace {

void check_shape(const Image& product, const DetectorFrame& d, const char* what, const std::string& calhash) {
  if (product.data.rows() != d.electrons.rows() || product.data.cols() != d.electrons.cols())
    throw DataError(fmt::format("frame is {}x{} after trimming but the master {} (CALHASH {}) is {}x{}",
                                d.electrons.rows(), d.electrons.cols(), what, calhash, product.data.rows(),
                                product.data.cols()),
                    ErrorContext{.file = d.file.string()});
}

/// The master products' pixels (null where not used) and the exposure time that scales the dark.
struct Products {
  const float *bd, *bv;
  const MaskPixel* bm;
  const float *dd, *dv;
  const MaskPixel* dm;
  const float *fd, *fv;
  const MaskPixel* fm;
  float t;
};

/// Pixels [i0, i1) of one amplifier (read noise squared rn2): bias, dark, Poisson variance and
/// flat, in place on e (electrons in, calibrated data out), var and mask. One instance per
/// combination of the calibration switches, so that the loop has no branches and vectorises. A
/// non-finite raw value gives data 0, variance 0 and BAD, without the products' mask bits.
template <bool Bias, bool Dark, bool Flat>
void calibrate_run(Eigen::Index i0, Eigen::Index i1, float rn2, const Products& p, float* __restrict e,
                   float* __restrict var, MaskPixel* __restrict mask) {
  const float *__restrict bd = p.bd, *__restrict bv = p.bv, *__restrict dd = p.dd, *__restrict dv = p.dv;
  const float *__restrict fd = p.fd, *__restrict fv = p.fv;
  const MaskPixel *__restrict bm = p.bm, *__restrict dm = p.dm, *__restrict fm = p.fm;
  const float t = p.t;
  for (Eigen::Index i = i0; i < i1; ++i) {
    // Computed for every pixel and selected at the end with bit operations (a non-finite value's
    // results are discarded): no control flow, so the loop vectorises (with -fno-trapping-math
    // for this file, see CMakeLists.txt).
    const float x = e[i];
    const bool finite = std::fabs(x) <= std::numeric_limits<float>::max();
    float s = x;
    float v = rn2;
    MaskPixel m = 0;  // only the calibration products' bits; the frame's own are in mask[i]
    if constexpr (Bias) {
      s -= bd[i];
      v += bv[i];
      m |= bm[i];
    }
    if constexpr (Dark) {
      s -= dd[i] * t;
      v += dv[i] * t * t;
      m |= dm[i];
    }
    v += std::max(s, 0.0f);
    if constexpr (Flat) {
      const float f = fd[i], vf = fv[i];
      m |= fm[i];
      const float sf = s / f;
      const float vflat = v / (f * f) + sf * sf * vf / (f * f);
      s = f > 0 ? sf : s;
      v = f > 0 ? vflat : v;
    }
    const std::uint32_t keep = 0u - static_cast<std::uint32_t>(finite);  // all bits or none: s, or +0
    e[i] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(s) & keep);
    var[i] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) & keep);
    const auto ok = static_cast<MaskPixel>(keep);
    mask[i] = static_cast<MaskPixel>(mask[i] | (m & ok) | (kMaskBad & ~ok));
  }
}

}  // namespace

Image calibrate_frame(const fs::path& raw_path, const InstrumentProfile& profile, const MasterBias* bias,
                      const MasterFlat* flat, const DetectorConfig& cfg, const MasterDark* dark) {
  const std::string name = raw_path.filename().string();
  try {
    DetectorFrame d = overscan_trim_gain(load_raw(raw_path, profile), profile, cfg);
    const Eigen::Index ny = d.electrons.rows(), nx = d.electrons.cols();
    const auto& amps = d.geometry.amps;
    const bool use_bias = bias && cfg.use_bias, use_dark = dark && cfg.use_dark, use_flat = flat && cfg.use_flat;
    if (use_bias) check_shape(bias->image, d, "bias", bias->calhash);
    if (use_dark) check_shape(dark->rate, d, "dark", dark->calhash);
    if (use_flat) check_shape(flat->pixel_flat, d, "flat", flat->calhash);
    if (!use_bias)
      spdlog::warn("{}: no master bias: overscan subtraction only (BIASCORR = 'OVERSCAN'); residual bias structure "
                   "stays in the data",
                   name);
    if (!use_flat)
      spdlog::warn("{}: no master flat: unit flat (FLATCORR = F); pixel-to-pixel sensitivity is not corrected", name);

    // Read noise per amplifier: measured from the biases when there are some, else nominal.
    std::vector<float> rn2(amps.size());
    for (std::size_t a = 0; a < amps.size(); ++a) {
      double r = amps[a].read_noise;
      if (use_bias) {
        if (a >= bias->amps.size() || bias->amps[a].name != amps[a].name)
          throw DataError(fmt::format("master bias (CALHASH {}) has no amplifier {} at position {}", bias->calhash,
                                      amps[a].name, a + 1),
                          ErrorContext{.file = raw_path.string()});
        r = bias->amps[a].read_noise_e;
      }
      if (!(r > 0))
        spdlog::warn("{}: read noise of amplifier {} is unknown: the variance has no read-noise term", name,
                     amps[a].name);
      rn2[a] = static_cast<float>(r * r);
    }
    double exptime = 0.0;
    if (use_dark) {
      std::string key = profile.keyword("exptime");
      if (key.empty()) key = "EXPTIME";
      auto t = d.header.get_double(key);
      if (!t)
        throw DataError(fmt::format("no exposure time keyword {} to scale the master dark", key),
                        ErrorContext{.file = raw_path.string(), .keyword = key});
      exptime = *t;
    }

    // The data are calibrated in place and the frame's mask gains the products' bits in place:
    // on a 4k frame every new array costs more in page faults than the arithmetic on it.
    Image im;
    im.variance.resize(ny, nx);  // every pixel is written below
    advise_huge_pages(im.variance);
    const float t = static_cast<float>(exptime);
    // Runs of pixels of one amplifier share a read noise (calibrate_run).
    float* e = d.electrons.data();  // read and written at the same index
    const std::uint8_t* amp = d.amp.data();
    float* var = im.variance.data();
    MaskPixel* mask = d.mask.data();
    const Eigen::Index npix = d.electrons.size();
    const float *bd = use_bias ? bias->image.data.data() : nullptr, *bv = use_bias ? bias->image.variance.data() : nullptr;
    const MaskPixel* bm = use_bias ? bias->image.mask.data() : nullptr;
    const float *dd = use_dark ? dark->rate.data.data() : nullptr, *dv = use_dark ? dark->rate.variance.data() : nullptr;
    const MaskPixel* dm = use_dark ? dark->rate.mask.data() : nullptr;
    const float *fd = use_flat ? flat->pixel_flat.data.data() : nullptr;
    const float* fv = use_flat ? flat->pixel_flat.variance.data() : nullptr;
    const MaskPixel* fm = use_flat ? flat->pixel_flat.mask.data() : nullptr;
    const Products prod{bd, bv, bm, dd, dv, dm, fd, fv, fm, t};
    auto kernel = calibrate_run<false, false, false>;
    if (use_bias && use_dark && use_flat) kernel = calibrate_run<true, true, true>;
    else if (use_bias && use_dark) kernel = calibrate_run<true, true, false>;
    else if (use_bias && use_flat) kernel = calibrate_run<true, false, true>;
    else if (use_dark && use_flat) kernel = calibrate_run<false, true, true>;
    else if (use_bias) kernel = calibrate_run<true, false, false>;
    else if (use_dark) kernel = calibrate_run<false, true, false>;
    else if (use_flat) kernel = calibrate_run<false, false, true>;
    for (Eigen::Index i0 = 0; i0 < npix;) {
      Eigen::Index i1 = i0 + 1;
      while (i1 < npix && amp[i1] == amp[i0]) ++i1;
      kernel(i0, i1, rn2[amp[i0]], prod, e, var, mask);
      i0 = i1;
    }
    im.data = std::move(d.electrons);
    im.mask = std::move(d.mask);

    CosmicResult cr;
    if (cfg.cosmic_enable) cr = detect_cosmics(im.data, im.variance, im.mask, cfg);

    // Header: the raw header without its section keywords (they describe the raw layout).
    Header& h = im.header;
    h = std::move(d.header);
    for (const auto& a : profile.amplifiers)
      for (const auto& k : {a.datasec_key, a.biassec_key, a.detsec_key})
        if (!k.empty()) h.erase(k);
    for (const char* k : {"DATASEC", "BIASSEC", "TRIMSEC", "DETSEC", "CCDSEC"}) h.erase(k);
    h.set("IMINPUT", raw_path.filename().string(), "raw frame this IM was made from");
    h.set("KSPVER", version(), "kspecdr version");
    h.set("KSPSHA", git_sha(), "kspecdr git commit");
    h.set("DISPAXIS", 1, "dispersion runs along x (NAXIS1)");
    h.set("RAWDAXIS", profile.dispersion_axis, "raw axis of dispersion (transposed if 2)");
    h.set("RAWFLIPD", profile.flip_dispersion, "raw dispersion axis was flipped");
    h.set("RAWFLIPS", profile.flip_spatial, "raw spatial axis was flipped");
    h.set("OVERSCAN", d.overscan.empty() ? std::string("NONE") : d.overscan.front().method,
          "overscan: median level or poly along readout");
    h.set("NAMP", static_cast<long long>(amps.size()), "number of amplifiers (AMPNAMn, AMPSECn, RDNOISEn)");
    // Where each amplifier's pixels are in the IM (pipeline orientation), so that later stages can
    // rebuild the per-pixel read noise from the header alone: the bounding box of its pixels, from
    // one pass over the runs of equal amplifier index along the rows.
    struct Box {
      Eigen::Index y0, y1, x0, x1;
    };
    std::vector<Box> box(amps.size(), Box{ny, -1, nx, -1});
    for (Eigen::Index y = 0; y < ny; ++y) {
      const std::uint8_t* row = d.amp.data() + y * nx;
      for (Eigen::Index x0 = 0; x0 < nx;) {
        Eigen::Index x1 = x0 + 1;
        while (x1 < nx && row[x1] == row[x0]) ++x1;
        if (row[x0] < amps.size()) {
          Box& b = box[row[x0]];
          b.y0 = std::min(b.y0, y);
          b.y1 = std::max(b.y1, y);
          b.x0 = std::min(b.x0, x0);
          b.x1 = std::max(b.x1, x1 - 1);
        }
        x0 = x1;
      }
    }
    for (std::size_t a = 0; a < amps.size(); ++a) {
      const auto n = a + 1;
      h.set(fmt::format("AMPNAM{}", n), amps[a].name, "amplifier name");
      h.set(fmt::format("OVSCLV{}", n), d.overscan[a].level, "[DN] overscan level subtracted");
      h.set(fmt::format("OVSCER{}", n), d.overscan[a].error, "[DN] uncertainty of OVSCLV");
      h.set(fmt::format("GAIN{}", n), amps[a].gain, fmt::format("[e-/DN] gain applied ({})", amps[a].gain_source));
      h.set(fmt::format("RDNOISE{}", n), std::sqrt(static_cast<double>(rn2[a])), "[e-] read noise in VARIANCE");
      if (const Box& b = box[a]; b.y1 >= 0) {
        Section s{static_cast<long>(b.x0), static_cast<long>(b.x1 + 1), static_cast<long>(b.y0),
                  static_cast<long>(b.y1 + 1)};
        h.set(fmt::format("AMPSEC{}", n), s.to_fits(), "amplifier's pixels in this image (FITS section)");
      }
      // A raw gain keyword of another name would tell a reader to multiply again.
      const std::string& gk = profile.amplifiers[a].gain_key;
      if (!gk.empty() && gk != fmt::format("GAIN{}", n) && h.has(gk))
        h.set(gk, 1.0, "data already in electrons (gain applied: GAINn)");
    }
    h.set("SATURATE", d.saturation_dn, "[DN] raw level flagged SATURATED");
    h.set("BIASCORR", use_bias ? std::string("MASTER") : std::string("OVERSCAN"), "bias: overscan + master bias?");
    if (use_bias) h.set("BIASHASH", bias->calhash, "CALHASH of the master bias");
    h.set("DARKCORR", use_dark, "master dark subtracted");
    if (use_dark) h.set("DARKHASH", dark->calhash, "CALHASH of the master dark");
    h.set("FLATCORR", use_flat, "divided by the pixel flat");
    if (use_flat) h.set("FLATHASH", flat->calhash, "CALHASH of the master flat");
    h.set("CRMASK", cfg.cosmic_enable, "cosmic rays flagged (L.A.Cosmic), data unchanged");
    if (cfg.cosmic_enable) {
      h.set("NCOSMIC", static_cast<long long>(cr.npix), "pixels flagged COSMIC");
      h.set("CRSIGCLP", cfg.cosmic_sigclip, "L.A.Cosmic sigclip");
      h.set("CROBJLIM", cfg.cosmic_objlim, "L.A.Cosmic objlim");
      h.set("CRRATX", cr.psf.ratio_x, "CR bound: largest pixel/mean(neighbours) along x");
      h.set("CRNFX", static_cast<long long>(cr.psf.features_x), "features CRRATX measured from (0: default)");
      h.set("CRRATY", cr.psf.ratio_y, "CR bound: largest pixel/mean(neighbours) along y");
      h.set("CRNFY", static_cast<long long>(cr.psf.features_y), "features CRRATY measured from (0: default)");
    }
    h.add_history(fmt::format("kspecdr {} detector: raw -> IM from {}", version(), name));
    im.unit = "electron";
    return im;
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = raw_path.string(), .exposure = raw_path.stem().string()});
    throw;
  }
}

void write_im(const fs::path& path, const Image& im, bool overwrite) { fits::write_image_file(path, im, overwrite); }

const std::vector<io::FormatItem>& im_format() {
  using K = io::FormatItem::Kind;
  static const std::vector<io::FormatItem> f = [] {
    std::vector<io::FormatItem> v;
    auto kw = [&](const char* name, const char* type, const char* unit, const char* what, const char* when = "") {
      v.push_back({"PRIMARY", K::Keyword, name, type, unit, what, when});
    };
    v.push_back({"PRIMARY", K::Image, "PRIMARY", "float32", "electron",
                 "calibrated frame, NY x NX, dispersion along x (columns)"});
    v.push_back({"VARIANCE", K::Image, "VARIANCE", "float32", "(electron)**2", "variance of the primary data"});
    v.push_back({"MASK", K::Image, "MASK", "uint16", "", "mask bits per pixel (MASKBn keywords name them); 0 = good"});
    kw("BUNIT", "string", "", "unit of the data: electron");
    kw("IMINPUT", "string", "", "raw frame this IM was made from");
    kw("KSPVER", "string", "", "kspecdr version");
    kw("KSPSHA", "string", "", "kspecdr git commit");
    kw("DISPAXIS", "int64", "", "1: dispersion runs along x (NAXIS1)");
    kw("RAWDAXIS", "int64", "", "raw axis of dispersion (the raw frame was transposed if 2)");
    kw("RAWFLIPD", "logical", "", "raw dispersion axis was flipped");
    kw("RAWFLIPS", "logical", "", "raw spatial axis was flipped");
    kw("OVERSCAN", "string", "", "overscan method: median level or poly along readout; NONE");
    kw("NAMP", "int64", "", "number of amplifiers (n = 1 .. NAMP below)");
    kw("AMPNAMn", "string", "", "amplifier name");
    kw("OVSCLVn", "float64", "adu", "overscan level subtracted");
    kw("OVSCERn", "float64", "adu", "uncertainty of OVSCLVn");
    kw("GAINn", "float64", "electron/adu", "gain applied");
    kw("RDNOISEn", "float64", "electron", "read noise in VARIANCE");
    kw("AMPSECn", "string", "", "the amplifier's pixels in this image (FITS section)");
    kw("SATURATE", "float64", "adu", "raw level flagged SATURATED");
    kw("BIASCORR", "string", "", "bias: MASTER (overscan + master bias) | OVERSCAN");
    kw("BIASHASH", "string", "", "CALHASH of the master bias", "BIASCORR = MASTER");
    kw("DARKCORR", "logical", "", "master dark subtracted");
    kw("DARKHASH", "string", "", "CALHASH of the master dark", "DARKCORR = T");
    kw("FLATCORR", "logical", "", "divided by the pixel flat");
    kw("FLATHASH", "string", "", "CALHASH of the master flat", "FLATCORR = T");
    kw("CRMASK", "logical", "", "cosmic rays flagged (L.A.Cosmic), data unchanged");
    kw("NCOSMIC", "int64", "", "pixels flagged COSMIC", "CRMASK = T");
    kw("CRSIGCLP", "float64", "", "L.A.Cosmic sigclip", "CRMASK = T");
    kw("CROBJLIM", "float64", "", "L.A.Cosmic objlim", "CRMASK = T");
    kw("CRRATX", "float64", "", "cosmic-ray PSF bound: largest ratio of a pixel to the mean of its neighbours along x", "CRMASK = T");
    kw("CRNFX", "int64", "", "isolated features CRRATX was measured from; 0: that of a Gaussian of sigma 0.8 px", "CRMASK = T");
    kw("CRRATY", "float64", "", "cosmic-ray PSF bound: largest ratio of a pixel to the mean of its neighbours along y", "CRMASK = T");
    kw("CRNFY", "int64", "", "isolated features CRRATY was measured from; 0: that of a Gaussian of sigma 0.8 px", "CRMASK = T");
    // Set by kspecdr reduce.
    kw("EXPNAME", "string", "", "exposure name");
    kw("FRAMECLS", "string", "", "frame class from the instrument profile");
    kw("INSTPROF", "string", "", "kspecdr instrument profile");
    kw("SETUP", "string", "", "setup key");
    kw("CFGHASH", "string", "", "hash of the resolved configuration (config-used.ini)");
    kw("DATE", "string", "", "UTC time the file was written");
    v.push_back({"VARIANCE", K::Keyword, "BUNIT", "string", "", "unit of the variance: (electron)**2"});
    v.push_back({"MASK", K::Keyword, "MASKBn", "string", "", "name of mask bit n"});
    return v;
  }();
  return f;
}

}  // namespace kspecdr::detector
