#!/usr/bin/python3
"""kspecdr's traces, sky and extraction side by side with specreduce's, on one simulated IM frame.

  /usr/bin/python3 scripts/compare_specreduce.py [--build-dir build] [--workdir DIR] [--seed 1] [--repeat 5]
      [--part all|extraction|wavelength]

Simulates a slit night with `kspecdr simulate`, reduces it to IM with `kspecdr reduce --stage im`, picks the
middle science frame and runs on it, for every star of the slit:

  kspecdr     `kspecdr extract` (traces found on the frame, median sky, optimal and boxcar extraction), timed
              inside the program (TTRACEMS, TEXTRMS: medians over --repeat runs, no start-up or file reading);
  specreduce  FitTrace (Gaussian peaks, the same bins, the same reference point, a Legendre series of the same
              order), Background.two_sided (the same windows as kspecdr's), BoxcarExtract (the same width) and
              HorneExtract (the IM variance and mask), each step timed with time.perf_counter (median over
              --repeat runs).

Truth comes from the simulator's truth.h5: the trace centre of every star in this exposure and the star's
electrons per column. Prints one Markdown table (the one in docs/benchmarks.md).

Wavelength calibration (--part wavelength or all): the simulated slit night (the same seed) and a simulated
fiber night are reduced with `kspecdr reduce --stage red`; their arc solution files (calib/arcsol_*.fits) hold
the combined arc spectrum of every aperture, kspecdr's solution and its identified lines. specreduce is given,
per aperture, the same arc spectrum and the same lines (pixel centroid X and list wavelength WAVE of the lines
kspecdr used) and a polynomial of the same order (kspecdr's ORDER), as Polynomial1D and as Legendre1D on
[XMIN, XMAX]: `specreduce.wavelength_calibration.WavelengthCalibration1D(...).fitted_model`. specreduce
1.3.0 (Debian's python3-specreduce) does not have that module (it came with specreduce 1.4); there the script
does what that class's fitted_model does, an unweighted `LinearLSQFitter(calc_uncertainties=True)` fit of
the model to (X, WAVE) with astropy.modeling, and says so in the table. Both solutions are scored against
the simulator's λ(x) of the aperture: the rms over all detector pixels of (solution − truth) / (dλ/dx), in
px. specreduce's fit is timed with time.perf_counter (median of --repeat runs per aperture); kspecdr writes
no timing of its arc fit (it is one step of `reduce`), so its fit time is reported as not available.

specreduce 1.3 reports no uncertainty for either extraction, so both are given the honest one: each of its
extractions is linear in the pixels, flux = sum_i w_i D_i; the weights w_i are rebuilt here (and checked to
reproduce specreduce's fluxes), and the variance is sum_i w_i^2 V_i plus (sum_i w_i)^2 times the variance of
the background estimate, with V from the IM's VARIANCE plane.
"""
import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import h5py
import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.modeling import fitting, models
from astropy.nddata import NDData, VarianceUncertainty
from numpy.polynomial import legendre

import specreduce
from specreduce.background import Background
from specreduce.extract import BoxcarExtract, HorneExtract, _align_along_trace, _ap_weight_image
from specreduce.tracing import FitTrace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# kspecdr's defaults (trace::TraceConfig, extract::SkyConfig, extract::ExtractConfig), used for specreduce too.
BIN_PX = 16
CENTRE_ORDER = 3
WINDOW_SIGMA = 4.0
SKY_DISTANCE_SIGMA = 6.0
SKY_WIDTH_PX = 12.0
BOXCAR_HALFWIDTH_SIGMA = 4.0


def run(cmd, log):
    """Runs a command, its output appended to `log`; stops with the log's tail on failure."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        with open(log) as f:
            tail = f.readlines()[-20:]
        raise SystemExit(f"command failed with exit code {rc}: {' '.join(cmd)}\n" + "".join(tail))


def prepare_night(kspecdr, workdir, seed, log):
    """Simulated slit night and its IM files (reused when a previous run left them in `workdir`)."""
    night = os.path.join(workdir, f"night-seed{seed}")
    red = os.path.join(workdir, f"reduced-seed{seed}")
    if not os.path.exists(os.path.join(night, "truth.h5")):
        shutil.rmtree(night, ignore_errors=True)
        run([kspecdr, "simulate", "--mode", "slit", "--out", night, "--seed", str(seed)], log)
    if not os.path.isdir(os.path.join(red, "im")):
        run([kspecdr, "reduce", "--raw", os.path.join(night, "raw"), "--instrument", "sim-slit", "--out", red,
             "--stage", "im"], log)
    return night, red


def pick_frame(truth, imdir):
    """The middle science exposure of the night that has an IM file."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in truth["night/frames"][()]]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in truth["night/classes"][()]]
    science = [n for n, c in zip(names, classes)
               if c == "science" and os.path.exists(os.path.join(imdir, n + ".im.fits"))]
    if not science:
        raise SystemExit(f"no science IM file in {imdir}")
    return science[len(science) // 2]


def truth_of_frame(truth, frame, nx):
    """Per star (in increasing y): name, centre y(x) and sigma(x) in this exposure, star electrons per column."""
    x = np.arange(nx, dtype=float)
    u_ = 2.0 * x / (nx - 1) - 1.0
    stars = []
    for name, ap in truth["apertures"].items():
        fa = truth[f"frames/{frame}/apertures/{name}"]
        if "star_e" not in fa:
            continue
        a = ap.attrs
        offset = float(fa.attrs["trace_offset_px"])
        scale = float(fa.attrs["sigma_scale"])
        centre = float(a["y0_px"]) + offset + float(a["tilt_px"]) * u_ + float(a["curvature_px"]) * u_ ** 2
        sigma = float(a["sigma0_px"]) * scale * (1 + float(a["sigma_slope"]) * u_ + float(a["sigma_curvature"]) * u_ ** 2)
        # The nominal centre_y dataset plus this exposure's offset must be the same curve.
        if np.max(np.abs(ap["centre_y"][()] + offset - centre)) > 1e-6:
            raise SystemExit(f"truth of {name}: centre_y does not follow the documented trace model")
        stars.append(dict(name=name, centre=centre, sigma=sigma, star_e=fa["star_e"][()]))
    stars.sort(key=lambda s: s["centre"][nx // 2])
    return stars


def read_kspecdr_traces(path, nx):
    """Centre and width of every trace in a kspecdr trace map, evaluated at every column."""
    with fits.open(path) as h:
        t = h["TRACES"].data
        out = []
        x = np.arange(nx, dtype=float)
        for row in t:
            def series(prefix):
                lo, hi, n = row[prefix + "_XMIN"], row[prefix + "_XMAX"], int(row[prefix + "_NCOEF"])
                return legendre.legval((2 * x - lo - hi) / (hi - lo), np.asarray(row[prefix + "_COEF"])[:n])
            out.append(dict(name=row["NAME"].strip(), status=row["STATUS"].strip(), centre=series("CENTRE"),
                            sigma=series("WIDTH")))
    return out


def kspecdr_extract(kspecdr, im, out_dir, method, nstars, repeat, log):
    ex = os.path.join(out_dir, f"kspecdr-{method}.ex.fits")
    tr = os.path.join(out_dir, "kspecdr.traces.fits")
    # The masters the IM was made with (calib/ beside im/): their noise enters kspecdr's model variance, as the
    # IM VARIANCE that specreduce's sigma is built from includes it.
    calib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(im))), "calib")
    masters = []
    for opt, pattern in (("--master-flat", "master_flat_*.fits"), ("--master-bias", "master_bias_*.fits")):
        found = sorted(glob.glob(os.path.join(calib, pattern)))
        if found:
            masters += [opt, found[0]]
    run([kspecdr, "extract", im, "--out", ex, "--traces", tr, "--trace.stars", str(nstars), "--extract.method",
         method, "--repeat", str(repeat), "--overwrite"] + masters, log)
    with fits.open(ex) as h:
        hdr = h[0].header
        return dict(flux=h[0].data.astype(float), var=h["VARIANCE"].data.astype(float),
                    mask=h["MASK"].data, width=h["WIDTH"].data.astype(float),
                    trace_ms=float(hdr["TTRACEMS"]), extract_ms=float(hdr["TEXTRMS"]), traces=tr)


# ---------------------------------------------------------------- specreduce, with its linear weights rebuilt

def background_variance(bg, var):
    """Variance of specreduce's 'average' background per column: a weighted mean of the window pixels."""
    w = bg.bkg_wimage
    return np.sum(w ** 2 * var, axis=0) / np.sum(w, axis=0) ** 2


def boxcar_with_variance(sub, trace, width, var, var_sky):
    spec = BoxcarExtract(sub, trace, width=width)()
    flux = spec.flux.value
    w = _ap_weight_image(trace, width, 1, 0, sub.shape)
    if not np.allclose(np.sum(w * sub.data, axis=0), flux, rtol=1e-9, atol=1e-6):
        raise SystemExit("could not rebuild BoxcarExtract's weights")
    return flux, np.sum(w ** 2 * var, axis=0) + np.sum(w, axis=0) ** 2 * var_sky


def horne_weights(data, variance, mask, trace):
    """The weights of specreduce 1.3's HorneExtract, step by step as it computes them (extract.py): the image
    (not the variance) aligned on the integer part of the trace, one Gaussian + quadratic kernel fitted to the
    co-added aligned columns and centred on the middle row, weights kernel/variance over sum(kernel^2/variance).
    Returns the weights in aligned rows, the row shifts, and the kernel normalisation."""
    var = variance.copy()
    msk = mask.copy()
    msk[var == 0] = True
    var[var == 0] = np.nan
    img = np.ma.masked_array(data, np.logical_or(msk, ~np.isfinite(data)))
    img = _align_along_trace(img, trace.trace)
    nrows = img.shape[0]
    xd = np.arange(nrows)
    coadd = img.sum(axis=1) / nrows
    kernel = models.Gaussian1D(amplitude=coadd.max(), mean=coadd.argmax(), stddev=2) + models.Polynomial1D(2)
    fit = fitting.LevMarLSQFitter()(kernel, xd, coadd)
    fit.mean_0 = nrows // 2
    k = fit(xd)[:, None] * np.ones((1, data.shape[1]))
    norm = float(fit.amplitude_0 * fit.stddev_0 * np.sqrt(2 * np.pi))
    g = np.ma.sum(k ** 2 / var, axis=0)
    w = np.where(img.mask, 0.0, k / var) / g * norm
    shifts = trace.trace.astype(int) - nrows // 2
    return w, shifts, img


def horne_with_variance(sub_data, var, mask, trace, var_sky):
    spec = HorneExtract(sub_data, trace, variance=var.copy(), mask=mask.copy(), unit="electron")()
    flux = np.asarray(spec.flux.value, dtype=float)
    w, shifts, img = horne_weights(sub_data, var, mask, trace)
    if not np.allclose(np.sum(w * img.filled(0.0), axis=0), flux, rtol=1e-6, atol=1e-3):
        raise SystemExit("could not rebuild HorneExtract's weights")
    nrows, ncols = sub_data.shape
    rows = np.mod(np.arange(nrows)[:, None] + shifts[None, :], nrows)
    v_aligned = var[rows, np.arange(ncols)[None, :]]
    return flux, np.sum(w ** 2 * v_aligned, axis=0) + np.sum(w, axis=0) ** 2 * var_sky


def timed(fn, repeat):
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return result, statistics.median(times)


# ---------------------------------------------------------------- statistics

def pulls(flux, var, truth):
    return (flux - truth) / np.sqrt(var)


def robust_width(p):
    return 1.4826 * np.median(np.abs(p - np.median(p)))


# ---------------------------------------------------------------- wavelength calibration

def reduce_to_red(kspecdr, workdir, mode, seed, night, log):
    """The night reduced with --stage red (reused when a previous run left its arc solution in `workdir`)."""
    if night is None:
        night = os.path.join(workdir, f"night-{mode}-seed{seed}")
        if not os.path.exists(os.path.join(night, "truth.h5")):
            shutil.rmtree(night, ignore_errors=True)
            run([kspecdr, "simulate", "--mode", mode, "--out", night, "--seed", str(seed)], log)
    red = os.path.join(workdir, f"reduced-{mode}-red-seed{seed}")
    if not glob.glob(os.path.join(red, "calib", "arcsol_*.fits")):
        run([kspecdr, "reduce", "--raw", os.path.join(night, "raw"), "--instrument", f"sim-{mode}", "--out", red,
             "--stage", "red", "--overwrite"], log)
    return night, red


def specreduce_fit(kind):
    """A function (arc spectrum, x, wave, order, xmin, xmax) -> fitted astropy model, and what it runs."""
    def model_of(order, xmin, xmax):
        if kind == "Legendre1D":
            return models.Legendre1D(order, domain=[xmin, xmax])
        return models.Polynomial1D(order)

    try:
        from specreduce.wavelength_calibration import WavelengthCalibration1D
        from astropy.table import QTable
        from specutils import Spectrum1D
    except ImportError:
        def fit(flux, x, wave, order, xmin, xmax):
            return fitting.LinearLSQFitter(calc_uncertainties=True)(model_of(order, xmin, xmax), x, wave)
        return fit, (f"astropy LinearLSQFitter + {kind} (what WavelengthCalibration1D.fitted_model runs; "
                     f"specreduce {specreduce.__version__} has no wavelength_calibration module)")

    def fit(flux, x, wave, order, xmin, xmax):
        spec = Spectrum1D(flux=flux * u.electron, spectral_axis=np.arange(flux.size) * u.pix)
        lines = QTable([x * u.pix, wave * u.AA], names=["pixel_center", "wavelength"])
        return WavelengthCalibration1D(spec, matched_line_list=lines,
                                       input_model=model_of(order, xmin, xmax)).fitted_model
    return fit, f"specreduce {specreduce.__version__} WavelengthCalibration1D + {kind}"


def compare_wavelength(kspecdr, workdir, slit_night, args, log):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import plot_wavelength as pw

    kinds = ("Polynomial1D", "Legendre1D")
    fits_ = {k: specreduce_fit(k) for k in kinds}
    summary = {}
    for mode in ("slit", "fiber"):
        night, red = reduce_to_red(kspecdr, workdir, mode, args.seed, slit_night if mode == "slit" else None, log)
        arcs = sorted(glob.glob(os.path.join(red, "calib", "arcsol_*.fits")))
        rows = []
        with h5py.File(os.path.join(night, "truth.h5"), "r") as truth:
            for path in arcs:
                arc = pw.read_arc(path)
                npix = arc["flux"].shape[1]
                x = np.arange(npix, dtype=float)
                truths = pw.truth_wavelengths(truth, arc, red, npix)
                for ap in arc["apertures"]:
                    if ap["status"] == "failed":
                        continue
                    tname, lam = truths[ap["name"]]
                    disp = np.gradient(lam, x)
                    ln = pw.lines_of(arc, ap["index"])
                    used = ln["USED"] == 1
                    lx, lw = ln["X"][used].astype(float), ln["WAVE"][used].astype(float)
                    row = dict(mode=mode, name=ap["name"], truth=tname, n=int(used.sum()), order=ap["order"],
                               status=ap["status"])
                    err = (pw.wave_of(ap, x) - lam) / disp
                    row["ks"] = dict(rms=float(np.sqrt(np.mean(err ** 2))), max=float(np.max(np.abs(err))),
                                     lines=float(np.sqrt(np.mean(ln["RESID_PX"][used] ** 2))),
                                     ms=float(fits.getheader(path).get("ARCTMS", float("nan"))))
                    for k in kinds:
                        fit, _ = fits_[k]
                        m, ms = timed(lambda: fit(arc["flux"][ap["index"]], lx, lw, ap["order"], ap["xmin"],
                                                  ap["xmax"]), args.repeat)
                        e = (m(x) - lam) / disp
                        r = (lw - m(lx)) / np.interp(lx, x, disp)
                        row[k] = dict(rms=float(np.sqrt(np.mean(e ** 2))), max=float(np.max(np.abs(e))),
                                      lines=float(np.sqrt(np.mean(r ** 2))), ms=ms)
                    rows.append(row)
                    print(f"{mode} {ap['name']} = {tname} ({ap['status']}, {row['n']} lines, order {ap['order']}): "
                          f"solution - truth rms kspecdr {row['ks']['rms']:.4f} px, "
                          + ", ".join(f"{k} {row[k]['rms']:.4f} px ({row[k]['ms']:.2f} ms)" for k in kinds),
                          file=sys.stderr)
        summary[mode] = rows

    print(f"\nwavelength calibration, simulated slit and fiber nights (seed {args.seed}); the same used lines "
          f"(X, WAVE) and order for every fit; times are medians of {args.repeat} runs")
    for k in kinds:
        print(f"specreduce {k}: {fits_[k][1]}")
    cols = [("ks", "kspecdr"), ("Polynomial1D", "specreduce Polynomial1D"), ("Legendre1D", "specreduce Legendre1D")]
    print("\n| | " + " | ".join(f"{mode}: {c}" for mode in summary for _, c in cols) + " |")
    print("|---|" + "---:|" * (len(cols) * len(summary)))

    def cell(mode, key, f):
        return [f(summary[mode], key) for key, _ in cols]

    table = [
        ("apertures", lambda rs, k: f"{len(rs)}"),
        ("lines used per aperture (median)", lambda rs, k: f"{np.median([r['n'] for r in rs]):.0f}"),
        ("rms of the line residuals (px, median over apertures)",
         lambda rs, k: f"{np.median([r[k]['lines'] for r in rs]):.4f}"),
        ("solution − truth, rms over the detector (px, median over apertures)",
         lambda rs, k: f"{np.median([r[k]['rms'] for r in rs]):.4f}"),
        ("solution − truth, rms over the detector (px, worst aperture)",
         lambda rs, k: f"{np.max([r[k]['rms'] for r in rs]):.4f}"),
        ("solution − truth, largest absolute error (px)", lambda rs, k: f"{np.max([r[k]['max'] for r in rs]):.4f}"),
        ("fit time per aperture (ms, median)",
         lambda rs, k: (f"{np.median([r[k]['ms'] for r in rs]):.2f} ᵃ" if k == "ks"
                        else f"{np.median([r[k]['ms'] for r in rs]):.2f}")),
    ]
    for label, f in table:
        print(f"| {label} | " + " | ".join(c for mode in summary for c in cell(mode, None, f)) + " |")
    print("\nᵃ kspecdr's time (ARCTMS of the arc-solution file, one run) covers much more than the fit: finding and "
          "measuring the peaks, identifying them automatically from the profile's hints, the clipped fit and, in "
          "fiber mode, the smoothing across fibers; the specreduce fits are given the identified lines")
    print("\nper aperture, slit: solution − truth rms (px)\n")
    print("| aperture | truth | lines | " + " | ".join(c for _, c in cols) + " |")
    print("|---|---|---:|" + "---:|" * len(cols))
    for r in summary.get("slit", []):
        print(f"| {r['name']} | {r['truth']} | {r['n']} | " + " | ".join(f"{r[k]['rms']:.4f}" for k, _ in cols) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="folder holding the kspecdr program")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "kspecdr-compare-specreduce"),
                    help="folder for the simulated night, its IM files and the EX files (reused when present)")
    ap.add_argument("--seed", type=int, default=1, help="simulator seed")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of every step (the median is shown)")
    ap.add_argument("--part", choices=("all", "extraction", "wavelength"), default="all",
                    help="which comparison to run (default: both)")
    args = ap.parse_args()

    kspecdr = os.path.join(os.path.abspath(args.build_dir), "kspecdr")
    if not os.access(kspecdr, os.X_OK):
        raise SystemExit(f"no kspecdr program in {args.build_dir} (build it, or give --build-dir)")
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "commands.log")
    night, red = prepare_night(kspecdr, workdir, args.seed, log)
    if args.part in ("all", "extraction"):
        compare_extraction(kspecdr, workdir, night, red, args, log)
    if args.part in ("all", "wavelength"):
        compare_wavelength(kspecdr, workdir, night, args, log)
    print(f"\nload average while running: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


def compare_extraction(kspecdr, workdir, night, red, args, log):

    with h5py.File(os.path.join(night, "truth.h5"), "r") as truth:
        frame = pick_frame(truth, os.path.join(red, "im"))
        im_path = os.path.join(red, "im", frame + ".im.fits")
        with fits.open(im_path) as h:
            data = h[0].data.astype(float)
            var = h["VARIANCE"].data.astype(float)
            mask = h["MASK"].data != 0
        ny, nx = data.shape
        stars = truth_of_frame(truth, frame, nx)

    # ---- kspecdr: the traces are found on the frame itself, as many stars as the slit holds
    ks = {m: kspecdr_extract(kspecdr, im_path, workdir, m, len(stars), args.repeat, log) for m in ("optimal", "boxcar")}
    ktr = read_kspecdr_traces(ks["optimal"]["traces"], nx)
    if len(ktr) != len(stars) or any(t["status"] != "ok" for t in ktr):
        raise SystemExit(f"kspecdr found {len(ktr)} usable traces, the truth has {len(stars)} stars")
    # Match kspecdr's traces (star1, star2, ... in increasing y) to the truth by position.
    for t, s in zip(ktr, stars):
        if abs(t["centre"][nx // 2] - s["centre"][nx // 2]) > 3.0:
            raise SystemExit(f"trace {t['name']} lies {t['centre'][nx // 2]:.1f}, star {s['name']} at "
                             f"{s['centre'][nx // 2]:.1f}: no match")

    # ---- specreduce on the same frame and the same stars
    warnings.simplefilter("ignore")
    image = NDData(data, uncertainty=VarianceUncertainty(var), mask=mask, unit=u.electron)
    res = {k: dict(flux=[], var=[], truth=[], trace_err=[]) for k in ("ks_opt", "ks_box", "sr_horne", "sr_box")}
    t_sr = dict(trace=[], box=[], horne=[])
    for a, (t, s) in enumerate(zip(ktr, stars)):
        sigma = float(np.median(t["sigma"]))
        y_ref = float(t["centre"][nx // 2])
        # FitTrace keeps one window of rows for every bin: wide enough for the trace's excursion plus the
        # ±4σ measurement window kspecdr uses around its running prediction.
        excursion = float(np.max(np.abs(t["centre"] - y_ref)))
        window = int(np.ceil(WINDOW_SIGMA * sigma + excursion))
        # A cubic, like kspecdr's Legendre series of order 3 (the same curves). specreduce fits the model with
        # astropy's LevMarLSQFitter; a Legendre1D on the pixel domain does not converge there (0.9 px rms).
        model = models.Polynomial1D(degree=CENTRE_ORDER)
        sr_trace, ms = timed(lambda: FitTrace(image, bins=nx // BIN_PX, guess=y_ref, window=window,
                                              peak_method="gaussian", trace_model=model), args.repeat)
        t_sr["trace"].append(ms)
        separation = SKY_DISTANCE_SIGMA * sigma + SKY_WIDTH_PX / 2
        width = 2 * BOXCAR_HALFWIDTH_SIGMA * sigma

        def sky_and_boxcar():
            bg = Background.two_sided(image, sr_trace, separation, width=SKY_WIDTH_PX)
            sub = bg.sub_image(image)
            return bg, sub, BoxcarExtract(sub, sr_trace, width=width)()

        def sky_and_horne():
            bg = Background.two_sided(image, sr_trace, separation, width=SKY_WIDTH_PX)
            sub = bg.sub_image(image)
            return HorneExtract(sub.flux.value, sr_trace, variance=var.copy(), mask=mask.copy(), unit="electron")()

        (bg, sub, _), ms_box = timed(sky_and_boxcar, args.repeat)
        _, ms_horne = timed(sky_and_horne, args.repeat)
        t_sr["box"].append(ms_box)
        t_sr["horne"].append(ms_horne)
        var_sky = background_variance(bg, var)
        fb, vb = boxcar_with_variance(sub, sr_trace, width, var, var_sky)
        fh, vh = horne_with_variance(sub.flux.value, var, mask, sr_trace, var_sky)

        good = (ks["optimal"]["mask"][a] == 0) & (ks["boxcar"]["mask"][a] == 0)
        for key, f, v in (("ks_opt", ks["optimal"]["flux"][a], ks["optimal"]["var"][a]),
                          ("ks_box", ks["boxcar"]["flux"][a], ks["boxcar"]["var"][a]),
                          ("sr_horne", fh, vh), ("sr_box", fb, vb)):
            res[key]["flux"].append(f[good])
            res[key]["var"].append(v[good])
            res[key]["truth"].append(s["star_e"][good])
        res["ks_opt"]["trace_err"].append(t["centre"] - s["centre"])
        res["ks_box"]["trace_err"].append(t["centre"] - s["centre"])
        res["sr_horne"]["trace_err"].append(np.asarray(sr_trace.trace, dtype=float) - s["centre"])
        res["sr_box"]["trace_err"].append(np.asarray(sr_trace.trace, dtype=float) - s["centre"])
        n_bad = int(np.sum(~good))
        per_star = ", ".join(
            f"{key} {np.mean(p):+.2f}/{np.std(p):.2f}/{robust_width(p):.2f}" for key, p in
            ((k, pulls(res[k]["flux"][-1], res[k]["var"][-1], res[k]["truth"][-1])) for k in res))
        print(f"{s['name']} = kspecdr {t['name']}: y = {s['centre'][nx // 2]:.2f}, sigma = {sigma:.2f} px, "
              f"{n_bad} columns NODATA in kspecdr (left out for all four); pull mean/std/MAD width: {per_star}",
              file=sys.stderr)

    nst = len(stars)
    k_trace = statistics.median([ks[m]["trace_ms"] for m in ks]) / nst
    times = {
        "ks_opt": (k_trace, ks["optimal"]["extract_ms"] / nst),
        "ks_box": (k_trace, ks["boxcar"]["extract_ms"] / nst),
        "sr_horne": (statistics.mean(t_sr["trace"]), statistics.mean(t_sr["horne"])),
        "sr_box": (statistics.mean(t_sr["trace"]), statistics.mean(t_sr["box"])),
    }
    stats = {}
    for key, r in res.items():
        f, v, tr = (np.concatenate(r[k]) for k in ("flux", "var", "truth"))
        p = pulls(f, v, tr)
        err = np.concatenate(r["trace_err"])
        stats[key] = dict(trace_rms=float(np.sqrt(np.mean(err ** 2))), pull_mean=float(np.mean(p)),
                          pull_std=float(np.std(p)), pull_robust=float(robust_width(p)),
                          snr=float(np.median(f / np.sqrt(v))), n=f.size,
                          t_trace=times[key][0], t_extract=times[key][1], t_total=sum(times[key]))
    cols = [("ks_opt", "kspecdr optimal"), ("sr_horne", "specreduce HorneExtract"),
            ("ks_box", "kspecdr boxcar"), ("sr_box", "specreduce BoxcarExtract")]
    rows = [
        ("trace rms error vs truth (px)", "trace_rms", "{:.4f}"),
        ("flux pull mean", "pull_mean", "{:+.3f}"),
        ("flux pull width (std)", "pull_std", "{:.3f}"),
        ("flux pull width (1.4826 MAD)", "pull_robust", "{:.3f}"),
        ("S/N per column (median flux/σ)", "snr", "{:.1f}"),
        ("wall time: trace (ms per star-frame)", "t_trace", "{:.2f}"),
        ("wall time: sky + extraction (ms per star-frame)", "t_extract", "{:.2f}"),
        ("wall time: total (ms per star-frame)", "t_total", "{:.2f}"),
    ]
    print(f"\nframe {frame} of a simulated slit night (seed {args.seed}), {nx} x {ny} px, {nst} stars, "
          f"{stats['ks_opt']['n']} star-columns; specreduce {specreduce.__version__}; timings are medians of "
          f"{args.repeat} runs\n")
    print("| | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(stats[c][key]) for c, _ in cols) + " |")
    speed = [stats[sr]["t_total"] / stats[k]["t_total"] for k, sr in (("ks_opt", "sr_horne"), ("ks_box", "sr_box"))]
    print(f"| speed-up of kspecdr (total) | {speed[0]:.0f}x | | {speed[1]:.0f}x | |")


if __name__ == "__main__":
    main()
