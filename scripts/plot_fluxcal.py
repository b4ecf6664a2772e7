#!/usr/bin/python3
"""Figures of the known-standard flux calibration, drawn from what `kspecdr fluxcal` wrote.

    plot_fluxcal.py FCALDIR [--reference TABLE] [--mask FILE] [--out DIR] [--prefix fluxcal_]

FCALDIR holds fluxcal_cal.h5 (the Cal vectors: per standard exposure and combined, at airmass 0) and the
<run>.fcal.fits files. Writes:
  <prefix>cal.png        Cal(λ) of each standard exposure and the combined vector, and their ratio to it
  <prefix>residuals.png  calibrated standard exposures / reference table − 1 (if --reference)
  <prefix>spectra.png    calibrated spectra of every file, with 1σ bands
"""
import argparse
import glob
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402


def read_cal(path):
    out = []
    with h5py.File(path, "r") as f:
        for k in sorted(f.get("exposures", {})):
            g = f["exposures"][k]
            out.append((g.attrs["source"], g["wavelength"][:], g["cal"][:], g["variance"][:]))
        g = f["combined"]
        comb = (g.attrs["source"], g["wavelength"][:], g["cal"][:], g["variance"][:])
    return out, comb


def spectrum(path, ap=0):
    with fits.open(path) as h:
        hd = h[0].header
        n = hd["NAXIS1"]
        lam = hd["CRVAL1"] + (np.arange(n) + 1 - hd["CRPIX1"]) * hd["CDELT1"]
        f = h[0].data[ap].astype(float)
        v = h["VARIANCE"].data[ap].astype(float)
        m = h["MASK"].data[ap]
    f[(m != 0) | ~np.isfinite(v)] = np.nan
    return lam, f, v, hd


def shade(ax, mask):
    for lo, hi in mask:
        ax.axvspan(lo, hi, color="0.9", zorder=0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fcaldir")
    p.add_argument("--reference", help="tabulated standard (λ [Å], AB mag, width [Å])")
    p.add_argument("--mask", help="band mask (lam_lo lam_hi) to shade")
    p.add_argument("--out", default=".")
    p.add_argument("--prefix", default="fluxcal_")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mask = np.atleast_2d(np.loadtxt(a.mask)) if a.mask else np.zeros((0, 2))
    per, comb = read_cal(os.path.join(a.fcaldir, "fluxcal_cal.h5"))

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for src, lam, cal, var in per:
        ax1.plot(lam, cal, lw=0.7, label=src)
        ax2.plot(lam, cal / np.interp(lam, comb[1], comb[2]) - 1, lw=0.6)
    ax1.plot(comb[1], comb[2], "k", lw=1.2, label="combined")
    ax1.fill_between(comb[1], comb[2] - np.sqrt(comb[3]), comb[2] + np.sqrt(comb[3]), color="k", alpha=0.2)
    for ax in (ax1, ax2):
        shade(ax, mask)
    ax1.set_ylabel("Cal at airmass 0 [erg cm$^{-2}$ e$^{-1}$]")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("per exposure / combined − 1")
    ax2.set_ylim(-0.1, 0.1)
    ax2.set_xlabel("wavelength [Å]")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "cal.png"), dpi=90)

    files = sorted(glob.glob(os.path.join(a.fcaldir, "*.fcal.fits")))
    if a.reference:
        ref = np.loadtxt(a.reference)
        fref = 10 ** (-0.4 * (ref[:, 1] + 48.60)) * 2.99792458e18 / ref[:, 0] ** 2
        fig, ax = plt.subplots(figsize=(7, 3.5))
        std_runs = {s.split()[1] for s, *_ in per if len(s.split()) > 1}
        for fpath in files:
            run = os.path.basename(fpath).split(".")[0]
            if run not in std_runs:
                continue
            lam, f, v, hd = spectrum(fpath)
            r = f / np.interp(lam, ref[:, 0], fref) - 1
            edges = np.arange(lam[0], lam[-1], 50.0)
            c = 0.5 * (edges[1:] + edges[:-1])
            rb = [np.nanmedian(r[(lam >= lo) & (lam < hi)]) if np.isfinite(r[(lam >= lo) & (lam < hi)]).sum() > 10
                  else np.nan for lo, hi in zip(edges[:-1], edges[1:])]
            ax.plot(lam, r, lw=0.3, alpha=0.4)
            ax.plot(c, rb, "o-", ms=2, lw=0.8, label=f"{run} (50 Å medians)")
        shade(ax, mask)
        ax.axhspan(-0.05, 0.05, color="g", alpha=0.08)
        ax.set_ylim(-0.15, 0.15)
        ax.set_xlabel("wavelength [Å]")
        ax.set_ylabel("calibrated / reference − 1")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, a.prefix + "residuals.png"), dpi=90)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for fpath in files:
        lam, f, v, hd = spectrum(fpath)
        ax.plot(lam, f, lw=0.4, label=f"{os.path.basename(fpath).split('.')[0]} {hd.get('OBJECT', '')}")
    shade(ax, mask)
    ax.set_yscale("log")
    ax.set_xlabel("wavelength [Å]")
    ax.set_ylabel("F$_\\lambda$ [erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, a.prefix + "spectra.png"), dpi=90)


if __name__ == "__main__":
    main()
