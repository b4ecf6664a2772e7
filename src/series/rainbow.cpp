#include "kspecdr/series/rainbow.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>

#include "kspecdr/core/error.hpp"
#include "kspecdr/core/names.hpp"
#include "kspecdr/core/mask.hpp"
#include "kspecdr/io/atomic.hpp"
#include "kspecdr/io/fits.hpp"
#include "kspecdr/io/hdf5.hpp"
#include "kspecdr/wavecal/red_file.hpp"

namespace kspecdr::series {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// The fluxlike float arrays: name, RED member, unit, description.
struct FluxItem {
  const char* name;
  ImageArray SpectrumSet::*member;  ///< nullptr: computed (uncertainty)
  const char* unit;
  const char* description;
};
const FluxItem kFlux[] = {
    {"flux", &SpectrumSet::flux, "electron", "RED flux (NaN where NODATA)"},
    {"uncertainty", nullptr, "electron", "sqrt of the RED variance"},
    {"sky", &SpectrumSet::sky, "electron", "sky subtracted"},
    {"var_star", &SpectrumSet::var_star, "electron2", "variance from the star's photons"},
    {"var_sky", &SpectrumSet::var_sky, "electron2", "variance from the sky and its estimate"},
    {"var_read", &SpectrumSet::var_read, "electron2", "variance from read noise"},
    {"var_cal", &SpectrumSet::var_cal, "electron2", "variance from the master bias and flat"},
};
/// FITS has no unit "electron" (astropy's FITS unit parser refuses it): chromatic's FITS columns count
/// electrons as "ct" (ct2 for variances), the HDF5 file says electron.
const char* fits_unit(const char* unit) {
  const std::string u = unit;
  return u == "electron" ? "ct" : u == "electron2" ? "ct2" : unit;
}

const char* const kTime[] = {"time",           "mjd_utc",        "exptime_s",           "airmass",     "trace_offset_px",
                             "trace_width_px", "wavelength_shift_px", "sky_median_e", "snr_median"};
const char* const kTimeUnits[] = {"d", "d", "s", "", "pixel", "pixel", "pixel", "electron", ""};
const char* const kTimeDesc[] = {"mid-exposure BJD_TDB (Julian Date) at the star's position (or the pointing)",
                                 "mid-exposure MJD (UTC)",
                                 "exposure time",
                                 "airmass (NaN when unknown)",
                                 "trace shift of the exposure against the master trace (EX SHIFT)",
                                 "median spatial profile sigma (EX WIDTH)",
                                 "flexure shift applied (RED FLEXPX)",
                                 "median sky per pixel under the aperture",
                                 "median per-pixel S/N"};
constexpr std::size_t kNTime = sizeof(kTime) / sizeof(kTime[0]);

/// The unit of a fluxlike array in the electron cube or in the flux-calibrated one (the fcal RED files'
/// BUNIT and its square).
std::string flux_unit(const FluxItem& it, bool calibrated) {
  if (!calibrated) return it.unit;
  return std::string(it.unit) == "electron" ? "erg/cm2/s/A" : "(erg/cm2/s/A)**2";
}

/// The description of a fluxlike array: "RED" becomes "fcal RED" in the calibrated cube.
std::string flux_description(const FluxItem& it, bool calibrated) {
  std::string d = it.description;
  if (calibrated && d.rfind("RED ", 0) == 0) d = "flux-calibrated " + d;
  if (calibrated && std::string(it.name) == "var_cal") d += ", and from the calibration vector";
  return d;
}

/// What every rank must know about a set before the collective creation: the grid and the apertures.
struct SetLayout {
  std::vector<double> wavelength;
  std::vector<ApertureInfo> apertures;
  std::string medium = "air";
  bool ok = false;
};

SetLayout layout_of(const SeriesSet& set) {
  SetLayout l;
  for (const auto& e : set.exposures) {
    if (!fs::exists(e.red)) continue;
    try {
      // The grid from the WCS and the apertures from FIBRES: the pixels are not needed here.
      const wavecal::RedSpectra red = wavecal::read_red_tables(e.red);
      l.wavelength = red.grid.centres;
      l.apertures = red.spectra.apertures;
      l.medium = red.spectra.header.get_string("WAVEMED").value_or("air");
      l.ok = true;
      return l;
    } catch (const std::exception& ex) {
      spdlog::warn("{}: RED file {} unreadable: {}", e.name, e.red.string(), ex.what());
    }
  }
  return l;
}

}  // namespace

namespace {
std::vector<io::FormatItem> make_rainbow_format(bool calibrated) {
  using K = io::FormatItem::Kind;
  {
    std::vector<io::FormatItem> v;
    auto attr = [&](const char* obj, const char* name, const char* type, const char* what) {
      v.push_back({obj, K::Attribute, name, type, "", what});
    };
    auto ds = [&](const char* group, const char* name, const char* type, const char* unit, const std::string& what) {
      v.push_back({group, K::Dataset, name, type, unit, what});
    };
    attr("/", "provenance", "string", "kspecdr version, configuration hash, instrument profile and raw folder");
    attr("/", "format", "string", "one-line description of the layout");
    const char* S = "<star>";
    attr(S, "name", "string", "aperture (star or fiber) name");
    attr(S, "type", "string", "aperture type: P program, S sky, C calibration standard, F guide");
    attr(S, "ra_deg", "float64", "right ascension in deg (NaN when unknown)");
    attr(S, "dec_deg", "float64", "declination in deg (NaN when unknown)");
    attr(S, "setup", "string", "setup key");
    attr(S, "traceset", "string", "slit mode: the object ('' in fiber mode)");
    attr(S, "n_time", "int64", "number of exposures (ntime)");
    attr(S, "exposures", "string", "exposure names in time order, comma-separated");
    ds("<star>/wavelike", "wavelength", "float64", "Angstrom", "wavelength grid (nwave), the RED grid");
    attr("<star>/wavelike/wavelength", "medium", "string", "air | vacuum");
    for (const auto& it : kFlux) {
      const std::string unit = flux_unit(it, calibrated);
      ds("<star>/fluxlike", it.name, "float32", unit.c_str(), flux_description(it, calibrated) + " (nwave, ntime)");
    }
    ds("<star>/fluxlike", "ok", "uint8", "", "1 = good pixel (mask 0, finite variance) (nwave, ntime)");
    for (std::size_t t = 0; t < kNTime; ++t) ds("<star>/timelike", kTime[t], "float64", kTimeUnits[t], kTimeDesc[t]);
    ds("<star>/timelike", "ok", "uint8", "", "1 = the exposure was reduced and the aperture is usable (ntime)");
    attr("<star>/timelike/time", "scale", "string", "BJD_TDB (Julian Date, barycentric, TDB)");
    attr("<star>/*/<array>", "units", "string", "unit of every dataset (the unit column; '' = dimensionless)");
    return v;
  }
}
}  // namespace

const std::vector<io::FormatItem>& rainbow_format() {
  static const std::vector<io::FormatItem> f = make_rainbow_format(false);
  return f;
}

const std::vector<io::FormatItem>& rainbow_fcal_format() {
  static const std::vector<io::FormatItem> f = make_rainbow_format(true);
  return f;
}

const std::vector<io::FormatItem>& rainbow_fits_format() {
  using K = io::FormatItem::Kind;
  static const std::vector<io::FormatItem> f = [] {
    std::vector<io::FormatItem> v;
    auto kw = [&](const char* name, const char* type, const char* unit, const char* what, const char* when = "") {
      v.push_back({"PRIMARY", K::Keyword, name, type, unit, what, when});
    };
    kw("NAME", "string", "", "star (aperture) name");
    kw("APERTYPE", "string", "", "aperture type: P program, C standard, S sky");
    kw("RA", "float64", "deg", "ICRS right ascension", "when the aperture has its own position (fibers)");
    kw("DEC", "float64", "deg", "ICRS declination", "when the aperture has its own position (fibers)");
    kw("SETUP", "string", "", "instrument setup");
    kw("TIMESCL", "string", "", "BJD_TDB: time is the barycentric Julian Date, TDB");
    kw("FLUXUNIT", "string", "", "electron: fluxlike counts are electrons (FITS unit ct)");
    kw("SOURCE", "string", "", "the Rainbow HDF5 file and group it was made from");
    for (const auto& it : kFlux)
      v.push_back({"FLUXLIKE", K::Column, it.name, "float64[n]", fits_unit(it.unit),
                   std::string(it.description) + "; one ntime-vector per wavelength row"});
    v.push_back({"FLUXLIKE", K::Column, "ok", "float64[n]", "", "1 = good pixel, 0 = not (a number, not a logical)"});
    v.push_back({"WAVELIKE", K::Column, "wavelength", "float64", "Angstrom", "wavelength grid, one row per pixel"});
    for (std::size_t t = 0; t < kNTime; ++t)
      v.push_back({"TIMELIKE", K::Column, kTime[t], "float64", fits_unit(kTimeUnits[t]), kTimeDesc[t]});
    v.push_back({"TIMELIKE", K::Column, "ok", "logical", "", "the exposure was reduced and the aperture is usable"});
    return v;
  }();
  return f;
}

std::string star_group(const std::string& traceset, const std::string& aperture) {
  return traceset.empty() ? safe_name(aperture) : safe_name(traceset) + "/" + safe_name(aperture);
}

RainbowSummary write_rainbow_file(const fs::path& path, const std::vector<SeriesSet>& sets, const Site& site,
                                  const std::string& provenance, const mpi::Comm& comm, bool overwrite,
                                  bool flux_calibrated) {
  RainbowSummary summary;
  // Every rank reads the layout from the same files: the same answer everywhere without messages.
  std::vector<SetLayout> layouts;
  bool any = false;
  for (const auto& s : sets) {
    layouts.push_back(layout_of(s));
    any = any || layouts.back().ok;
  }
  if (!comm.all_true(any))
    throw DataError(fmt::format("no readable RED file for the time series of {}", path.string()));

  // Rank 0 owns the temporary name; every rank opens that file.
  std::unique_ptr<io::AtomicOutput> out;
  std::string temp, error;
  if (comm.is_root()) {
    try {
      out = std::make_unique<io::AtomicOutput>(path, overwrite);
      temp = out->temp_path().string();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.bcast(error);
  if (!error.empty()) throw Error(error);
  comm.bcast(temp);

  h5::File f = h5::File::create_parallel(temp, comm.get());
  f.root().set_attr("provenance", provenance);
  f.root().set_attr("format", flux_calibrated ? "kspecdr Rainbow cube, flux-calibrated (erg/cm2/s/A): per star "
                                                "wavelike/, timelike/, fluxlike/ (nwave, ntime)"
                                              : "kspecdr Rainbow cube: per star wavelike/, timelike/, fluxlike/ "
                                                "(nwave, ntime)");
  const auto nranks = static_cast<std::size_t>(comm.size());
  std::uint32_t causes = 0;
  for (std::size_t si = 0; si < sets.size(); ++si) {
    const SeriesSet& set = sets[si];
    const SetLayout& lay = layouts[si];
    if (!lay.ok) continue;
    const hsize_t nwave = lay.wavelength.size(), ntime = set.exposures.size();
    // Time chunks of at most 16 exposures, as even as the night allows (24 exposures: 2 × 12), so that the
    // ranks' blocks below are whole chunks: a whole chunk is one contiguous piece of the file, a part of one
    // is nwave pieces.
    const hsize_t nchunk = std::max<hsize_t>(1, (ntime + 15) / 16);
    const hsize_t k = std::max<hsize_t>(1, (ntime + nchunk - 1) / nchunk);
    struct Star {
      std::size_t aperture;
      h5::Group g;
      std::vector<h5::Dataset> flux, time;
      h5::Dataset flux_ok, time_ok;
    };
    // Every element of the series' datasets is written below (the ranks' blocks cover all exposures), so the
    // chunks are not filled first.
    constexpr bool kFill = false;
    std::vector<Star> stars;
    std::vector<std::string> names;
    for (const auto& e : set.exposures) names.push_back(e.name);
    for (std::size_t a = 0; a < lay.apertures.size(); ++a) {
      const ApertureInfo& ap = lay.apertures[a];
      if (ap.type == aperture_type::kUnused) continue;
      Star s;
      s.aperture = a;
      const std::string gname = star_group(set.traceset, ap.name);
      s.g = f.root().create_group(gname);
      summary.groups.push_back(gname);
      s.g.set_attr("name", ap.name);
      s.g.set_attr("type", std::string(1, ap.type));
      s.g.set_attr("ra_deg", std::isfinite(ap.ra_deg) ? ap.ra_deg : kNaN);
      s.g.set_attr("dec_deg", std::isfinite(ap.dec_deg) ? ap.dec_deg : kNaN);
      s.g.set_attr("setup", set.setup);
      s.g.set_attr("traceset", set.traceset);
      h5::Group wl = s.g.create_group("wavelike");
      wl.write("wavelength", lay.wavelength);
      h5::Dataset wd = wl.open_dataset("wavelength");
      wd.set_attr("units", "Angstrom");
      wd.set_attr("medium", lay.medium);
      for (const auto& it : kFlux) {
        s.flux.push_back(s.g.create_dataset<float>(std::string("fluxlike/") + it.name, {nwave, ntime},
                                                   {nwave, H5S_UNLIMITED}, {nwave, k}, kFill));
        s.flux.back().set_attr("units", flux_unit(it, flux_calibrated));
      }
      s.flux_ok =
          s.g.create_dataset<std::uint8_t>("fluxlike/ok", {nwave, ntime}, {nwave, H5S_UNLIMITED}, {nwave, k}, kFill);
      s.flux_ok.set_attr("units", "");
      for (std::size_t t = 0; t < kNTime; ++t) {
        s.time.push_back(s.g.create_dataset<double>(std::string("timelike/") + kTime[t], {ntime}, {H5S_UNLIMITED}, {k}, kFill));
        s.time.back().set_attr("units", kTimeUnits[t]);
      }
      s.time.front().set_attr("scale", "BJD_TDB (Julian Date, barycentric, TDB)");
      s.time_ok = s.g.create_dataset<std::uint8_t>("timelike/ok", {ntime}, {H5S_UNLIMITED}, {k}, kFill);
      s.time_ok.set_attr("units", "");
      stars.push_back(std::move(s));
    }

    // Each rank writes a contiguous block of whole time chunks (rank r: chunks [C r / n, C (r + 1) / n) of C),
    // one chunk per round so that a rank holds a few RED files at a time: one collective write per dataset and
    // round, whatever the number of exposures. A rank whose block is exhausted, or that has none because the
    // ranks outnumber the chunks, takes part with an empty selection.
    const std::size_t kBlock = static_cast<std::size_t>(k);
    const std::size_t nexp = set.exposures.size(), r = static_cast<std::size_t>(comm.rank());
    const std::size_t nchunks = (nexp + kBlock - 1) / kBlock;
    const std::size_t lo = std::min(nexp, kBlock * (nchunks * r / nranks)),
                      hi = std::min(nexp, kBlock * (nchunks * (r + 1) / nranks));
    const std::size_t mine_total = hi - lo;
    const auto rounds = static_cast<std::size_t>(
        comm.max(static_cast<long long>((mine_total + kBlock - 1) / kBlock)));
    for (std::size_t round = 0; round < rounds; ++round) {
      const std::size_t b0 = std::min(hi, lo + round * kBlock), b1 = std::min(hi, b0 + kBlock);
      const std::size_t cnt = b1 - b0;
      std::vector<std::optional<wavecal::RedSpectra>> reds(cnt);
      for (std::size_t q = 0; q < cnt; ++q) {
        const SeriesExposure& e = set.exposures[b0 + q];
        if (fs::exists(e.red)) {
          try {
            reds[q] = wavecal::read_red_file(e.red);
            if (flux_calibrated && !reds[q]->spectra.header.get_bool("FLUXCAL").value_or(false))
              throw DataError(fmt::format("not flux-calibrated (FLUXCAL is not T: {})",
                                          reds[q]->spectra.header.get_string("FCALERR").value_or("no reason given")));
            if (reds[q]->spectra.npix() != static_cast<Eigen::Index>(nwave) ||
                reds[q]->spectra.naper() != static_cast<Eigen::Index>(lay.apertures.size()))
              throw DataError(fmt::format("{} × {} spectra, the series has {} × {}", reds[q]->spectra.naper(),
                                          reds[q]->spectra.npix(), lay.apertures.size(), nwave));
          } catch (const std::exception& ex) {
            spdlog::error("{}: RED file {} left out of the time series: {}", e.name, e.red.string(), ex.what());
            reds[q].reset();
          }
        }
        if (!reds[q]) ++summary.failed_exposures;
      }
      // The observer of each exposure, shared by its apertures (a failure is reported per aperture below).
      std::vector<std::optional<BarycentricObserver>> observers(cnt);
      std::vector<std::string> observer_errors(cnt);
      for (std::size_t q = 0; q < cnt; ++q) {
        try {
          observers[q] = barycentric_observer(set.exposures[b0 + q].mjd_mid_utc, site);
        } catch (const std::exception& ex) {
          observer_errors[q] = ex.what();
        }
      }
      const hsize_t t0 = cnt ? static_cast<hsize_t>(b0) : 0, hc = static_cast<hsize_t>(cnt);
      std::vector<float> buf(nwave * cnt);
      std::vector<std::uint8_t> okbuf(nwave * cnt);
      for (auto& st : stars) {
        const auto a = static_cast<Eigen::Index>(st.aperture);
        for (std::size_t it = 0; it < std::size(kFlux); ++it) {
          for (std::size_t q = 0; q < cnt; ++q)
            for (hsize_t w = 0; w < nwave; ++w) {
              const auto j = static_cast<Eigen::Index>(w);
              float v = std::numeric_limits<float>::quiet_NaN();
              const auto& red = reds[q];
              if (red && !(red->spectra.mask(a, j) & kMaskNoData)) {
                if (kFlux[it].member) v = (red->spectra.*(kFlux[it].member))(a, j);
                else v = std::sqrt(red->spectra.variance(a, j));
              }
              buf[w * cnt + q] = v;  // (nwave, cnt) row-major, like the dataset
            }
          st.flux[it].write_slab(cnt ? buf.data() : nullptr, {0, t0}, {nwave, hc}, true);
          causes |= st.flux[it].last_no_collective_cause();
        }
        for (std::size_t q = 0; q < cnt; ++q)
          for (hsize_t w = 0; w < nwave; ++w) {
            const auto j = static_cast<Eigen::Index>(w);
            const auto& red = reds[q];
            okbuf[w * cnt + q] =
                red && red->spectra.mask(a, j) == 0 && std::isfinite(red->spectra.variance(a, j)) ? 1 : 0;
          }
        st.flux_ok.write_slab(cnt ? okbuf.data() : nullptr, {0, t0}, {nwave, hc}, true);
        causes |= st.flux_ok.last_no_collective_cause();

        std::vector<std::vector<double>> tv(kNTime, std::vector<double>(cnt, kNaN));
        std::vector<std::uint8_t> tok(cnt, 0);
        const ApertureInfo& ap = lay.apertures[st.aperture];
        const bool own = std::isfinite(ap.ra_deg) && std::isfinite(ap.dec_deg);
        for (std::size_t q = 0; q < cnt; ++q) {
          const SeriesExposure& e = set.exposures[b0 + q];
          // A time that cannot be computed (no position, no date) is NaN: a throw here would leave the other
          // ranks in the collective writes below.
          try {
            if (!observers[q]) throw DataError(observer_errors[q]);
            tv[0][q] = bjd_tdb(*observers[q], own ? ap.ra_deg : e.ra_deg, own ? ap.dec_deg : e.dec_deg);
          } catch (const std::exception& ex) {
            spdlog::warn("{}: no BJD_TDB for {}: {}", e.name, ap.name, ex.what());
          }
          tv[1][q] = e.mjd_mid_utc;
          tv[2][q] = e.exptime_s;
          tv[3][q] = e.airmass > 0 ? e.airmass : kNaN;
          if (const auto& red = reds[q]) {
            const auto& d = red->spectra.diagnostics[st.aperture];
            tv[4][q] = d.shift_px;
            tv[5][q] = d.width_px;
            tv[6][q] = red->spectra.header.get_double("FLEXPX").value_or(kNaN);
            tv[7][q] = d.sky_median_e;
            tv[8][q] = d.snr_median;
            tok[q] = d.status == "ok" ? 1 : 0;
          }
        }
        for (std::size_t t = 0; t < kNTime; ++t) {
          st.time[t].write_slab(cnt ? tv[t].data() : nullptr, {t0}, {hc}, true);
          causes |= st.time[t].last_no_collective_cause();
        }
        st.time_ok.write_slab(cnt ? tok.data() : nullptr, {t0}, {hc}, true);
        causes |= st.time_ok.last_no_collective_cause();
      }
    }
    // The exposure names in time order (an attribute: variable-length string datasets cannot be written
    // over MPI-IO).
    std::string joined;
    for (const auto& n : names) joined += (joined.empty() ? "" : ",") + n;
    for (auto& s : stars) {
      s.g.set_attr("n_time", static_cast<long long>(ntime));
      s.g.set_attr("exposures", joined);
    }
  }
  f.close();
  summary.failed_exposures = static_cast<std::size_t>(comm.sum(static_cast<long long>(summary.failed_exposures)));
  summary.no_collective_cause = static_cast<std::uint32_t>(comm.max(static_cast<long long>(causes)));
  if (comm.is_root()) out->commit();
  comm.barrier();
  return summary;
}

void write_chromatic_fits(const fs::path& h5path, const std::string& group, const fs::path& outpath,
                          bool overwrite) {
  const h5::File f = h5::File::open(h5path);
  const h5::Group g = f.root().open_group(group);
  const auto wave = g.read<double>("wavelike/wavelength");
  const auto nwave = wave.size();
  io::AtomicOutput out(outpath, overwrite);
  {
    auto fits = fits::Fits::create(out.temp_path());
    Header h;
    h.add_comment("Data are stored in three main extensions");
    h.add_comment(" [1]=['FLUXLIKE'] contains (nwave, ntime)-shaped arrays");
    h.add_comment(" [2]=['WAVELIKE'] contains (nwave)-shaped arrays");
    h.add_comment(" [3]=['TIMELIKE'] contains (ntime)-shaped arrays");
    h.add_comment("The primary extension header contains some metadata.");
    h.set("NAME", g.attr_string("name"), "star (aperture) name");
    h.set("APERTYPE", g.attr_string("type"), "aperture type: P program, C standard, S sky");
    // An aperture without its own position (a slit star) has none in the header; its times use the pointing.
    if (std::isfinite(g.attr_double("ra_deg"))) h.set("RA", g.attr_double("ra_deg"), "[deg] ICRS right ascension");
    if (std::isfinite(g.attr_double("dec_deg"))) h.set("DEC", g.attr_double("dec_deg"), "[deg] ICRS declination");
    h.set("SETUP", g.attr_string("setup"), "instrument setup");
    h.set("TIMESCL", "BJD_TDB", "time: barycentric Julian Date, TDB");
    h.set("FLUXUNIT", "electron", "fluxlike counts are electrons (FITS unit ct)");
    h.set("SOURCE", h5path.filename().string() + ":" + group, "kspecdr Rainbow HDF5 file and group");
    fits.write_empty_primary(h);

    fits::Table fl;
    h5::Dims dims;
    for (const auto& it : kFlux) {
      const auto v = g.read<float>(std::string("fluxlike/") + it.name, &dims);
      const long ntime = static_cast<long>(dims.size() == 2 ? dims[1] : 0);
      fl.add_double(it.name, std::vector<double>(v.begin(), v.end()), fits_unit(it.unit), std::max(1L, ntime));
    }
    {
      const auto v = g.read<std::uint8_t>("fluxlike/ok", &dims);
      // FITS logical vector columns are not in our table writer: the mask travels as 0/1 integers per pixel.
      fl.add_double("ok", std::vector<double>(v.begin(), v.end()), "", std::max<long>(1, static_cast<long>(dims[1])));
    }
    fits.write_table(fl, Header{}, "FLUXLIKE");
    fits::Table wl;
    wl.add_double("wavelength", wave, "Angstrom");
    fits.write_table(wl, Header{}, "WAVELIKE");
    fits::Table tl;
    for (std::size_t t = 0; t < kNTime; ++t) tl.add_double(kTime[t], g.read<double>(std::string("timelike/") + kTime[t]), fits_unit(kTimeUnits[t]));
    {
      const auto v = g.read<std::uint8_t>("timelike/ok");
      std::vector<bool> b;
      for (auto x : v) b.push_back(x != 0);
      tl.add_logical("ok", b);
    }
    fits.write_table(tl, Header{}, "TIMELIKE");
    (void)nwave;
    fits.close();
  }
  out.commit();
}

}  // namespace kspecdr::series
