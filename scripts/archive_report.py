#!/usr/bin/python3
"""Summary of an archive reprocessing: one row per night of a nights list.

    /usr/bin/python3 scripts/archive_report.py NIGHTS.txt --out DIR [--array-job ID]

NIGHTS.txt is the list that slurm/reprocess-archive.sbatch ran ("RAWDIR OUTDIR [INSTRUMENT]" per line,
# comments and empty lines skipped, relative paths from the list's folder). Per night it reads what the
night's job left in OUTDIR:

- OUTDIR/kspecdr-job.status (written by slurm/reduce-night.sbatch when kspecdr ends): job id, ranks,
  run time, kspecdr's exit code (0 all good, 2 configuration error, 3 some exposures failed, 1 fatal);
- OUTDIR/diagnostics.h5 (/failures), else the newest OUTDIR/reduce-<job>.log: the exposures named as failed ("failed exposure NAME (FILE): REASON")
  and the night's counts; a log newer than the status file without an end line means the job was killed;
- OUTDIR/log.csv (science exposures planned) and OUTDIR/red/*.red.fits (RED files present);
- OUTDIR/*.rainbow.h5: present, and readable with h5py (star groups, each fluxlike/flux (nwave, ntime));
- with --array-job, SLURM's state of each array task (scontrol, or sacct when accounting is on).

Writes DIR/report.md and DIR/report.csv. Exit code: 0 when every night is "ok" (kspecdr exit 0, a RED
file per science exposure, a readable cube), 3 when some night is not, 2 on a usage error.
"""
import argparse
import csv
import glob
import os
import re
import subprocess
import sys
import time


def read_nights(path):
    base = os.path.dirname(os.path.abspath(path))
    nights = []
    with open(path) as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            fields = s.split()
            if len(fields) < 2:
                raise SystemExit(f"archive_report: line '{s}' of {path} needs RAWDIR OUTDIR [INSTRUMENT]")
            raw, out = (p if os.path.isabs(p) else os.path.join(base, p) for p in fields[:2])
            nights.append({"task": len(nights) + 1, "raw": os.path.normpath(raw), "out": os.path.normpath(out),
                           "instrument": fields[2] if len(fields) > 2 else ""})
    return nights


def night_name(raw):
    # kspecdr's default night name: the raw folder's name, its parent's when it is called 'raw'.
    name = os.path.basename(raw)
    return os.path.basename(os.path.dirname(raw)) if name == "raw" else name


def read_status(out):
    path = os.path.join(out, "kspecdr-job.status")
    status = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    status[k] = v
        status["_mtime"] = os.path.getmtime(path)
    return status


FAILED = re.compile(r"failed exposure (\S+) \((.*?)\): (.*)$")
CUBE_FAILED = re.compile(r"time-series cube (\S+) not written: (.*)$")
ERROR = re.compile(r"\] error (.*)$")
DONE = re.compile(r"night done: (\d+) exposures planned, (\d+) files written, (\d+) kept from earlier runs, (\d+) failed")


def read_log(out):
    logs = sorted(glob.glob(os.path.join(out, "reduce-*.log")), key=os.path.getmtime)
    info = {"log": "", "failures": [], "errors": [], "done_line": None, "ended": False, "_mtime": 0}
    if not logs:
        return info
    info["log"] = logs[-1]
    info["_mtime"] = os.path.getmtime(logs[-1])
    with open(logs[-1], errors="replace") as f:
        for line in f:
            m = FAILED.search(line)
            if m:
                info["failures"].append(f"{m.group(1)}: {m.group(3)}")
            m = CUBE_FAILED.search(line)
            if m:
                info["failures"].append(f"rainbow cube: {m.group(2)}")
            m = ERROR.search(line)
            if m and not FAILED.search(line):
                info["errors"].append(m.group(1).strip())
            m = DONE.search(line)
            if m:
                info["done_line"] = tuple(int(x) for x in m.groups())
            if line.startswith("reduce-night: exit code"):
                info["ended"] = True
    return info


def diagnostics_failures(out):
    """The failures that kspecdr recorded in OUTDIR/diagnostics.h5 (/failures: exposure, file, reason), or None."""
    path = os.path.join(out, "diagnostics.h5")
    if not os.path.exists(path):
        return None
    try:
        import h5py
        with h5py.File(path, "r") as f:
            g = f["failures"]
            dec = lambda v: v.decode() if isinstance(v, bytes) else str(v)
            return [f"{dec(e)}: {dec(r)}" for e, r in zip(g["exposure"][()], g["reason"][()])]
    except Exception:
        return None


def science_planned(out):
    path = os.path.join(out, "log.csv")
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row.get("class") == "science")


def read_cube(out):
    cubes = sorted(glob.glob(os.path.join(out, "*.rainbow.h5")))
    if not cubes:
        return {"cube": "", "cube_ok": False, "cube_note": "no *.rainbow.h5"}
    path = cubes[0]
    try:
        import h5py
    except ImportError:
        return {"cube": path, "cube_ok": False, "cube_note": "h5py missing (install python3-h5py)"}
    try:
        stars = []
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.endswith("fluxlike/flux"):
                    stars.append((name[: -len("/fluxlike/flux")], obj.shape, int((obj[()] == obj[()]).sum())))
            f.visititems(visit)
        if not stars:
            return {"cube": path, "cube_ok": False, "cube_note": "no star group with fluxlike/flux"}
        ntimes = sorted({s[1][1] for s in stars if len(s[1]) == 2})
        finite = all(s[2] > 0 for s in stars)
        note = f"{len(stars)} star(s), ntime {','.join(map(str, ntimes))}, nwave {stars[0][1][0]}"
        return {"cube": path, "cube_ok": finite, "cube_note": note if finite else note + "; a star without finite flux",
                "cube_ntime": max(ntimes) if ntimes else 0}
    except Exception as e:  # unreadable: report why
        return {"cube": path, "cube_ok": False, "cube_note": f"unreadable: {e}"}


def slurm_states(array_job):
    """{task index: (state, exit code)} from scontrol (jobs SLURM still remembers) or sacct."""
    states = {}
    if not array_job:
        return states
    try:
        text = subprocess.run(["scontrol", "-o", "show", "job", str(array_job)], capture_output=True, text=True,
                              timeout=30).stdout
        for line in text.splitlines():
            kv = dict(re.findall(r"(\w+)=(\S*)", line))
            if kv.get("ArrayTaskId", "").isdigit():
                states[int(kv["ArrayTaskId"])] = (kv.get("JobState", "?"), kv.get("ExitCode", "?"))
    except (OSError, subprocess.SubprocessError):
        pass
    if not states:
        try:
            text = subprocess.run(["sacct", "-n", "-P", "-X", "-j", str(array_job), "-o", "JobID,State,ExitCode"],
                                  capture_output=True, text=True, timeout=30).stdout
            for line in text.splitlines():
                jid, state, code = (line.split("|") + ["", "", ""])[:3]
                m = re.match(r"\d+_(\d+)$", jid)
                if m:
                    states[int(m.group(1))] = (state, code)
        except (OSError, subprocess.SubprocessError):
            pass
    return states


def summarise(n, states):
    out = n["out"]
    status, log = read_status(out), read_log(out)
    row = {"task": n["task"], "night": night_name(n["raw"]), "raw": n["raw"], "out": out}
    row["slurm_state"], row["slurm_exit"] = states.get(n["task"], ("", ""))
    row["job"] = status.get("job", "")
    row["ranks"] = status.get("ranks", "")
    row["seconds"] = status.get("seconds", "")
    row["exit_code"] = status.get("exit_code", "")
    row["science"] = science_planned(out)
    row["red_files"] = len(glob.glob(os.path.join(out, "red", "*.red.fits")))
    row.update(read_cube(out))
    # The program's own record of the failures (diagnostics.h5, rewritten at the end of every run that gets
    # through the night: exit code 0 or 3) when the last job ended so; else the failures named in its log.
    diag = diagnostics_failures(out)
    use_diag = diag is not None and log["ended"] and status.get("exit_code") in ("0", "3")
    row["failures"] = diag if use_diag else log["failures"]
    row["errors"] = log["errors"]
    row["log"] = log["log"]
    # A log newer than the status without the script's end line: the job was killed (or is running).
    interrupted = log["log"] and not log["ended"] and log["_mtime"] > status.get("_mtime", 0)
    if not status and not log["log"]:
        result = "not run"
    elif interrupted:
        result = "interrupted"
    elif row["exit_code"] == "0" and row["cube_ok"] and row["science"] is not None and \
            row["red_files"] >= row["science"] and not row["failures"]:
        result = "ok"
    elif row["exit_code"] == "3":
        result = "partial"
    elif row["exit_code"] == "0":
        result = "incomplete"  # exit 0 but outputs missing: say so rather than trust the code
    else:
        result = "failed"
    row["result"] = result
    return row


COLUMNS = ["task", "night", "result", "exit_code", "slurm_state", "slurm_exit", "job", "ranks", "seconds",
           "science", "red_files", "cube_ok", "cube_note", "cube", "failures", "raw", "out", "log"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("nights", help="the nights list (RAWDIR OUTDIR [INSTRUMENT] per line)")
    ap.add_argument("--out", required=True, help="folder for report.md and report.csv")
    ap.add_argument("--array-job", default="", help="SLURM array job id, for the state of each task")
    a = ap.parse_args()
    if not os.path.exists(a.nights):
        print(f"archive_report: no such file {a.nights}", file=sys.stderr)
        return 2
    nights = read_nights(a.nights)
    states = slurm_states(a.array_job)
    rows = [summarise(n, states) for n in nights]
    os.makedirs(a.out, exist_ok=True)

    with open(os.path.join(a.out, "report.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "failures": "; ".join(r["failures"]), "science": "" if r["science"] is None else r["science"]})
    os.replace(os.path.join(a.out, "report.csv.tmp"), os.path.join(a.out, "report.csv"))

    counts = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    md = [f"# Archive report: {os.path.abspath(a.nights)}", "",
          f"Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"
          + (f" for array job {a.array_job}" if a.array_job else "") + ". "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" of {len(rows)} night(s).", "",
          "| task | night | result | exit code | SLURM state | RED files / science | rainbow cube | failures | time (s) | ranks |",
          "|---:|---|---|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        sci = "?" if r["science"] is None else r["science"]
        cube = (os.path.basename(r["cube"]) + ": " if r["cube"] else "") + r["cube_note"]
        md.append(f"| {r['task']} | {r['night']} | {r['result']} | {r['exit_code'] or '-'} | "
                  f"{r['slurm_state'] or '-'} | {r['red_files']} / {sci} | {cube} | {len(r['failures'])} | "
                  f"{r['seconds'] or '-'} | {r['ranks'] or '-'} |")
    md += ["", "Results: ok = exit code 0, a RED file per science exposure and a readable cube; partial = exit code 3 "
           "(some exposures failed, below); failed = exit code 1 or 2; incomplete = exit code 0 but outputs missing; "
           "interrupted = the job's log stops without an end (killed, time limit, node failure: submit the list "
           "again to resume); not run = no log yet.", ""]
    for r in rows:
        if r["failures"] or r["result"] != "ok":
            md.append(f"## {r['night']} ({r['result']})")
            md.append("")
            md.append(f"- output: `{r['out']}`; log: `{r['log'] or 'none'}`")
            for fail in r["failures"]:
                md.append(f"- failed: {fail}")
            if r["result"] != "ok":
                for err in r["errors"][:5]:
                    md.append(f"- error: {err}")
            md.append("")
    with open(os.path.join(a.out, "report.md.tmp"), "w") as f:
        f.write("\n".join(md) + "\n")
    os.replace(os.path.join(a.out, "report.md.tmp"), os.path.join(a.out, "report.md"))
    print("\n".join(md))
    print(f"archive_report: wrote {os.path.join(a.out, 'report.md')} and report.csv")
    return 0 if all(r["result"] == "ok" for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
