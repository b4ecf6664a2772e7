#!/usr/bin/env bash
# The SLURM jobs on a real single-node SLURM (scripts/local-slurm.sh), end to end:
#  1. two simulated slit nights, reprocessed as an archive: slurm/submit-archive.sh submits the job array
#     (one task per night, 2 MPI ranks each, mpirun inside the allocation) and the report chained with
#     afterok; the test waits for the report job and checks every output: RED files, the Rainbow cubes
#     (read with /usr/bin/python3 h5py), the status files and the report (both nights "ok");
#  2. resume: one RED file and one cube removed, slurm/reduce-night.sbatch run on that night with a
#     --config file and srun as the launcher (sbatch --wait); the missing files come back and the rest
#     is kept.
# Usage: tests/slurm/test_local_slurm.sh /path/to/kspecdr      (ctest: slurm_archive)
# The cluster gets its own prefix and free ports, and is stopped on exit whatever happens. Set
# KSPECDR_TEST_KEEP=1 to keep the work folder. Fails (never skips) when SLURM or munge is missing.
set -euo pipefail

BIN=${1:-${KSPECDR_BIN:-}}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

fail() { echo "test_local_slurm: FAIL: $*" >&2; exit 1; }
ok() { echo "test_local_slurm: ok: $*"; }

[ -n "$BIN" ] && [ -x "$BIN" ] || fail "give the kspecdr program as the first argument (got '${BIN}')"
BIN=$(realpath "$BIN")
for p in munged mungekey slurmctld slurmd sbatch squeue scontrol mpirun; do
  command -v "$p" >/dev/null ||
    fail "'$p' not found: this test needs a real SLURM; install Debian's slurm-wlm and munge with scripts/install-deps.sh"
done
/usr/bin/python3 -c "import h5py" 2>/dev/null || fail "/usr/bin/python3 cannot import h5py (python3-h5py)"

start_time=$(date +%s)
WORK=$(mktemp -d /tmp/kspecdr-slurm-test.XXXXXX)
chmod 755 "$WORK"  # munged wants every folder above its socket open to all (mktemp makes it 0700)
# The cluster's own prefix (short: the munge socket path has a length limit) and two free ports, so the
# test never meets a cluster that a developer runs with scripts/local-slurm.sh's defaults.
export KSPECDR_SLURM_PREFIX=$WORK/cluster
read -r KSPECDR_SLURM_CTLD_PORT KSPECDR_SLURM_SLURMD_PORT < <(/usr/bin/python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
export KSPECDR_SLURM_CTLD_PORT KSPECDR_SLURM_SLURMD_PORT
export SLURM_CONF=$KSPECDR_SLURM_PREFIX/etc/slurm.conf

cleanup() {
  local rc=$?
  "$ROOT/scripts/local-slurm.sh" stop >/dev/null 2>&1 || echo "test_local_slurm: local-slurm.sh stop failed" >&2
  if [ $rc -ne 0 ]; then
    echo "test_local_slurm: logs of the failed run:" >&2
    for f in "$WORK"/nights-archive/slurm-logs/*.out "$WORK"/*.out; do
      [ -f "$f" ] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }
    done
    for f in "$KSPECDR_SLURM_PREFIX"/log/*.log; do
      [ -f "$f" ] && { echo "---- $f" >&2; grep -iE "error|fatal" "$f" | tail -n 10 >&2; }
    done
  fi
  if [ "${KSPECDR_TEST_KEEP:-0}" = 1 ]; then echo "test_local_slurm: kept $WORK" >&2; else rm -rf "$WORK"; fi
  echo "test_local_slurm: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) in $(($(date +%s) - start_time)) s"
}
trap cleanup EXIT

"$ROOT/scripts/local-slurm.sh" start || fail "the local SLURM did not start (see $KSPECDR_SLURM_PREFIX/log)"
"$ROOT/scripts/local-slurm.sh" start >/dev/null || fail "a second 'local-slurm.sh start' failed (must be idempotent)"
"$ROOT/scripts/local-slurm.sh" status >/dev/null || fail "local-slurm.sh status reports a daemon down"
ok "local SLURM running (ports $KSPECDR_SLURM_CTLD_PORT/$KSPECDR_SLURM_SLURMD_PORT)"

# ---- two small nights (slit mode, 3 science exposures each, different seeds)
cd "$WORK"
for n in a b; do
  seed=$([ $n = a ] && echo 11 || echo 12)
  "$BIN" simulate --mode slit --out "night-$n" --seed "$seed" --n-science 3 --log-level warn ||
    fail "simulate night-$n"
done
# Night a takes its instrument from night-a/instrument.ini (beside raw/), night b names it.
cat >nights.txt <<'EOF'
# RAWDIR OUTDIR [INSTRUMENT]
night-a/raw reduced/night-a

night-b/raw reduced/night-b night-b/instrument.ini
EOF

# ---- 1. the archive: array of 2 nights (at most 2 at once; 2 ranks each on a 2-core node, so SLURM
#         runs them one after the other) and the chained report
sub=$(KSPECDR=$BIN "$ROOT/slurm/submit-archive.sh" nights.txt 2 -- --ntasks=2 --time=00:10:00) ||
  fail "submit-archive.sh: $sub"
echo "$sub"
array_id=$(sed -n 's/^array job: \([0-9]*\).*/\1/p' <<<"$sub")
report_id=$(sed -n 's/^report job: \([0-9]*\).*/\1/p' <<<"$sub")
[ -n "$array_id" ] && [ -n "$report_id" ] || fail "submit-archive.sh did not print both job ids"
grep -q "afterok:$array_id" <<<"$(scontrol show job "$report_id")" || fail "the report job does not depend on afterok:$array_id"

# Wait for the report job to leave the queue (150 s at most).
for _ in $(seq 150); do
  squeue -h -j "$report_id" 2>/dev/null | grep -q . || break
  if squeue -h -j "$report_id" -o %r 2>/dev/null | grep -q DependencyNeverSatisfied; then
    fail "the report can never run: a night task failed"
  fi
  sleep 1
done
squeue -h -j "$report_id" 2>/dev/null | grep -q . && fail "the report job $report_id still queued after 150 s"
state=$(scontrol -o show job "$report_id" | grep -o 'JobState=[A-Z]*')
[ "$state" = "JobState=COMPLETED" ] || fail "report job $report_id: $state (expected COMPLETED)"
for t in 1 2; do
  s=$(scontrol -o show job "${array_id}_$t" | grep -oE 'JobState=[A-Z]+|ExitCode=[0-9:]+' | tr '\n' ' ')
  [ "$s" = "JobState=COMPLETED ExitCode=0:0 " ] || fail "array task ${array_id}_$t: $s"
done
ok "array job $array_id (2 tasks) and report job $report_id COMPLETED"

# ---- the outputs of each night
check_night() {
  local n=$1 out=$WORK/reduced/night-$1 science reds
  science=$(awk -F, 'NR > 1 && $3 == "science"' "$out/log.csv" | wc -l)
  [ "$science" -eq 3 ] || fail "night-$n: log.csv lists $science science exposures, not 3"
  reds=$(find "$out/red" -name '*.red.fits' | wc -l)
  [ "$reds" -eq "$science" ] || fail "night-$n: $reds RED files for $science science exposures"
  for f in "$out"/red/*.red.fits; do
    # A FITS file starts with SIMPLE = T and is a whole number of 2880-byte blocks.
    head -c 30 "$f" | grep -q '^SIMPLE  = *T' || fail "$f is not a FITS file"
    [ $(($(stat -c %s "$f") % 2880)) -eq 0 ] || fail "$f is truncated"
  done
  [ -f "$out/night-$n.rainbow.h5" ] || fail "night-$n: no night-$n.rainbow.h5"
  ls "$out"/*.rainbow.fits >/dev/null 2>&1 || fail "night-$n: no <star>.rainbow.fits"
  # The cube, read with h5py: every star group has flux and uncertainty (nwave, 3) with finite values,
  # wavelengths and times that increase, and 3 exposures marked ok.
  /usr/bin/python3 - "$out/night-$n.rainbow.h5" <<'EOF' || fail "night-$n: the Rainbow cube does not read back right"
import sys, h5py, numpy as np
stars = []
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, o: stars.append(name[:-len("/fluxlike/flux")])
                 if isinstance(o, h5py.Dataset) and name.endswith("fluxlike/flux") else None)
    assert len(stars) >= 1, "no star group"
    for s in stars:
        g = f[s]
        flux, unc = g["fluxlike/flux"][()], g["fluxlike/uncertainty"][()]
        wave, t = g["wavelike/wavelength"][()], g["timelike/time"][()]
        ok = g["timelike/ok"][()]
        assert flux.shape == unc.shape == (wave.size, 3), (s, flux.shape, unc.shape, wave.size)
        assert t.size == 3 and np.all(np.diff(t) > 0), (s, t)
        assert np.all(np.diff(wave) > 0), s
        assert np.all(ok.astype(bool)), (s, ok)
        good = np.isfinite(flux) & np.isfinite(unc) & (unc > 0)
        assert good.mean() > 0.9, (s, good.mean())
        assert np.nanmedian(flux[good]) > 0, s
print(f"{sys.argv[1]}: {len(stars)} star(s), flux {flux.shape}")
EOF
  grep -qx 'exit_code=0' "$out/kspecdr-job.status" || fail "night-$n: kspecdr-job.status has no exit_code=0"
  grep -qx 'ranks=2' "$out/kspecdr-job.status" || fail "night-$n: kspecdr-job.status has no ranks=2"
  # Both ranks took part: the night ran on 2 ranks ("[rank 0/2]") and rank 1 reported its peak memory at the end
  # (which exposures a rank reduced, and so which warnings it logged, depends on how the work was dealt).
  grep -q '\[rank 0/2\]' "$out"/reduce-*.log || fail "night-$n: the log is not of a 2-rank run"
  grep -q 'peak resident memory per rank: rank 0 [0-9]* MB, rank 1 [0-9]* MB' "$out"/reduce-*.log ||
    fail "night-$n: rank 1 of 2 did not report at the end of the night"
  # The cube was written with collective MPI-IO (the program says so when it was not).
  ! grep -q 'collective MPI-IO was NOT used' "$out"/reduce-*.log || fail "night-$n: the cube was not written collectively"
}
check_night a
check_night b
ok "both nights: 3 RED files, a readable Rainbow cube, exit code 0, 2 ranks"

# ---- the report
rep=$WORK/nights-archive
[ -f "$rep/report.md" ] && [ -f "$rep/report.csv" ] || fail "no report.md/report.csv in $rep"
/usr/bin/python3 - "$rep/report.csv" <<'EOF' || fail "report.csv does not list both nights as ok"
import csv, sys
rows = {r["night"]: r for r in csv.DictReader(open(sys.argv[1]))}
assert set(rows) == {"night-a", "night-b"}, rows.keys()
for name, r in rows.items():
    assert r["result"] == "ok" and r["exit_code"] == "0", (name, r["result"], r["exit_code"])
    assert r["red_files"] == "3" and r["science"] == "3", (name, r["red_files"], r["science"])
    assert r["cube_ok"] == "True" and r["failures"] == "", (name, r["cube_note"], r["failures"])
    assert r["slurm_state"] == "COMPLETED", (name, r["slurm_state"])
EOF
grep -q '| night-a | ok |' "$rep/report.md" && grep -q '| night-b | ok |' "$rep/report.md" ||
  fail "report.md does not list both nights as ok"
ok "report lists night-a and night-b as ok"

# ---- 2. resume one night with reduce-night.sbatch, a --config file and srun
out=$WORK/reduced/night-a
victim=$(find "$out/red" -name '*.red.fits' | sort | head -1)
rm "$victim" "$out/night-a.rainbow.h5"
cat >night-a.ini <<EOF
# night a, as a config file for kspecdr reduce --config
raw = $WORK/night-a/raw
instrument = $WORK/night-a/instrument.ini
out = $out
stage = red
EOF
KSPECDR=$BIN LAUNCHER=srun sbatch --wait --ntasks=2 --time=00:10:00 --output="$WORK/resume-%j.out" \
  "$ROOT/slurm/reduce-night.sbatch" "$WORK/night-a.ini" >/dev/null || fail "reduce-night.sbatch (resume) failed"
log=$(ls -t "$out"/reduce-*.log | head -1)
grep -q 'srun --mpi=pmix -n 2' "$log" || fail "the resume did not use srun (see $log)"
grep -qE 'night done: .* [1-9][0-9]* files written, [1-9][0-9]* kept from earlier runs, 0 failed' "$log" ||
  fail "the resume did not keep earlier outputs and redo the missing one: $(grep 'night done' "$log")"
[ -f "$victim" ] && [ -f "$out/night-a.rainbow.h5" ] || fail "the resume did not rewrite $victim and the cube"
check_night a
ok "resume: $(grep -o '[0-9]* files written, [0-9]* kept' "$log"); RED and cube back"
