#!/usr/bin/env bash
# Submits an archive reprocessing: the job array (one task per night) and the report chained after it.
#
#   slurm/submit-archive.sh NIGHTS.txt [K] [-- more sbatch options for the night tasks]
#
#   NIGHTS.txt  "RAWDIR OUTDIR [INSTRUMENT]" per line (see slurm/reprocess-archive.sbatch)
#   K           at most K nights at once (--array=1-N%K; default 4). N is the number of night lines.
# Environment:
#   KSPECDR       the program (default: kspecdr on PATH, else build/kspecdr of this checkout)
#   ARCHIVE_DIR   where the SLURM output files and the report go
#                 (default: NIGHTS.txt's folder/<name of NIGHTS.txt without .txt>-archive)
#   REPORT_AFTER  afterok (default: the report runs when every night task ended with 0) or afterany
#                 (the report runs whatever happened; use it when you want a summary even of fatal nights)
#   CONFIG, INSTRUMENT, OVERWRITE, LAUNCHER, EXTRA_ARGS, OMPI_MCA_io, HDF5_USE_FILE_LOCKING: passed to
#                 every night (slurm/reduce-night.sbatch documents them)
# Prints the two job ids ("array job: <id>", "report job: <id>") and the commands to follow them.
set -euo pipefail

usage() { echo "usage: $0 NIGHTS.txt [K] [-- sbatch options]" >&2; exit 2; }
[ $# -ge 1 ] || usage
NIGHTS=$1; shift
K=4
if [ $# -ge 1 ] && [ "$1" != "--" ]; then K=$1; shift; fi
if [ $# -ge 1 ]; then [ "$1" = "--" ] || usage; shift; fi
extra=("$@")
[[ "$K" =~ ^[1-9][0-9]*$ ]] || { echo "submit-archive: K must be a positive number, not '$K'" >&2; exit 2; }
[ -r "$NIGHTS" ] || { echo "submit-archive: cannot read $NIGHTS" >&2; exit 2; }
command -v sbatch >/dev/null || { echo "submit-archive: sbatch not found (is SLURM installed, SLURM_CONF set?)" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
NIGHTS=$(cd "$(dirname "$NIGHTS")" && pwd)/$(basename "$NIGHTS")
N=$(grep -Evc '^[[:space:]]*(#|$)' "$NIGHTS" || true)
[ "$N" -ge 1 ] || { echo "submit-archive: no night lines in $NIGHTS" >&2; exit 2; }
ARCHIVE_DIR=${ARCHIVE_DIR:-$(dirname "$NIGHTS")/$(basename "$NIGHTS" .txt)-archive}
mkdir -p "$ARCHIVE_DIR/slurm-logs"
ARCHIVE_DIR=$(cd "$ARCHIVE_DIR" && pwd)
REPORT_AFTER=${REPORT_AFTER:-afterok}
case "$REPORT_AFTER" in afterok | afterany) ;; *) echo "submit-archive: REPORT_AFTER is afterok or afterany" >&2; exit 2 ;; esac

# The program: resolved here, on the submitting machine, and passed to the jobs as an absolute path.
if [ -z "${KSPECDR:-}" ]; then
  KSPECDR=$(command -v kspecdr || true)
  [ -n "$KSPECDR" ] || KSPECDR="$here/../build/kspecdr"
fi
[ -x "$KSPECDR" ] || { echo "submit-archive: kspecdr not found; set KSPECDR=/path/to/kspecdr" >&2; exit 2; }
KSPECDR=$(cd "$(dirname "$KSPECDR")" && pwd)/$(basename "$KSPECDR")
export KSPECDR
# The jobs run copies of the scripts; this tells them where the originals (and reduce-night.sbatch) are.
export KSPECDR_SLURM_DIR=$here

# --parsable prints "jobid[;cluster]"; the array's id is the one the dependency names.
# N is never more than the list; K caps the number of nights running at once (each is a whole allocation).
array_id=$(sbatch --parsable --array="1-$N%$K" --output="$ARCHIVE_DIR/slurm-logs/night-%A_%a.out" \
  "${extra[@]}" "$here/reprocess-archive.sbatch" "$NIGHTS" | cut -d';' -f1)
# The report: one task, a few seconds; afterok:<array id> waits for every task of the array.
report_id=$(sbatch --parsable --job-name=kspecdr-report --ntasks=1 --time=00:30:00 \
  --dependency="$REPORT_AFTER:$array_id" --output="$ARCHIVE_DIR/slurm-logs/report-%j.out" \
  --wrap="/usr/bin/python3 '$here/../scripts/archive_report.py' '$NIGHTS' --out '$ARCHIVE_DIR' --array-job $array_id" |
  cut -d';' -f1)

echo "array job: $array_id ($N night(s), at most $K at once)"
echo "report job: $report_id ($REPORT_AFTER:$array_id; writes $ARCHIVE_DIR/report.md and report.csv)"
echo "follow with: squeue -j $array_id,$report_id    logs: $ARCHIVE_DIR/slurm-logs/"
