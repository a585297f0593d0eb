#!/usr/bin/env bash
# Starts and stops a private single-node Slurm (22.05) for tests, kept entirely inside one
# folder: slurm.conf, controller state, slurmd spool, logs and pid files. It never installs
# anything (the test script installs `slurm-wlm slurm-wlm-torque munge`) and never reads the
# machine's /etc/slurm: every client must run with SLURM_CONF set to the printed path.
#
#   scripts/slurm.sh start DIR   write DIR/slurm.conf (free 127.0.0.1 ports picked now), start
#                                slurmctld and slurmd, wait until the node is idle and print
#                                the absolute path of DIR/slurm.conf on stdout (again the same
#                                path if DIR's Slurm is already running)
#   scripts/slurm.sh stop DIR    cancel DIR's jobs, stop its slurmd and slurmctld and wait until
#                                they are gone
#
# Authentication is auth/none + cred/none: nothing outside DIR is needed (no munge key, no
# munged). The node is this host (`hostname -s`) at 127.0.0.1 with CPUs=2 and
# RealMemory=4096 (tasks asking 1 GB must fit), in one default partition `debug`. MinJobAge=3600 keeps finished jobs visible to squeue and
# scontrol for an hour. Must run as root (SlurmUser=root, slurmd runs jobs as their owner).
# Everything else goes to stderr, so `SLURM_CONF=$(scripts/slurm.sh start DIR)` captures the path.
set -euo pipefail
# shellcheck source=scripts/service-lib.sh
. "$(dirname "$0")/service-lib.sh"

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
command=$1
dir=$(realpath -m "$2")
conf=$dir/slurm.conf
ctld_pidfile=$dir/slurmctld.pid
slurmd_pidfile=$dir/slurmd.pid
ctld_log=$dir/slurmctld.log
slurmd_log=$dir/slurmd.log

# A port nothing listens on now, away from Slurm's defaults (6817-6819).
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    if port_is_free "$port" && [ "$port" != "${1:-}" ]; then
      echo "$port"
      return 0
    fi
  done
  echo "slurm.sh: found no free port" >&2
  return 1
}

write_conf() {
  local ctld_port=$1 slurmd_port=$2 node
  node=$(hostname -s)
  cat >"$conf" <<EOF
# Written by scripts/slurm.sh: a private single-node Slurm for tests.
ClusterName=iceprodtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$ctld_pidfile
SlurmdPidFile=$slurmd_pidfile
SlurmctldLogFile=$ctld_log
SlurmdLogFile=$slurmd_log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
MinJobAge=3600
ReturnToService=2
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# Whether sinfo reports the node idle (or, with jobs already running, mixed/allocated).
node_ready() {
  local state
  state=$(SLURM_CONF=$conf sinfo -h -o %t 2>/dev/null) || return 1
  case $state in
    idle | mix | alloc) return 0 ;;
    *) return 1 ;;
  esac
}

stop_daemons() {
  local pid pids=()
  for f in "$slurmd_pidfile" "$ctld_pidfile"; do
    if pid=$(pid_in "$f"); then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 1
  for pid in "${pids[@]}"; do
    for _ in $(seq 300); do
      alive "$pid" || continue 2
      sleep 0.1
    done
    echo "slurm.sh: $pid did not stop within 30 s; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
  done
  return 0
}

# Starts both daemons on the ports in slurm.conf and waits (bounded) for an idle node.
launch() {
  rm -f "$ctld_pidfile" "$slurmd_pidfile"
  # -c: a clean start (no saved jobs from a previous run of this folder). setsid: the
  # daemons outlive this script and the terminal's signals. They daemonise themselves and
  # write their pid files.
  SLURM_CONF=$conf setsid slurmctld -c -f "$conf" </dev/null >>"$ctld_log" 2>&1 || return 1
  SLURM_CONF=$conf setsid slurmd -f "$conf" </dev/null >>"$slurmd_log" 2>&1 || return 1
  for _ in $(seq 300); do
    node_ready && return 0
    sleep 0.1
  done
  echo "slurm.sh: the node did not become idle within 30 s" >&2
  return 1
}

start() {
  for tool in slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || {
      echo "slurm.sh: $tool not found: install the package slurm-wlm" >&2
      exit 1
    }
  done
  mkdir -p "$dir/state" "$dir/spool"
  if pid_in "$ctld_pidfile" >/dev/null && pid_in "$slurmd_pidfile" >/dev/null &&
    node_ready; then
    echo "$conf"
    return 0
  fi
  stop_daemons || true
  local ctld_port slurmd_port started=""
  for _ in 1 2 3; do
    ctld_port=$(free_port)
    slurmd_port=$(free_port "$ctld_port")
    write_conf "$ctld_port" "$slurmd_port"
    if launch; then
      started=yes
      break
    fi
    echo "slurm.sh: Slurm did not start on ports $ctld_port/$slurmd_port; trying others" >&2
    stop_daemons || true
  done
  if [ -z "$started" ]; then
    tail -n 20 "$ctld_log" "$slurmd_log" >&2 || true
    echo "slurm.sh: Slurm did not start; see $ctld_log and $slurmd_log" >&2
    exit 1
  fi
  echo "$conf"
}

# Cancels every job of this private cluster and waits (bounded) until none runs: slurmd leaves
# running jobs' slurmstepd behind when it stops, and those would outlive the test folder.
cancel_jobs() {
  pid_in "$ctld_pidfile" >/dev/null || return 0
  local jobs
  jobs=$(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null) || return 0
  [ -n "$jobs" ] || return 0
  # shellcheck disable=SC2086 # one id per word
  SLURM_CONF=$conf scancel $jobs 2>/dev/null || true
  for _ in $(seq 100); do
    [ -z "$(SLURM_CONF=$conf squeue -h -t running,completing -o %i 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  echo "slurm.sh: jobs still running after scancel" >&2
}

stop() {
  cancel_jobs
  stop_daemons || echo "slurm.sh: no Slurm running in $dir" >&2
}

case $command in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
