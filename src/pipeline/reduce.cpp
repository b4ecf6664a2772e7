#include "kspecdr/pipeline/reduce.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <limits>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>

#include <sys/resource.h>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/names.hpp"
#include "kspecdr/core/log.hpp"
#include "kspecdr/detector/calibrate.hpp"
#include "kspecdr/detector/masters.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/extract/extract.hpp"
#include "kspecdr/pipeline/obslog.hpp"
#include "kspecdr/pipeline/red_stage.hpp"
#include "kspecdr/pipeline/diagnostics.hpp"
#include "kspecdr/series/rainbow.hpp"
#include "kspecdr/core/version.hpp"
#include "kspecdr/trace/trace_file.hpp"

namespace kspecdr {
namespace fs = std::filesystem;

std::string setup_slug(const std::string& setup) { return safe_name(setup, "default"); }

namespace {

/// Wall time spent in each phase of the night (summed over setups), as this rank saw it: where the time of a
/// run goes, reported by rank 0 at the end (a phase of one rank includes its waits for the others).
class PhaseClock {
 public:
  /// Charges the time since the previous mark to `phase`.
  void mark(const std::string& phase) {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    for (auto& [name, t] : phases_)
      if (name == phase) {
        t += s;
        return;
      }
    phases_.emplace_back(phase, s);
  }
  std::string report() const {
    std::string out;
    double total = 0;
    for (const auto& [name, t] : phases_) {
      out += fmt::format("{}{} {:.2f} s", out.empty() ? "" : ", ", name, t);
      total += t;
    }
    return fmt::format("{} (total {:.2f} s)", out, total);
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, double>> phases_;
};

/// One unit of work of the plan, as broadcast from rank 0.
struct PlannedFrame {
  std::string name, file, setup;
  FrameClass frame_class = FrameClass::Unknown;
  std::string object;  ///< tabs and newlines replaced by blanks
  double mjd = 0.0;    ///< MJD (UTC) at mid-exposure
  double exptime_s = 0.0, airmass = 0.0, ra_deg = 0.0, dec_deg = 0.0;
};

std::string serialize(const std::vector<PlannedFrame>& plan) {
  std::ostringstream os;
  for (const auto& p : plan)
    os << to_string(p.frame_class) << '\t' << p.setup << '\t' << p.name << '\t' << fmt::format("{:.10f}", p.mjd)
       << '\t' << fmt::format("{:.17g}\t{:.17g}\t{:.17g}\t{:.17g}", p.exptime_s, p.airmass, p.ra_deg, p.dec_deg)
       << '\t' << p.object << '\t' << p.file << '\n';
  return os.str();
}

std::vector<PlannedFrame> deserialize(const std::string& text) {
  std::vector<PlannedFrame> plan;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) {
    std::vector<std::string> f;
    std::size_t pos = 0;
    for (int i = 0; i < 9; ++i) {
      auto tab = line.find('\t', pos);
      f.push_back(line.substr(pos, tab - pos));
      pos = tab + 1;
    }
    f.push_back(line.substr(pos));  // the file name last: it may hold any character but a newline
    plan.push_back({f[2], f[9], f[1], frame_class_from_string(f[0]), f[8], std::stod(f[3]), std::stod(f[4]),
                    std::stod(f[5]), std::stod(f[6]), std::stod(f[7])});
  }
  return plan;
}

/// Runs `work` on rank 0 only and makes its outcome known everywhere: an error becomes the same error on
/// every rank, so no rank waits in a collective that another has left.
void on_root(const mpi::Comm& comm, const std::function<void()>& work) {
  mpi::all_or_throw(comm, [&] {
    if (comm.is_root()) work();
  });
}

/// FNV-1a 64-bit of a text, as 16 hex digits: a stable identifier of a configuration.
std::string fnv1a_hex(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

/// True when `path` is a complete output of this configuration: every HDU's CHECKSUM/DATASUM verifies and
/// the primary header's CFGHASH is `config_hash`; `made_by` is then the KSPSHA of the build that wrote it.
/// Otherwise false, with the reason in `why` (a file cut short by a kill, a file of another configuration, an
/// unreadable file).
bool output_is_current(const fs::path& path, const std::string& config_hash, std::string& why, std::string& made_by) {
  try {
    auto f = fits::Fits::open(path);
    if (!f.verify_checksums()) {
      why = "its checksums do not verify (written incompletely?)";
      return false;
    }
    f.move_to(0);
    const Header primary = f.read_header();
    const std::string h = primary.get_string("CFGHASH").value_or("");
    if (h != config_hash) {
      why = fmt::format("it was made with another configuration (CFGHASH {} instead of {})", h.empty() ? "none" : h,
                        config_hash);
      return false;
    }
    made_by = primary.get_string("KSPSHA").value_or("");
    return true;
  } catch (const std::exception& e) {
    why = std::string("it cannot be read: ") + e.what();
    return false;
  }
}

/// A product kept or reused from an earlier run that another kspecdr build (`made_by`, its KSPSHA) wrote: counted
/// and said at `level` (the configuration hash does not cover the code: the product holds what its own build
/// computed). Nothing when this build wrote it.
void note_other_build(ReduceSummary& summary, const std::string& what, const std::string& made_by,
                      spdlog::level::level_enum level) {
  if (made_by == git_sha()) return;
  ++summary.kept_from_other_build;
  spdlog::log(level, "{} was made by another kspecdr build (git {}; this one is git {}); kept as it is (--overwrite "
                     "remakes it)",
              what, made_by.empty() ? "unknown" : made_by, git_sha());
}

/// Whether to skip an existing output: kept (and counted in `summary`) when current and --overwrite is not
/// given, redone otherwise.
bool keep_existing(const ReduceConfig& cfg, const fs::path& out, const std::string& config_hash,
                   const std::string& exposure, ReduceSummary& summary) {
  if (!fs::exists(out) || cfg.overwrite) return false;
  std::string why, made_by;
  if (output_is_current(out, config_hash, why, made_by)) {
    spdlog::info("{}: {} exists and is current; kept (pass --overwrite to redo it)", exposure, out.string());
    ++summary.skipped;
    note_other_build(summary, out.string(), made_by, spdlog::level::info);
    return true;
  }
  spdlog::warn("{}: {} exists but {}; redoing it", exposure, out.string(), why);
  return false;
}

/// keep_existing for a rank group: the group's root decides, so that every rank of the group takes the
/// same way, and counts the skipped exposure once.
bool group_keeps_existing(const mpi::Comm& group, const ReduceConfig& cfg, const fs::path& out,
                          const std::string& config_hash, const std::string& exposure, ReduceSummary& summary) {
  long long keep = group.is_root() && keep_existing(cfg, out, config_hash, exposure, summary) ? 1 : 0;
  if (group.size() > 1) group.bcast(keep);
  return keep != 0;
}

/// Where a path points, spelled one way: absolute, symbolic links of its existing part resolved, "." and ".."
/// and a trailing separator gone. The same for "nights/x/raw", "./nights/x/raw/" and "/home/me/nights/x/raw".
fs::path where(const fs::path& p) {
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  if (ec) return p.lexically_normal();
  fs::path c = fs::weakly_canonical(a, ec);
  if (ec) c = a.lexically_normal();
  while (c.filename().empty() && c.has_parent_path() && c != c.parent_path()) c = c.parent_path();
  return c;
}

/// The configuration text whose hash names the outputs' provenance: the resolved configuration without
/// the options that choose how far and how a run goes rather than what it computes.
std::string provenance_text(const std::string& resolved) {
  std::istringstream is(resolved);
  std::string out, line;
  while (std::getline(is, line)) {
    // Comments (the version line: the outputs carry KSPVER and KSPSHA themselves), the options that do not
    // change what is computed (how far a run goes, what it overwrites, how it logs and flushes) and the output
    // folder itself (a night's folder moved elsewhere resumes) are left out. The raw folder and an instrument
    // profile given as a file count by where they point, not how they are spelled, whether or not they exist
    // yet (else the first run, before its folders exist, and its re-run would disagree).
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find(" = ");
    const std::string key = eq == std::string::npos ? line : line.substr(0, eq);
    if (key == "stage" || key == "overwrite" || key == "night" || key == "log-level" || key == "fsync" ||
        key == "out")
      continue;
    if ((key == "raw" || key == "instrument") && eq != std::string::npos) {
      const fs::path p(line.substr(eq + 3));
      std::error_code ec;
      // A profile named by its name (not a file here) stays a name.
      if (key == "raw" || fs::exists(p, ec)) {
        out += key + " = " + where(p).string() + "\n";
        continue;
      }
    }
    out += line + "\n";
  }
  return out;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

std::vector<fs::path> files_of(const std::vector<PlannedFrame>& plan, const std::string& setup, FrameClass c) {
  std::vector<fs::path> out;
  for (const auto& p : plan)
    if (p.setup == setup && p.frame_class == c) out.emplace_back(p.file);
  return out;
}

/// The light of the flat lamp as the detector saw it (normalised): pixel flat × large-scale model, with the
/// pixel flat's variance scaled alike. Fiber traces are found on it, and fiber throughputs extracted from it.
Image flat_light(const detector::MasterFlat& flat) {
  Image im = flat.pixel_flat;
  im.data = flat.pixel_flat.data * flat.illumination;
  im.variance = flat.pixel_flat.variance * flat.illumination.square();
  return im;
}

/// Weights of the items of a step for mpi::group_sizes: their files' sizes (rank 0 looks, every rank gets the same
/// numbers); a file that cannot be sized weighs 1 byte.
std::vector<double> file_weights(const std::vector<fs::path>& files, const mpi::Comm& comm) {
  std::vector<double> w(files.size(), 1.0);
  if (comm.is_root())
    for (std::size_t i = 0; i < files.size(); ++i) {
      std::error_code ec;
      const auto size = fs::file_size(files[i], ec);
      if (!ec && size > 0) w[i] = static_cast<double>(size);
    }
  comm.bcast(w);
  return w;
}

/// Deals the items of a step to the ranks. All but the last (size mod n) items go one at a time to whichever rank
/// is free (mpi::WorkQueue: a rank takes the next item when it has finished its last, so a faster rank takes more);
/// the last items, fewer than the ranks, go each to a group of ranks (mpi::group_sizes by `weights`: every rank
/// works, and the larger items get the larger groups) that share it through a communicator of their own
/// (MPI_Comm_split). `work(item, group)` runs on every rank of the item's group (a group of one rank before the
/// last items) and returns the (done, failed) counts it adds: the group's root counts the item, the other ranks
/// nothing. The counts are kept without holding the ranks in step, for the progress shown on rank 0.
void deal_items(const mpi::Comm& comm, const std::vector<double>& weights, Progress& progress, const std::string& what,
                const std::function<std::pair<long long, long long>(std::size_t, const mpi::Comm&)>& work) {
  const auto n = static_cast<std::size_t>(comm.size()), me = static_cast<std::size_t>(comm.rank());
  const std::size_t full = weights.size() / n;
  mpi::WorkQueue queue(comm, static_cast<long long>(full * n));
  auto count = [&](std::pair<long long, long long> c) {
    queue.add(c.first, c.second);
    const auto [d, f] = queue.totals();
    progress.set(static_cast<std::size_t>(d), static_cast<std::size_t>(f));
  };
  for (long long i; (i = queue.next()) >= 0;) count(work(static_cast<std::size_t>(i), mpi::self()));
  if (full * n < weights.size()) {
    const std::vector<double> rest(weights.begin() + static_cast<std::ptrdiff_t>(full * n), weights.end());
    const std::vector<int> sizes = mpi::group_sizes(rest, comm.size());
    if (comm.is_root()) spdlog::info("{}: the last {} item(s) shared by rank groups of {}", what, rest.size(),
                                     fmt::join(sizes, ", "));
    std::size_t item = 0;
    for (std::size_t first = 0; me >= first + static_cast<std::size_t>(sizes[item]);)
      first += static_cast<std::size_t>(sizes[item++]);
    const mpi::Comm group = comm.split(static_cast<int>(item), comm.rank());
    count(work(full * n + item, group));
  }
  const auto [d, f] = queue.finish();
  progress.set(static_cast<std::size_t>(d), static_cast<std::size_t>(f));
}

/// IM → EX for one setup: master traces (every rank fits them to the same image, so they agree without being
/// sent; in slit mode that image, the mean of the science IMs, is read by bands of rows split over the ranks),
/// then exposures dealt to ranks in rounds like the IM step. The master flat and
/// bias (nullptr = none) give the calibration noise of the IM pixels to the extraction's model variance.
void extract_setup(const ReduceConfig& cfg, const InstrumentProfile& profile, const std::string& setup,
                   const std::vector<const PlannedFrame*>& work, const detector::MasterFlat* flat,
                   const detector::MasterBias* bias, const fs::path& imdir, const fs::path& exdir,
                   const mpi::Comm& comm, ReduceSummary& summary, const std::string& config_hash,
                   std::map<std::string, std::string>& trace_keys, PhaseClock& clock) {
  auto im_path = [&](const PlannedFrame& p) { return imdir / (p.name + ".im.fits"); };
  std::vector<const PlannedFrame*> usable;
  for (const auto* p : work)
    if (fs::exists(im_path(*p))) usable.push_back(p);

  // Master traces: fiber mode one set from the flat; slit mode one set per object (the stars of one
  // pointing), and frames of an object without science frames (e.g. arcs named after the lamp) take
  // the set of the science group nearest in time.
  std::map<std::string, TraceSet> masters;
  std::map<std::string, std::string> trace_errors;
  std::vector<std::pair<double, std::string>> science_times;  // (mjd, object) of science frames
  auto build = [&](const std::string& key, const std::vector<const PlannedFrame*>& science_frames) {
    try {
      std::vector<ApertureInfo> fibres;
      Image slit_mean, flat_image;
      if (profile.mode == SpectroMode::Slit) {
        // Each rank reads its band of rows of every frame: the reading is split, the mean the same.
        std::vector<fs::path> files;
        for (const auto* p : science_frames) files.push_back(im_path(*p));
        slit_mean = mean_science_image(files, &comm);
      } else {
        if (!usable.empty()) fibres = read_fibre_table(usable.front()->file, profile);
        if (flat) flat_image = flat_light(*flat);
      }
      masters[key] = build_master_traces(profile, profile.mode == SpectroMode::Slit ? &slit_mean : nullptr,
                                         flat ? &flat_image : nullptr, fibres, cfg.ex);
      // The trace map product, for figures and later checks; a failed write costs the file, not the night.
      if (comm.is_root()) {
        const fs::path trace_path =
            cfg.out_dir / "calib" /
            (key.empty() ? fmt::format("traces_{}.fits", setup_slug(setup))
                         : fmt::format("traces_{}_{}.fits", setup_slug(setup), setup_slug(key)));
        try {
          Header h;
          h.set("SETUP", setup, "setup key");
          if (!key.empty()) h.set("OBJECT", key, "object whose science frames were traced");
          h.set("INSTPROF", profile.name, "kspecdr instrument profile");
          h.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
          h.set("DATE", utc_now(), "UTC time this file was written");
          trace::write_trace_file(trace_path, masters[key], cfg.ex.trace, h, true);
          spdlog::info("trace map written to {}", trace_path.string());
        } catch (const std::exception& e) {
          spdlog::error("trace map {} not written: {}", trace_path.string(), e.what());
          summary.failures.push_back({"calibration", trace_path.string(), e.what()});
        }
      }
      if (comm.is_root() && masters[key].traces.size() > 8) {
        std::size_t ok = 0;
        std::vector<double> rms;
        for (const auto& t : masters[key].traces)
          if (t.usable()) {
            ++ok;
            rms.push_back(t.centre_rms_px);
          }
        std::sort(rms.begin(), rms.end());
        spdlog::info("setup '{}': {} traces, {} measured along dispersion (median centre rms {:.3f} px), {} dead or "
                     "not found (positions interpolated)",
                     setup, masters[key].traces.size(), ok, rms.empty() ? 0.0 : rms[rms.size() / 2],
                     masters[key].traces.size() - ok);
      }
      if (comm.is_root() && masters[key].traces.size() <= 8)
        for (const auto& t : masters[key].traces)
          spdlog::info("setup '{}'{}: trace {} ({}) {}", setup, key.empty() ? "" : ", object '" + key + "'",
                       t.info.name, t.info.type,
                       t.usable() ? fmt::format("centre rms {:.3f} px, width rms {:.3f} px", t.centre_rms_px,
                                                t.sigma_rms_px)
                                  : t.message);
    } catch (const std::exception& e) {
      trace_errors[key] = e.what();
      if (comm.is_root()) spdlog::error("setup '{}': no master traces for '{}': {}", setup, key, e.what());
    }
  };
  if (profile.mode == SpectroMode::Fiber) {
    build("", {});
  } else {
    std::map<std::string, std::vector<const PlannedFrame*>> by_object;
    for (const auto* p : usable)
      if (p->frame_class == FrameClass::Science) {
        by_object[p->object].push_back(p);
        science_times.emplace_back(p->mjd, p->object);
      }
    for (const auto& [object, frames] : by_object) build(object, frames);
    if (by_object.empty()) trace_errors[""] = "slit mode needs science frames to find the stars; this setup has none";
  }
  auto traces_for = [&](const PlannedFrame& p) -> std::string {
    if (profile.mode == SpectroMode::Fiber) return "";
    if (masters.count(p.object) || trace_errors.count(p.object)) return p.object;
    std::string best;
    double dt = std::numeric_limits<double>::infinity();
    for (const auto& [t, object] : science_times)
      if (std::abs(t - p.mjd) < dt) {
        dt = std::abs(t - p.mjd);
        best = object;
      }
    return best;
  };

  for (const auto* p : usable) trace_keys[p->name] = traces_for(*p);
  clock.mark("traces");


  // Fiber mode: the master flat extracted along the master traces, the relative fiber throughputs of
  // the RED stage (a calibration product). One more item of the EX rounds, so that one rank does it while the
  // others extract exposures.
  const bool extract_flat = profile.mode == SpectroMode::Fiber && flat && masters.count("");
  auto extract_master_flat = [&](const mpi::Comm& group) {
    const fs::path flat_ex = cfg.out_dir / "calib" / fmt::format("flat_ex_{}.fits", setup_slug(setup));
    try {
      Image flat_image;
      extract::ExtractConfig ecfg = cfg.ex.extract;
      ecfg.read_noise = extract::ReadNoise{};
      ecfg.calibration_noise = extract::CalibrationNoise{};
      mpi::all_or_throw(group, [&] { flat_image = flat_light(*flat); });
      SpectrumSet fs_ = extract::extract_spectra(flat_image, masters.at(""), nullptr, ecfg, "master flat", &group);
      mpi::all_or_throw(group, [&] {
        if (!group.is_root()) return;
        fs_.header.set("SETUP", setup, "setup key");
        fs_.header.set("EXPNAME", "master_flat", "the master flat of the setup");
        fs_.header.add_comment("Flux values are relative (the normalised master flat), not electrons.");
        fs_.header.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
        fs_.header.set("CALHASH", flat->calhash, "CALHASH of the master flat extracted");
        fs_.header.set("DATE", utc_now(), "UTC time this file was written");
        extract::write_ex_file(flat_ex, fs_, true);
      });
    } catch (const std::exception& e) {
      if (group.is_root()) {
        spdlog::error("setup '{}': master flat not extracted ({}); RED will assume equal fiber throughputs", setup,
                      e.what());
        summary.failures.push_back({"calibration", flat_ex.string(),
                                    std::string("master flat not extracted (fiber throughputs taken as equal): ") +
                                        e.what()});
      }
    }
  };
  // The exposures (and the master flat) dealt to ranks, the last ones to groups of ranks (deal_items).
  std::vector<fs::path> item_files;
  for (const auto* p : usable) item_files.push_back(im_path(*p));
  std::vector<double> weights = file_weights(item_files, comm);
  if (extract_flat) {
    // The flat weighs like an average exposure: it is extracted along the same traces from an image of the same size.
    double mean = 0;
    for (double w : weights) mean += w / static_cast<double>(weights.size());
    weights.push_back(weights.empty() ? 1.0 : mean);
  }
  Progress progress(fmt::format("EX spectra of setup '{}'", setup), usable.size(), comm.is_root());
  deal_items(comm, weights, progress, fmt::format("EX spectra of setup '{}'", setup),
             [&](std::size_t i, const mpi::Comm& group) -> std::pair<long long, long long> {
    if (i == usable.size()) {
      extract_master_flat(group);
      return {0, 0};
    }
    const PlannedFrame& p = *usable[i];
    const fs::path out = exdir / (p.name + ".ex.fits");
    const bool root = group.is_root();
    if (group_keeps_existing(group, cfg, out, config_hash, p.name, summary)) return {root ? 1 : 0, 0};
    try {
      const std::string key = traces_for(p);
      Image im;
      const TraceSet* master = nullptr;
      mpi::all_or_throw(group, [&] {
        if (trace_errors.count(key)) throw DataError("no master traces: " + trace_errors.at(key));
        master = &masters.at(key);
        im = fits::read_image_file(im_path(p));
      });
      // An arc lamp fills the whole slit: what a sky window sees beside the trace is the arc itself,
      // so arcs are extracted without sky subtraction.
      ExStageConfig ecfg = cfg.ex;
      if (p.frame_class == FrameClass::Arc) ecfg.sky.method = extract::SkyMethod::None;
      SpectrumSet s = extract_exposure(im, *master, profile, ecfg, p.name,
                                       p.frame_class == FrameClass::Science, im_path(p).string(), flat, bias, &group);
      mpi::all_or_throw(group, [&] {
        if (!root) return;
        s.header.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
        s.header.set("DATE", utc_now(), "UTC time this file was written");
        s.header.set("TRACESET", key, "object whose master traces were used ('' = fiber mode)");
        extract::write_ex_file(out, s, true);
      });
      if (root) ++summary.done;
      return {root ? 1 : 0, 0};
    } catch (const std::exception& e) {
      if (!root) return {0, 0};
      spdlog::error("{} extraction failed: {}", p.name, e.what());
      summary.failures.push_back({p.name, p.file, e.what()});
      return {1, 1};
    }
  });
  clock.mark("EX");
}

/// EX → RED for one setup: per trace set (fiber mode: one; slit mode: one per object) the arcs combined and
/// solved (every rank solves from the same files, so the solutions agree without being sent; rank 0 writes
/// the arc solution file), the output grid, the fiber throughputs, then the science exposures dealt to
/// ranks in rounds.
fs::path arcsol_path(const fs::path& calib, const std::string& setup, const std::string& key);

void red_setup(const ReduceConfig& cfg, const InstrumentProfile& profile, const std::string& setup,
               const std::vector<const PlannedFrame*>& work, const std::map<std::string, std::string>& trace_keys,
               const fs::path& exdir, const fs::path& reddir, const mpi::Comm& comm, ReduceSummary& summary,
               const std::string& config_hash, std::vector<series::SeriesSet>& series_sets, PhaseClock& clock) {
  auto ex_path = [&](const PlannedFrame& p) { return exdir / (p.name + ".ex.fits"); };
  std::map<std::string, std::vector<const PlannedFrame*>> arcs, science;
  for (const auto* p : work) {
    auto k = trace_keys.find(p->name);
    if (k == trace_keys.end() || !fs::exists(ex_path(*p))) continue;
    if (p->frame_class == FrameClass::Arc) arcs[k->second].push_back(p);
    if (p->frame_class == FrameClass::Science) science[k->second].push_back(p);
  }
  if (science.empty()) return;
  const wavecal::LineList lines = profile_arc_lines(profile);
  std::optional<wavecal::LineList> sky_lines;
  if (cfg.red.flexure == FlexureMethod::SkyLines || cfg.red.flexure == FlexureMethod::Auto) {
    fs::path sky_list(cfg.red.sky_linelist);
    if (sky_list.is_relative() && !fs::exists(sky_list)) sky_list = data_dir() / sky_list;
    if (fs::exists(sky_list)) {
      sky_lines = wavecal::read_linelist(sky_list, wavecal::Medium::Air);
    } else if (comm.is_root()) {
      spdlog::warn("sky line list {} not found: flexure from sky lines is off (set --red.sky-linelist)",
                   cfg.red.sky_linelist);
    }
  }
  const std::string slug = setup_slug(setup);
  for (const auto& [key, frames_unsorted] : science) {
    std::vector<const PlannedFrame*> frames = frames_unsorted;
    std::stable_sort(frames.begin(), frames.end(),
                     [](const PlannedFrame* a, const PlannedFrame* b) { return a->mjd < b->mjd; });
    series::SeriesSet ss;
    ss.setup = setup;
    ss.traceset = key;
    for (const auto* p : frames)
      ss.exposures.push_back({p->name, reddir / (p->name + ".red.fits"), p->mjd, p->exptime_s, p->airmass, p->ra_deg,
                              p->dec_deg});
    series_sets.push_back(std::move(ss));
    const std::string what = key.empty() ? fmt::format("setup '{}'", setup)
                                         : fmt::format("setup '{}', object '{}'", setup, key);
    // Arc solution, grid, throughput and reference: a failure fails this trace set's exposures only.
    wavecal::ArcCalibration arc;
    RedContext ctx;
    SpectrumSet reference;
    std::string failure;
    try {
      auto a = arcs.find(key);
      if (a == arcs.end() || a->second.empty())
        throw DataError(fmt::format("{} has no arc exposure extracted along its traces", what));
      std::vector<SpectrumSet> arc_ex;
      std::vector<std::string> names;
      double arc_mjd = 0;
      for (const auto* p : a->second) {
        arc_ex.push_back(extract::read_ex_file(ex_path(*p)));
        names.push_back(p->name);
        arc_mjd += p->mjd / static_cast<double>(a->second.size());
      }
      arc = calibrate_arcs(arc_ex, names, profile, lines, cfg.red, &comm);
      arc.setup = setup;
      arc.traceset = key;
      arc.header.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
      arc.header.set("INSTPROF", profile.name, "kspecdr instrument profile");
      arc.header.set("DATE", utc_now(), "UTC time this file was written");
      ctx.arc = &arc;
      ctx.grid = red_grid(arc, cfg.red);
      if (sky_lines) ctx.sky_lines = &*sky_lines;
      // Cross-correlation reference: the science exposure nearest in time to the arcs.
      const PlannedFrame* ref = frames.front();
      for (const auto* p : frames)
        if (std::abs(p->mjd - arc_mjd) < std::abs(ref->mjd - arc_mjd)) ref = p;
      reference = extract::read_ex_file(ex_path(*ref));
      ctx.reference = &reference;
      ctx.reference_name = ref->name;
      if (profile.mode == SpectroMode::Fiber) {
        const fs::path flat_ex = cfg.out_dir / "calib" / fmt::format("flat_ex_{}.fits", slug);
        if (fs::exists(flat_ex)) {
          ctx.throughput = throughput_from_flat(extract::read_ex_file(flat_ex), arc, ctx.grid, cfg.red);
          ctx.throughput_source = "FLAT";
        } else {
          if (comm.is_root())
            spdlog::warn("{}: no extracted master flat ({}): fiber throughputs taken as equal for the master sky",
                         what, flat_ex.string());
          ctx.throughput_source = "NONE";
        }
      }
      if (comm.is_root()) {
        const fs::path arc_path = arcsol_path(cfg.out_dir / "calib", setup, key);
        // The file records the solution; the exposures use it from memory on every rank, so a failed write
        // costs the file (named in the summary), not the exposures that rank 0 happens to take.
        try {
          wavecal::write_arc_file(arc_path, arc, true);
        } catch (const std::exception& e) {
          spdlog::error("{} not written: {}", arc_path.string(), e.what());
          summary.failures.push_back({"calibration", arc_path.string(), e.what()});
        }
        std::vector<double> rms;
        for (const auto& s : arc.solutions)
          if (s.ok()) rms.push_back(s.rms_px);
        std::sort(rms.begin(), rms.end());
        spdlog::info("{}: {} of {} apertures wavelength-calibrated from {} arc(s) (median rms {:.4f} px); grid "
                     "{:.2f}–{:.2f} Å, {} pixels; arc solution in {}",
                     what, arc.n_ok(), arc.naper(), names.size(), rms.empty() ? 0.0 : rms[rms.size() / 2],
                     ctx.grid.centres.front(), ctx.grid.centres.back(), ctx.grid.size(), arc_path.string());
        for (std::size_t i = 0; i < arc.naper(); ++i)
          if (!arc.solutions[i].ok())
            spdlog::warn("{}: aperture {} has no wavelength solution: {}", what, arc.apertures[i].name,
                         arc.solutions[i].message);
      }
    } catch (const std::exception& e) {
      failure = e.what();
      if (comm.is_root()) spdlog::error("{}: no wavelength calibration: {}", what, failure);
    }
    clock.mark("arcs");

    // The science exposures dealt to ranks, the last ones to groups of ranks that share their apertures.
    std::vector<fs::path> ex_files;
    for (const auto* p : frames) ex_files.push_back(ex_path(*p));
    const std::vector<double> weights = file_weights(ex_files, comm);
    Progress progress(fmt::format("RED spectra of {}", what), frames.size(), comm.is_root());
    deal_items(comm, weights, progress, fmt::format("RED spectra of {}", what),
               [&](std::size_t i, const mpi::Comm& group) -> std::pair<long long, long long> {
      const PlannedFrame& p = *frames[i];
      const fs::path out = reddir / (p.name + ".red.fits");
      const bool root = group.is_root();
      if (group_keeps_existing(group, cfg, out, config_hash, p.name, summary)) return {root ? 1 : 0, 0};
      try {
        SpectrumSet ex;
        mpi::all_or_throw(group, [&] {
          if (!failure.empty()) throw DataError("no wavelength calibration: " + failure);
          ex = extract::read_ex_file(ex_path(p));
        });
        wavecal::RedSpectra red = reduce_exposure_red(ex, ctx, profile, cfg.red, p.name, true, &group);
        mpi::all_or_throw(group, [&] {
          if (!root) return;
          red.spectra.header.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
          red.spectra.header.set("DATE", utc_now(), "UTC time this file was written");
          wavecal::write_red_file(out, red, true);
        });
        if (root) ++summary.done;
        return {root ? 1 : 0, 0};
      } catch (const std::exception& e) {
        if (!root) return {0, 0};
        spdlog::error("{} wavelength calibration failed: {}", p.name, e.what());
        summary.failures.push_back({p.name, p.file, e.what()});
        return {1, 1};
      }
    });
    clock.mark("RED");
  }
}

/// The arc solution of a setup (and, in slit mode, a trace set) in calib/.
fs::path arcsol_path(const fs::path& calib, const std::string& setup, const std::string& key) {
  const std::string slug = setup_slug(setup);
  return calib / (key.empty() ? fmt::format("arcsol_{}.fits", slug)
                              : fmt::format("arcsol_{}_{}.fits", slug, setup_slug(key)));
}

/// The night's name: the configured one, else the raw folder's name (its parent's when it is called "raw").
std::string night_name(const ReduceConfig& cfg) {
  if (!cfg.night_name.empty()) return setup_slug(cfg.night_name);
  // Where the folder is, not how it is spelled ("raw", "." and "/data/n1/raw" name the same night).
  fs::path p = where(cfg.raw_dir);
  if (p.filename() == "raw" && p.has_parent_path()) p = p.parent_path();
  const std::string n = p.filename().string();
  return n.empty() || n == "." || n == ".." ? "night" : setup_slug(n);
}

}  // namespace

ReduceSummary reduce_night(const ReduceConfig& cfg, const mpi::Comm& comm) {
  ReduceSummary summary;
  PhaseClock clock;
  const std::string config_hash = fnv1a_hex(provenance_text(cfg.resolved_config));
  // Every rank loads the profile (a small file): identical and cheap, and a bad profile fails
  // alike everywhere before any collective.
  InstrumentProfile profile = load_instrument(cfg.instrument);
  const fs::path calib = cfg.out_dir / "calib", imdir = cfg.out_dir / "im", exdir = cfg.out_dir / "ex",
                 reddir = cfg.out_dir / "red";

  std::string plan_text;
  on_root(comm, [&] {
    ObservingLog log = build_observing_log(cfg.raw_dir, profile);
    if (log.frames.empty())
      throw ConfigError(fmt::format("no readable FITS frames in {} ({} unreadable)", cfg.raw_dir.string(),
                                    log.unreadable.size()),
                        ErrorContext{.file = cfg.raw_dir.string()});
    // Temporary files of a run that was killed before it could rename them: never outputs, removed.
    std::size_t stale = 0;
    for (const fs::path& d : {cfg.out_dir, calib, imdir, exdir, reddir, cfg.out_dir / "fcal"}) {
      if (!fs::is_directory(d)) continue;
      for (const auto& e : fs::directory_iterator(d))
        if (e.path().filename().string().rfind(".tmp-", 0) == 0 && e.is_regular_file()) {
          std::error_code ec;
          if (fs::remove(e.path(), ec)) ++stale;
        }
    }
    if (stale) spdlog::info("removed {} temporary file(s) left by an interrupted run", stale);
    fs::create_directories(calib);
    fs::create_directories(imdir);
    if (cfg.stage == ReduceStage::Ex || cfg.stage == ReduceStage::Red) fs::create_directories(exdir);
    if (cfg.stage == ReduceStage::Red) fs::create_directories(reddir);
    io::write_text_atomic(cfg.out_dir / "config-used.ini", cfg.resolved_config, true);
    write_log_ecsv(log, cfg.out_dir / "log.ecsv", true);
    write_log_csv(log, cfg.out_dir / "log.csv", true);
    std::vector<PlannedFrame> plan;
    auto clean = [](std::string s) {
      for (auto& ch : s)
        if (ch == '\t' || ch == '\n') ch = ' ';
      return s;
    };
    for (const auto& f : log.frames)
      plan.push_back({f.name, f.file.string(), clean(f.setup), f.frame_class, clean(f.object), f.mjd_mid,
                      f.exptime_s, f.airmass, f.ra_deg, f.dec_deg});
    for (const auto& u : log.unreadable)
      plan.push_back({fs::path(u.file).filename().string(), u.file.string(), "", FrameClass::Unknown, "", 0.0, 0.0,
                      0.0, 0.0, 0.0});
    plan_text = serialize(plan);
    for (const auto& [setup, set] : log.sets)
      spdlog::info("setup '{}': {} bias, {} dark, {} flat, {} arc, {} science, {} imaging, {} unknown", setup,
                   set.bias.size(), set.dark.size(), set.flat.size(), set.arc.size(), set.science.size(),
                   set.imaging.size(), set.unknown.size());
  });
  comm.bcast(plan_text);
  const std::vector<PlannedFrame> plan = deserialize(plan_text);
  clock.mark("plan");

  // Unreadable files are failed exposures of the night, named with their reason.
  std::vector<std::string> setups;
  for (const auto& p : plan) {
    if (p.setup.empty()) {
      summary.failures.push_back({p.name, p.file, "unreadable (see the log's unreadable list)"});
      continue;
    }
    if (std::find(setups.begin(), setups.end(), p.setup) == setups.end()) setups.push_back(p.setup);
  }

  std::vector<series::SeriesSet> series_sets;
  for (const auto& setup : setups) {
    const std::string slug = setup_slug(setup);
    const fs::path bias_path = calib / fmt::format("master_bias_{}.fits", slug);
    const fs::path flat_path = calib / fmt::format("master_flat_{}.fits", slug);
    const auto bias_files = files_of(plan, setup, FrameClass::Bias);
    const auto flat_files = files_of(plan, setup, FrameClass::Flat);

    // Calibration products: built once per setup by all ranks together (row bands), reused when inputs and settings
    // match, the file verifies and --overwrite is not given (rank 0 decides, so every rank takes the same branch). A
    // master built here is used as built (it equals its file bit for bit: MasterBias keeps its numbers as its header
    // holds them) and written by rank 0 once both are built, while the other ranks go on to the IM frames; one that
    // is reused is read by every rank.
    auto needs_building = [&](const fs::path& path, const std::string& hash) {
      long long build = 1;
      std::string made_by;
      if (comm.is_root() && !cfg.overwrite && detector::calibration_is_current(path, hash, &made_by)) {
        spdlog::info("reusing {} (CALHASH {})", path.string(), hash);
        // A master calibrates every frame of the setup: a master of another build is worth a warning.
        note_other_build(summary, path.string(), made_by, spdlog::level::warn);
        build = 0;
      }
      comm.bcast(build);
      return build != 0;
    };
    std::optional<detector::MasterBias> bias;
    bool write_bias = false, write_flat = false;
    if (!bias_files.empty()) {
      const std::string hash = detector::calibration_hash(bias_files, detector::bias_config_text(profile, cfg.detector));
      if (needs_building(bias_path, hash)) {
        if (comm.is_root()) spdlog::info("building master bias for setup '{}' from {} frames", setup, bias_files.size());
        mpi::all_or_throw(comm, [&] { bias = detector::build_master_bias(bias_files, profile, cfg.detector, &comm); });
        write_bias = true;
      } else {
        bias = detector::read_master_bias(bias_path);
      }
    } else if (comm.is_root()) {
      spdlog::warn("setup '{}': no bias frames: IM frames get overscan subtraction only (BIASCORR = 'OVERSCAN')", setup);
    }

    std::optional<detector::MasterFlat> flat;
    if (!flat_files.empty()) {
      const std::string hash = detector::calibration_hash(
          flat_files, detector::flat_config_text(profile, cfg.detector, bias ? &*bias : nullptr, nullptr));
      if (needs_building(flat_path, hash)) {
        if (comm.is_root()) spdlog::info("building master flat for setup '{}' from {} frames", setup, flat_files.size());
        mpi::all_or_throw(comm, [&] {
          flat = detector::build_master_flat(flat_files, profile, bias ? &*bias : nullptr, nullptr, cfg.detector, &comm);
        });
        write_flat = true;
      } else {
        flat = detector::read_master_flat(flat_path);
      }
    } else if (comm.is_root()) {
      spdlog::warn("setup '{}': no flat frames: IM frames use a unit flat (FLATCORR = F); pixel-to-pixel "
                   "sensitivity is not corrected",
                   setup);
    }
    // A master that cannot be written costs its file (the next run builds it again), not the night.
    auto write_master = [&](const fs::path& path, const auto& write) {
      try {
        write();
      } catch (const std::exception& e) {
        spdlog::error("{} not written: {}", path.string(), e.what());
        summary.failures.push_back({"calibration", path.string(), e.what()});
      }
    };
    clock.mark("masters");

    // Exposures that become IM files, dealt round-robin to ranks (frames of one setup share a size).
    std::vector<const PlannedFrame*> work;
    for (const auto& p : plan)
      if (p.setup == setup && (p.frame_class == FrameClass::Science || p.frame_class == FrameClass::Arc ||
                               p.frame_class == FrameClass::Imaging))
        work.push_back(&p);
    summary.exposures += work.size();
    // One exposure at a time to whichever rank is free (mpi::WorkQueue); the counts of what is done are kept
    // without holding the ranks in step, so rank 0 can show the progress of the whole setup.
    Progress progress(fmt::format("IM frames of setup '{}'", setup), work.size(), comm.is_root());
    mpi::WorkQueue queue(comm, static_cast<long long>(work.size()));
    // The masters built above are written once the queue (collective) is up, so that no rank waits for the writing.
    if (comm.is_root() && write_bias)
      write_master(bias_path, [&] { detector::write_master_bias(bias_path, *bias, true); });
    if (comm.is_root() && write_flat)
      write_master(flat_path, [&] { detector::write_master_flat(flat_path, *flat, true); });
    for (long long next; (next = queue.next()) >= 0;) {
      const PlannedFrame& p = *work[static_cast<std::size_t>(next)];
      const fs::path out = imdir / (p.name + ".im.fits");
      long long failed = 0;
      if (!keep_existing(cfg, out, config_hash, p.name, summary)) {
        try {
          Image im = detector::calibrate_frame(p.file, profile, bias ? &*bias : nullptr, flat ? &*flat : nullptr,
                                               cfg.detector);
          im.header.set("EXPNAME", p.name, "exposure name");
          im.header.set("FRAMECLS", to_string(p.frame_class), "frame class from the instrument profile");
          im.header.set("INSTPROF", profile.name, "kspecdr instrument profile");
          im.header.set("SETUP", setup, "setup key");
          im.header.set("CFGHASH", config_hash, "hash of the resolved configuration (config-used.ini)");
          im.header.set("DATE", utc_now(), "UTC time this file was written");
          detector::write_im(out, im, true);
          ++summary.done;
          spdlog::debug("{} -> {}", p.name, out.string());
        } catch (const std::exception& e) {
          spdlog::error("{} failed: {}", p.name, e.what());
          summary.failures.push_back({p.name, p.file, e.what()});
          failed = 1;
        }
      }
      queue.add(1, failed);
      const auto [d, f] = queue.totals();
      progress.set(static_cast<std::size_t>(d), static_cast<std::size_t>(f));
    }
    {
      const auto [d, f] = queue.finish();
      progress.set(static_cast<std::size_t>(d), static_cast<std::size_t>(f));
    }
    clock.mark("IM");
    if (cfg.stage == ReduceStage::Ex || cfg.stage == ReduceStage::Red) {
      std::map<std::string, std::string> trace_keys;
      extract_setup(cfg, profile, setup, work, flat ? &*flat : nullptr, bias ? &*bias : nullptr, imdir, exdir, comm,
                    summary, config_hash, trace_keys, clock);
      if (cfg.stage == ReduceStage::Red)
        red_setup(cfg, profile, setup, work, trace_keys, exdir, reddir, comm, summary, config_hash, series_sets, clock);
    }
  }

  // In-field flux calibration of every science RED (collective: the stars are spread over the ranks).
  bool fluxcal_ran = false;
  const fs::path fcal_dir = cfg.out_dir / "fcal";
  if (cfg.stage == ReduceStage::Red && !cfg.infield.catalog_file.empty()) {
    fluxcal::InFieldConfig fc = cfg.infield;
    fc.red_files.clear();
    fc.arcsol_files.clear();
    for (const auto& set : series_sets)
      for (const auto& e : set.exposures)
        if (fs::exists(e.red)) {
          fc.red_files.push_back(e.red);
          // The resolution of the template fit from the arc lines of the exposure's own arc solution, unless
          // a FWHM was configured.
          fc.arcsol_files.push_back(arcsol_path(calib, set.setup, set.traceset));
        }
    fc.out_dir = fcal_dir;
    fc.overwrite = true;
    if (fc.extinction_file.empty() && !profile.extinction_file.empty()) fc.extinction_file = profile.extinction_file;
    try {
      if (comm.is_root()) fs::create_directories(fc.out_dir);
      comm.barrier();
      const fluxcal::InFieldResult fr = fluxcal::run_infield(fc, comm);
      fluxcal_ran = true;
      // The vectors and the per-star diagnostics (fit, scaled model, photometry) beside the calibrated files.
      if (comm.is_root()) {
        try {
          fluxcal::write_infield_cal_file(fc.out_dir / "fluxcal_cal.h5", fr, true);
        } catch (const std::exception& e) {
          spdlog::error("flux calibration vectors not written: {}", e.what());
          summary.failures.push_back({"fluxcal", (fc.out_dir / "fluxcal_cal.h5").string(), e.what()});
        }
      }
      std::size_t ok = 0;
      for (const auto& x : fr.exposures) {
        if (x.ok) {
          ++ok;
        } else if (comm.is_root()) {
          spdlog::error("{}: not flux-calibrated: {}", x.run, x.message.empty() ? x.error : x.message);
          summary.failures.push_back({x.run, (fc.out_dir / (x.run + ".fcal.fits")).string(),
                                      "flux calibration: " + (x.message.empty() ? x.error : x.message)});
        }
      }
      if (comm.is_root())
        spdlog::info("flux calibration (in-field, {} mode): {} of {} exposures calibrated in {}", fc.mode, ok,
                     fr.exposures.size(), fc.out_dir.string());
    } catch (const std::exception& e) {
      if (comm.is_root()) {
        spdlog::error("flux calibration not done: {}", e.what());
        summary.failures.push_back({"fluxcal", fc.out_dir.string(), e.what()});
      }
    }
    clock.mark("fluxcal");
  }

  // Per star a Rainbow cube of the night (collective), then chromatic's FITS of each star (rank 0).
  if (cfg.stage == ReduceStage::Red && !series_sets.empty()) {
    const fs::path cube = cfg.out_dir / (night_name(cfg) + ".rainbow.h5");
    try {
      const series::Site site{profile.site_longitude_deg, profile.site_latitude_deg, profile.site_height_m};
      const std::string provenance = fmt::format("kspecdr {} ({}); config hash {}; instrument profile {}; raw {}",
                                                 version(), git_sha(), config_hash, profile.name,
                                                 cfg.raw_dir.string());
      const auto rs = series::write_rainbow_file(cube, series_sets, site, provenance, comm, true);
      clock.mark("cube");
      if (comm.is_root()) {
        spdlog::info("time series: {} star group(s) in {} ({} exposure(s) without a usable RED marked ok = 0){}",
                     rs.groups.size(), cube.string(), rs.failed_exposures,
                     rs.no_collective_cause ? fmt::format("; collective MPI-IO was NOT used (cause bits {:#x})",
                                                          rs.no_collective_cause)
                                            : "");
      }
      // chromatic's FITS of each star, the stars dealt to the ranks (each reads its groups from the closed cube).
      for (std::size_t i = static_cast<std::size_t>(comm.rank()); i < rs.groups.size();
           i += static_cast<std::size_t>(comm.size())) {
        std::string file = rs.groups[i];
        std::replace(file.begin(), file.end(), '/', '_');
        const fs::path out = cfg.out_dir / (file + ".rainbow.fits");
        try {
          series::write_chromatic_fits(cube, rs.groups[i], out, true);
        } catch (const std::exception& e) {
          spdlog::error("{} not written: {}", out.string(), e.what());
          summary.failures.push_back({"rainbow", out.string(), e.what()});
        }
      }
    } catch (const std::exception& e) {
      if (comm.is_root()) {
        spdlog::error("time-series cube {} not written: {}", cube.string(), e.what());
        summary.failures.push_back({"rainbow", cube.string(), e.what()});
      }
    }
  }

  if (cfg.stage == ReduceStage::Red && !series_sets.empty()) clock.mark("star FITS");

  // The same cubes in flux units from the calibrated files (OUT/fcal/<run>.fcal.fits); an exposure whose
  // calibration failed (its file FLUXCAL = F, or none) is ok = 0 there.
  if (cfg.stage == ReduceStage::Red && fluxcal_ran && !series_sets.empty()) {
    const fs::path cube = cfg.out_dir / (night_name(cfg) + ".fcal.rainbow.h5");
    std::vector<series::SeriesSet> fcal_sets = series_sets;
    for (auto& set : fcal_sets)
      for (auto& e : set.exposures) e.red = fcal_dir / (e.name + ".fcal.fits");
    try {
      const series::Site site{profile.site_longitude_deg, profile.site_latitude_deg, profile.site_height_m};
      const std::string provenance =
          fmt::format("kspecdr {} ({}); config hash {}; instrument profile {}; raw {}; flux-calibrated in-field ({})",
                      version(), git_sha(), config_hash, profile.name, cfg.raw_dir.string(), fcal_dir.string());
      const auto rs = series::write_rainbow_file(cube, fcal_sets, site, provenance, comm, true, true);
      if (comm.is_root())
        spdlog::info("time series in flux units: {} star group(s) in {} ({} exposure(s) not calibrated marked ok = 0)",
                     rs.groups.size(), cube.string(), rs.failed_exposures);
    } catch (const std::exception& e) {
      if (comm.is_root()) {
        spdlog::error("flux-calibrated time-series cube {} not written: {}", cube.string(), e.what());
        summary.failures.push_back({"rainbow", cube.string(), e.what()});
      }
    }
    clock.mark("flux cube");
  }

  // Gather every rank's counts and failures so rank 0 can report the whole night.
  summary.done = static_cast<std::size_t>(comm.sum(static_cast<long long>(summary.done)));
  summary.skipped = static_cast<std::size_t>(comm.sum(static_cast<long long>(summary.skipped)));
  summary.kept_from_other_build =
      static_cast<std::size_t>(comm.sum(static_cast<long long>(summary.kept_from_other_build)));
  std::string mine;
  for (const auto& f : summary.failures)
    if (comm.is_root() || f.reason.rfind("unreadable", 0) != 0) mine += f.exposure + '\t' + f.file + '\t' + f.reason + '\n';
  std::vector<ExposureFailure> all;
  for (const auto& text : comm.allgather(mine)) {
    std::istringstream is(text);
    std::string line;
    while (std::getline(is, line)) {
      auto a = line.find('\t'), b = line.find('\t', a + 1);
      all.push_back({line.substr(0, a), line.substr(a + 1, b - a - 1), line.substr(b + 1)});
    }
  }
  // In the night's order (which rank met a failure depends on how the work was dealt), the others after.
  auto plan_index = [&](const std::string& name) {
    for (std::size_t i = 0; i < plan.size(); ++i)
      if (plan[i].name == name) return i;
    return plan.size();
  };
  std::stable_sort(all.begin(), all.end(), [&](const ExposureFailure& a, const ExposureFailure& b) {
    return plan_index(a.exposure) < plan_index(b.exposure);
  });
  summary.failures = all;
  // Peak resident memory of every rank (getrusage: kilobytes on Linux), gathered for the summary.
  std::string rss_report;
  {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const auto rss = comm.allgather(fmt::format("{:.0f} MB", static_cast<double>(ru.ru_maxrss) / 1024.0));
    for (std::size_t r = 0; r < rss.size(); ++r) rss_report += fmt::format("{}rank {} {}", r ? ", " : "", r, rss[r]);
  }
  std::string diagnostics_error;
  if (comm.is_root()) {
    // Every number the stages measured, in one file for figures and systematics studies.
    try {
      std::vector<DiagnosticsExposure> dex;
      for (const auto& p : plan) {
        if (p.frame_class != FrameClass::Science && p.frame_class != FrameClass::Arc &&
            p.frame_class != FrameClass::Imaging && !p.setup.empty())
          continue;
        std::string status = "ok";
        for (const auto& f : summary.failures)
          if (f.exposure == p.name) status = "failed: " + f.reason;
        dex.push_back({p.name, to_string(p.frame_class), p.setup, p.object, p.mjd, p.exptime_s, p.airmass, status});
      }
      std::vector<std::vector<std::string>> fl;
      for (const auto& f : summary.failures) fl.push_back({f.exposure, f.file, f.reason});
      write_night_diagnostics(cfg.out_dir / "diagnostics.h5", cfg.out_dir, dex, fl);
    } catch (const std::exception& e) {
      diagnostics_error = e.what();
      spdlog::error("diagnostics.h5 not written: {}", e.what());
    }
    clock.mark("diagnostics");
  }
  // An output that could not be written fails the night on every rank alike (one exit code).
  comm.bcast(diagnostics_error);
  if (!diagnostics_error.empty())
    summary.failures.push_back({"diagnostics", (cfg.out_dir / "diagnostics.h5").string(), diagnostics_error});
  if (comm.is_root()) {
    spdlog::info("wall time by phase (rank 0): {}", clock.report());
    spdlog::info("peak resident memory per rank: {}", rss_report);
    spdlog::info("night done: {} exposures planned, {} files written, {} kept from earlier runs, {} failed", summary.exposures,
                 summary.done, summary.skipped, summary.failures.size());
    if (summary.kept_from_other_build)
      spdlog::warn("{} product(s) kept from earlier runs were made by another kspecdr build than this one (git {}); "
                   "they hold what that build computed. Pass --overwrite, or write to a new --out, to remake them "
                   "with this build",
                   summary.kept_from_other_build, git_sha());
    for (const auto& f : summary.failures) spdlog::error("failed exposure {} ({}): {}", f.exposure, f.file, f.reason);
  }
  return summary;
}

}  // namespace kspecdr
