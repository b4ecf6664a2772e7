#!/usr/bin/python3
"""Figures of the in-field flux calibration (C fibers, template fit), drawn from what `kspecdr fluxcal
--catalog ...` wrote and, when given, the simulator's truth.

    plot_fluxcal_infield.py FCALDIR [--run RUN] [--red-dir DIR] [--templates GRID.h5 --catalog CSV
        --filters DIR [--filter-unit um]] [--truth truth.h5] [--out DIR] [--prefix fluxcal_sim_]

FCALDIR holds what the in-field mode wrote: fluxcal_cal.h5 (per exposure the combined Cal vector and every
star's own vector, all at airmass 0), <run>.fcalstars.csv (one row per C fiber) and <run>.fcal.fits.
One exposure is drawn (--run, default the first). Writes:
  <prefix>cal.png        Cal(λ) of every star and the combined vector (and h c / (λ A_eff G) from the truth,
                         G the geometric mean of the true fiber throughputs of the stars used)
  <prefix>stars.png      each star's fractional residual from the combined curve, Cal_s / (a_s Cal) − 1,
                         a_s the star's grey factor of the combination (column `factor` of the table)
  <prefix>fit.png        the template fit over one standard's data (needs --red-dir): the star's counts
                         calibrated with the combined vector and multiplied by its grey factor, against the
                         fitted model × scale on the data pixels. The model is not written by fluxcal; it is
                         recovered exactly as Cal_s × C / (t Δλ) (the definition of Cal_s, undone at the
                         exposure's airmass with the exposure's own extinction as recorded in the calibrated
                         file: the ratio of calibrated to raw counts). The lower panel is therefore
                         (a_s Cal − Cal_s) / (a_s Cal) in units of the data's σ: the data against the model
                         through the combined curve, not the fit's own continuum-normalised residuals (which
                         fluxcal does not write).
  <prefix>phot.png       photometric residuals per band per star, m_cat,AB − (m_syn − 2.5 log10 scale) (needs
                         --templates, --catalog, --filters). The per-band residuals are not written by fluxcal;
                         here the model is rebuilt from the grid at the star's parameters (multilinear in ln F,
                         as the fit interpolates; no RV shift, which does not matter for broad bands) and its
                         AB magnitudes synthesised photon-counting over the whole model. With --truth, the same
                         against the catalog's noise-free true AB magnitudes (/catalog/<band>/true_ab).
"""
import argparse
import csv
import glob
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

HC = 6.62607015e-27 * 2.99792458e18  # erg Å
C_ANG = 2.99792458e18  # Å/s
_trapz = getattr(np, "trapezoid", None) or np.trapz
AB_OFFSET = {"gaia_g": 0.1050, "gaia_bp": 0.0292, "gaia_rp": 0.3542}  # m_AB − m_Vega (Evans et al. 2018)


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
        ex["run"] = ex["run"].decode() if isinstance(ex["run"], bytes) else str(ex["run"])
        stars = []
        for k in sorted(g.get("stars", {})):
            s = read_vec(g["stars"][k])
            for a in ("fiber", "name", "reason"):
                v = g["stars"][k].attrs[a]
                s[a] = v.decode() if isinstance(v, bytes) else str(v)
            s["used"] = bool(g["stars"][k].attrs["used"])
            s["factor"] = float(g["stars"][k].attrs["factor"])
            stars.append(s)
    return ex, stars


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


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


def model_at(grid, p):
    """Multilinear interpolation in ln F over the grid's axes at the parameters p (teff, logg, mh, alpha)."""
    pars = grid["pars"]
    axes = [np.unique(pars[:, j]) for j in range(4)]
    corners = []
    for j in range(4):
        ax = axes[j]
        if len(ax) == 1 or p[j] <= ax[0]:
            corners.append([(ax[0], 1.0)])
        elif p[j] >= ax[-1]:
            corners.append([(ax[-1], 1.0)])
        else:
            k = np.searchsorted(ax, p[j]) - 1
            w = (p[j] - ax[k]) / (ax[k + 1] - ax[k])
            corners.append([(ax[k], 1 - w), (ax[k + 1], w)])
    lnf = np.zeros(grid["flux"].shape[1])
    wsum = 0.0
    for c0 in corners[0]:
        for c1 in corners[1]:
            for c2 in corners[2]:
                for c3 in corners[3]:
                    w = c0[1] * c1[1] * c2[1] * c3[1]
                    if w == 0:
                        continue
                    i = np.flatnonzero(np.all(np.isclose(pars, [c0[0], c1[0], c2[0], c3[0]]), axis=1))
                    if len(i) != 1:
                        raise SystemExit(f"grid has no model at {c0[0]}, {c1[0]}, {c2[0]}, {c3[0]}")
                    lnf += w * np.log(grid["flux"][i[0]].astype(float))
                    wsum += w
    return np.exp(lnf / wsum)


def ab_mag(lam, flam, flam_lam, thr):
    """Photon-counting synthetic AB magnitude of F_λ (erg/s/cm²/Å) through T(λ)."""
    t = np.interp(lam, flam_lam, thr, left=0, right=0)
    num = _trapz(flam * t * lam, lam)
    den = _trapz(t * C_ANG / lam, lam)
    return -2.5 * np.log10(num / den) - 48.60


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fcaldir")
    p.add_argument("--run", help="exposure to draw (default: the first in fluxcal_cal.h5)")
    p.add_argument("--red-dir", help="folder of the uncalibrated <run>.red.fits (for the fit figure)")
    p.add_argument("--templates")
    p.add_argument("--catalog")
    p.add_argument("--filters")
    p.add_argument("--filter-unit", default="um", choices=["um", "nm", "Angstrom"])
    p.add_argument("--truth", help="simulator truth.h5")
    p.add_argument("--out", default=".")
    p.add_argument("--prefix", default="fluxcal_sim_")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ex, stars = read_exposure(os.path.join(a.fcaldir, "fluxcal_cal.h5"), a.run)
    run = ex["run"]
    table = {r["fiber"]: r for r in read_table(os.path.join(a.fcaldir, run + ".fcalstars.csv"))}
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

    # ---- the template fit over one standard's data
    if a.red_dir:
        s = next(s for s in stars if s["used"])
        row = table[s["fiber"]]
        lr, cnt, var, msk, hd = red_aperture(os.path.join(a.red_dir, run + ".red.fits"), s["fiber"])
        lf, flx, fvar, fmsk, fhd = red_aperture(os.path.join(a.fcaldir, run + ".fcal.fits"), s["fiber"])
        # The applied per-pixel factor (combined Cal at the exposure's airmass / (t Δλ)): calibrated / counts.
        conv = flx / cnt
        comb_px = np.interp(lr, lam, comb)
        # Cal_s / Cal = model on data (scaled, above the atmosphere) / (Cal × C / (t Δλ)) at any airmass.
        cal_s = np.interp(lr, s["lam"], np.where(s["good"] != 0, s["cal"], np.nan))
        model = cal_s / comb_px * flx
        data = flx * s["factor"]  # Cal_s ≈ a_s Cal: the star's own flux is a_s × (its counts calibrated with Cal)
        err = np.sqrt(fvar) * s["factor"]
        bad = (msk != 0) | (fmsk != 0) | ~np.isfinite(conv)
        data[bad] = np.nan
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
        ax1.fill_between(lr, data - err, data + err, color="0.7", lw=0, step="mid")
        ax1.plot(lr, data, "k", lw=0.4, drawstyle="steps-mid", label="data calibrated with the combined Cal, × a$_s$")
        ax1.plot(lr, model, "r", lw=0.6,
                 label=(f"model × scale: Teff {float(row['teff_k']):.0f} K, log g {float(row['logg']):.2f}, "
                        f"[M/H] {float(row['mh']):+.2f}, RV {float(row['rv_km_s']):.1f} ± "
                        f"{float(row['rv_err_km_s']):.1f} km/s, χ²/dof {float(row['chi2_dof']):.2f}"))
        ax1.set_ylabel("F$_\\lambda$ [erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$]")
        ax1.set_title(f"{run} {s['fiber']} {s['name']}", fontsize=9)
        ax1.legend(fontsize=7, loc="lower right")
        ax2.plot(lr, (data - model) / err, "k", lw=0.3)
        ax2.axhline(0, color="r", lw=0.5)
        ax2.set_ylim(-6, 6)
        ax2.set_ylabel("(data − model) / σ")
        ax2.set_xlabel("wavelength [Å]")
        ax2.set_xlim(lr[0], lr[-1])
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, a.prefix + "fit.png"), dpi=90)
        plt.close(fig)

    # ---- photometric residuals per band per star
    if a.templates and a.catalog and a.filters:
        with h5py.File(a.templates, "r") as f:
            grid = {"lam": f["wavelength"][:], "flux": f["flux"][:],
                    "pars": np.column_stack([f["parameters"][k][:] for k in ("teff_k", "logg", "mh", "alpha")])}
        cat = {r["name"]: r for r in read_table(a.catalog)}
        unit = {"um": 1e4, "nm": 10.0, "Angstrom": 1.0}[a.filter_unit]
        bands = [b for b in next(iter(cat.values())) if os.path.exists(os.path.join(a.filters, b + ".dat"))]
        filt = {}
        for b in bands:
            d = np.loadtxt(os.path.join(a.filters, b + ".dat"))
            filt[b] = (d[:, 0] * unit, d[:, 1])
        truth_ab = {}
        if a.truth:
            with h5py.File(a.truth, "r") as t:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in t["catalog/name"][:]]
                for b in bands:
                    if f"catalog/{b}/true_ab" in t:
                        v = t[f"catalog/{b}/true_ab"][:]
                        truth_ab[b] = dict(zip(names, v))
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = np.arange(len(bands))
        for k, s in enumerate(stars):
            row = table[s["fiber"]]
            pars = [float(row[c]) for c in ("teff_k", "logg", "mh", "alpha")]
            sc = float(row["scale"])
            fm = model_at(grid, pars) * sc
            off = (k - (len(stars) - 1) / 2) * 0.12
            res, err, rt = [], [], []
            for b in bands:
                fl, ft = filt[b]
                covered = fl[ft > 0].min() >= grid["lam"][0] and fl[ft > 0].max() <= grid["lam"][-1]
                m_syn = ab_mag(grid["lam"], fm, fl, ft) if covered else np.nan
                c = cat[s["name"]]
                ecol = next(e for e in (b + "_err", "e_" + b, "d" + b, b + "_error") if e in c)
                res.append(float(c[b]) + AB_OFFSET.get(b, 0.0) - m_syn)
                err.append(float(c[ecol]))
                rt.append(truth_ab[b][s["name"]] - m_syn if b in truth_ab else np.nan)
            w = 1 / np.array(err) ** 2
            ok = np.isfinite(res)
            print(f"{run} {s['fiber']}: residuals [mmag] " + " ".join(f"{b} {1000 * r:+.1f}" for b, r in zip(bands, res))
                  + f"; weighted mean {1000 * np.sum(w[ok] * np.array(res)[ok]) / np.sum(w[ok]):+.2f} mmag")
            h = ax.errorbar(x + off, 1000 * np.array(res), 1000 * np.array(err), fmt="o", ms=4, capsize=2,
                            label=label[s["fiber"]] + " (catalog)")
            if truth_ab:
                ax.plot(x + off, 1000 * np.array(rt), "x", ms=6, color=h[0].get_color(),
                        label=s["fiber"] + " (true AB, noise-free)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, bands)
        ax.set_xlabel("band")
        ax.set_ylabel("m$_{cat,AB}$ − m$_{syn}$(model × scale) [mmag]")
        ax.set_title(f"{run}: photometric residuals after scaling", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, a.prefix + "phot.png"), dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    main()
