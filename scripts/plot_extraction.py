#!/usr/bin/python3
"""Figures for docs/extraction.md, drawn from the files of a night reduced with `--stage ex`.

  /usr/bin/python3 scripts/plot_extraction.py --reduced DIR --out PLOTDIR [--exposure RUN]
      [--aperture NAME] [--prefix extraction_] [--truth truth.h5]

Reads, for one science exposure RUN (default: the first science exposure of the log):
  DIR/im/RUN.im.fits      the calibrated image (electrons)
  DIR/ex/RUN.ex.fits      its spectra, variance components and diagnostics; the sky figure needs the
                          optional SKYMODEL, SKYMODEL_VAR and SKYWIN images (reduce with --sky.write-image true)
  DIR/calib/traces_*.fits the trace map of RUN's setup and object: per-bin centres and widths, the fitted
                          Legendre series, and the measurement-window settings
Nothing is fitted here: curves are the stored series, moved by the exposure's measured SHIFT and scaled by
its WIDTH_SCALE (DIAGNOSTICS of the EX file). With --truth (a simulated night) the true star electrons are
drawn over the extracted flux. Writes:
  PREFIX01_trace.png       the image, per-bin centres and widths, the window, the fitted curves
  PREFIX02_sky.png         image, sky model, image minus sky, with the sky windows
  PREFIX03_spectrum.png    star, star + sky, sky; uncertainty components star / sky / read / total
"""
import argparse
import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from numpy.polynomial import legendre  # noqa: E402

COLOURS = ["tab:orange", "tab:cyan", "tab:pink", "tab:olive", "tab:red", "tab:purple"]


def legendre_eval(x, xmin, xmax, coef):
    """The Legendre series the trace stage stored, on the domain [xmin, xmax] mapped to [-1, 1]."""
    if len(coef) == 0:
        return np.full_like(np.asarray(x, dtype=float), np.nan)
    u = (2.0 * np.asarray(x, dtype=float) - xmin - xmax) / (xmax - xmin) if xmax > xmin else 0.0 * x
    return legendre.legval(u, coef)


def read_trace_map(path):
    """TRACES and BINS of a trace map as plain lists of dicts."""
    with fits.open(path) as h:
        hdr = h[0].header
        tr = h["TRACES"].data
        bins = h["BINS"].data
        traces = []
        for i in range(len(tr)):
            sel = bins["APERTURE"] == i
            traces.append({
                "name": str(tr["NAME"][i]).strip(),
                "status": str(tr["STATUS"][i]).strip(),
                "message": str(tr["MESSAGE"][i]).strip(),
                "centre": (tr["CENTRE_XMIN"][i], tr["CENTRE_XMAX"][i],
                           np.atleast_1d(tr["CENTRE_COEF"][i])[: tr["CENTRE_NCOEF"][i]]),
                "width": (tr["WIDTH_XMIN"][i], tr["WIDTH_XMAX"][i],
                          np.atleast_1d(tr["WIDTH_COEF"][i])[: tr["WIDTH_NCOEF"][i]]),
                "centre_rms": tr["CENTRE_RMS"][i],
                "width_rms": tr["WIDTH_RMS"][i],
                "x": bins["X"][sel], "c": bins["CENTRE"][sel], "ce": bins["CENTRE_ERR"][sel],
                "w": bins["WIDTH"][sel], "we": bins["WIDTH_ERR"][sel],
                "used_c": bins["USED_CENTRE"][sel] != 0, "used_w": bins["USED_WIDTH"][sel] != 0,
            })
        return dict(hdr), traces


def window_half(hdr, sigma):
    """Half-width of the measurement window the trace stage used for a width sigma (its stored rule)."""
    h = np.maximum(hdr["TRWINSIG"] * sigma, hdr["TRWINMIN"])
    if hdr["TRWINMAX"] > 0:
        h = np.minimum(h, hdr["TRWINMAX"])
    return h


def scale_limits(img, pct=(5, 99.5)):
    finite = img[np.isfinite(img)]
    return np.percentile(finite, pct) if finite.size else (0.0, 1.0)


def show(ax, img, title, vmin, vmax, cmap="gray", norm=None):
    kw = dict(origin="lower", cmap=cmap, aspect="auto", interpolation="nearest")
    im = ax.imshow(img, norm=norm, **kw) if norm is not None else ax.imshow(img, vmin=vmin, vmax=vmax, **kw)
    ax.set_title(title, fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.035, pad=0.01)
    return im


def pick_exposure(reduced):
    log = Table.read(os.path.join(reduced, "log.ecsv"))
    for name, cls in zip(log["exposure"], log["class"]):
        if cls == "science" and os.path.exists(os.path.join(reduced, "ex", f"{name}.ex.fits")):
            return str(name)
    raise SystemExit(f"no science exposure with an EX file in {reduced}/ex")


def pick_trace_map(reduced, obj):
    files = sorted(glob.glob(os.path.join(reduced, "calib", "traces_*.fits")))
    if not files:
        raise SystemExit(f"no trace map (calib/traces_*.fits) in {reduced}")
    for f in files:
        if fits.getheader(f).get("OBJECT", "") == obj:
            return f
    return files[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", required=True, help="reduced night folder (im/, ex/, calib/, log.ecsv)")
    ap.add_argument("--out", required=True, help="folder for the PNG figures")
    ap.add_argument("--exposure", help="exposure name (default: the first science exposure)")
    ap.add_argument("--aperture", help="aperture of the zoom and spectrum panels (default: the brightest)")
    ap.add_argument("--prefix", default="extraction_", help="file-name prefix of the figures")
    ap.add_argument("--truth", help="truth.h5 of a simulated night: draw the true star electrons too")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    run = a.exposure or pick_exposure(a.reduced)

    with fits.open(os.path.join(a.reduced, "im", f"{run}.im.fits")) as h:
        img = h[0].data.astype(float)
        imask = h["MASK"].data if "MASK" in h else np.zeros(img.shape, dtype=np.uint16)
        obj = h[0].header.get("OBJECT", "")
    with fits.open(os.path.join(a.reduced, "ex", f"{run}.ex.fits")) as h:
        ex = {hdu.name if hdu.name else "PRIMARY": hdu for hdu in h}
        flux = h[0].data.astype(float)
        var = {k: h[k].data.astype(float) for k in ("VARIANCE", "VAR_STAR", "VAR_SKY", "VAR_READ")}
        sky = h["SKY"].data.astype(float)
        exmask = h["MASK"].data
        # The bit of NODATA from the file's own MASKBn names.
        nodata_bit = next((1 << int(k[5:]) for k, v in h["MASK"].header.items()
                           if k.startswith("MASKB") and k[5:].isdigit() and str(v).strip() == "NODATA"), 0)
        names = [str(n).strip() for n in h["FIBRES"].data["NAME"]]
        diag = Table(h["DIAGNOSTICS"].data)
        skymodel = h["SKYMODEL"].data.astype(float) if "SKYMODEL" in ex else None
        skywin = h["SKYWIN"].data if "SKYWIN" in ex else None
        exhdr = h[0].header
    tpath = pick_trace_map(a.reduced, obj)
    thdr, traces = read_trace_map(tpath)
    if [t["name"] for t in traces] != names:
        raise SystemExit(f"{tpath} and the EX file of {run} name different apertures")
    ny, nx = img.shape
    xs = np.arange(nx)
    shift = np.nan_to_num(np.asarray(diag["SHIFT"], dtype=float), nan=0.0)
    wscale = np.nan_to_num(np.asarray(diag["WIDTH_SCALE"], dtype=float), nan=1.0)
    ok = [i for i, t in enumerate(traces) if t["status"] == "ok"]
    if not ok:
        raise SystemExit(f"no usable trace in {tpath}")
    if a.aperture:
        if a.aperture not in names:
            raise SystemExit(f"aperture {a.aperture} is not one of {names}")
        sel = names.index(a.aperture)
    else:
        sel = max(ok, key=lambda i: np.nanmedian(flux[i]))
    centre = [legendre_eval(xs, *t["centre"]) + shift[i] for i, t in enumerate(traces)]
    width = [legendre_eval(xs, *t["width"]) * wscale[i] for i, t in enumerate(traces)]
    tag = f"{run} ({obj})" if obj else run

    # y range of the image panels: the traces and their sky windows, not the empty ends of a long slit.
    if skywin is not None and np.any(skywin > 0):
        rows = np.where(np.any(skywin > 0, axis=1))[0]
        y0, y1 = max(0, rows.min() - 10), min(ny - 1, rows.max() + 10)
    else:
        cs = np.concatenate([centre[i] for i in ok])
        y0, y1 = max(0, np.nanmin(cs) - 40), min(ny - 1, np.nanmax(cs) + 40)
    lo, hi = scale_limits(img[int(y0):int(y1) + 1])
    norm = matplotlib.colors.AsinhNorm(linear_width=max(hi - lo, 1.0) * 0.05, vmin=lo, vmax=hi) \
        if hasattr(matplotlib.colors, "AsinhNorm") else None

    # ------------------------------------------------------------------ figure 1: traces
    fig = plt.figure(figsize=(11, 10))
    gs = fig.add_gridspec(4, 1, height_ratios=[1.3, 1.1, 0.8, 0.8])
    ax = fig.add_subplot(gs[0])
    show(ax, img, f"{tag}: calibrated image [e-], asinh scale, with each trace's centre (line) and "
         "measurement window (dashed)", lo, hi, norm=norm)
    for k, i in enumerate(ok):
        c = COLOURS[k % len(COLOURS)]
        hw = window_half(thdr, width[i])
        ax.plot(xs, centre[i], color=c, lw=0.8)
        ax.plot(xs, centre[i] - hw, color=c, lw=0.6, ls="--")
        ax.plot(xs, centre[i] + hw, color=c, lw=0.6, ls="--")
        ax.text(nx * 0.01, centre[i][0] + hw[0] + 1, traces[i]["name"], color=c, fontsize=8, va="bottom")
    ax.set_ylim(y0, y1)
    ax.set_ylabel("y [px]")

    # Zoom on one aperture: the per-bin measurements against the image.
    t = traces[sel]
    axz = fig.add_subplot(gs[1], sharex=ax)
    half = max(4.0 * np.nanmedian(window_half(thdr, width[sel])), 10.0)
    zc = np.nanmedian(centre[sel])
    zlo, zhi = scale_limits(img[int(max(0, zc - half)):int(min(ny, zc + half))], (2, 99.8))
    show(axz, img, f"zoom on {t['name']}: per-bin centres (points) with their width sigma (bars), the window "
         "(dashed), fitted centre (line) and centre +- sigma(x) (dotted)", zlo, zhi)
    good = t["used_c"]
    xb, cb, wb = t["x"], t["c"] + shift[sel], t["w"] * wscale[sel]
    axz.errorbar(xb[good], cb[good], yerr=wb[good], fmt="o", ms=2.5, color="tab:orange", ecolor="tab:orange",
                 elinewidth=0.8, capsize=0, label="bins used")
    if np.any(~good & np.isfinite(cb)):
        axz.plot(xb[~good], cb[~good], "x", color="red", ms=4, label="bins rejected by the fit")
    hw = window_half(thdr, width[sel])
    axz.plot(xs, centre[sel], color="tab:cyan", lw=1.0, label="fitted centre")
    axz.plot(xs, centre[sel] - width[sel], color="tab:cyan", lw=0.8, ls=":")
    axz.plot(xs, centre[sel] + width[sel], color="tab:cyan", lw=0.8, ls=":")
    axz.plot(xs, centre[sel] - hw, color="white", lw=0.7, ls="--")
    axz.plot(xs, centre[sel] + hw, color="white", lw=0.7, ls="--", label="measurement window")
    axz.set_ylim(zc - half, zc + half)
    axz.set_ylabel("y [px]")
    axz.legend(fontsize=7, loc="upper right", ncol=4)

    axr = fig.add_subplot(gs[2], sharex=ax)
    axw = fig.add_subplot(gs[3], sharex=ax)
    for k, i in enumerate(ok):
        tt, c = traces[i], COLOURS[k % len(COLOURS)]
        fit_c = legendre_eval(tt["x"], *tt["centre"])
        fit_w = legendre_eval(tt["x"], *tt["width"])
        u = tt["used_c"]
        axr.errorbar(tt["x"][u], (tt["c"] - fit_c)[u], yerr=tt["ce"][u], fmt="o", ms=2, color=c, elinewidth=0.6,
                     label=f"{tt['name']}: rms {tt['centre_rms']:.3f} px")
        axr.plot(tt["x"][~u], (tt["c"] - fit_c)[~u], "x", color=c, ms=4)
        uw = tt["used_w"]
        axw.errorbar(tt["x"][uw], tt["w"][uw], yerr=tt["we"][uw], fmt="o", ms=2, color=c, elinewidth=0.6,
                     label=f"{tt['name']}: rms {tt['width_rms']:.3f} px")
        axw.plot(tt["x"][~uw], tt["w"][~uw], "x", color=c, ms=4)
        axw.plot(xs, legendre_eval(xs, *tt["width"]), color=c, lw=1.0)
    axr.axhline(0, color="k", lw=0.6)
    axr.set_ylabel("centre - fit [px]")
    axr.set_title(f"per-bin centres about the Legendre fit (order {thdr['TRCORD']}, {thdr['TRBINPX']}-column bins, "
                  f"{thdr['TRMEAS']}); crosses = rejected", fontsize=9)
    axr.legend(fontsize=7, ncol=3)
    w_all = np.concatenate([traces[i]["w"][traces[i]["used_w"]] for i in ok])
    if w_all.size:
        axw.set_ylim(np.nanpercentile(w_all, 1) * 0.85, np.nanpercentile(w_all, 99) * 1.15)
    axw.set_ylabel("width sigma [px]")
    axw.set_xlabel("x (dispersion) [px]")
    axw.set_title(f"per-bin widths and the fitted sigma(x) (order {thdr['TRSORD']}) of the master traces", fontsize=9)
    axw.legend(fontsize=7, ncol=3)
    ax.set_xlim(0, nx - 1)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, f"{a.prefix}01_trace.png"), dpi=100)
    plt.close(fig)

    # ------------------------------------------------------------------ figure 2: sky
    if skymodel is None:
        print(f"{run}: the EX file has no SKYMODEL (reduce with --sky.write-image true): no sky figure")
    else:
        resid = np.where(skywin > 0, img - skymodel, img - np.where(skymodel != 0, skymodel, 0.0))
        fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, sharey=True)
        # Scaled on the sky (the window pixels), so sky lines show and the stars saturate.
        slo, shi = scale_limits(img[skywin == 1], (1, 99.5)) if np.any(skywin == 1) else (lo, hi)
        show(axes[0], img, f"{tag}: calibrated image [e-], scaled on the sky", slo, shi)
        show(axes[1], skymodel, f"sky model [e-/px] ({exhdr.get('SKYMETH', '?')} per column in the windows, "
             "evaluated between their outer edges)", slo, shi)
        rlo, rhi = scale_limits(resid[skywin == 1], (1, 99)) if np.any(skywin == 1) else (-1.0, 1.0)
        r = max(abs(rlo), abs(rhi))
        show(axes[2], resid, "image - sky model [e-]", -r, r, cmap="RdBu_r")
        used = np.ma.masked_where(skywin != 1, np.ones_like(img))
        excl = np.ma.masked_where(skywin != 2, np.ones_like(img))
        for axx in axes:
            axx.contour(skywin == 1, levels=[0.5], colors="lime", linewidths=0.5)
            axx.imshow(excl, origin="lower", aspect="auto", cmap="autumn", alpha=0.5, interpolation="nearest")
            for k, i in enumerate(ok):
                axx.plot(xs, centre[i], color=COLOURS[k % len(COLOURS)], lw=0.5)
            axx.set_ylabel("y [px]")
        del used
        axes[0].set_ylim(y0, y1)
        axes[-1].set_xlabel("x (dispersion) [px]")
        fig.suptitle("Sky: windows used (green outline), window pixels excluded (orange: masked, near another "
                     "trace, or rejected), trace centres", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, f"{a.prefix}02_sky.png"), dpi=100)
        plt.close(fig)

    # ------------------------------------------------------------------ figure 3: spectrum
    nodata = (exmask[sel] & nodata_bit) != 0
    f, s = np.where(nodata, np.nan, flux[sel]), np.where(nodata, np.nan, sky[sel])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    ax1.plot(xs, f + s, color="0.6", lw=0.7, label="star + sky")
    ax1.plot(xs, f, color="k", lw=0.7, label="star (sky subtracted)")
    ax1.plot(xs, s, color="tab:blue", lw=0.7, label="sky (under the star, same weights)")
    if a.truth:
        import h5py

        with h5py.File(a.truth, "r") as tr:
            best, dy = None, 3.0
            for name in tr["apertures"]:
                cy = tr[f"apertures/{name}/centre_y"][nx // 2]
                off = tr[f"frames/{run}/apertures/{name}"].attrs.get("trace_offset_px", 0.0) \
                    if f"frames/{run}/apertures/{name}" in tr else 0.0
                if abs(cy + off - centre[sel][nx // 2]) < dy:
                    best, dy = name, abs(cy + off - centre[sel][nx // 2])
            if best is not None and f"frames/{run}/apertures/{best}/star_e" in tr:
                ax1.plot(xs, tr[f"frames/{run}/apertures/{best}/star_e"][:], color="tab:red", lw=0.7, ls="--",
                         label=f"true star electrons ({best})")
    ax1.set_ylabel("electrons per column")
    ax1.set_title(f"{tag}, aperture {names[sel]}: {exhdr.get('EXTMETH', '?')} extraction", fontsize=10)
    ax1.legend(fontsize=8)
    top = np.nanpercentile(f + s, 99.5) if np.any(np.isfinite(f)) else 1.0
    ax1.set_ylim(min(0.0, np.nanpercentile(f, 0.5)), 1.15 * top)
    for key, lab, col in (("VARIANCE", "total", "k"), ("VAR_STAR", "star photons", "tab:orange"),
                          ("VAR_SKY", "sky photons (aperture + sky estimate)", "tab:blue"),
                          ("VAR_READ", "read noise", "tab:green")):
        v = np.where(nodata | ~np.isfinite(var[key][sel]), np.nan, var[key][sel])
        ax2.plot(xs, np.sqrt(v), color=col, lw=0.8 if key == "VARIANCE" else 0.7, label=lab)
    ax2.set_yscale("log")
    ax2.set_ylabel("uncertainty [e-]")
    ax2.set_xlabel("x (dispersion) [px]")
    ax2.legend(fontsize=8, ncol=2)
    ax2.set_title("uncertainty of the flux and its parts (variances add: total^2 = star^2 + sky^2 + read^2)",
                  fontsize=9)
    if np.any(nodata):
        for axx in (ax1, ax2):
            axx.fill_between(xs, 0, 1, where=nodata, transform=axx.get_xaxis_transform(), color="red", alpha=0.15,
                             lw=0, label="NODATA")
    ax2.set_xlim(0, nx - 1)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, f"{a.prefix}03_spectrum.png"), dpi=100)
    plt.close(fig)
    print(f"figures of {run} written to {a.out} ({a.prefix}01..03)")


if __name__ == "__main__":
    main()
