#!/usr/bin/env bash
# Whole-night throughput and strong scaling of `kspecdr reduce --stage red`: one simulated night reduced
# from scratch on 1, 2, ... ranks (a fresh output folder each time), wall time, exposures per minute, speed-up, and the
# peak resident memory per rank that reduce reports. Ranks beyond the machine's cores are oversubscribed
# (reported as such: that measures overhead, not scaling).
#   scripts/bench_night.sh [MODE=fiber] [N_SCIENCE=12] [RANKS="1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-fiber}
NSCI=${2:-12}
RANKS=${3:-"1 2"}
BIN=${KSPECDR_BIN:-build/kspecdr}
WORK=${KSPECDR_BENCH_DIR:-/tmp/kspecdr-bench-night}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN" simulate --mode "$MODE" --out "$WORK/night" --seed 3 --n-science "$NSCI" > "$WORK/simulate.log" 2>&1
nexp=$(ls "$WORK/night/raw" | wc -l)
cores=$(nproc)
echo "night: $MODE, $nexp raw frames ($NSCI science), $cores cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| ranks | wall (s) | science exposures / min | speed-up | peak RSS per rank |"
echo "|---:|---:|---:|---:|---|"
t1=""
for np in $RANKS; do
  rm -rf "$WORK/out"  # every run from scratch: masters, traces and arc solutions included
  start=$(date +%s.%N)
  mpirun -np "$np" --oversubscribe "$BIN" reduce --raw "$WORK/night/raw" --instrument "$WORK/night/instrument.ini" \
    --out "$WORK/out" --stage red --overwrite > "$WORK/reduce-np$np.log" 2>&1
  end=$(date +%s.%N)
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')
  [ -z "$t1" ] && t1=$wall
  rss=$(grep -o "peak resident memory per rank: .*" "$WORK/reduce-np$np.log" | sed 's/peak resident memory per rank: //')
  note=""; [ "$np" -gt "$cores" ] && note=" (oversubscribed)"
  awk -v np="$np" -v note="$note" -v w="$wall" -v n="$NSCI" -v t1="$t1" -v rss="$rss" \
    'BEGIN{printf "| %s%s | %.1f | %.1f | %.2f | %s |\n", np, note, w, n*60/w, t1/w, rss}'
done
