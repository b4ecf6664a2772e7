// kspecdr extract IMFILE --out EXFILE: one calibrated frame through the IM → EX
// stage with slit-mode semantics (the IM itself is the trace image), timed
// inside the program so that the cost of tracing and of sky + extraction can be
// compared without process start-up and file reading. Given the master flat and
// bias the IM was made with (--master-flat, --master-bias), their noise enters the
// model variance (VAR_CAL) as in `reduce`; without them it is left out.
#include <fmt/format.h>
#include "kspecdr/detector/masters.hpp"
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kspecdr/cli/options.hpp"
#include "kspecdr/cli/stage_options.hpp"
#include "kspecdr/core/error.hpp"
#include "kspecdr/extract/ex_file.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/instrument.hpp"
#include "kspecdr/parallel/mpi.hpp"
#include "kspecdr/pipeline/extract_stage.hpp"
#include "kspecdr/trace/trace_file.hpp"

namespace kspecdr::cli {
namespace fs = std::filesystem;

namespace {

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// "run0012.im.fits" → "run0012": the exposure name used in messages.
std::string exposure_name(const fs::path& im) {
  std::string s = im.filename().string();
  for (const char* suffix : {".fits", ".fit", ".im"})
    if (s.size() > std::string(suffix).size() && s.ends_with(suffix)) s.resize(s.size() - std::string(suffix).size());
  return s;
}

}  // namespace

int run_extract(int argc, char** argv) {
  po::options_description desc("extract options");
  desc.add_options()("im", po::value<std::string>()->required(), "calibrated IM file (also the first positional argument)")(
      "out", po::value<std::string>()->required(), "EX file to write")(
      "repeat", po::value<int>()->default_value(1),
      "do the tracing and the sky + extraction this many times and report the median wall time")(
      "traces", po::value<std::string>(), "also write the traces measured on the frame to this trace-map file")(
      "master-flat", po::value<std::string>(), "the master flat the IM was divided by (calib/master_flat_*.fits): its noise enters VAR_CAL")(
      "master-bias", po::value<std::string>(), "the master bias the IM was made with (calib/master_bias_*.fits)")(
      "overwrite", po::bool_switch(), "replace existing output files");
  desc.add(stage_options());
  po::positional_options_description pos;
  pos.add("im", 1);
  auto opts = parse_options("extract",
                            "kspecdr extract IMFILE --out EXFILE [--traces TRACEFILE] [--trace.reference x,y ...] "
                            "[--trace.stars N] [--extract.method optimal|boxcar|joint] [--sky.method median|poly|none] "
                            "[--master-flat FILE] [--master-bias FILE] [--repeat N] [--overwrite]\n\n"
                            "Without --master-flat/--master-bias the extraction's model variance leaves out the "
                            "masters' noise (VAR_CAL = 0, CALNOISE = 'NONE'), which understates the variance of "
                            "bright spectra from few flats; the IM header says whether that very master was applied.",
                            argc, argv, desc, pos);
  if (opts.help) return 0;
  const auto& vm = opts.vm;

  ExStageConfig cfg;
  read_stage_options(vm, "extract", cfg);
  const int repeat = vm["repeat"].as<int>();
  if (repeat < 1) throw ConfigError(fmt::format("extract: --repeat {}: give at least 1", repeat));
  const fs::path im_file = vm["im"].as<std::string>();
  const fs::path ex_file = vm["out"].as<std::string>();
  const bool overwrite = vm["overwrite"].as<bool>();
  if (!fs::is_regular_file(im_file))
    throw ConfigError(fmt::format("extract: IM file {} does not exist", im_file.string()),
                      ErrorContext{.file = im_file.string()});
  const fs::path trace_file = vm.count("traces") ? fs::path(vm["traces"].as<std::string>()) : fs::path();
  for (const auto& out : {ex_file, trace_file})
    if (!out.empty() && fs::exists(out) && !overwrite)
      throw ConfigError(fmt::format("extract: {} exists (use --overwrite to replace it)", out.string()),
                        ErrorContext{.file = out.string()});
  // One frame is serial work; under mpirun the other ranks have nothing to do.
  if (!mpi::world().is_root()) return 0;

  const std::string exposure = exposure_name(im_file);
  // The single frame is its own trace image, so there is no master to measure a shift against: the
  // slit-mode stage's mean science frame is this frame.
  InstrumentProfile profile;
  profile.name = "extract";
  profile.mode = SpectroMode::Slit;
  const std::vector<Image> frames{fits::read_image_file(im_file)};
  const Image& im = frames.front();
  std::optional<detector::MasterFlat> flat;
  std::optional<detector::MasterBias> bias;
  if (vm.count("master-flat")) flat = detector::read_master_flat(vm["master-flat"].as<std::string>());
  if (vm.count("master-bias")) bias = detector::read_master_bias(vm["master-bias"].as<std::string>());

  std::vector<double> trace_ms, extract_ms;
  TraceSet traces;
  SpectrumSet spectra;
  for (int r = 0; r < repeat; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    const Image mean = mean_science_image(frames);
    traces = build_master_traces(profile, &mean, nullptr, {}, cfg);
    trace_ms.push_back(ms_since(t0));
    t0 = std::chrono::steady_clock::now();
    spectra = extract_exposure(im, traces, profile, cfg, exposure, /*is_science=*/false, im_file.string(),
                               flat ? &*flat : nullptr, bias ? &*bias : nullptr);
    extract_ms.push_back(ms_since(t0));
  }
  const double t_trace = median_of(trace_ms), t_extract = median_of(extract_ms);

  std::size_t usable = 0;
  for (const auto& t : traces.traces) {
    if (t.usable()) ++usable;
    spdlog::info("{}: trace {} {}", exposure, t.info.name,
                 t.usable() ? fmt::format("centre rms {:.3f} px, width rms {:.3f} px", t.centre_rms_px, t.sigma_rms_px)
                            : t.message);
  }
  const double per_star = usable ? (t_trace + t_extract) / static_cast<double>(usable) : 0.0;
  spdlog::info("{}: {} traces ({} usable); tracing {:.3f} ms, sky + extraction {:.3f} ms (median of {}); "
               "{:.3f} ms per star-frame",
               exposure, traces.size(), usable, t_trace, t_extract, repeat, per_star);

  spectra.header.set("TTRACEMS", t_trace, "wall time of tracing (ms, median over TREPEAT)");
  spectra.header.set("TEXTRMS", t_extract, "wall time of sky + extraction (ms, median over TREPEAT)");
  spectra.header.set("TREPEAT", repeat, "repetitions behind TTRACEMS and TEXTRMS");
  extract::write_ex_file(ex_file, spectra, overwrite);
  spdlog::info("wrote {} ({} apertures x {} pixels)", ex_file.string(), spectra.naper(), spectra.npix());
  if (!trace_file.empty()) {
    Header h;
    h.set("IMFILE", im_file.filename().string(), "IM file the traces were measured on");
    trace::write_trace_file(trace_file, traces, cfg.trace, h, overwrite);
    spdlog::info("wrote {} ({} traces)", trace_file.string(), traces.size());
  }
  return 0;
}

}  // namespace kspecdr::cli
