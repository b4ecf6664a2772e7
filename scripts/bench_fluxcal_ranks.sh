#!/usr/bin/env bash
# Template search of the in-field flux calibration over a 1000-template grid and its scaling with ranks:
# one simulated fiber exposure with its standard-star (C) fibers, reduced to RED once, then calibrated by
# `kspecdr fluxcal` (in-field mode) on 1, 2, ... ranks from the same inputs. The grid (20 Teff × 5 log g ×
# 5 [M/H] × 2 [α/M] = 1000 labelled-synthetic models, 4500–7500 Å like tests/bench/bench_fluxcal.cpp) covers
# only the r band of the catalog, so the colours cannot preselect Teff and every star is fitted against all
# 1000 models. Prints a markdown table: wall time of the command (start-up and every rank's reading of the
# grid included), per star, speed-up, and the load average before each run. Ranks beyond the machine's cores
# are oversubscribed (reported as such: that measures overhead, not scaling).
#   scripts/bench_fluxcal_ranks.sh [RANKS="1 2 4"]
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${1:-"1 2 4"}
BIN=${KSPECDR_BIN:-build/kspecdr}
SHARED=${KSPECDR_SHARED_DIR:-../shared}
WORK=${KSPECDR_BENCH_DIR:-/tmp/kspecdr-bench-fluxcal}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN" templates synth --out "$WORK/grid1000.h5" --teff 4500:9250:250 --logg 3.0,3.5,4.0,4.5,5.0 \
  --mh=-1.5,-1.0,-0.5,0.0,0.5 --alpha 0.0,0.4 --lambda-min 4500 --lambda-max 7500 > "$WORK/grid.log" 2>&1
"$BIN" simulate --mode fiber --out "$WORK/night" --seed 1 --n-science 1 \
  --catalog-filters-dir "$SHARED/data/filters" > "$WORK/simulate.log" 2>&1
"$BIN" reduce --raw "$WORK/night/raw" --instrument "$WORK/night/instrument.ini" --out "$WORK/out" \
  --stage red > "$WORK/reduce.log" 2>&1
# The simulator's extinction is an analytic curve with no file: written from truth.h5, every 10th sample.
/usr/bin/python3 - "$WORK" <<'PY'
import sys, h5py
w = sys.argv[1]
with h5py.File(f"{w}/night/truth.h5", "r") as t:
    lam, ext = t["spectra/wavelength"][:], t["spectra/extinction"][:]
with open(f"{w}/extinction.dat", "w") as f:
    f.write("# simulator extinction: Angstrom mag/airmass\n")
    for l, e in zip(lam[::10], ext[::10]):
        f.write(f"{l:.3f} {e:.6f}\n")
PY
red=$(ls "$WORK"/out/red/*.red.fits)
nstars=$(/usr/bin/python3 -c "
import sys; from astropy.io import fits
t = fits.open(sys.argv[1])['FIBRES'].data
print(sum(1 for x in t['TYPE'] if str(x).strip() == 'C'))" "$red")
cores=$(nproc)
ntempl=$(/usr/bin/python3 -c "import h5py,sys; print(h5py.File(sys.argv[1],'r')['flux'].shape[0])" "$WORK/grid1000.h5")
echo "one exposure ($(basename "$red")), $nstars standard stars, $ntempl templates, $cores cores"
echo "| ranks | wall (s) | per star (s) | speed-up | load average before (1, 5, 15 min) |"
echo "|---:|---:|---:|---:|---|"
t1=""
for np in $RANKS; do
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s.%N)
  mpirun -np "$np" --oversubscribe "$BIN" fluxcal --red "$red" --catalog "$WORK/night/catalog.csv" \
    --templates "$WORK/grid1000.h5" --filters "$SHARED/data/filters" --extinction "$WORK/extinction.dat" \
    --out "$WORK/fcal-np$np" --overwrite > "$WORK/fluxcal-np$np.log" 2>&1
  end=$(date +%s.%N)
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')
  [ -z "$t1" ] && t1=$wall
  note=""; [ "$np" -gt "$cores" ] && note=" (oversubscribed)"
  awk -v np="$np" -v note="$note" -v w="$wall" -v n="$nstars" -v t1="$t1" -v load="$load" \
    'BEGIN{printf "| %s%s | %.1f | %.2f | %.2f | %s |\n", np, note, w, w/n, t1/w, load}'
done
