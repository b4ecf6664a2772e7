#!/usr/bin/python3
"""Figures of the in-field flux calibration (C fibers, template fit), drawn from what `kspecdr fluxcal
--catalog ...` wrote and, when given, the simulator's truth.

    plot_fluxcal_infield.py FCALDIR [--run RUN] [--truth truth.h5] [--out DIR] [--prefix fluxcal_sim_]

FCALDIR holds what the in-field mode wrote: fluxcal_cal.h5 (per exposure the combined Cal vector and, per
standard star, its own vector, the template fit, the scaled model and the photometry per band; all vectors at
airmass 0; docs/formats.md, infield_cal_format()) and <run>.fcal.fits. One exposure is drawn (--run, default
the first). Writes:
  <prefix>cal.png        Cal(λ) of every star and the combined vector (and h c / (λ A_eff G) from the truth,
                         G the geometric mean of the true fiber throughputs of the stars used)
  <prefix>stars.png      each star's fractional residual from the combined curve, Cal_s / (a_s Cal) − 1, with
                         ± the rms scatter across the used stars per pixel that fluxcal writes (rms_frac),
                         a_s the star's grey factor of the combination (attribute `factor`)
  <prefix>fit.png        each star's template fit over its data: the written `model` (the fitted model × scale,
                         convolved, RV-shifted and resampled on the RED pixels, above the atmosphere: the F_model
                         of Cal_s) against the star's spectrum in <run>.fcal.fits (calibrated with the combined
                         vector) × a_s; the lower panels are (data − model) / σ. This is the data against the
                         model through the combined curve, not the fit's own continuum-normalised residuals.
  <prefix>phot.png       the written photometric residuals per band per star, m_syn(model × scale) − m_cat,AB
                         (`photometry/residual_mag`) with the catalog errors; with --truth also m_syn(model ×
                         scale) − the catalog's noise-free true AB magnitude (/catalog/<band>/true_ab). Bands
                         not used for the scale are drawn hollow and their reason printed.
"""
import argparse
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

HC = 6.62607015e-27 * 2.99792458e18  # erg Å


def read_vec(g):
    return {"lam": g["wavelength"][:], "cal": g["cal"][:], "var": g["variance"][:], "good": g["good"][:]}


def read_exposure(path, run):
    with h5py.File(path, "r") as f:
        exps = f["exposures"]
        keys = sorted(exps)
        key = keys[0] if run is None else next(k for k in keys if exps[k].attrs["run"] == run)
        g = exps[key]
        ex = read_vec(g)
        for a in ("run", "exposure_airmass", "exptime_s", "rms"):
            ex[a] = g.attrs[a]
        ex["rms_frac"] = g["rms_frac"][:] if "rms_frac" in g else None
        ex["run"] = ex["run"].decode() if isinstance(ex["run"], bytes) else str(ex["run"])
        stars = []
        for k in sorted(g.get("stars", {})):
            s = read_vec(g["stars"][k])
            for a in ("fiber", "name", "reason"):
                v = g["stars"][k].attrs[a]
                s[a] = v.decode() if isinstance(v, bytes) else str(v)
            sg = g["stars"][k]
            s["used"] = bool(sg.attrs["used"])
            for a in ("factor", "teff_k", "logg", "mh", "alpha", "rv_km_s", "rv_err_km_s", "chi2_dof", "scale",
                      "scale_err"):
                s[a] = float(sg.attrs[a])
            s["model"] = sg["model"][:]
            ph = sg["photometry"]
            s["phot"] = {c: ph[c][:] for c in ("mag_ab", "mag_ab_err", "mag_ab_synth", "residual_mag", "used")}
            for c in ("band", "note"):
                s["phot"][c] = [v.decode() if isinstance(v, bytes) else str(v) for v in ph[c][:]]
            stars.append(s)
    return ex, stars


def red_aperture(path, fiber):
    """Data, variance, mask, wavelength and header of one aperture of a RED/FCAL file."""
    with fits.open(path) as h:
        hd = h[0].header
        names = [str(n).strip() for n in h["FIBRES"].data["NAME"]]
        i = names.index(fiber)
        n = hd["NAXIS1"]
        lam = hd["CRVAL1"] + (np.arange(n) + 1 - hd["CRPIX1"]) * hd["CDELT1"]
        return lam, h[0].data[i].astype(float), h["VARIANCE"].data[i].astype(float), h["MASK"].data[i], hd


def truth_cal(truth, fibers_used):
    with h5py.File(truth, "r") as t:
        lam = t["spectra/wavelength"][:]
        area = t["spectra/effective_area_cm2"][:]
        g = np.exp(np.mean([np.log(t["apertures"][f].attrs["throughput"]) for f in fibers_used]))
    return lam, HC / (lam * area * g), g


def truth_throughput(truth, fiber):
    with h5py.File(truth, "r") as t:
        return float(t["apertures"][fiber].attrs["throughput"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fcaldir")
    p.add_argument("--run", help="exposure to draw (default: the first in fluxcal_cal.h5)")
    p.add_argument("--truth", help="simulator truth.h5")
    p.add_argument("--out", default=".")
    p.add_argument("--prefix", default="fluxcal_sim_")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ex, stars = read_exposure(os.path.join(a.fcaldir, "fluxcal_cal.h5"), a.run)
    run = ex["run"]
    used = [s["fiber"] for s in stars if s["used"]]
    lam = ex["lam"]
    comb = np.where(ex["good"] != 0, ex["cal"], np.nan)
    label = {s["fiber"]: f"{s['fiber']} {s['name']}" + ("" if s["used"] else " (rejected)") for s in stars}

    # ---- Cal(λ): stars, combined, truth
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in stars:
        c = np.where(s["good"] != 0, s["cal"], np.nan)
        ax.plot(s["lam"], c, lw=0.4, alpha=0.8, label=f"{label[s['fiber']]}, a = {s['factor']:.3f}")
    ax.plot(lam, comb, "k", lw=1.0, label=f"combined ({len(used)} stars)")
    if a.truth:
        tl, tc, g = truth_cal(a.truth, used)
        inr = (tl >= lam[0]) & (tl <= lam[-1])
        ax.plot(tl[inr], tc[inr], "r--", lw=0.9, zorder=3, label=f"truth h c / (λ A$_{{eff}}$ G), G = {g:.3f}")
    ax.set_xlim(lam[0], lam[-1])
    ax.set_xlabel("wavelength [Å]")
    ax.set_ylabel("Cal at airmass 0 [erg cm$^{-2}$ e$^{-1}$]")
    ax.set_title(f"{run}: in-field Cal(λ)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "cal.png"), dpi=90)
    plt.close(fig)

    # ---- per-star residuals from the combined curve (and the combined against the truth)
    nrow = 2 if a.truth else 1
    fig, axs = plt.subplots(nrow, 1, figsize=(7, 2.6 * nrow + 0.6), sharex=True, squeeze=False)
    ax = axs[0, 0]
    for s in stars:
        c = np.where(s["good"] != 0, s["cal"], np.nan)
        r = c / (s["factor"] * np.interp(s["lam"], lam, comb)) - 1
        ax.plot(s["lam"], r, lw=0.3, alpha=0.7,
                label=f"{label[s['fiber']]}: median |r| {100 * np.nanmedian(np.abs(r)):.2f} %")
    ax.axhline(0, color="k", lw=0.5)
    if ex["rms_frac"] is not None:  # the QC the combination wrote: the stars' rms scatter per pixel
        ax.plot(lam, ex["rms_frac"], "k", lw=0.6, label="± rms across the used stars (rms_frac)")
        ax.plot(lam, -ex["rms_frac"], "k", lw=0.6)
    ax.set_ylim(-0.05, 0.05)
    ax.set_ylabel("Cal$_s$ / (a$_s$ Cal) − 1")
    ax.set_title(f"{run}: each star against the combined curve (FCALRMS {100 * ex['rms']:.2f} %)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    if a.truth:
        ax = axs[1, 0]
        r = comb / np.interp(lam, tl, tc) - 1
        ax.plot(lam, r, "k", lw=0.4, label=f"combined / truth − 1: median |r| {100 * np.nanmedian(np.abs(r)):.2f} %")
        for s in stars:
            gs = truth_throughput(a.truth, s["fiber"])
            c = np.where(s["good"] != 0, s["cal"], np.nan)
            rs = c / (np.interp(s["lam"], tl, tc) * g / gs) - 1
            ax.plot(s["lam"], rs, lw=0.3, alpha=0.5,
                    label=f"{s['fiber']} / (truth G / g$_s$) − 1, g$_s$ = {gs:.3f}")
        ax.axhline(0, color="r", lw=0.5)
        ax.set_ylim(-0.05, 0.05)
        ax.set_ylabel("against the truth")
        ax.legend(fontsize=7, loc="lower right")
    axs[-1, 0].set_xlabel("wavelength [Å]")
    axs[-1, 0].set_xlim(lam[0], lam[-1])
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "stars.png"), dpi=90)
    plt.close(fig)

    # ---- each star's template fit over its data (the written model)
    fcal = os.path.join(a.fcaldir, run + ".fcal.fits")
    fig, axs = plt.subplots(2 * len(stars), 1, figsize=(7, 2.9 * len(stars) + 0.4), sharex=True, squeeze=False,
                            gridspec_kw={"height_ratios": [2.2, 1] * len(stars)})
    for k, s in enumerate(stars):
        ax1, ax2 = axs[2 * k, 0], axs[2 * k + 1, 0]
        lf, flx, fvar, fmsk, _ = red_aperture(fcal, s["fiber"])
        if not np.allclose(lf, s["lam"], rtol=0, atol=1e-6):
            raise SystemExit(f"{fcal}: {s['fiber']} is not on the grid of fluxcal_cal.h5")
        model = s["model"]
        data = flx * s["factor"]  # Cal_s ≈ a_s Cal: the star's own flux is a_s × (its spectrum calibrated with Cal)
        err = np.sqrt(fvar) * s["factor"]
        bad = (fmsk != 0) | (s["good"] == 0) | ~np.isfinite(model)
        data = np.where(bad, np.nan, data)
        ax1.fill_between(lf, data - err, data + err, color="0.7", lw=0, step="mid")
        ax1.plot(lf, data, "k", lw=0.4, drawstyle="steps-mid", label="data calibrated with the combined Cal, × a$_s$")
        ax1.plot(lf, model, "r", lw=0.6,
                 label=(f"model × scale: Teff {s['teff_k']:.0f} K, log g {s['logg']:.2f}, [M/H] {s['mh']:+.2f}, "
                        f"RV {s['rv_km_s']:.1f} ± {s['rv_err_km_s']:.1f} km/s, χ²/dof {s['chi2_dof']:.2f}"))
        ax1.set_ylabel("F$_\\lambda$ [erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$]", fontsize=7)
        ax1.set_title(f"{run} {label[s['fiber']]}", fontsize=9)
        ax1.legend(fontsize=6, loc="lower right")
        z = (data - model) / err
        ax2.plot(lf, z, "k", lw=0.3)
        ax2.axhline(0, color="r", lw=0.5)
        ax2.set_ylim(-6, 6)
        ax2.set_ylabel("(data − model) / σ", fontsize=7)
        print(f"{run} {s['fiber']}: (data - model)/sigma median {np.nanmedian(z):+.2f}, "
              f"robust sd {1.4826 * np.nanmedian(np.abs(z - np.nanmedian(z))):.2f}")
    axs[-1, 0].set_xlabel("wavelength [Å]")
    axs[-1, 0].set_xlim(lam[0], lam[-1])
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "fit.png"), dpi=90)
    plt.close(fig)

    # ---- photometric residuals per band per star (written by fluxcal)
    bands = stars[0]["phot"]["band"]
    truth_ab = {}
    if a.truth:
        with h5py.File(a.truth, "r") as t:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in t["catalog/name"][:]]
            for b in bands:
                if f"catalog/{b}/true_ab" in t:
                    truth_ab[b] = dict(zip(names, t[f"catalog/{b}/true_ab"][:]))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(bands))
    for k, s in enumerate(stars):
        ph = s["phot"]
        if ph["band"] != bands:
            raise SystemExit(f"{s['fiber']}: bands {ph['band']} differ from {bands}")
        off = (k - (len(stars) - 1) / 2) * 0.12
        res, err, used = ph["residual_mag"], ph["mag_ab_err"], ph["used"] != 0
        w = 1 / err[used] ** 2
        print(f"{run} {s['fiber']}: residuals [mmag] " + " ".join(f"{b} {1000 * r:+.1f}" for b, r in zip(bands, res))
              + f"; weighted mean over the used bands {1000 * np.sum(w * res[used]) / np.sum(w):+.2e} mmag")
        for b, u, note in zip(bands, used, ph["note"]):
            if not u:
                print(f"{run} {s['fiber']}: band {b} not used: {note}")
        h = ax.errorbar(x[used] + off, 1000 * res[used], 1000 * err[used], fmt="o", ms=4, capsize=2,
                        label=label[s["fiber"]] + " (catalog)")
        if (~used).any():
            ax.plot(x[~used] + off, 1000 * (ph["mag_ab_synth"] - ph["mag_ab"])[~used], "o", mfc="none",
                    color=h[0].get_color())
        if truth_ab:
            rt = np.array([ph["mag_ab_synth"][i] - truth_ab[b][s["name"]] if b in truth_ab else np.nan
                           for i, b in enumerate(bands)])
            print(f"{run} {s['fiber']}: synthetic - true AB [mmag] "
                  + " ".join(f"{b} {1000 * r:+.1f}" for b, r in zip(bands, rt)))
            ax.plot(x + off, 1000 * rt, "x", ms=6, color=h[0].get_color(), label=s["fiber"] + " (true AB, noise-free)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, bands)
    ax.set_xlabel("band")
    ax.set_ylabel("m$_{syn}$(model × scale) − m$_{AB}$ [mmag]")
    ax.set_title(f"{run}: photometric residuals after scaling (written by fluxcal)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "phot.png"), dpi=90)
    plt.close(fig)

if __name__ == "__main__":
    main()
