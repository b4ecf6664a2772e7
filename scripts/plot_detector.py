#!/usr/bin/python3
"""Figures for docs/detector.md, drawn from the files of a simulated and reduced night.

  /usr/bin/python3 scripts/plot_detector.py --sim DIR --reduced DIR --out PLOTDIR

Reads: DIR/raw/*.fits (bias frames), the reduced night's log.ecsv, calib/master_bias_*.fits and
calib/master_flat_*.fits, and the instrument profile named in the master bias header. Writes:
  detector_01_bias_frames.png    raw bias frames and the master bias
  detector_02_bias_histogram.png bias-difference pixels with a Gaussian at the measured read noise
  detector_03_flat.png           unnormalised flat, large-scale model, pixel flat
"""
import argparse
import configparser
import glob
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402


def section(text):
    """FITS section '[x1:x2,y1:y2]' (1-based, inclusive) -> numpy slices (rows, cols)."""
    m = re.match(r"\[(\d+):(\d+),(\d+):(\d+)\]", text.strip())
    if not m:
        raise SystemExit(f"not a pixel section: {text!r}")
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    return slice(min(y1, y2) - 1, max(y1, y2)), slice(min(x1, x2) - 1, max(x1, x2))


def image_hdu(hdul):
    for h in hdul:
        if h.data is not None and h.data.ndim == 2:
            return h
    raise SystemExit("no 2D image in file")


def profile_path(name, repo):
    p = os.path.join(repo, "data", "instruments", name + ".ini")
    return p if os.path.exists(p) else name


def strip(v):
    return v.split(";")[0].strip()


def scaled(ax, img, title, cmap="gray", pct=(1, 99)):
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, pct) if finite.size else (0, 1)
    im = ax.imshow(img, origin="lower", cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", required=True, help="simulated night folder (raw/ inside)")
    ap.add_argument("--reduced", required=True, help="reduced night folder (calib/, log.ecsv)")
    ap.add_argument("--out", required=True, help="folder for the PNG figures")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    log = Table.read(os.path.join(a.reduced, "log.ecsv"))
    bias_files = [f for f, c in zip(log["file"], log["class"]) if c == "bias"]
    if len(bias_files) < 2:
        raise SystemExit("need at least two bias frames in the log")
    mb_path = sorted(glob.glob(os.path.join(a.reduced, "calib", "master_bias_*.fits")))[0]
    with fits.open(mb_path) as h:
        master_bias = h[0].data.astype(float)
        mbh = h[0].header
    raw = []
    for f in bias_files[:4]:
        with fits.open(f) as h:
            hdu = image_hdu(h)
            hdr = h[0].header.copy()
            hdr.update(hdu.header)
            raw.append((hdu.data.astype(float), hdr))

    # Figure 1: bias frames and the master bias.
    n = len(raw)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 3.4))
    for i, (d, _) in enumerate(raw):
        scaled(axes[i], d, f"raw bias {i + 1} [DN]\n(overscan strips included)")
    scaled(axes[-1], master_bias, f"master bias [e-]\n{mbh.get('COMBINE', '')} of {mbh.get('NCOMBINE', '?')}, "
           "after overscan", cmap="viridis")
    fig.suptitle("Bias frames: each amplifier has its own level; the master keeps the residual structure")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "detector_01_bias_frames.png"), dpi=110)
    plt.close(fig)

    # Figure 2: histogram of (b1 - b2)/sqrt(2) in electrons over amplifier 1's data section.
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(profile_path(str(log.meta.get("instrument", "")), repo))
    amp = cp["amplifier.1"] if cp.has_section("amplifier.1") else {}
    hdr = raw[0][1]
    if "datasec" in amp:
        dsec = strip(amp["datasec"])
    elif "datasec_key" in amp:
        dsec = hdr[strip(amp["datasec_key"])]
    else:
        dsec = None
    rows, cols = section(dsec) if dsec else (slice(None), slice(None))
    gain = float(mbh.get("GAIN1", 1.0))
    rn = float(mbh.get("RDNOISE1", np.nan))
    diff = (raw[0][0][rows, cols] - raw[1][0][rows, cols]).ravel() * gain / np.sqrt(2)
    fig, ax = plt.subplots(figsize=(6, 4))
    lim = 6 * (rn if np.isfinite(rn) else np.std(diff))
    # Raw values are integers in DN: bins one DN step wide, centred on the steps, avoid a comb.
    step = gain / np.sqrt(2)
    k = int(np.ceil(lim / step))
    bins = (np.arange(-k, k + 2) - 0.5) * step
    ax.hist(diff, bins=bins, histtype="stepfilled", alpha=0.6, label="(bias 1 - bias 2)/sqrt(2), amplifier 1")
    x = 0.5 * (bins[1:] + bins[:-1])
    if np.isfinite(rn):
        g = diff.size * (bins[1] - bins[0]) / (np.sqrt(2 * np.pi) * rn) * np.exp(-0.5 * (x / rn) ** 2)
        ax.plot(x, g, "k-", lw=1.5, label=f"Gaussian, read noise {rn:.3f} e- (measured)")
    ax.set_yscale("log")
    ax.set_ylim(0.5, None)
    ax.set_xlabel("electrons")
    ax.set_ylabel("pixels")
    ax.legend(fontsize=8)
    ax.set_title("Read noise from the difference of two bias frames")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "detector_02_bias_histogram.png"), dpi=110)
    plt.close(fig)

    # Figure 3: flat = large-scale model x pixel flat.
    mf = sorted(glob.glob(os.path.join(a.reduced, "calib", "master_flat_*.fits")))
    if mf:
        with fits.open(mf[0]) as h:
            pix = h[0].data.astype(float)
            illum = h["ILLUM"].data.astype(float)
            mask = h["MASK"].data
        unnorm = pix * illum
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        scaled(axes[0], unnorm, "combined flat (normalised to its median): lamp spectrum x illumination x pixels")
        scaled(axes[1], illum, "large-scale model (smooth along dispersion)")
        p = np.where(mask & 8, np.nan, pix)  # UNILLUMINATED pixels blank
        scaled(axes[2], p, "pixel flat = combined / model (unilluminated pixels blank)", cmap="RdBu_r",
               pct=(0.5, 99.5))
        axes[2].set_xlabel("x (dispersion) [px]")
        for ax in axes:
            ax.set_ylabel("y [px]")
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "detector_03_flat.png"), dpi=110)
        plt.close(fig)
    print(f"figures written to {a.out}")


if __name__ == "__main__":
    main()
