#!/usr/bin/python3
"""Figures for docs/wavelength.md, drawn from the files of a night reduced with `--stage red`.

  /usr/bin/python3 scripts/plot_wavelength.py --reduced DIR --out PLOTDIR [--prefix wavelength_]
      [--truth truth.h5] [--arc NAME] [--aperture NAME] [--red-aperture NAME] [--exposure RUN]

Reads
  DIR/calib/arcsol_*.fits  the arc solutions: combined arc spectra (ARC, ARC_VAR, ARC_MASK), the Legendre
                           series of every aperture (SOLUTIONS) and the identified lines (LINES)
  DIR/calib/traces_*.fits  (slit mode, with --truth) the trace of every aperture, to match it to the truth
  DIR/red/*.red.fits       the resampled spectra and the flexure of every exposure (FLEXPX, FLEXERR)
Nothing is refitted: λ(x) is legval(u, COEFFS[:ORDER+1]), u = (2x − XMIN − XMAX)/(XMAX − XMIN).
With several arc solutions (slit mode: one per object) figures 01–05 are drawn for each, the object's name
appended to the file name, unless --arc picks one. Writes, PREFIX being --prefix:
  PREFIX01_arc.png         combined arc of one aperture, identified lines marked (used / clipped) and labelled
  PREFIX02_residuals.png   line residuals (list − fit) in px and Å, vs pixel and vs wavelength, all apertures
  PREFIX03_rms.png         fiber mode: rms per fiber vs fiber index, with the rms the centroid errors predict
  PREFIX04_model.png       the arc rebuilt from the solution (fitted line fluxes and widths at λ⁻¹(WAVE), plus
                           the background) over the observed one, and the difference
  PREFIX05_truth.png       with --truth: solution − true λ(x) in px across the detector for every aperture, with
                           the solution's own predicted error (PRED_ERR_PX)
  PREFIX06_red.png         one RED spectrum (flux ± 1σ) and its sky with the flexure lines marked
  PREFIX07_flexure.png     flexure (FLEXPX ± FLEXERR) of every exposure vs time, with the truth when given
Prints the numbers the figures show (rms, solution vs truth, flexure vs truth).
"""
import argparse
import glob
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from numpy.polynomial import legendre  # noqa: E402
from scipy.special import erf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKY_LIST = os.path.join(REPO, "data", "linelists", "sky-lowres.dat")
STATUS_COLOUR = {"ok": "tab:blue", "smoothed": "tab:orange", "failed": "tab:red"}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
                     "xtick.labelsize": 10, "ytick.labelsize": 10})


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v).strip()


# ---------------------------------------------------------------- reading

def read_arc(path):
    """One arc solution file as a dict: header, arc images, one dict per aperture, the lines table."""
    with fits.open(path) as h:
        hdr = h[0].header
        sol = h["SOLUTIONS"].data
        lines = h["LINES"].data
        arc = dict(path=path, header=hdr, flux=h["ARC"].data.astype(float), var=h["ARC_VAR"].data.astype(float),
                   mask=h["ARC_MASK"].data.astype(int), traceset=text(hdr.get("TRACESET", "")),
                   setup=text(hdr.get("SETUP", "")), linelist=text(hdr.get("LINELIST", "")))
        aps = []
        for i in range(len(sol)):
            order = int(sol["ORDER"][i])
            aps.append(dict(index=i, name=text(sol["NAME"][i]), type=text(sol["TYPE"][i]),
                            status=text(sol["STATUS"][i]), message=text(sol["MESSAGE"][i]), order=order,
                            coeffs=np.atleast_1d(sol["COEFFS"][i])[: order + 1].astype(float),
                            xmin=float(sol["XMIN"][i]), xmax=float(sol["XMAX"][i]),
                            rms_px=float(sol["RMS_PX"][i]), rms_a=float(sol["RMS_A"][i]),
                            exp_rms_px=float(sol["EXP_RMS_PX"][i]), pred_err_px=float(sol["PRED_ERR_PX"][i]),
                            maxpred_px=float(sol["MAXPRED_PX"][i]), n_used=int(sol["N_USED"][i]),
                            n_rejected=int(sol["N_REJECTED"][i])))
        arc["apertures"] = aps
        arc["lines"] = {k: np.asarray(lines[k]) for k in lines.columns.names}
        arc["lines"]["ID"] = np.array([text(v) for v in lines["ID"]])
    arc["fiber"] = arc["traceset"] == ""
    return arc


def wave_of(ap, x):
    x = np.asarray(x, dtype=float)
    u = (2.0 * x - ap["xmin"] - ap["xmax"]) / (ap["xmax"] - ap["xmin"])
    return legendre.legval(u, ap["coeffs"])


def dwave_dx(ap, x):
    u = (2.0 * np.asarray(x, dtype=float) - ap["xmin"] - ap["xmax"]) / (ap["xmax"] - ap["xmin"])
    return legendre.legval(u, legendre.legder(ap["coeffs"])) * 2.0 / (ap["xmax"] - ap["xmin"])


def pixel_of(ap, wave, npix):
    """λ⁻¹ through the solution: interpolation on a fine grid, then Newton steps."""
    grid = np.linspace(-0.1 * npix, 1.1 * npix, 12 * npix)
    w = wave_of(ap, grid)
    order = np.argsort(w)
    x = np.interp(wave, w[order], grid[order])
    for _ in range(3):
        x = x - (wave_of(ap, x) - wave) / dwave_dx(ap, x)
    return x


def lines_of(arc, i):
    sel = arc["lines"]["APERTURE"] == i
    return {k: v[sel] for k, v in arc["lines"].items()}


def read_traces(path, nx):
    """Centre y(x) of every trace of a trace map, by name."""
    out = {}
    x = np.arange(nx, dtype=float)
    with fits.open(path) as h:
        for row in h["TRACES"].data:
            n, lo, hi = int(row["CENTRE_NCOEF"]), row["CENTRE_XMIN"], row["CENTRE_XMAX"]
            out[text(row["NAME"])] = legendre.legval((2 * x - lo - hi) / (hi - lo), np.asarray(row["CENTRE_COEF"])[:n])
    return out


def read_sky_list(path):
    waves, ids = [], []
    with open(path) as f:
        for line in f:
            s = line.split("#")[0].split()
            if s:
                waves.append(float(s[0]))
                ids.append(" ".join(s[1:]))
    return np.array(waves), ids


def running_lower_quartile(flux, good, half=30):
    """The continuum the peak finder subtracts: the lower quartile of the good pixels in a 61 px window."""
    n = flux.size
    out = np.full(n, np.nan)
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        v = flux[lo:hi][good[lo:hi]]
        if v.size:
            out[i] = np.percentile(v, 25)
    return out


# ---------------------------------------------------------------- truth

def truth_wavelengths(truth, arc, reduced, npix):
    """True λ(x) of every aperture of the arc file, by name (fiber mode) or by trace position (slit mode).
    On the slit the true λ is taken along the trace the arcs were extracted on: the aperture's nominal λ(x)
    plus the line tilt times the distance between that trace and the nominal one."""
    names = list(truth["apertures"].keys())
    out = {}
    traces = None
    if any(ap["name"] not in names for ap in arc["apertures"]):
        tag = os.path.basename(arc["path"])[len("arcsol_"):]
        tpath = os.path.join(reduced, "calib", "traces_" + tag)
        if not os.path.exists(tpath):
            raise SystemExit(f"no trace map {tpath} to match apertures to the truth by position")
        traces = read_traces(tpath, npix)
    tilt = None
    if "spectra/slit" in truth:
        tilt = float(truth["spectra/slit"].attrs["tilt_angstrom"]), float(truth.attrs["ny"])
    for ap in arc["apertures"]:
        if ap["name"] in names:
            tname = ap["name"]
        else:
            yc = traces[ap["name"]][npix // 2]
            d = {n: abs(truth[f"apertures/{n}/centre_y"][npix // 2] - yc) for n in names}
            tname = min(d, key=d.get)
            if d[tname] > 3.0:
                raise SystemExit(f"aperture {ap['name']} (y = {yc:.1f}) matches no truth aperture")
        lam = truth[f"apertures/{tname}/wavelength"][()].astype(float)
        if tilt is not None and traces is not None and ap["name"] in traces:
            dy = traces[ap["name"]] - truth[f"apertures/{tname}/centre_y"][()]
            lam = lam + tilt[0] * dy / (tilt[1] / 2.0)
        out[ap["name"]] = (tname, lam)
    return out


# ---------------------------------------------------------------- figures

def pick_aperture(arc, name):
    if name:
        for ap in arc["apertures"]:
            if ap["name"] == name:
                return ap
        raise SystemExit(f"no aperture {name} in {arc['path']}")
    ok = [ap for ap in arc["apertures"] if ap["status"] == "ok"] or \
        [ap for ap in arc["apertures"] if ap["status"] != "failed"]
    if not ok:
        raise SystemExit(f"no aperture with a wavelength solution in {arc['path']}")
    return max(ok, key=lambda ap: (ap["n_used"], -ap["index"]))


def fig_arc(arc, ap, path):
    i = ap["index"]
    f = arc["flux"][i]
    good = (arc["mask"][i] == 0) & np.isfinite(arc["var"][i])
    x = np.arange(f.size)
    ln = lines_of(arc, i)
    fig, axes = plt.subplots(1, 1, figsize=(12, 5.2))
    ax = axes
    floor = max(np.nanpercentile(f[good], 5), 1.0)
    ax.plot(x, np.where(good, np.maximum(f, floor * 0.5), np.nan), lw=0.7, color="k")
    ax.set_yscale("log")
    top = np.nanmax(f[good]) * 30
    ax.set_ylim(floor * 0.5, top)
    for used, colour, label in ((1, "tab:blue", "used in the fit"), (0, "tab:red", "clipped")):
        sel = ln["USED"] == used
        xs = ln["X"][sel]
        peak = np.interp(xs, x, np.where(good, f, np.nan))
        ax.vlines(xs, np.maximum(peak * 1.3, floor), np.maximum(peak * 3, floor * 2), color=colour, lw=1,
                  label=f"{label} ({sel.sum()})")
        for xx, pk, w in zip(xs, peak, ln["WAVE"][sel]):
            ax.text(xx, max(pk * 3.3, floor * 2.2), f"{w:.1f}", rotation=90, ha="center", va="bottom", fontsize=7,
                    color=colour)
    ax.set_xlim(-5, f.size + 5)
    ax.set_xlabel("pixel x along the dispersion")
    ax.set_ylabel("arc flux (e- per column)")
    lam = wave_of(ap, [0, f.size - 1])
    sec = ax.secondary_xaxis("top", functions=(lambda xx: wave_of(ap, xx), lambda w: pixel_of(ap, w, f.size)))
    sec.set_xlabel("wavelength (Å, air)")
    ax.set_title(f"{os.path.basename(arc['path'])}: aperture {ap['name']}, {arc['header'].get('NARCS', '?')} arcs "
                 f"combined, lines of {arc['linelist']} (λ {lam[0]:.0f}–{lam[1]:.0f} Å)", fontsize=10)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_residuals(arc, path):
    L = arc["lines"]
    npix = arc["flux"].shape[1]
    resid_a = L["WAVE"] - L["WAVE_FIT"]
    used = L["USED"] == 1
    resid_px = L["RESID_PX"]
    # The stored residual in px is (list − fit) over the local dispersion: check the sign convention.
    disp = np.array([dwave_dx(arc["apertures"][a], x) for a, x in zip(L["APERTURE"], L["X"])])
    if used.any() and np.nanmedian(np.abs(resid_a[used] / disp[used] - resid_px[used])) > 1e-3 + 0.1 * np.nanmedian(
            np.abs(resid_px[used])):
        print("note: RESID_PX is not (WAVE − WAVE_FIT) / (dλ/dx); plotting the stored values")
    rms_px = np.sqrt(np.mean(resid_px[used] ** 2))
    rms_a = np.sqrt(np.mean(resid_a[used] ** 2))
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row")
    naper = len(arc["apertures"])
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(naper, 1)))
    for col, (xv, xlabel) in enumerate(((L["X"], "pixel x"), (L["WAVE"], "wavelength (Å, air)"))):
        for row, (r, unit, rms) in enumerate(((resid_px, "px", rms_px), (resid_a, "Å", rms_a))):
            ax = axes[row, col]
            ax.axhline(0, color="0.6", lw=0.8)
            if naper <= 6:
                for a in range(naper):
                    s = (L["APERTURE"] == a) & used
                    ax.plot(xv[s], r[s], "o", ms=4, color=colours[a], label=f"{arc['apertures'][a]['name']} used "
                            f"(rms {np.sqrt(np.mean(r[s] ** 2)):.4f} {unit})" if s.any() else None)
            else:
                ax.plot(xv[used], r[used], "o", ms=2.5, color="tab:blue", alpha=0.6,
                        label=f"used, {naper} fibers (rms {rms:.4f} {unit})")
            ax.plot(xv[~used], r[~used], "x", ms=5, color="tab:red", label=f"clipped ({(~used).sum()})")
            ax.set_ylabel(f"residual, list − fit ({unit})")
            if row == 1:
                ax.set_xlabel(xlabel)
            ax.legend(loc="upper right", fontsize=8)
        axes[0, col].set_xlim(*((-10, npix + 10) if col == 0 else (None, None)))
    lim = np.nanmax(np.abs(resid_px[used])) * 1.8 if used.any() else 1
    axes[0, 0].set_ylim(-lim, lim)
    lim_a = np.nanmax(np.abs(resid_a[used])) * 1.8 if used.any() else 1
    axes[1, 0].set_ylim(-lim_a, lim_a)
    fig.suptitle(f"arc line residuals: {used.sum()} lines used over {naper} aperture(s), overall rms "
                 f"{rms_px:.4f} px = {rms_a:.4f} Å (clipped lines beyond the axes are not shown)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return rms_px, rms_a


def fig_rms_per_fiber(arc, path):
    aps = arc["apertures"]
    idx = np.arange(1, len(aps) + 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for status, colour in STATUS_COLOUR.items():
        s = np.array([a["status"] == status for a in aps])
        if not s.any():
            continue
        rms = np.array([a["rms_px"] for a in aps])
        if status == "failed":
            ax.plot(idx[s], np.zeros(s.sum()), "v", color=colour, ms=8, label=f"failed ({s.sum()}): no solution")
        else:
            ax.plot(idx[s], rms[s], "o", color=colour, label=f"rms of the used lines, {status} ({s.sum()})")
    exp = np.array([a["exp_rms_px"] for a in aps])
    pred = np.array([a["pred_err_px"] for a in aps])
    ax.plot(idx, exp, "_", color="k", ms=10, mew=1.5, label="rms the centroid errors predict (EXP_RMS_PX)")
    ax.plot(idx, pred, ".", color="tab:green", label="predicted error of the solution (PRED_ERR_PX)")
    ax.set_xlabel("fiber index")
    ax.set_ylabel("rms (px)")
    top = np.nanmax(np.concatenate([[a["rms_px"] for a in aps], exp, pred]))
    ax.set_ylim(-0.002, 1.5 * top)
    ax.set_xlim(0, len(aps) + 1)
    ok = np.array([a["status"] != "failed" for a in aps])
    ax.set_title(f"{os.path.basename(arc['path'])}: {ok.sum()} of {len(aps)} fibers calibrated, median rms "
                 f"{np.nanmedian([a['rms_px'] for a in aps if a['status'] != 'failed']):.4f} px")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_model(arc, ap, path):
    i = ap["index"]
    f = arc["flux"][i]
    var = arc["var"][i]
    npix = f.size
    good = (arc["mask"][i] == 0) & np.isfinite(var)
    x = np.arange(npix, dtype=float)
    ln = lines_of(arc, i)
    bg = running_lower_quartile(f, good)
    model = bg.copy()
    xc = pixel_of(ap, ln["WAVE"], npix)
    for c, fl, sg in zip(xc, ln["FLUX"], ln["SIGMA"]):
        lo, hi = (x - 0.5 - c) / (np.sqrt(2) * sg), (x + 0.5 - c) / (np.sqrt(2) * sg)
        model += fl * 0.5 * (erf(hi) - erf(lo))
    diff = np.where(good, f - model, np.nan)
    sig = np.sqrt(np.where(good, var, np.nan))
    # The zoom: the 120 px window holding the most identified flux.
    width = min(120, npix)
    score = [ln["FLUX"][(ln["X"] >= s) & (ln["X"] < s + width)].sum() for s in range(0, npix - width + 1, 10)]
    z0 = 10 * int(np.argmax(score))
    fig, axes = plt.subplots(2, 2, figsize=(13, 6.5), sharex="col", gridspec_kw=dict(height_ratios=[2.2, 1],
                                                                                     width_ratios=[2, 1]))
    for col, (lo, hi) in enumerate(((0, npix - 1), (z0, z0 + width))):
        ax, axd = axes[0, col], axes[1, col]
        ax.plot(x, np.where(good, f, np.nan), color="k", lw=0.8, label="observed (combined arcs)")
        ax.plot(x, model, color="tab:orange", lw=0.8, label="from the solution: lines at λ⁻¹(WAVE) + background")
        ax.plot(x, bg, color="tab:green", lw=0.8, ls="--", label="background (61 px lower quartile)")
        axd.fill_between(x, -sig, sig, color="0.8", step="mid", label="±1σ of the observed arc")
        axd.plot(x, diff, color="tab:purple", lw=0.7, label="observed − model")
        axd.axhline(0, color="0.5", lw=0.6)
        ax.set_xlim(lo, hi)
        seg = slice(lo, hi + 1)
        ymax = np.nanmax(np.maximum(np.where(good, f, np.nan)[seg], model[seg]))
        ax.set_ylim(np.nanmin(bg[seg]) - 0.05 * ymax, 1.05 * ymax)
        dd = np.nanpercentile(np.abs(diff[seg]), 99.5) if np.isfinite(diff[seg]).any() else 1
        axd.set_ylim(-1.3 * dd, 1.3 * dd)
        axd.set_xlabel("pixel x along the dispersion")
        if col == 0:
            ax.set_ylabel("arc flux (e- per column)")
            axd.set_ylabel("difference (e-)")
            ax.legend(loc="upper right", fontsize=8)
            axd.legend(loc="lower right", fontsize=8)
        else:
            ax.set_title(f"zoom: x = {lo}–{hi}", fontsize=10)
    rel = np.nansum(np.abs(diff)) / np.nansum(np.abs(np.where(good, f - bg, np.nan)))
    fig.suptitle(f"aperture {ap['name']}: the arc rebuilt from its {len(xc)} identified lines (fitted FLUX and SIGMA "
                 f"at λ⁻¹(WAVE) through the solution)\nΣ|obs − model| / Σ|obs − bg| = {rel:.3f}; lines that were not "
                 f"identified remain in the difference", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_truth(arc, truths, path):
    npix = arc["flux"].shape[1]
    x = np.arange(npix, dtype=float)
    aps = [ap for ap in arc["apertures"] if ap["status"] != "failed"]
    many = len(arc["apertures"]) > 6
    fig, axes = plt.subplots(1, 2 if many else 1, figsize=(13 if many else 9, 5),
                             gridspec_kw=dict(width_ratios=[1.6, 1]) if many else None)
    ax = axes[0] if many else axes
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(arc["apertures"])))
    stats = []
    for ap in aps:
        tname, lam_true = truths[ap["name"]]
        err_px = (wave_of(ap, x) - lam_true) / np.gradient(lam_true, x)
        rms = float(np.sqrt(np.mean(err_px ** 2)))
        stats.append(dict(name=ap["name"], truth=tname, rms=rms, max=float(np.max(np.abs(err_px))),
                          pred=ap["pred_err_px"], maxpred=ap["maxpred_px"], status=ap["status"], index=ap["index"]))
        label = None if many else f"{ap['name']} = {tname}: rms {rms:.4f} px (predicted {ap['pred_err_px']:.4f})"
        ax.plot(x, err_px, color=colours[ap["index"]], lw=1.0 if not many else 0.6, label=label)
        if not many:
            ax.fill_between(x, -ap["pred_err_px"], ap["pred_err_px"], color=colours[ap["index"]], alpha=0.12)
    if many:
        med = float(np.nanmedian([s["pred"] for s in stats]))
        ax.fill_between(x, -med, med, color="0.7", alpha=0.5, label=f"±median PRED_ERR_PX ({med:.4f} px)")
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(1, len(arc["apertures"]) / 0.9))
        fig.colorbar(sm, ax=ax, label="fiber index", pad=0.01)
    ax.axhline(0, color="0.4", lw=0.6)
    ax.set_xlabel("pixel x along the dispersion")
    ax.set_ylabel("solution − true λ (px)")
    ax.set_xlim(0, npix - 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{os.path.basename(arc['path'])}: solution vs the simulator's λ(x);\nband: ± the solution's own "
                 f"predicted error (PRED_ERR_PX)", fontsize=10)
    if many:
        a2 = axes[1]
        idx = np.array([s["index"] + 1 for s in stats])
        a2.plot(idx, [s["rms"] for s in stats], "o", color="tab:blue", label="rms(solution − truth)")
        a2.plot(idx, [s["max"] for s in stats], "^", color="tab:purple", ms=4, label="max |solution − truth|")
        a2.plot(idx, [s["pred"] for s in stats], "_", color="k", ms=9, mew=1.5, label="PRED_ERR_PX (rms)")
        for s in stats:
            if s["status"] == "smoothed":
                a2.annotate("smoothed", (s["index"] + 1, s["rms"]), textcoords="offset points", xytext=(4, 6),
                            fontsize=8, color="tab:orange")
        a2.set_xlabel("fiber index")
        a2.set_ylabel("px")
        a2.set_ylim(bottom=0)
        a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return stats


def read_reds(reduced):
    reds = []
    for p in sorted(glob.glob(os.path.join(reduced, "red", "*.red.fits"))):
        h = fits.getheader(p)
        reds.append(dict(path=p, run=os.path.basename(p).split(".")[0], object=text(h.get("OBJECT", "")),
                         mjd_mid=float(h["MJD-OBS"]) + float(h.get("EXPTIME", 0.0)) / 2 / 86400.0,
                         flex=float(h.get("FLEXPX", np.nan)), flex_err=float(h.get("FLEXERR", np.nan)),
                         flexmeth=text(h.get("FLEXMETH", "")), flexnlin=int(h.get("FLEXNLIN", 0))))
    return reds


def fig_red(red, name, path):
    with fits.open(red["path"]) as h:
        hdr = h[0].header
        flux = h[0].data.astype(float)
        var = h["VARIANCE"].data.astype(float)
        sky = h["SKY"].data.astype(float)
        mask = h["MASK"].data.astype(int)
        names = [text(v) for v in h["FIBRES"].data["NAME"]]
        types = [text(v) for v in h["FIBRES"].data["TYPE"]]
    nw = flux.shape[1]
    lam = hdr["CRVAL1"] + (np.arange(nw) + 1 - hdr["CRPIX1"]) * hdr["CDELT1"]
    if name:
        if name not in names:
            raise SystemExit(f"no aperture {name} in {red['path']}")
        a = names.index(name)
    else:
        # The star of median brightness (not sky, not dead): bright enough to see, faint enough that ±1σ shows.
        cand = [i for i, t in enumerate(types) if t not in ("S", "N")] or list(range(len(names)))
        cand.sort(key=lambda i: np.nanmedian(np.where(mask[i] == 0, flux[i], np.nan)))
        a = cand[len(cand) // 2]
    good = (mask[a] == 0) & np.isfinite(var[a])
    f = np.where(good, flux[a], np.nan)
    s = np.sqrt(np.where(good, var[a], np.nan))
    fig, axes = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True, gridspec_kw=dict(height_ratios=[2, 1]))
    ax = axes[0]
    ax.fill_between(lam, f - s, f + s, color="tab:blue", alpha=0.35, step="mid", label="±1σ")
    ax.plot(lam, f, color="k", lw=0.6, drawstyle="steps-mid", label=f"{names[a]} ({types[a]})")
    hi = np.nanpercentile(f, 99.5)
    ax.set_ylim(min(0, np.nanpercentile(f, 0.5)), 1.15 * hi)
    ax.set_ylabel(f"flux (e- per {hdr['CDELT1']:.3f} Å pixel)")
    ax.legend(loc="upper right")
    ax.set_title(f"{red['run']} ({red['object']}): RED spectrum, sky {text(hdr.get('SKYSUB', ''))} subtracted; "
                 f"flexure {red['flex']:+.3f} ± {red['flex_err']:.3f} px ({red['flexmeth']}, "
                 f"{red['flexnlin']} lines)", fontsize=10)
    ax2 = axes[1]
    sk = np.where(good, sky[a], np.nan)
    ax2.plot(lam, sk, color="tab:green", lw=0.7, drawstyle="steps-mid", label="sky in the same aperture")
    if os.path.exists(SKY_LIST):
        sw, sid = read_sky_list(SKY_LIST)
        inside = (sw > lam[0]) & (sw < lam[-1])
        top = np.nanmax(sk) if np.isfinite(sk).any() else 1
        ax2.vlines(sw[inside], top * 1.05, top * 1.2, color="tab:red", lw=1,
                   label=f"sky-lowres.dat lines ({inside.sum()})")
        ax2.set_ylim(min(0, np.nanmin(sk)), top * 1.3)
    ax2.set_xlabel("wavelength (Å, air)")
    ax2.set_ylabel("sky (e- per pixel)")
    ax2.legend(loc="upper right", fontsize=8)
    ax2.set_xlim(lam[0], lam[-1])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return names[a]


def fig_flexure(reds, truth, path):
    t0 = min(r["mjd_mid"] for r in reds)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    objects = sorted({r["object"] for r in reds})
    markers = "osD^v"
    out = []
    for k, obj in enumerate(objects):
        rs = [r for r in reds if r["object"] == obj]
        hours = np.array([(r["mjd_mid"] - t0) * 24 for r in rs])
        ax.errorbar(hours, [r["flex"] for r in rs], yerr=[r["flex_err"] for r in rs], fmt=markers[k % 5], ms=5,
                    capsize=3, label=f"{obj}: FLEXPX ± FLEXERR ({rs[0]['flexmeth']})")
        for r in rs:
            t = np.nan
            if truth is not None and f"frames/{r['run']}" in truth:
                t = float(truth[f"frames/{r['run']}"].attrs.get("flexure_px", np.nan))
            out.append(dict(run=r["run"], object=obj, flex=r["flex"], err=r["flex_err"], truth=t,
                            nlines=r["flexnlin"], hours=(r["mjd_mid"] - t0) * 24))
    if truth is not None:
        tr = [(o["hours"], o["truth"]) for o in out if np.isfinite(o["truth"])]
        if tr:
            tr.sort()
            ax.plot(*zip(*tr), "k--", lw=1, marker="x", ms=6, label="truth (flexure_px of truth.h5)")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.set_xlabel(f"time since the first exposure (h; MJD {t0:.4f})")
    ax.set_ylabel("flexure shift since the arcs (px)")
    ax.legend(fontsize=8)
    title = "flexure per exposure, from the sky lines"
    if any(np.isfinite(o["truth"]) for o in out):
        d = np.array([o["flex"] - o["truth"] for o in out if np.isfinite(o["truth"])])
        pull = np.array([(o["flex"] - o["truth"]) / o["err"] for o in out if np.isfinite(o["truth"])])
        title += f": measured − truth rms {np.sqrt(np.mean(d ** 2)):.4f} px, pulls rms {np.sqrt(np.mean(pull ** 2)):.2f}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reduced", required=True, help="folder of a night reduced with --stage red")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--prefix", default="wavelength_", help="start of every file name")
    p.add_argument("--truth", help="truth.h5 of a simulated night")
    p.add_argument("--arc", help="only the arc solution whose file name contains this text")
    p.add_argument("--aperture", help="aperture of the arc figures (default: the one with most lines used)")
    p.add_argument("--red-aperture", help="aperture of the RED spectrum figure (default: the brightest star)")
    p.add_argument("--exposure", help="exposure of the RED spectrum figure (default: the middle one)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    truth = None
    if a.truth:
        import h5py
        truth = h5py.File(a.truth, "r")

    arcs = sorted(glob.glob(os.path.join(a.reduced, "calib", "arcsol_*.fits")))
    if a.arc:
        arcs = [x for x in arcs if a.arc in os.path.basename(x)]
    if not arcs:
        raise SystemExit(f"no arc solution file in {a.reduced}/calib (reduce with --stage red)")
    for path in arcs:
        arc = read_arc(path)
        tag = "" if len(arcs) == 1 else "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", arc["traceset"] or arc["setup"])
        name = lambda n: os.path.join(a.out, f"{a.prefix}{n}{tag}.png")  # noqa: E731
        ap = pick_aperture(arc, a.aperture)
        print(f"{os.path.basename(path)}: setup {arc['setup']!r}, trace set {arc['traceset']!r}, lists "
              f"{arc['linelist']}, {len(arc['apertures'])} apertures, "
              f"{sum(x['status'] != 'failed' for x in arc['apertures'])} with a solution")
        for x in arc["apertures"]:
            if x["status"] != "ok":
                print(f"  {x['name']}: {x['status']} {x['message']!r}")
        fig_arc(arc, ap, name("01_arc"))
        rms_px, rms_a = fig_residuals(arc, name("02_residuals"))
        rms_ap = [x["rms_px"] for x in arc["apertures"] if x["status"] != "failed"]
        print(f"  arc lines: overall rms {rms_px:.4f} px = {rms_a:.4f} Å; per aperture RMS_PX median "
              f"{np.median(rms_ap):.4f}, range {np.min(rms_ap):.4f}–{np.max(rms_ap):.4f} px; lines used per aperture "
              f"median {np.median([x['n_used'] for x in arc['apertures'] if x['status'] != 'failed']):.0f}")
        if arc["fiber"]:
            fig_rms_per_fiber(arc, name("03_rms"))
        fig_model(arc, ap, name("04_model"))
        if truth is not None:
            truths = truth_wavelengths(truth, arc, a.reduced, arc["flux"].shape[1])
            stats = fig_truth(arc, truths, name("05_truth"))
            r = np.array([s["rms"] for s in stats])
            pr = np.array([s["pred"] for s in stats])
            print(f"  solution − truth: rms over the detector per aperture median {np.median(r):.4f} px, range "
                  f"{r.min():.4f}–{r.max():.4f} px, all apertures together {np.sqrt(np.mean(r ** 2)):.4f} px; "
                  f"largest |error| {max(s['max'] for s in stats):.4f} px; PRED_ERR_PX median {np.nanmedian(pr):.4f} px")
            if len(stats) <= 6:
                for s in stats:
                    print(f"    {s['name']} = {s['truth']}: rms {s['rms']:.4f} px, max {s['max']:.4f} px, "
                          f"predicted {s['pred']:.4f} px (max {s['maxpred']:.4f})")
            else:
                for s in stats:
                    if s["status"] != "ok":
                        print(f"    {s['name']} ({s['status']}): rms {s['rms']:.4f} px, max {s['max']:.4f} px")

    reds = read_reds(a.reduced)
    if not reds:
        print(f"no RED files in {a.reduced}/red: figures 06 and 07 skipped")
        return
    red = reds[len(reds) // 2]
    if a.exposure:
        red = next((r for r in reds if r["run"] == a.exposure), None)
        if red is None:
            raise SystemExit(f"no RED file of {a.exposure}")
    shown = fig_red(red, a.red_aperture, os.path.join(a.out, f"{a.prefix}06_red.png"))
    print(f"RED spectrum: {red['run']} aperture {shown}")
    flex = fig_flexure(reds, truth, os.path.join(a.out, f"{a.prefix}07_flexure.png"))
    for o in flex:
        t = f", truth {o['truth']:+.4f} px, difference {o['flex'] - o['truth']:+.4f} px = " \
            f"{(o['flex'] - o['truth']) / o['err']:+.2f} sigma" if np.isfinite(o["truth"]) else ""
        print(f"  flexure {o['run']} ({o['object']}): {o['flex']:+.4f} ± {o['err']:.4f} px from {o['nlines']} "
              f"lines{t}")
    if truth is not None:
        d = np.array([o["flex"] - o["truth"] for o in flex if np.isfinite(o["truth"])])
        pull = np.array([(o["flex"] - o["truth"]) / o["err"] for o in flex if np.isfinite(o["truth"])])
        if d.size:
            print(f"  flexure vs truth: rms difference {np.sqrt(np.mean(d ** 2)):.4f} px, max "
                  f"{np.max(np.abs(d)):.4f} px, pulls mean {np.mean(pull):+.2f} rms {np.sqrt(np.mean(pull ** 2)):.2f} "
                  f"over {d.size} exposures")


if __name__ == "__main__":
    main()
