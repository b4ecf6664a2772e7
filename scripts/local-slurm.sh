#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying the slurm/ jobs and for the
# slurm_archive test: munged, slurmctld and slurmd on localhost, from Debian's slurm-wlm and munge
# (scripts/install-deps.sh installs them). No systemd, no cgroups, no accounting database.
#
#   scripts/local-slurm.sh start     # idempotent: starts what is not running, waits for an idle node
#   scripts/local-slurm.sh status    # daemons, node state, queue, and the SLURM_CONF line to export
#   scripts/local-slurm.sh env       # prints "export SLURM_CONF=..." (use: eval "$(scripts/local-slurm.sh env)")
#   scripts/local-slurm.sh stop      # cancels every job, stops the three daemons, waits until they are gone
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives under one prefix:
#   KSPECDR_SLURM_PREFIX      default /tmp/kspecdr-slurm (keep it short: the munge socket path must fit
#                             in 107 bytes)
#   KSPECDR_SLURM_CTLD_PORT   slurmctld port, default 6817 (SLURM's own default)
#   KSPECDR_SLURM_SLURMD_PORT slurmd port, default 6818
# The cluster uses its own munged (own key, own socket) and its own slurm.conf, so it never touches
# /etc/munge, /etc/slurm or a munged/slurmd that the machine already runs. Client commands (sbatch,
# squeue, ...) find it through SLURM_CONF; jobs inherit that variable from the shell that submits them.
set -euo pipefail

PREFIX=${KSPECDR_SLURM_PREFIX:-/tmp/kspecdr-slurm}
CTLD_PORT=${KSPECDR_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${KSPECDR_SLURM_SLURMD_PORT:-6818}
CONF=$PREFIX/etc/slurm.conf
MUNGE_SOCKET=$PREFIX/run/munge.socket
export SLURM_CONF=$CONF

die() { echo "local-slurm: $*" >&2; exit 1; }
say() { echo "local-slurm: $*"; }

need_programs() {
  local p missing=()
  for p in munged mungekey slurmctld slurmd slurmd sbatch sinfo scontrol; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]}: install Debian's slurm-wlm and munge (scripts/install-deps.sh does)"
}
# Daemons live in /usr/sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# pid of a daemon from its pid file, only if that process is alive.
alive_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_conf() {
  local node user
  # The node as slurmd sees the hardware ("NodeName=vm CPUs=2 ... RealMemory=24105"); using its own numbers
  # keeps slurmd from draining the node for "low socket*core*thread count" or "low RealMemory".
  local hw
  hw=$(slurmd -C | head -1)
  node=$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$hw")
  [ -n "$node" ] || die "could not read 'slurmd -C': $hw"
  # SlurmUser is the account slurmctld runs as: root when started as root, else the caller.
  user=$(id -un)
  mkdir -p "$PREFIX"/{etc,state,spool,log,run}
  cat >"$CONF.tmp" <<EOF
# Written by scripts/local-slurm.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ): a single-node cluster on localhost.
ClusterName=kspecdr-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=$user
# Our own munged: its socket is named here (AuthInfo/CredType apply to daemons and client commands).
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers rarely allow them): processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No accounting database: jobs are not recorded after they leave the queue (sacct does not work).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Cores are the consumable resource (memory is not tracked), so array tasks share the node by cores.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Quick scheduling for a small test cluster: dependencies and array throttles are re-examined every
# 2 s (SLURM's default is 60 s, which would leave a chained job waiting a minute after its parents).
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
# A job whose dependency can never be met (an afterok report after a failed night) is cancelled instead
# of pending for ever.
DependencyParameters=kill_invalid_depend
MpiDefault=none
# No mail program in a container; /bin/true keeps slurmctld from logging an error for it.
MailProg=/bin/true
# A node that was down (e.g. after a restart) comes back by itself once slurmd registers.
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 $(sed 's/^NodeName=[^ ]* //' <<<"$hw") State=UNKNOWN
# Jobs that can never fit (e.g. more tasks than the node has cores) are refused at submission.
EnforcePartLimits=ALL
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.tmp" "$CONF"
  echo "$node" >"$PREFIX/etc/nodename"
}

start_munge() {
  if alive_pid "$PREFIX/run/munged.pid" >/dev/null; then return 0; fi
  mkdir -p "$PREFIX/munge" "$PREFIX/run" "$PREFIX/log"
  # munged refuses a key that others can read and a socket folder that others can write or not enter.
  chmod 700 "$PREFIX/munge"
  chmod 755 "$PREFIX" "$PREFIX/run"
  local d=$PREFIX
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    [ "$(( 0$(stat -c %a "$d") & 01 ))" -ne 0 ] ||
      die "munged needs every folder above its socket open to all (o+x); $d is $(stat -c %A "$d")"
  done
  [ -s "$PREFIX/munge/munge.key" ] || mungekey --create --keyfile="$PREFIX/munge/munge.key"
  chmod 600 "$PREFIX/munge/munge.key"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  munged --socket="$MUNGE_SOCKET" --key-file="$PREFIX/munge/munge.key" \
    --pid-file="$PREFIX/run/munged.pid" --log-file="$PREFIX/log/munged.log" \
    --seed-file="$PREFIX/munge/munged.seed" ||
    die "munged did not start; see $PREFIX/log/munged.log"
  for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && return 0; sleep 0.1; done
  die "munged started but its socket $MUNGE_SOCKET did not appear; see $PREFIX/log/munged.log"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1; }

start() {
  need_programs
  local ctld slurmd_pid
  ctld=$(alive_pid "$PREFIX/run/slurmctld.pid" || true)
  slurmd_pid=$(alive_pid "$PREFIX/run/slurmd.pid" || true)
  # The configuration is rewritten only when no SLURM daemon of this prefix runs, so a second 'start'
  # never changes the configuration under running daemons.
  if [ -z "$ctld" ] && [ -z "$slurmd_pid" ]; then write_conf; fi
  start_munge
  local node
  node=$(cat "$PREFIX/etc/nodename")
  if [ -z "$ctld" ]; then
    # -i: carry on past unreadable state files (e.g. after a machine crash) instead of refusing to start.
    slurmctld -f "$CONF" -i || die "slurmctld did not start; see $PREFIX/log/slurmctld.log"
  fi
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer; see $PREFIX/log/slurmctld.log"
  if [ -z "$slurmd_pid" ]; then
    slurmd -f "$CONF" -N "$node" || die "slurmd did not start; see $PREFIX/log/slurmd.log"
  fi
  local st=""
  for _ in $(seq 150); do
    st=$(node_state)
    case "$st" in
      idle | mixed | allocated | completing) break ;;
      # A node left down/drained by an earlier run is put back in service.
      down* | drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case "$st" in
    idle | mixed | allocated | completing) ;;
    *) die "node $node is '$st' after 30 s; see $PREFIX/log/slurmd.log and 'scontrol show node $node'" ;;
  esac
  say "running (node $node: $st; ports $CTLD_PORT/$SLURMD_PORT)"
  say "export SLURM_CONF=$CONF"
}

stop_one() {
  local name=$1 f=$2 pid
  pid=$(alive_pid "$f" || true)
  [ -n "$pid" ] || { rm -f "$f"; return 0; }
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "local-slurm: $name (pid $pid) still running after 10 s; sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop() {
  if [ -f "$CONF" ] && alive_pid "$PREFIX/run/slurmctld.pid" >/dev/null; then
    # Cancel every job first so that no job step outlives the cluster.
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  stop_one slurmd "$PREFIX/run/slurmd.pid"
  stop_one slurmctld "$PREFIX/run/slurmctld.pid"
  stop_one munged "$PREFIX/run/munged.pid"
  say "stopped (state, logs and configuration kept in $PREFIX)"
}

status() {
  local name pid rc=0
  for name in munged slurmctld slurmd; do
    if pid=$(alive_pid "$PREFIX/run/$name.pid"); then
      printf '%-10s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-10s not running\n' "$name"
      rc=1
    fi
  done
  if [ $rc -eq 0 ]; then
    sinfo -N -o '%N %T %C' || rc=1
    squeue || rc=1
  fi
  echo "export SLURM_CONF=$CONF"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
