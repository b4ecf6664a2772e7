#include "kspecdr/detector/raw.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "kspecdr/core/error.hpp"
#include "kspecdr/detector/stats.hpp"
#include "kspecdr/io/fits.hpp"

namespace kspecdr::detector {
namespace fs = std::filesystem;

namespace {

bool is_integer_text(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

/// Takes the array by value, so that a caller that moves it in gets it back without a copy when
/// the profile needs no transpose, and flipped in place otherwise.
template <typename A>
A orient(A a, const InstrumentProfile& p) {
  if (p.dispersion_axis == 2) a = a.transpose().eval();
  if (p.flip_dispersion) a.rowwise().reverseInPlace();
  if (p.flip_spatial) a.colwise().reverseInPlace();
  return a;
}

}  // namespace

ImageArray to_pipeline(const ImageArray& a, const InstrumentProfile& p) { return orient(a, p); }
MaskArray to_pipeline(const MaskArray& a, const InstrumentProfile& p) { return orient(a, p); }
AmpIndexArray to_pipeline(const AmpIndexArray& a, const InstrumentProfile& p) { return orient(a, p); }

RawFrame load_raw(const fs::path& path, const InstrumentProfile& profile) {
  RawFrame raw;
  raw.file = path;
  fits::Fits f = fits::Fits::open(path);
  const ErrorContext file_ctx{.file = path.string()};
  try {
    f.move_to(0);
    Header primary = f.read_header();
    const std::string& sel = profile.image_hdu;
    if (sel.empty() || sel == "auto") {
      raw.hdu = f.first_image_hdu();
    } else if (is_integer_text(sel)) {
      raw.hdu = std::stoi(sel);
      if (raw.hdu >= f.num_hdus())
        throw DataError(fmt::format("the profile's image_hdu = {} but the file has {} HDUs", raw.hdu, f.num_hdus()),
                        ErrorContext{.file = path.string(), .hdu = sel, .keyword = "image_hdu"});
    } else {
      f.move_to(sel);
      raw.hdu = f.current_hdu();
    }
    f.move_to(raw.hdu);
    raw.extname = f.extname();
    auto shape = f.image_shape();
    if (shape.size() != 2)
      throw DataError(fmt::format("HDU {} holds no 2-dimensional image (NAXIS = {})", raw.hdu, shape.size()),
                      ErrorContext{.file = path.string(), .hdu = std::to_string(raw.hdu)});
    if (profile.raw_shape && (*profile.raw_shape != shape))
      throw DataError(fmt::format("raw image is {}x{} (NAXIS2 x NAXIS1) but the profile's raw_shape is {}x{}", shape[0],
                                  shape[1], (*profile.raw_shape)[0], (*profile.raw_shape)[1]),
                      ErrorContext{.file = path.string(), .hdu = std::to_string(raw.hdu), .keyword = "raw_shape"});
    raw.header = f.read_header();
    if (raw.hdu != 0) raw.header.merge_missing(primary);
    raw.data = f.read_image_float();
  } catch (Error& e) {
    e.add_context(file_ctx);
    throw;
  }
  return raw;
}

namespace {

Section resolve_section(const RawFrame& raw, const AmplifierSpec& amp, const std::optional<Section>& explicit_sec,
                        const std::string& key, const char* what) {
  if (!key.empty()) {
    if (auto text = raw.header.get_string(key)) {
      try {
        return parse_fits_section(*text);
      } catch (const Error& e) {
        throw DataError(fmt::format("amplifier {}: header keyword {} = '{}' is not a valid {} ({})", amp.name, key, *text,
                                    what, e.message()),
                        ErrorContext{.file = raw.file.string(), .keyword = key});
      }
    }
    if (!explicit_sec)
      throw DataError(fmt::format("amplifier {}: the header has no keyword {} for its {} and the profile gives none",
                                  amp.name, key, what),
                      ErrorContext{.file = raw.file.string(), .keyword = key});
  }
  if (!explicit_sec)
    throw DataError(fmt::format("amplifier {}: no {} in the profile", amp.name, what),
                    ErrorContext{.file = raw.file.string(), .keyword = what});
  return *explicit_sec;
}

double resolve_value(const RawFrame& raw, const AmplifierSpec& amp, double nominal, const std::string& key,
                     const char* what, bool required, std::string& source) {
  if (!key.empty()) {
    if (auto v = raw.header.get_double(key)) {
      if (!(*v > 0) && required)
        throw DataError(fmt::format("amplifier {}: header keyword {} = {} is not a positive {}", amp.name, key, *v, what),
                        ErrorContext{.file = raw.file.string(), .keyword = key});
      source = key;
      return *v;
    }
    if (nominal > 0) {
      spdlog::warn("{}: header has no {} keyword {} for amplifier {}; using the profile's {} = {}",
                   raw.file.filename().string(), what, key, amp.name, what, nominal);
    } else if (required) {
      throw DataError(fmt::format("amplifier {}: the header has no {} keyword {} and the profile gives no nominal {}",
                                  amp.name, what, key, what),
                      ErrorContext{.file = raw.file.string(), .keyword = key});
    }
  }
  source = "profile";
  return nominal;
}

}  // namespace

FrameGeometry resolve_geometry(const RawFrame& raw, const InstrumentProfile& profile) {
  if (profile.amplifiers.empty())
    throw ConfigError("the instrument profile defines no amplifiers", ErrorContext{.file = profile.source.string()});
  if (profile.amplifiers.size() >= kNoAmp)
    throw ConfigError(fmt::format("{} amplifiers: at most {} are supported", profile.amplifiers.size(), kNoAmp - 1),
                      ErrorContext{.file = profile.source.string()});
  const long rny = static_cast<long>(raw.data.rows()), rnx = static_cast<long>(raw.data.cols());
  FrameGeometry g;
  const std::string file = raw.file.string();
  for (const auto& spec : profile.amplifiers) {
    AmplifierGeometry a;
    a.name = spec.name;
    a.datasec = resolve_section(raw, spec, spec.datasec, spec.datasec_key, "datasec");
    a.biassec = resolve_section(raw, spec, spec.biassec, spec.biassec_key, "biassec");
    if (spec.detsec || !spec.detsec_key.empty()) {
      a.detsec = resolve_section(raw, spec, spec.detsec, spec.detsec_key, "detsec");
    } else {
      a.detsec = Section{0, a.datasec.nx(), 0, a.datasec.ny()};
    }
    auto where = [&](const std::string& key, const char* fallback) { return key.empty() ? std::string(fallback) : key; };
    for (auto [sec, key, what] : {std::tuple{&a.datasec, where(spec.datasec_key, "datasec"), "datasec"},
                                  std::tuple{&a.biassec, where(spec.biassec_key, "biassec"), "biassec"}}) {
      if (sec->empty() || !sec->inside(rnx, rny))
        throw DataError(fmt::format("amplifier {}: {} {} lies outside the raw image of {}x{} (NAXIS1 x NAXIS2)", a.name,
                                    what, sec->to_fits(), rnx, rny),
                        ErrorContext{.file = file, .keyword = key});
    }
    if (a.detsec.nx() != a.datasec.nx() || a.detsec.ny() != a.datasec.ny() || a.detsec.x0 < 0 || a.detsec.y0 < 0)
      throw DataError(fmt::format("amplifier {}: detsec {} and datasec {} differ in size", a.name, a.detsec.to_fits(),
                                  a.datasec.to_fits()),
                      ErrorContext{.file = file, .keyword = where(spec.detsec_key, "detsec")});
    a.gain = resolve_value(raw, spec, spec.gain, spec.gain_key, "gain", true, a.gain_source);
    a.read_noise = resolve_value(raw, spec, spec.read_noise, spec.read_noise_key, "read_noise", false, a.read_noise_source);
    g.ny = std::max(g.ny, a.detsec.y1);
    g.nx = std::max(g.nx, a.detsec.x1);
    g.amps.push_back(std::move(a));
  }
  long area = 0;
  for (std::size_t i = 0; i < g.amps.size(); ++i) {
    area += g.amps[i].detsec.nx() * g.amps[i].detsec.ny();
    for (std::size_t j = 0; j < i; ++j) {
      const Section &p = g.amps[i].detsec, &q = g.amps[j].detsec;
      if (p.x0 < q.x1 && q.x0 < p.x1 && p.y0 < q.y1 && q.y0 < p.y1)
        throw DataError(fmt::format("amplifiers {} and {}: detsecs {} and {} overlap", g.amps[i].name, g.amps[j].name,
                                    p.to_fits(), q.to_fits()),
                        ErrorContext{.file = file, .keyword = profile.amplifiers[i].detsec_key.empty()
                                                                  ? std::string("detsec")
                                                                  : profile.amplifiers[i].detsec_key});
    }
  }
  if (area != g.nx * g.ny)
    throw DataError(fmt::format("the amplifiers' detsecs cover {} of the {}x{} assembled pixels: they must tile it", area,
                                g.nx, g.ny),
                    ErrorContext{.file = file, .keyword = "detsec"});
  return g;
}

OverscanResult measure_overscan(const ImageArray& raw, const Section& bs, const Section& ds, const std::string& method,
                                int order, double clip_sigma, std::vector<double>* model_per_line) {
  OverscanResult r;
  r.method = method;
  r.order = method == "poly" ? order : 0;
  // The long axis of the strip is the readout direction: a strip beside the data (taller than
  // wide) gives one value per row, a strip below/above gives one per column.
  r.along_rows = bs.ny() >= bs.nx();
  const long nlines = r.along_rows ? bs.ny() : bs.nx();
  const long across = r.along_rows ? bs.nx() : bs.ny();
  std::vector<double> coord, vec;
  coord.reserve(static_cast<std::size_t>(nlines));
  vec.reserve(static_cast<std::size_t>(nlines));
  std::vector<double> line(static_cast<std::size_t>(across));
  for (long l = 0; l < nlines; ++l) {
    for (long k = 0; k < across; ++k)
      line[static_cast<std::size_t>(k)] =
          r.along_rows ? raw(bs.y0 + l, bs.x0 + k) : raw(bs.y0 + k, bs.x0 + l);
    // A clipped mean across the strip (not a median): robust to hot columns yet unbiased on
    // integer DN, where a median of quantised values is pulled towards integers.
    ClippedStats s = clipped_stats(line, clip_sigma);
    if (!std::isfinite(s.mean)) continue;
    coord.push_back(static_cast<double>(r.along_rows ? bs.y0 + l : bs.x0 + l));
    vec.push_back(s.mean);
  }
  if (vec.empty())
    throw DataError(fmt::format("overscan strip {} has no finite pixels", bs.to_fits()),
                    ErrorContext{.keyword = "biassec"});
  const long d0 = r.along_rows ? ds.y0 : ds.x0, d1 = r.along_rows ? ds.y1 : ds.x1;
  std::vector<double> model(static_cast<std::size_t>(d1 - d0));
  if (method == "poly") {
    PolyFit fit = fit_poly_clipped(coord, vec, order, clip_sigma);
    double sum = 0;
    for (long l = d0; l < d1; ++l) sum += (model[static_cast<std::size_t>(l - d0)] = fit(static_cast<double>(l)));
    r.level = sum / static_cast<double>(d1 - d0);
    r.rms = fit.rms;
    r.error = fit.rms / std::sqrt(static_cast<double>(std::max<std::size_t>(1, fit.n_used)));
  } else {
    ClippedStats s = clipped_stats(vec, clip_sigma);
    r.level = s.mean;
    r.rms = s.stddev;
    r.error = s.stddev / std::sqrt(static_cast<double>(std::max<std::size_t>(1, s.n_used)));
    std::fill(model.begin(), model.end(), s.mean);
  }
  if (model_per_line) *model_per_line = std::move(model);
  return r;
}

namespace {

/// One raw row of an amplifier to electrons, mask bits and amplifier index, written to dst[Step * x]
/// (Step = -1: the amplifier reads the other way round). The overscan level is lev[0] for the row
/// (PerRow) or lev[x] per column. Branch-free (a non-finite raw value gives NaN and BAD), so that
/// it vectorises.
template <int Step, bool PerRow>
void convert_row(long n, const float* __restrict src, const float* __restrict lev, float gain, float sat,
                 std::uint8_t ai, float* __restrict dst, MaskPixel* __restrict mdst, std::uint8_t* __restrict adst) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (long x = 0; x < n; ++x) {
    const float v = src[x];
    const bool finite = std::fabs(v) <= std::numeric_limits<float>::max();
    const float level = PerRow ? lev[0] : lev[x];
    const float e = (v - level) * gain;
    const MaskPixel ms = v >= sat ? MaskPixel{kMaskSaturated} : MaskPixel{0};
    dst[Step * x] = finite ? e : nan;
    mdst[Step * x] = finite ? ms : MaskPixel{kMaskBad};
    adst[Step * x] = ai;
  }
}

}  // namespace

DetectorFrame overscan_trim_gain(const RawFrame& raw, const InstrumentProfile& profile, const DetectorConfig& cfg) {
  DetectorFrame out;
  out.file = raw.file;
  out.header = raw.header;
  out.geometry = resolve_geometry(raw, profile);
  const FrameGeometry& g = out.geometry;

  out.saturation_dn = profile.saturation_dn;
  if (!profile.saturation_key.empty()) {
    if (auto v = raw.header.get_double(profile.saturation_key))
      out.saturation_dn = *v;
    else
      spdlog::debug("{}: no {} keyword; saturation at the profile's {} DN", raw.file.filename().string(),
                    profile.saturation_key, profile.saturation_dn);
  }
  const float sat = cfg.mask_saturated ? static_cast<float>(out.saturation_dn) : std::numeric_limits<float>::infinity();
  const std::string method = cfg.overscan_method.empty() ? profile.overscan_method : cfg.overscan_method;
  if (method != "median" && method != "poly")
    throw ConfigError(fmt::format("overscan method '{}' must be median or poly", method),
                      ErrorContext{.keyword = "overscan-method"});
  const int order = cfg.overscan_order >= 0 ? cfg.overscan_order : profile.overscan_order;

  ImageArray e(g.ny, g.nx);
  MaskArray m(g.ny, g.nx);
  AmpIndexArray amp(g.ny, g.nx);
  advise_huge_pages(e);
  advise_huge_pages(m);
  advise_huge_pages(amp);
  m.setZero();
  for (std::size_t i = 0; i < g.amps.size(); ++i) {
    const AmplifierGeometry& a = g.amps[i];
    std::vector<double> model;
    OverscanResult os;
    try {
      os = measure_overscan(raw.data, a.biassec, a.datasec, method, order, cfg.overscan_clip_sigma, &model);
    } catch (Error& err) {
      err.add_context(ErrorContext{.file = raw.file.string(), .keyword = fmt::format("amplifier {} biassec", a.name)});
      throw;
    }
    out.overscan.push_back(os);
    // A datasec/detsec written high-to-low means the amplifier reads the other way round.
    const bool fx = a.datasec.flip_x != a.detsec.flip_x, fy = a.datasec.flip_y != a.detsec.flip_y;
    const float gain = static_cast<float>(a.gain);
    std::vector<float> level(model.size());
    for (std::size_t k = 0; k < model.size(); ++k) level[k] = static_cast<float>(model[k]);
    const long nxa = a.datasec.nx();
    for (long y = 0; y < a.datasec.ny(); ++y) {
      const long ry = a.datasec.y0 + y;
      const long dy = a.detsec.y0 + (fy ? a.datasec.ny() - 1 - y : y);
      const float* src = raw.data.data() + ry * raw.data.cols() + a.datasec.x0;
      const long dx0 = a.detsec.x0 + (fx ? nxa - 1 : 0);
      float* dst = e.data() + dy * g.nx + dx0;
      MaskPixel* mdst = m.data() + dy * g.nx + dx0;
      std::uint8_t* adst = amp.data() + dy * g.nx + dx0;
      const float* lev = level.data() + (os.along_rows ? y : 0);
      const auto ai = static_cast<std::uint8_t>(i);
      if (fx)
        os.along_rows ? convert_row<-1, true>(nxa, src, lev, gain, sat, ai, dst, mdst, adst)
                      : convert_row<-1, false>(nxa, src, lev, gain, sat, ai, dst, mdst, adst);
      else
        os.along_rows ? convert_row<1, true>(nxa, src, lev, gain, sat, ai, dst, mdst, adst)
                      : convert_row<1, false>(nxa, src, lev, gain, sat, ai, dst, mdst, adst);
    }
  }
  for (long col : profile.bad_columns) {
    if (col < 1 || col > g.nx)
      throw DataError(fmt::format("bad column {} of the instrument profile lies outside the assembled image (1..{})",
                                  col, g.nx),
                      ErrorContext{.file = raw.file.string(), .keyword = "[detector] bad_columns"});
    for (long y = 0; y < g.ny; ++y) m(y, col - 1) |= kMaskBad;
  }
  out.electrons = orient(std::move(e), profile);
  out.mask = orient(std::move(m), profile);
  out.amp = orient(std::move(amp), profile);
  return out;
}

}  // namespace kspecdr::detector
