#include "kspecdr/detector/masters.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <Eigen/Cholesky>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/detector/stats.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/parallel/bands.hpp"

namespace kspecdr::detector {
namespace fs = std::filesystem;

// ------------------------------------------------------------------ provenance

std::string calibration_hash(const std::vector<fs::path>& inputs, const std::string& config_text) {
  // FNV-1a: stable across platforms and runs, which std::hash is not.
  std::uint64_t h = 1469598103934665603ull;
  auto feed = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;
    h *= 1099511628211ull;
  };
  std::vector<std::string> items;
  for (const auto& p : inputs) {
    std::error_code ec;
    auto size = fs::file_size(p, ec);
    auto mtime = fs::last_write_time(p, ec);
    items.push_back(fmt::format("{}|{}|{}", p.filename().string(), ec ? 0 : size,
                                ec ? 0 : static_cast<long long>(mtime.time_since_epoch().count())));
  }
  std::sort(items.begin(), items.end());
  for (const auto& s : items) feed(s);
  feed(config_text);
  return fmt::format("{:016x}", h);
}

std::string bias_config_text(const InstrumentProfile& p, const DetectorConfig& c) {
  std::string s = fmt::format("instrument={};overscan={}/{};order={}/{};clip={};combine={};", p.name, p.overscan_method,
                              c.overscan_method, p.overscan_order, c.overscan_order, c.overscan_clip_sigma,
                              to_string(c.bias_combine));
  for (const auto& a : p.amplifiers)
    s += fmt::format("amp={},{},{},{},{},{},{},{};", a.name, a.datasec ? a.datasec->to_fits() : a.datasec_key,
                     a.biassec ? a.biassec->to_fits() : a.biassec_key, a.detsec ? a.detsec->to_fits() : a.detsec_key,
                     a.gain, a.gain_key, a.read_noise, a.read_noise_key);
  s += fmt::format("axis={},{},{}", p.dispersion_axis, p.flip_dispersion, p.flip_spatial);
  return s;
}

std::string flat_config_text(const InstrumentProfile& p, const DetectorConfig& c, const MasterBias* bias,
                             const MasterDark* dark) {
  return bias_config_text(p, c) + fmt::format(";flatcombine={};smooth={};illum={},{},{};low={};high={};bias={};dark={}",
                                              to_string(c.flat_combine), c.flat_smooth_px, c.illumination_threshold,
                                              c.illumination_halfwindow, c.illumination_min_snr, c.low_flat_threshold, c.high_flat_threshold,
                                              bias && c.use_bias ? bias->calhash : "none",
                                              dark && c.use_dark ? dark->calhash : "none");
}

bool calibration_is_current(const fs::path& path, const std::string& expected, std::string* made_by) {
  if (!fs::exists(path)) return false;
  try {
    fits::Fits f = fits::Fits::open(path);
    f.move_to(0);
    const Header h = f.read_header();
    const auto hash = h.get_string("CALHASH");
    if (!hash || *hash != expected) return false;
    if (!f.verify_checksums()) {
      spdlog::warn("calibration product {} does not verify against its checksums (changed or damaged since it was "
                   "written) and will be rebuilt",
                   path.string());
      return false;
    }
    if (made_by) *made_by = h.get_string("KSPSHA").value_or("");
    return true;
  } catch (const Error& e) {
    spdlog::warn("calibration product {} is unreadable and will be rebuilt: {}", path.string(), e.what());
    return false;
  }
}

namespace {

/// What the masters need of the amplifiers (the first frame's geometry): name, gain applied, nominal read noise.
struct AmpFacts {
  std::string name;
  double gain = 1.0, read_noise = 0.0;
};

/// A stack of calibration frames split over the ranks of `comm` (nullptr: one process does all). Frame k is read
/// and prepared — overscan, trim, gain, bad and saturated pixels set to NaN — by rank owner(k) alone, which holds it
/// whole in `local`; `to_bands` then leaves every rank its band of rows of every frame, the pixels a per-pixel
/// combination needs. Numbers of a whole frame (levels, normalisations, pair read noise) are measured by the owner
/// and shared with `per_frame`, so every result is the same whatever the number of ranks.
struct FrameStack {
  const mpi::Comm* comm = nullptr;
  bool pairs = false;  ///< frames (2p, 2p+1) on one rank, for pair differences
  std::vector<fs::path> files;
  std::vector<std::string> names;
  Eigen::Index ny = 0, nx = 0;  ///< frame shape after trimming and orientation
  std::vector<AmpFacts> amps;
  std::map<std::size_t, DetectorFrame> local;  ///< the frames this rank read, whole (until to_bands)
  // After to_bands:
  Eigen::Index y0 = 0, y1 = 0;  ///< this rank's rows
  std::vector<ImageArray> bands;  ///< rows [y0, y1) of every frame: electrons, NaN where masked
  AmpIndexArray amp;            ///< rows [y0, y1): amplifier of each pixel

  int nranks() const { return comm ? comm->size() : 1; }
  int rank() const { return comm ? comm->rank() : 0; }
  int owner(std::size_t k) const { return static_cast<int>((pairs ? k / 2 : k) % static_cast<std::size_t>(nranks())); }
  std::size_t size() const { return files.size(); }
};

/// Runs `work(k)` for every frame k this rank owns, in file order, until one fails; the failure of the earliest
/// frame that failed on any rank is thrown on every rank (mpi::throw_earliest), with the frame's file as context,
/// so the message does not depend on the number of ranks. Collective with `comm`.
void each_owned(FrameStack& s, const std::function<void(std::size_t)>& work) {
  long long failed = -1;
  std::exception_ptr error;
  for (std::size_t k = 0; k < s.size() && failed < 0; ++k) {
    if (s.owner(k) != s.rank()) continue;
    try {
      work(k);
    } catch (Error& e) {
      e.add_context(ErrorContext{.file = s.files[k].string(), .exposure = s.files[k].stem().string()});
      failed = static_cast<long long>(k), error = std::current_exception();
    } catch (const std::exception&) {
      failed = static_cast<long long>(k), error = std::current_exception();
    }
  }
  if (!s.comm) {
    if (error) std::rethrow_exception(error);
    return;
  }
  mpi::throw_earliest(*s.comm, failed < 0 ? 0 : failed, error);
}

/// Runs `work(k, frame)` on every frame this rank read (see each_owned). Collective with `comm`.
void for_local_frames(FrameStack& s, const std::function<void(std::size_t, DetectorFrame&)>& work) {
  each_owned(s, [&](std::size_t k) { work(k, s.local.at(k)); });
}

/// Per frame the numbers `measure` returns for it on its owner (any length), on every rank. Collective.
std::vector<std::vector<double>> per_frame(FrameStack& s,
                                           const std::function<std::vector<double>(std::size_t, DetectorFrame&)>& measure) {
  std::vector<std::vector<double>> out(s.size());
  std::vector<double> packed;  // k, n, n values; ...
  for_local_frames(s, [&](std::size_t k, DetectorFrame& d) {
    out[k] = measure(k, d);
    packed.push_back(static_cast<double>(k));
    packed.push_back(static_cast<double>(out[k].size()));
    packed.insert(packed.end(), out[k].begin(), out[k].end());
  });
  if (!s.comm || s.comm->size() == 1) return out;
  const std::vector<double> all = s.comm->allgatherv(packed);
  for (std::size_t i = 0; i < all.size();) {
    const auto k = static_cast<std::size_t>(all[i]), n = static_cast<std::size_t>(all[i + 1]);
    out[k].assign(all.begin() + static_cast<std::ptrdiff_t>(i + 2), all.begin() + static_cast<std::ptrdiff_t>(i + 2 + n));
    i += 2 + n;
  }
  return out;
}

/// Reads and prepares the frames, each on its owner (see FrameStack), and checks that they all have the first
/// frame's shape. A frame that cannot be read fails every rank with that frame's message. Collective with `comm`.
FrameStack read_stack(const std::vector<fs::path>& files, const InstrumentProfile& profile, const DetectorConfig& cfg,
                      const char* what, const mpi::Comm* comm, bool pairs) {
  if (files.empty()) throw DataError(fmt::format("no {} frames to combine", what));
  FrameStack s;
  s.comm = comm;
  s.pairs = pairs;
  s.files = files;
  for (const auto& f : files) s.names.push_back(f.filename().string());
  each_owned(s, [&](std::size_t k) {
    DetectorFrame d = overscan_trim_gain(load_raw(files[k], profile), profile, cfg);
    // Saturated and bad pixels are left out of the combination.
    for (Eigen::Index i = 0; i < d.electrons.size(); ++i)
      if (d.mask(i) & (kMaskBad | kMaskSaturated)) d.electrons(i) = std::numeric_limits<float>::quiet_NaN();
    d.mask = MaskArray();
    s.local.emplace(k, std::move(d));
  });
  // Shapes, checked in file order against the first frame.
  const auto shapes = per_frame(s, [](std::size_t, DetectorFrame& d) {
    return std::vector<double>{static_cast<double>(d.electrons.rows()), static_cast<double>(d.electrons.cols())};
  });
  s.ny = static_cast<Eigen::Index>(shapes[0][0]);
  s.nx = static_cast<Eigen::Index>(shapes[0][1]);
  for (std::size_t k = 1; k < files.size(); ++k)
    if (shapes[k][0] != shapes[0][0] || shapes[k][1] != shapes[0][1])
      throw DataError(fmt::format("{} frame is {}x{} after trimming, the first {} frame {}x{}", what, shapes[k][0],
                                  shapes[k][1], what, s.ny, s.nx),
                      ErrorContext{.file = files[k].string(), .exposure = files[k].stem().string()});
  // The amplifiers, from the first frame (read by rank 0).
  std::string names;
  std::vector<double> numbers;
  if (s.rank() == 0)
    for (const auto& a : s.local.at(0).geometry.amps) {
      names += a.name + '\n';
      numbers.push_back(a.gain);
      numbers.push_back(a.read_noise);
    }
  if (comm) {
    comm->bcast(names);
    comm->bcast(numbers);
  }
  std::size_t pos = 0;
  for (std::size_t a = 0; a < numbers.size() / 2; ++a) {
    const auto nl = names.find('\n', pos);
    s.amps.push_back({names.substr(pos, nl - pos), numbers[2 * a], numbers[2 * a + 1]});
    pos = nl + 1;
  }
  return s;
}

/// Every rank's band of rows of every frame (and of the amplifier map) from the frames' owners; the whole frames
/// are let go. Collective with `comm`.
void to_bands(FrameStack& s) {
  std::tie(s.y0, s.y1) = mpi::my_band(s.ny, s.comm);
  s.bands.clear();
  for (std::size_t k = 0; k < s.size(); ++k) {
    const int o = s.owner(k);
    const auto it = s.local.find(k);
    if (!s.comm) {
      s.bands.push_back(std::move(it->second.electrons));
    } else {
      s.bands.push_back(mpi::scatter_band(o == s.rank() ? &it->second.electrons : nullptr, s.ny, s.nx, o, s.comm));
      if (it != s.local.end()) it->second.electrons = ImageArray();
    }
  }
  const DetectorFrame* first = s.rank() == 0 ? &s.local.at(0) : nullptr;
  s.amp = s.comm ? mpi::scatter_band(first ? &first->amp : nullptr, s.ny, s.nx, 0, s.comm) : std::move(s.local.at(0).amp);
  s.local.clear();
}

using mpi::gather_band;
using mpi::my_band;

double median_of(std::vector<double>& v, const mpi::Comm* comm) {
  return comm ? comm->median(v) : median_inplace(v);
}

std::vector<const ImageArray*> pointers(const std::vector<ImageArray>& v) {
  std::vector<const ImageArray*> p;
  for (const auto& a : v) p.push_back(&a);
  return p;
}

void provenance(Header& h, const char* caltype, const std::string& calhash, int n, const std::vector<std::string>& inputs) {
  h.set("CALTYPE", caltype, "kspecdr calibration product");
  h.set("CALHASH", calhash, "hash of inputs (names, sizes, mtimes) and settings");
  h.set("NCOMBINE", n, "number of frames combined");
  h.set("KSPVER", version(), "kspecdr version");
  h.set("KSPSHA", git_sha(), "kspecdr git commit");
  for (std::size_t i = 0; i < inputs.size() && i < 999; ++i)
    h.set(fmt::format("IMCMB{:03d}", i + 1), inputs[i], "input frame");
}

std::vector<std::string> read_inputs(const Header& h) {
  std::vector<std::string> out;
  for (int i = 1; i < 1000; ++i) {
    auto v = h.get_string(fmt::format("IMCMB{:03d}", i));
    if (!v) break;
    out.push_back(*v);
  }
  return out;
}

/// The amplifiers' numbers as the master bias header holds them (AMPNAMn, GAINn, BIASLVn ...).
std::vector<AmplifierBias> amplifiers_from_header(const Header& h) {
  std::vector<AmplifierBias> amps;
  const auto namps = h.get_int("NAMP").value_or(0);
  for (long long a = 1; a <= namps; ++a) {
    AmplifierBias ab;
    ab.name = h.require_string(fmt::format("AMPNAM{}", a));
    ab.gain = h.require_double(fmt::format("GAIN{}", a));
    ab.bias_level_dn = h.require_double(fmt::format("BIASLV{}", a));
    ab.bias_level_err_dn = h.require_double(fmt::format("BIASER{}", a));
    ab.read_noise_e = h.require_double(fmt::format("RDNOISE{}", a));
    ab.read_noise_err_e = h.require_double(fmt::format("RDNERR{}", a));
    amps.push_back(ab);
  }
  return amps;
}

/// Writes primary + VARIANCE + MASK (+ extra float HDUs) atomically.
void write_product(const fs::path& path, const Image& im, const std::vector<std::pair<std::string, const ImageArray*>>& extra,
                   bool overwrite) {
  fits::write_image_file(path, im, overwrite, extra);
}

Image read_product(const fs::path& path, const char* caltype) {
  Image im = fits::read_image_file(path);
  auto t = im.header.get_string("CALTYPE");
  if (!t || *t != caltype)
    throw DataError(fmt::format("{} is not a kspecdr {} product (CALTYPE = '{}')", path.filename().string(), caltype,
                                t.value_or("")),
                    ErrorContext{.file = path.string(), .keyword = "CALTYPE"});
  return im;
}

/// Running maximum over +-h rows of each column (edges use the rows that exist).
ImageArray running_max_rows(const ImageArray& a, int h) {
  const Eigen::Index ny = a.rows();
  ImageArray out(ny, a.cols());
  for (Eigen::Index y = 0; y < ny; ++y) {
    const Eigen::Index y0 = std::max<Eigen::Index>(0, y - h), y1 = std::min<Eigen::Index>(ny, y + h + 1);
    out.row(y) = a.row(y0);
    for (Eigen::Index k = y0 + 1; k < y1; ++k) out.row(y) = out.row(y).max(a.row(k));
  }
  return out;
}

/// Median of the pixels of a frame that are above `fraction` of its 99th percentile: the level
/// of the illuminated part, whatever fraction of the detector the fibers or slit cover.
double illuminated_median(const ImageArray& a, double fraction) {
  std::vector<double> v;
  const Eigen::Index step = std::max<Eigen::Index>(1, a.size() / 200000);
  for (Eigen::Index i = 0; i < a.size(); i += step)
    if (std::isfinite(a(i))) v.push_back(a(i));
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  auto k = static_cast<std::ptrdiff_t>(0.99 * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  const double cut = fraction * v[static_cast<std::size_t>(k)];
  std::vector<double> lit;
  for (Eigen::Index i = 0; i < a.size(); i += step)
    if (std::isfinite(a(i)) && a(i) > cut) lit.push_back(a(i));
  return median_inplace(lit);
}

}  // namespace

// ------------------------------------------------------------------ bias

namespace {
/// One pair of bias frames: per amplifier the clipped standard deviation of the difference over its pixels
/// divided by sqrt(2), and the number of pixels it used (fewer than 2: no value).
std::vector<std::pair<double, std::size_t>> pair_read_noise(const ImageArray& f0, const ImageArray& f1,
                                                            const AmpIndexArray& amp, std::size_t namps) {
  std::vector<std::pair<double, std::size_t>> out(namps, {0.0, 0});
  for (std::size_t a = 0; a < namps; ++a) {
    std::vector<double> d;
    d.reserve(static_cast<std::size_t>(f0.size() / static_cast<Eigen::Index>(namps) + 1));
    for (Eigen::Index i = 0; i < f0.size(); ++i) {
      if (amp(i) != a) continue;
      const double v = static_cast<double>(f0(i)) - f1(i);
      if (std::isfinite(v)) d.push_back(v);
    }
    // A clipped standard deviation rather than 1.4826 MAD: on integer DN the MAD is
    // quantised to half-integers, a bias of several percent at a few DN of noise.
    const ClippedStats st = clipped_stats(std::move(d), 4.0);
    out[a] = {st.stddev / std::sqrt(2.0), st.n_used};
  }
  return out;
}

/// The read noise per amplifier from the pairs' values (in pair order): their mean, with the standard error of a
/// Gaussian sigma from all the pixels used; NaN where no pair gave a value.
std::vector<std::pair<double, double>> combine_pairs(const std::vector<std::vector<std::pair<double, std::size_t>>>& pairs,
                                                     std::size_t namps) {
  std::vector<std::pair<double, double>> out(namps, {std::numeric_limits<double>::quiet_NaN(), 0.0});
  for (std::size_t a = 0; a < namps; ++a) {
    double sum_rn = 0;
    std::size_t n_total = 0, used_pairs = 0;
    for (const auto& p : pairs) {
      if (p[a].second < 2) continue;
      sum_rn += p[a].first;
      n_total += p[a].second;
      ++used_pairs;
    }
    if (used_pairs == 0) continue;
    const double rn = sum_rn / static_cast<double>(used_pairs);
    // Standard error of a Gaussian sigma from n values: sigma / sqrt(2 n).
    out[a] = {rn, rn / std::sqrt(2.0 * static_cast<double>(n_total))};
  }
  return out;
}
}  // namespace

std::vector<std::pair<double, double>> read_noise_from_pairs(const std::vector<const ImageArray*>& frames,
                                                             const AmpIndexArray& amp, std::size_t namps) {
  std::vector<std::vector<std::pair<double, std::size_t>>> pairs;
  for (std::size_t p = 0; p < frames.size() / 2; ++p)
    pairs.push_back(pair_read_noise(*frames[2 * p], *frames[2 * p + 1], amp, namps));
  return combine_pairs(pairs, namps);
}

MasterBias build_master_bias(const std::vector<fs::path>& bias_files, const InstrumentProfile& profile,
                             const DetectorConfig& cfg, const mpi::Comm* comm) {
  // Frames in pairs on their ranks: each pair's difference is measured where it was read.
  FrameStack s = read_stack(bias_files, profile, cfg, "bias", comm, /*pairs=*/true);
  const std::size_t namps = s.amps.size(), nf = s.size();
  MasterBias mb;
  mb.method = cfg.bias_combine;
  mb.nframes = static_cast<int>(nf);
  mb.inputs = s.names;
  mb.calhash = calibration_hash(bias_files, bias_config_text(profile, cfg));

  // Per frame: the overscan level and error of every amplifier; on the second frame of a pair, the pair's read
  // noise per amplifier (value, pixels used).
  const auto numbers = per_frame(s, [&](std::size_t k, DetectorFrame& d) {
    if (d.overscan.size() != namps)
      throw DataError(fmt::format("bias frame has {} amplifiers, the first bias frame {}", d.overscan.size(), namps));
    std::vector<double> v;
    for (std::size_t a = 0; a < namps; ++a) {
      v.push_back(d.overscan[a].level);
      v.push_back(d.overscan[a].error);
    }
    if (k % 2 == 1)
      for (const auto& [rn, n] : pair_read_noise(s.local.at(k - 1).electrons, d.electrons, d.amp, namps)) {
        v.push_back(rn);
        v.push_back(static_cast<double>(n));
      }
    return v;
  });
  std::vector<std::vector<std::pair<double, std::size_t>>> pairs(nf / 2);
  for (std::size_t p = 0; p < nf / 2; ++p)
    for (std::size_t a = 0; a < namps; ++a) {
      const auto& v = numbers[2 * p + 1];
      pairs[p].emplace_back(v[2 * namps + 2 * a], static_cast<std::size_t>(v[2 * namps + 2 * a + 1]));
    }
  const auto rn = combine_pairs(pairs, namps);
  for (std::size_t a = 0; a < namps; ++a) {
    AmplifierBias ab;
    ab.name = s.amps[a].name;
    ab.gain = s.amps[a].gain;
    double sl = 0, se2 = 0;
    for (const auto& v : numbers) {
      sl += v[2 * a];
      se2 += v[2 * a + 1] * v[2 * a + 1];
    }
    ab.bias_level_dn = sl / static_cast<double>(nf);
    ab.bias_level_err_dn = std::sqrt(se2) / static_cast<double>(nf);
    if (std::isfinite(rn[a].first)) {
      ab.read_noise_e = rn[a].first;
      ab.read_noise_err_e = rn[a].second;
    } else {
      ab.read_noise_e = s.amps[a].read_noise;
      if (!comm || comm->is_root())
        spdlog::warn("master bias: {} bias frame(s) give no pair difference for amplifier {}; using the nominal read "
                     "noise {} e-{}",
                     nf, ab.name, ab.read_noise_e, ab.read_noise_e > 0 ? "" : " (unknown: variance lacks it)");
    }
    if (!comm || comm->is_root())
      spdlog::info("master bias: amplifier {}: overscan level {:.3f} +- {:.3f} DN, read noise {:.3f} +- {:.3f} e-",
                   ab.name, ab.bias_level_dn, ab.bias_level_err_dn, ab.read_noise_e, ab.read_noise_err_e);
    mb.amps.push_back(ab);
  }

  to_bands(s);
  const Eigen::Index ny = s.ny, nx = s.nx, y0 = s.y0, y1 = s.y1;
  CombinedBand c = combine_rows(pointers(s.bands), 0, y1 - y0, CombineOptions{cfg.bias_combine, cfg.combine_clip_sigma});
  ImageArray value = std::move(c.value), variance(y1 - y0, nx);
  MaskArray mask = MaskArray::Zero(y1 - y0, nx);
  std::vector<float> ratio(nf + 1);
  for (std::size_t n = 0; n < ratio.size(); ++n)
    ratio[n] = n ? static_cast<float>(combined_variance_ratio(cfg.bias_combine, static_cast<int>(n))) : 0.0f;
  for (Eigen::Index i = 0; i < value.size(); ++i) {
    const auto u = c.used(i);
    if (u == 0 || !std::isfinite(value(i))) {
      value(i) = 0.0f;
      variance(i) = 0.0f;
      mask(i) = kMaskBad;
      continue;
    }
    const double r = mb.amps[s.amp(i)].read_noise_e;
    variance(i) = static_cast<float>(r * r) * ratio[u];
  }
  Image& im = mb.image;
  im.data = gather_band(value, y0, ny, comm);
  im.variance = gather_band(variance, y0, ny, comm);
  im.mask = gather_band(mask, y0, ny, comm);
  im.unit = "electron";
  provenance(im.header, "BIAS", mb.calhash, mb.nframes, mb.inputs);
  im.header.set("COMBINE", to_string(mb.method), "per-pixel combination");
  im.header.set("NAMP", static_cast<int>(namps), "number of amplifiers");
  for (std::size_t a = 0; a < namps; ++a) {
    const auto& ab = mb.amps[a];
    const auto n = a + 1;
    im.header.set(fmt::format("AMPNAM{}", n), ab.name, "amplifier name");
    im.header.set(fmt::format("GAIN{}", n), ab.gain, "[e-/DN] gain applied");
    im.header.set(fmt::format("BIASLV{}", n), ab.bias_level_dn, "[DN] mean overscan level");
    im.header.set(fmt::format("BIASER{}", n), ab.bias_level_err_dn, "[DN] uncertainty of BIASLV");
    im.header.set(fmt::format("RDNOISE{}", n), ab.read_noise_e, "[e-] read noise from bias pair differences");
    im.header.set(fmt::format("RDNERR{}", n), ab.read_noise_err_e, "[e-] uncertainty of RDNOISE");
  }
  // The numbers as the file will hold them (a header keeps 15 significant digits), so that the master built here and
  // the same master read back from its file calibrate frames bit for bit alike.
  mb.amps = amplifiers_from_header(im.header);
  return mb;
}

namespace {
using K = io::FormatItem::Kind;
/// Items every master has: the three images, MASKBn and the provenance keywords.
std::vector<io::FormatItem> master_common(const char* caltype, const char* unit, const char* var_unit) {
  std::vector<io::FormatItem> v;
  v.push_back({"PRIMARY", K::Image, "PRIMARY", "float32", unit, "the master, NY x NX (pipeline orientation)"});
  v.push_back({"VARIANCE", K::Image, "VARIANCE", "float32", var_unit, "variance of the master"});
  v.push_back({"MASK", K::Image, "MASK", "uint16", "", "mask bits per pixel (MASKBn keywords name them); 0 = good"});
  auto kw = [&](const char* name, const char* type, const std::string& what) {
    v.push_back({"PRIMARY", K::Keyword, name, type, "", what});
  };
  kw("CALTYPE", "string", std::string("kspecdr calibration product: ") + caltype);
  kw("CALHASH", "string", "hash of the inputs (names, sizes, mtimes) and settings");
  kw("NCOMBINE", "int64", "number of frames combined");
  kw("KSPVER", "string", "kspecdr version");
  kw("KSPSHA", "string", "kspecdr git commit");
  kw("IMCMBnnn", "string", "input frame nnn (001 .. NCOMBINE)");
  kw("COMBINE", "string", "per-pixel combination");
  v.push_back({"VARIANCE", K::Keyword, "BUNIT", "string", "", std::string("unit of the variance: ") +
                                                                 (*var_unit ? var_unit : "'' (dimensionless)")});
  v.push_back({"MASK", K::Keyword, "MASKBn", "string", "", "name of mask bit n"});
  return v;
}
}  // namespace

const std::vector<io::FormatItem>& master_bias_format() {
  static const std::vector<io::FormatItem> f = [] {
    auto v = master_common("BIAS", "electron", "(electron)**2");
    auto kw = [&](const char* name, const char* type, const char* unit, const char* what) {
      v.push_back({"PRIMARY", K::Keyword, name, type, unit, what});
    };
    kw("BUNIT", "string", "", "unit of the data: electron");
    kw("NAMP", "int64", "", "number of amplifiers (n = 1 .. NAMP below)");
    kw("AMPNAMn", "string", "", "amplifier name");
    kw("GAINn", "float64", "electron/adu", "gain applied");
    kw("BIASLVn", "float64", "adu", "mean overscan level");
    kw("BIASERn", "float64", "adu", "uncertainty of BIASLVn");
    kw("RDNOISEn", "float64", "electron", "read noise from bias pair differences");
    kw("RDNERRn", "float64", "electron", "uncertainty of RDNOISEn");
    return v;
  }();
  return f;
}

const std::vector<io::FormatItem>& master_flat_format() {
  static const std::vector<io::FormatItem> f = [] {
    auto v = master_common("FLAT", "", "");
    v.front().description = "pixel flat: the combined flat over its large-scale model (about 1), NY x NX";
    auto kw = [&](const char* name, const char* type, const char* unit, const char* what, const char* when = "") {
      v.push_back({"PRIMARY", K::Keyword, name, type, unit, what, when});
    };
    kw("FLATSMTH", "float64", "pixel", "window of the local quadratic model along x");
    kw("FLATRESP", "float64", "", "pixel-to-pixel response rms from the flat");
    kw("ILLUMTHR", "float64", "", "illuminated: model above this fraction of the local maximum");
    kw("LOWFLAT", "float64", "", "pixel flat below this: LOWFLAT mask bit");
    kw("NFLATFNT", "int64", "", "illuminated pixels too faint for the flat to measure: pixel flat 1, variance FLATRESP^2");
    kw("BIASCORR", "string", "", "bias used for the flats: MASTER | OVERSCAN");
    kw("BIASHASH", "string", "", "CALHASH of the master bias used", "BIASCORR = MASTER");
    kw("FLTNRMnn", "float64", "electron", "normalisation of input flat nn");
    v.push_back({"ILLUM", K::Image, "ILLUM", "float32", "",
                 "large-scale model of the normalised combined flat (lamp spectrum x illumination)"});
    return v;
  }();
  return f;
}

void write_master_bias(const fs::path& path, const MasterBias& mb, bool overwrite) {
  write_product(path, mb.image, {}, overwrite);
}

MasterBias read_master_bias(const fs::path& path) {
  MasterBias mb;
  mb.image = read_product(path, "BIAS");
  const Header& h = mb.image.header;
  try {
    mb.calhash = h.get_string("CALHASH").value_or("");
    mb.nframes = static_cast<int>(h.get_int("NCOMBINE").value_or(0));
    mb.method = combine_method_from_string(h.get_string("COMBINE").value_or("median"));
    mb.inputs = read_inputs(h);
    mb.amps = amplifiers_from_header(h);
  } catch (Error& e) {
    e.add_context(ErrorContext{.file = path.string()});
    throw;
  }
  return mb;
}

// ------------------------------------------------------------------ dark

namespace {
double exposure_time(const DetectorFrame& d, const InstrumentProfile& profile) {
  std::string key = profile.keyword("exptime");
  if (key.empty()) key = "EXPTIME";
  auto t = d.header.get_double(key);
  if (!t)
    throw DataError(fmt::format("no exposure time keyword {}", key),
                    ErrorContext{.file = d.file.string(), .keyword = key});
  return *t;
}
}  // namespace

MasterDark build_master_dark(const std::vector<fs::path>& dark_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const DetectorConfig& cfg) {
  FrameStack s = read_stack(dark_files, profile, cfg, "dark", nullptr, false);
  const bool sub_bias = bias && cfg.use_bias;
  const std::size_t nf = s.size();
  double tsum = 0;
  for_local_frames(s, [&](std::size_t, DetectorFrame& d) {
    const double t = exposure_time(d, profile);
    if (!(t > 0))
      throw DataError(fmt::format("dark frame has exposure time {} s", t),
                      ErrorContext{.file = d.file.string(), .keyword = profile.keyword("exptime")});
    if (sub_bias) {
      if (bias->image.data.rows() != d.electrons.rows() || bias->image.data.cols() != d.electrons.cols())
        throw DataError("master bias and dark frames differ in shape", ErrorContext{.file = d.file.string()});
      d.electrons -= bias->image.data;
    }
    d.electrons /= static_cast<float>(t);
    tsum += t;
  });
  to_bands(s);
  const double tmean = tsum / static_cast<double>(nf);
  CombinedBand c = combine(pointers(s.bands), CombineOptions{cfg.dark_combine, cfg.combine_clip_sigma});
  MasterDark md;
  md.nframes = static_cast<int>(nf);
  md.inputs = s.names;
  md.calhash = calibration_hash(dark_files, bias_config_text(profile, cfg) + ";dark;" + to_string(cfg.dark_combine) +
                                                (sub_bias ? bias->calhash : std::string("none")));
  Image& im = md.rate;
  im.data = std::move(c.value);
  im.variance.resize(im.data.rows(), im.data.cols());
  im.mask = MaskArray::Zero(im.data.rows(), im.data.cols());
  for (Eigen::Index i = 0; i < im.data.size(); ++i) {
    if (c.used(i) == 0 || !std::isfinite(im.data(i))) {
      im.data(i) = 0.0f;
      im.variance(i) = 0.0f;
      im.mask(i) = kMaskBad;
      continue;
    }
    const std::uint8_t a = s.amp(i);
    double rn = 0;
    if (sub_bias && a < bias->amps.size()) rn = bias->amps[a].read_noise_e;
    else if (a < s.amps.size()) rn = s.amps[a].read_noise;
    const double var_e = rn * rn + std::max(0.0, static_cast<double>(im.data(i)) * tmean) +
                         (sub_bias ? bias->image.variance(i) : 0.0f);
    im.variance(i) = static_cast<float>(var_e / (tmean * tmean) * combined_variance_ratio(cfg.dark_combine, c.used(i)));
  }
  im.unit = "electron/s";
  provenance(im.header, "DARK", md.calhash, md.nframes, md.inputs);
  im.header.set("EXPTIME", tmean, "[s] mean exposure time of the darks");
  return md;
}

void write_master_dark(const fs::path& path, const MasterDark& md, bool overwrite) {
  write_product(path, md.rate, {}, overwrite);
}

MasterDark read_master_dark(const fs::path& path) {
  MasterDark md;
  md.rate = read_product(path, "DARK");
  md.calhash = md.rate.header.get_string("CALHASH").value_or("");
  md.nframes = static_cast<int>(md.rate.header.get_int("NCOMBINE").value_or(0));
  md.inputs = read_inputs(md.rate.header);
  return md;
}

// ------------------------------------------------------------------ flat

namespace {

/// Degree of the local polynomial of the flat model along x.
constexpr int kFlatDegree = 4;
constexpr int kNc = kFlatDegree + 1;      ///< coefficients
constexpr int kNm = 2 * kFlatDegree + 1;  ///< moments of the normal matrix

/// Running sums over the window of one row about the current centre x, for the local polynomial
/// fit: g u^j (j < kNm), g c u^j (j < kNc) and g v u^j (j < kNm), where u = (k - x) / h is the
/// column offset from the centre in units of the half-width h, g = 1 for pixels that take part in
/// the fit (0 otherwise), c the combined flat and v its variance.
struct WindowSums {
  std::array<double, kNm> m{}, vv{};
  std::array<double, kNc> c{};

  void add(double u, double cv, double var, double sign) {
    double p = sign;
    for (int j = 0; j < kNm; ++j) {
      const auto js = static_cast<std::size_t>(j);
      m[js] += p;
      vv[js] += p * var;
      if (j < kNc) c[js] += p * cv;
      p *= u;
    }
  }
  /// The coefficients of a move of the centre by d in u: every sum of u^j becomes the sum of (u - d)^j =
  /// sum_i binom(j, i) u^i (-d)^(j - i). Computed once per fit (d is the same for every step of one column).
  struct Shift {
    std::array<std::array<double, kNm>, kNm> coef{};  ///< coef[j][i] = binom(j, i) (-d)^(j - i), i <= j
    explicit Shift(double d) {
      for (std::size_t j = 0; j < kNm; ++j) {
        double binom = 1.0, pw = 1.0;  // binom(j, j), (-d)^0
        for (std::size_t i = j + 1; i-- > 0;) {
          coef[j][i] = binom * pw;
          binom = binom * static_cast<double>(i) / static_cast<double>(j - i + 1);
          pw *= -d;
        }
      }
    }
  };
  template <std::size_t N>
  static void shift(std::array<double, N>& s, const Shift& t) {
    std::array<double, N> out{};
    for (std::size_t j = 0; j < N; ++j)
      for (std::size_t i = j + 1; i-- > 0;) out[j] += t.coef[j][i] * s[i];
    s = out;
  }
  void shift(const Shift& t) {
    shift(m, t);
    shift(vv, t);
    shift(c, t);
  }
};

}  // namespace

FlatModel flat_large_scale_model(const ImageArray& combined, const ImageArray& variance, double window_px,
                                 double clip_sigma, const mpi::Comm* comm) {
  const Eigen::Index ny = combined.rows(), nx = combined.cols();
  if (variance.rows() != ny || variance.cols() != nx)
    throw DataError("flat model: combined flat and its variance differ in shape");
  FlatModel fm;
  fm.model.resize(ny, nx);
  fm.noise_variance.resize(ny, nx);
  fm.weight_sq.resize(ny, nx);
  fm.self_weight.resize(ny, nx);
  // Half-width of the window: at least kFlatDegree + 1 (twice as many points as coefficients), at
  // most what the row holds.
  const Eigen::Index h = std::max<Eigen::Index>(
      kFlatDegree + 1,
      std::min<Eigen::Index>(static_cast<Eigen::Index>(std::lround(0.5 * (window_px - 1.0))), (nx - 1) / 2));
  const double inv_h = 1.0 / static_cast<double>(h);
  // Pixels that take part: finite value and variance. `use` is cleared for clipped pixels.
  std::vector<std::uint8_t> use(static_cast<std::size_t>(ny * nx));
  for (Eigen::Index i = 0; i < combined.size(); ++i)
    use[static_cast<std::size_t>(i)] = std::isfinite(combined(i)) && std::isfinite(variance(i)) && variance(i) >= 0.0f;

  // One local polynomial fit of every pixel of every row with the current `use`.
  const WindowSums::Shift step(inv_h);  // the window moves by one column, 1/h in u
  auto fit = [&] {
    using Mat = Eigen::Matrix<double, kNc, kNc>;
    using Vec = Eigen::Matrix<double, kNc, 1>;
    Mat normal;
    std::vector<Vec> full_coeffs(static_cast<std::size_t>(2 * h + 1));
    std::vector<std::uint8_t> have_full(full_coeffs.size(), 0);
    for (Eigen::Index y = 0; y < ny; ++y) {
      const float* cr = combined.data() + y * nx;
      const float* vr = variance.data() + y * nx;
      const std::uint8_t* ur = use.data() + y * nx;
      // The window [lo, lo + 2h], centred on x, shifted inwards at the row ends.
      auto window_lo = [&](Eigen::Index x) {
        return std::clamp<Eigen::Index>(x - h, 0, std::max<Eigen::Index>(0, nx - 1 - 2 * h));
      };
      auto add = [&](WindowSums& s, Eigen::Index k, Eigen::Index x, double sign) {
        if (ur[k]) s.add(static_cast<double>(k - x) * inv_h, cr[k], vr[k], sign);
      };
      WindowSums s;
      Eigen::Index lo = 0, hi = -1;
      for (Eigen::Index x = 0; x < nx; ++x) {
        // Rebuilt from scratch every 64 columns so that rounding in the shifted sums cannot grow.
        if (x % 64 == 0) {
          s = WindowSums{};
          lo = window_lo(x);
          hi = std::min(nx - 1, lo + 2 * h);
          for (Eigen::Index k = lo; k <= hi; ++k) add(s, k, x, 1.0);
        } else {
          s.shift(step);
          const Eigen::Index nlo = window_lo(x), nhi = std::min(nx - 1, nlo + 2 * h);
          for (; lo < nlo; ++lo) add(s, lo, x, -1.0);
          while (hi < nhi) add(s, ++hi, x, 1.0);
        }
        // Value at u = 0 of the least-squares polynomial: a . c with a = N^-1 e0, N the moment
        // (Hankel) matrix. The fit is linear in the pixels with weights w(u) = sum_j a_j u^j,
        // whose squares, summed against the variances, give the model's variance.
        const auto& mm = s.m;
        const std::size_t i = static_cast<std::size_t>(y * nx + x);
        if (mm[0] < 0.5) {
          // No usable pixel in the window: a model of 0 puts the pixel outside the footprint.
          fm.model(y, x) = 0.0f;
          fm.noise_variance(y, x) = fm.weight_sq(y, x) = fm.self_weight(y, x) = 0.0f;
          continue;
        }
        Vec a = Vec::Zero();
        bool solved = false;
        // With every pixel of the window in use the coefficients depend only on where x lies in
        // the window: computed once per position (the Savitzky-Golay weights).
        const bool full = mm[0] == static_cast<double>(hi - lo + 1) && hi - lo == 2 * h;
        const auto pos = static_cast<std::size_t>(x - lo);
        if (full && have_full[pos]) {
          a = full_coeffs[pos];
          solved = true;
        } else if (mm[0] >= 2.0 * kNc) {
          // At least twice as many pixels as coefficients; the polynomial is dropped to the
          // window mean when the pixels are too few or too lopsided for a well-conditioned fit.
          for (int r = 0; r < kNc; ++r)
            for (int q = 0; q < kNc; ++q) normal(r, q) = mm[static_cast<std::size_t>(r + q)];
          Eigen::LDLT<Mat> ldlt(normal);
          if (ldlt.info() == Eigen::Success && ldlt.isPositive() && ldlt.rcond() > 1e-10) {
            a = ldlt.solve(Vec::Unit(0));
            solved = a.allFinite();
            if (solved && full) {
              full_coeffs[pos] = a;
              have_full[pos] = 1;
            }
          }
        }
        if (!solved) {
          a.setZero();
          a(0) = 1.0 / mm[0];
        }
        double value = 0, nvar = 0, wsq = 0;
        for (int r = 0; r < kNc; ++r) {
          value += a(r) * s.c[static_cast<std::size_t>(r)];
          for (int q = 0; q < kNc; ++q) {
            nvar += a(r) * a(q) * s.vv[static_cast<std::size_t>(r + q)];
            wsq += a(r) * a(q) * mm[static_cast<std::size_t>(r + q)];
          }
        }
        fm.model(y, x) = static_cast<float>(value);
        fm.noise_variance(y, x) = static_cast<float>(std::max(0.0, nvar));
        fm.weight_sq(y, x) = static_cast<float>(std::max(0.0, wsq));
        fm.self_weight(y, x) = use[i] ? static_cast<float>(a(0)) : 0.0f;
      }
    }
  };

  // Pixel-to-pixel response scatter s^2 from the residuals of bright pixels (model above half the
  // brightest model value of its row): r = c/m - 1 has variance (v/m^2 + s^2)(1 - w0) for a
  // linear smoother that includes the pixel with weight w0. Robustly: the squared normalised MAD
  // of r (dead and hot pixels, residual cosmic rays do not move it) less the median noise term.
  auto response_variance = [&] {
    std::vector<double> r, noise, w0s;
    for (Eigen::Index y = 0; y < ny; ++y) {
      float rowmax = 0.0f;
      for (Eigen::Index x = 0; x < nx; ++x)
        if (std::isfinite(fm.model(y, x))) rowmax = std::max(rowmax, fm.model(y, x));
      for (Eigen::Index x = 0; x < nx; ++x) {
        const float m = fm.model(y, x);
        if (!use[static_cast<std::size_t>(y * nx + x)] || !(m > 0.5f * rowmax) || !(m > 0.0f)) continue;
        r.push_back(std::abs(combined(y, x) / m - 1.0));
        noise.push_back(variance(y, x) / (static_cast<double>(m) * m));
        w0s.push_back(fm.self_weight(y, x));
      }
    }
    const long long n = comm ? comm->sum(static_cast<long long>(r.size())) : static_cast<long long>(r.size());
    if (n < 10) return 0.0;
    const double sig = 1.4826 * median_of(r, comm);
    const double w0 = std::clamp(median_of(w0s, comm), 0.0, 0.5);
    return std::max(0.0, sig * sig / (1.0 - w0) - median_of(noise, comm));
  };

  fit();
  fm.response_variance = response_variance();
  // Two rounds of clipping against the noise of each pixel (Poisson and read noise from the
  // variance, response scatter from s^2), each followed by a new fit; a clipped pixel may come
  // back when the refit model moves towards it.
  for (int round = 0; round < 2; ++round) {
    for (Eigen::Index i = 0; i < combined.size(); ++i) {
      const double c = combined(i), v = variance(i), m = fm.model(i);
      if (!std::isfinite(c) || !std::isfinite(v) || v < 0.0) continue;
      const double sigma = std::sqrt(v + m * m * fm.response_variance);
      use[static_cast<std::size_t>(i)] = std::abs(c - m) <= clip_sigma * sigma;
    }
    fit();
  }
  return fm;
}

MasterFlat build_master_flat(const std::vector<fs::path>& flat_files, const InstrumentProfile& profile,
                             const MasterBias* bias, const MasterDark* dark, const DetectorConfig& cfg,
                             const mpi::Comm* comm) {
  if (!(cfg.low_flat_threshold >= 0.0 && cfg.low_flat_threshold < 1.0))
    throw ConfigError(fmt::format("master flat: low_flat_threshold {} must lie in [0, 1)", cfg.low_flat_threshold));
  if (!(cfg.illumination_min_snr >= 0.0))
    throw ConfigError(fmt::format("master flat: illumination-min-snr {} must be >= 0", cfg.illumination_min_snr));
  FrameStack s = read_stack(flat_files, profile, cfg, "flat", comm, /*pairs=*/false);
  const bool sub_bias = bias && cfg.use_bias, sub_dark = dark && cfg.use_dark;
  const std::size_t nf = s.size();
  // Each frame prepared where it was read: master bias and dark subtracted, normalised by its illuminated level.
  const auto numbers = per_frame(s, [&](std::size_t, DetectorFrame& d) {
    ImageArray& f = d.electrons;
    const std::string file = d.file.string();
    double t = 0.0;
    if (sub_bias) {
      if (bias->image.data.rows() != f.rows() || bias->image.data.cols() != f.cols())
        throw DataError("master bias and flat frame differ in shape", ErrorContext{.file = file});
      f -= bias->image.data;
    }
    if (sub_dark) {
      t = exposure_time(d, profile);
      f -= dark->rate.data * static_cast<float>(t);
    }
    const double level = illuminated_median(f, cfg.illumination_threshold);
    if (!(level > 0))
      throw DataError(fmt::format("flat frame has no illuminated pixels (median level {})", level),
                      ErrorContext{.file = file});
    f /= static_cast<float>(level);
    return std::vector<double>{level, t};
  });
  std::vector<double> norm(nf), texp(nf);
  for (std::size_t k = 0; k < nf; ++k) norm[k] = numbers[k][0], texp[k] = numbers[k][1];
  // Everything per pixel below is done on this rank's band of rows [y0, y1) (the whole frame without comm);
  // only the illumination model is needed whole (its local maximum looks at neighbouring rows).
  to_bands(s);
  const Eigen::Index ny = s.ny, nx = s.nx, y0 = s.y0, y1 = s.y1;
  const Eigen::Index off = y0 * nx;  // index of the band's first pixel in the whole frame
  CombinedBand c = combine_rows(pointers(s.bands), 0, y1 - y0, CombineOptions{cfg.flat_combine, cfg.combine_clip_sigma});
  const ImageArray& comb = c.value;

  // Per-pixel variance of the combined normalised flat: each frame's electrons variance
  // (Poisson of the combined level scaled back, read noise, master bias/dark) over norm^2.
  std::vector<double> rn(s.amps.size());
  for (std::size_t a = 0; a < rn.size(); ++a)
    rn[a] = sub_bias && a < bias->amps.size() ? bias->amps[a].read_noise_e : s.amps[a].read_noise;
  ImageArray var_comb(comb.rows(), nx);
  for (Eigen::Index i = 0; i < comb.size(); ++i) {
    const double cv = comb(i);
    if (c.used(i) == 0 || !std::isfinite(cv)) {
      var_comb(i) = 0.0f;
      continue;
    }
    const Eigen::Index j = off + i;  // whole-frame index
    const double extra = (sub_bias ? bias->image.variance(j) : 0.0) + rn[s.amp(i)] * rn[s.amp(i)];
    double sum = 0;
    for (std::size_t k = 0; k < nf; ++k) {
      double v = std::max(0.0, cv * norm[k]) + extra;
      if (sub_dark) v += dark->rate.variance(j) * texp[k] * texp[k];
      sum += v / (norm[k] * norm[k]);
    }
    var_comb(i) = static_cast<float>(sum / static_cast<double>(nf) *
                                      combined_variance_ratio(cfg.flat_combine, c.used(i)));
  }

  MasterFlat mf;
  mf.nframes = static_cast<int>(nf);
  mf.inputs = s.names;
  mf.calhash = calibration_hash(flat_files, flat_config_text(profile, cfg, bias, dark));
  // Pixels the combine could not use have no value: NaN keeps them out of the model.
  ImageArray comb_fit = comb;
  for (Eigen::Index i = 0; i < comb.size(); ++i)
    if (c.used(i) == 0) comb_fit(i) = std::numeric_limits<float>::quiet_NaN();
  FlatModel fm = flat_large_scale_model(comb_fit, var_comb, cfg.flat_smooth_px, 4.0, comm);
  mf.illumination = gather_band(fm.model, y0, ny, comm);
  const ImageArray local_max = running_max_rows(mf.illumination, cfg.illumination_halfwindow);
  Image& pf = mf.pixel_flat;
  pf.data.resize(comb.rows(), nx);
  pf.variance.resize(comb.rows(), nx);
  pf.mask = MaskArray::Zero(comb.rows(), nx);
  long long nlit = 0, nlow = 0, nhigh = 0, nfaint = 0;
  for (Eigen::Index i = 0; i < comb.size(); ++i) {
    const double mdl = fm.model(i);
    // Illuminated: above a fraction of the local maximum across the rows, and detected above the model's noise.
    const double snr_min = cfg.illumination_min_snr;
    const bool lit = std::isfinite(mdl) && mdl > 0 && mdl > cfg.illumination_threshold * local_max(off + i) &&
                     mdl * mdl > snr_min * snr_min * static_cast<double>(fm.noise_variance(i));
    if (!lit) {
      pf.data(i) = 1.0f;
      pf.variance(i) = 0.0f;
      pf.mask(i) = kMaskUnilluminated;
      continue;
    }
    ++nlit;
    if (c.used(i) == 0 || !std::isfinite(comb(i))) {
      pf.data(i) = 1.0f;
      pf.variance(i) = 0.0f;
      pf.mask(i) = kMaskBad;
      continue;
    }
    // p = c0 / m with m = sum_k w_k c_k. To first order the error of p is
    //   (1 - p w0) n0 / m  -  p sum_{k != 0} w_k n_k / m  -  p sum_k w_k (S_k - 1),
    // with n_k the noise of pixel k and S_k its response: the pixel's own noise (partly cancelled
    // because it is in its own model), the noise of the others in the window, and the response
    // averaged by the model, whose scatter about the detector-wide mean 1 is s^2 sum_k w_k^2.
    const double p = comb(i) / mdl;
    const double v0 = var_comb(i), w0 = fm.self_weight(i);
    const double others = std::max(0.0, static_cast<double>(fm.noise_variance(i)) - w0 * w0 * v0);
    const double var_p = ((1.0 - p * w0) * (1.0 - p * w0) * v0 + p * p * others) / (mdl * mdl) +
                         p * p * fm.response_variance * fm.weight_sq(i);
    pf.data(i) = static_cast<float>(p);
    pf.variance(i) = static_cast<float>(var_p);
    // Where the lamp is faint (a filter's cut-on, the far wings of a fiber) the pixel flat may be too noisy to
    // tell a normal pixel (1) from a low one: a normal pixel's flat noise must be below a third of the distance
    // from 1 to the low threshold. Where it is not, the flat does not measure the pixel: it is taken as the
    // detector's typical pixel, 1 with the response scatter s^2 as variance (the light there is kept, not masked).
    const double var_normal = ((1.0 - w0) * (1.0 - w0) * v0 + others) / (mdl * mdl) +
                              fm.response_variance * fm.weight_sq(i);
    const double resolvable = (1.0 - cfg.low_flat_threshold) / 3.0;
    if (!(var_normal < resolvable * resolvable)) {
      pf.data(i) = 1.0f;
      pf.variance(i) = static_cast<float>(fm.response_variance);
      ++nfaint;
    } else if (p < cfg.low_flat_threshold) {
      pf.mask(i) |= kMaskLowFlat;
      ++nlow;
    } else if (p > cfg.high_flat_threshold) {
      pf.mask(i) |= kMaskBad;
      ++nhigh;
    }
  }
  pf.data = gather_band(pf.data, y0, ny, comm);
  pf.variance = gather_band(pf.variance, y0, ny, comm);
  pf.mask = gather_band(pf.mask, y0, ny, comm);
  if (comm) {
    nlit = comm->sum(nlit);
    nlow = comm->sum(nlow);
    nhigh = comm->sum(nhigh);
    nfaint = comm->sum(nfaint);
  }
  if (!comm || comm->is_root())
    spdlog::info("master flat: {} frames, {:.1f} % of pixels illuminated, {} low and {} high pixel-flat values, {} "
                 "illuminated too faintly to measure (pixel flat 1 +- response rms), response rms {:.4f}",
                 nf, 100.0 * static_cast<double>(nlit) / static_cast<double>(ny * nx), nlow, nhigh, nfaint,
                 std::sqrt(fm.response_variance));
  pf.unit = "";
  provenance(pf.header, "FLAT", mf.calhash, mf.nframes, mf.inputs);
  pf.header.set("COMBINE", to_string(cfg.flat_combine), "per-pixel combination");
  pf.header.set("FLATSMTH", cfg.flat_smooth_px, "[px] window of the local quadratic model along x");
  pf.header.set("FLATRESP", std::sqrt(fm.response_variance), "pixel-to-pixel response rms from the flat");
  pf.header.set("ILLUMTHR", cfg.illumination_threshold, "illuminated: model above this fraction of local max");
  pf.header.set("LOWFLAT", cfg.low_flat_threshold, "pixel flat below this: LOWFLAT mask bit");
  pf.header.set("NFLATFNT", nfaint, "lit pixels too faint to measure: flat 1 +- FLATRESP");
  pf.header.set("BIASCORR", sub_bias ? std::string("MASTER") : std::string("OVERSCAN"), "bias used for the flats");
  if (sub_bias) pf.header.set("BIASHASH", bias->calhash, "CALHASH of the master bias used");
  for (std::size_t k = 0; k < nf && k < 999; ++k)
    pf.header.set(fmt::format("FLTNRM{:02d}", k + 1), norm[k], "[e-] normalisation of input flat");
  return mf;
}

void write_master_flat(const fs::path& path, const MasterFlat& mf, bool overwrite) {
  write_product(path, mf.pixel_flat, {{"ILLUM", &mf.illumination}}, overwrite);
}

MasterFlat read_master_flat(const fs::path& path) {
  MasterFlat mf;
  mf.pixel_flat = read_product(path, "FLAT");
  mf.calhash = mf.pixel_flat.header.get_string("CALHASH").value_or("");
  mf.nframes = static_cast<int>(mf.pixel_flat.header.get_int("NCOMBINE").value_or(0));
  mf.inputs = read_inputs(mf.pixel_flat.header);
  fits::Fits f = fits::Fits::open(path);
  f.move_to("ILLUM");
  mf.illumination = f.read_image_float();
  if (mf.illumination.rows() != mf.pixel_flat.data.rows() || mf.illumination.cols() != mf.pixel_flat.data.cols())
    throw DataError("ILLUM and the pixel flat differ in shape", ErrorContext{.file = path.string(), .hdu = "ILLUM"});
  return mf;
}

}  // namespace kspecdr::detector
