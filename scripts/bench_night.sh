#!/usr/bin/env bash
# Whole-night throughput and strong scaling of `kspecdr reduce --stage red`: one simulated night reduced
# from scratch on 1, 2, ... ranks (a fresh output folder each time), wall time, exposures per minute, speed-up, and the
# peak resident memory per rank that reduce reports. Ranks beyond the machine's cores are oversubscribed
# (reported as such: that measures overhead, not scaling). With SCALING=weak the night grows with the ranks
# (N_SCIENCE exposures per rank, a new night per rank count) and the efficiency t(1) / t(n) is shown instead.
# Rank 0's wall time of each phase of the last run is printed at the end.
# The wall time includes mpirun's start-up; "rank 0 in-process" is the total of rank 0's phases, without it.
# A rank count written KxC (strong scaling only), e.g. 2x1, runs K independent reductions of C ranks at once, each
# into its own folder: the night's work done K times over on the same cores with no communication at all. Its
# "speed-up" column is the throughput K t(1) / t(KxC), what the machine itself gives for K copies of this very
# workload: the ceiling that no division of one night over K ranks can pass. Alternate it with 1 and 2
# (RANKS="1 2 2x1 1 2 2x1 ...") to tell the pipeline's parallel losses from the machine's. Each copy is held to
# cores of its own (mpirun --cpu-set): Open MPI would bind rank 0 of every mpirun to core 0.
# Extra simulator options go in SIM_ARGS (e.g. SIM_ARGS="--science-exptime-s 120" for a long weak-scaling
# night that must fit between the field's rising and setting).
#   scripts/bench_night.sh [MODE=fiber] [N_SCIENCE=12] [RANKS="1 2"] [SCALING=strong|weak]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-fiber}
NSCI=${2:-12}
RANKS=${3:-"1 2"}
SCALING=${4:-strong}
BIN=${KSPECDR_BIN:-build/kspecdr}
WORK=${KSPECDR_BENCH_DIR:-/tmp/kspecdr-bench-night}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One node: the ob1 messaging layer over shared memory, which is what a single node uses anyway. Open MPI's default
# first probes the network transports (UCX, OFI, PSM), 0.2 s more start-up on every run here; set OMPI_MCA_pml to
# override (e.g. OMPI_MCA_pml= for Open MPI's own choice).
export OMPI_MCA_pml=${OMPI_MCA_pml-ob1}
[ -z "$OMPI_MCA_pml" ] && unset OMPI_MCA_pml
rm -rf "$WORK" && mkdir -p "$WORK"
simulate() {  # $1: science exposures
  rm -rf "$WORK/night"
  "$BIN" simulate --mode "$MODE" --out "$WORK/night" --seed 3 --n-science "$1" ${SIM_ARGS:-} > "$WORK/simulate.log" 2>&1
}
[ "$SCALING" = strong ] && simulate "$NSCI"
cores=$(nproc)
if [ "$SCALING" = strong ]; then
  echo "night: $MODE, $(ls "$WORK/night/raw" | wc -l) raw frames ($NSCI science), $cores cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| ranks | wall (s) | rank 0 in-process (s) | science exposures / min | speed-up | peak RSS per rank |"
else
  echo "weak scaling: $MODE nights of $NSCI science exposures per rank, $cores cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| ranks | wall (s) | science exposures / min | efficiency t(1)/t(n) | peak RSS per rank |"
fi
if [ "$SCALING" = strong ]; then echo "|---:|---:|---:|---:|---:|---|"; else echo "|---:|---:|---:|---:|---|"; fi
t1=""
runs=""  # "np wall" per run, for the summary of repeated rank counts
# Open MPI binds rank 0 of every mpirun to core 0: with several copies at once (KxC) copy c gets cores of its own,
# (c - 1) C ... c C - 1, or they would share one.
cpuset() { [ "$copies" -gt 1 ] && echo "--cpu-set $((($1 - 1) * ranks))-$(($1 * ranks - 1))"; true; }
for np in $RANKS; do
  n=$NSCI
  if [ "$SCALING" = weak ]; then
    case "$np" in *x*) echo "bench_night.sh: $np: KxC runs are for strong scaling only" >&2; exit 2 ;; esac
    n=$((NSCI * np))
    simulate "$n"
  fi
  copies=1; ranks=$np
  case "$np" in *x*) copies=${np%x*}; ranks=${np#*x} ;; esac
  for c in $(seq 2 "$copies"); do rm -rf "$WORK/out$c"; done
  rm -rf "$WORK/out"  # every run from scratch: masters, traces and arc solutions included
  # Every run starts with nothing left to write back: the kernel writes dirty pages 30 s after they were
  # written (vm.dirty_expire_centisecs), so without this the previous run's outputs (and the deletion above)
  # would be written back on the same cores during this run, whatever its rank count.
  [ "${BENCH_SYNC:-1}" = 1 ] && sync
  start=$(date +%s.%N)
  for c in $(seq 2 "$copies"); do
    # shellcheck disable=SC2046
    mpirun -np "$ranks" $(cpuset "$c") --oversubscribe "$BIN" reduce --raw "$WORK/night/raw" --instrument "$WORK/night/instrument.ini" \
      --out "$WORK/out$c" --stage red --overwrite > "$WORK/reduce-np$np-copy$c.log" 2>&1 &
  done
  # shellcheck disable=SC2046
  mpirun -np "$ranks" $(cpuset 1) --oversubscribe "$BIN" reduce --raw "$WORK/night/raw" --instrument "$WORK/night/instrument.ini" \
    --out "$WORK/out" --stage red --overwrite > "$WORK/reduce-np$np.log" 2>&1
  wait
  end=$(date +%s.%N)
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')
  if [ "$copies" = 1 ] && { [ -z "$t1" ] || [ "$t1" = nan ]; }; then t1=$wall; fi
  [ -z "$t1" ] && t1=nan
  rss=$(grep -o "peak resident memory per rank: .*" "$WORK/reduce-np$np.log" | sed 's/peak resident memory per rank: //')
  note=""; [ $((copies * ranks)) -gt "$cores" ] && note=" (oversubscribed)"
  [ "$copies" -gt 1 ] && note="$note ($copies independent runs at once)"
  inproc=$(grep -o "wall time by phase.*(total [0-9.]* s)" "$WORK/reduce-np$np.log" | grep -o "total [0-9.]*" | cut -d' ' -f2 || true)
  runs="$runs$np $wall
"
  if [ "$SCALING" = strong ]; then
    awk -v np="$np" -v note="$note" -v w="$wall" -v ip="${inproc:-nan}" -v n="$n" -v t1="$t1" -v rss="$rss" \
      -v k="$copies" 'BEGIN{printf "| %s%s | %.1f | %.2f | %.1f | %.2f | %s |\n", np, note, w, ip, k*n*60/w, k*t1/w, rss}'
  else
    awk -v np="$np" -v note="$note" -v w="$wall" -v n="$n" -v t1="$t1" -v rss="$rss" \
      'BEGIN{printf "| %s%s | %.1f | %.1f | %.2f | %s |\n", np, note, w, n*60/w, t1/w, rss}'
  fi
done
# Repeated rank counts (e.g. RANKS="1 2 1 2 1 2"): per rank count the median and the fastest wall time, and the
# speed-up over one rank of each. On a machine whose speed drifts, runs that alternate the rank counts and
# their medians say more than any single pair.
if [ "$SCALING" = strong ] && [ "$(printf '%s' "$runs" | awk '{print $1}' | sort | uniq -d | wc -l)" -gt 0 ]; then
  echo
  echo "| ranks | runs | median wall (s) | fastest (s) | speed-up of medians | speed-up of fastest |"
  echo "|---:|---:|---:|---:|---:|---:|"
  printf '%s' "$runs" | awk '
    { w[$1] = w[$1] " " $2; n[$1]++ }
    END {
      for (np in n) {
        k = split(substr(w[np], 2), v, " ")
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        med[np] = (k % 2) ? v[(k + 1) / 2] : 0.5 * (v[k / 2] + v[k / 2 + 1]); best[np] = v[1]
      }
      # Plain rank counts in order, then the KxC runs (their speed-up is the throughput K t(1) / t(KxC)).
      m = 0
      for (np = 1; np <= 64; np++) if (np in n) key[++m] = np
      for (np in n) if (np ~ /x/) key[++m] = np
      for (i = 1; i <= m; i++) {
        np = key[i]; k = (np ~ /x/) ? substr(np, 1, index(np, "x") - 1) : 1
        printf "| %s | %d | %.2f | %.2f | %s | %s |\n", np, n[np], med[np], best[np],
               (1 in n) ? sprintf("%.2f", k * med[1] / med[np]) : "-", (1 in n) ? sprintf("%.2f", k * best[1] / best[np]) : "-"
      }
    }'
fi
for np in $(printf '%s\n' $RANKS | sort -nu); do
  grep -o "wall time by phase.*" "$WORK/reduce-np$np.log" | sed "s/^/$np ranks (last run): /" || true
done
