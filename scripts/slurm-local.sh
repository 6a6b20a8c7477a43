#!/usr/bin/env bash
# A throw-away one-node Slurm on loopback, for tests and for trying `i2p submit` on a laptop.
#
#   scripts/slurm-local.sh up   [DIR]   start munged + slurmctld + slurmd with all state in DIR
#                                       (default: a new temp dir); prints `export SLURM_CONF=...`
#   scripts/slurm-local.sh down DIR     cancel every job, stop the daemons this script started
#   scripts/slurm-local.sh env  DIR     print the `export` lines again
#
# Needs root (slurmd runs jobs as their owner) and the Debian packages
#   apt-get install --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge
# Exit codes of `up`: 0 ready; 3 not root; 4 packages missing; 1 a daemon did not come up
# (its log is printed and whatever was started is stopped again).
#
# Facts this relies on (measured on Debian 12, Slurm 22.05): no systemd is needed (daemons are
# started directly and readiness is polled with `scontrol ping`/`sinfo`, never exit codes);
# munged's socket directory must be 0755; `kill_invalid_depend` only works under
# DependencyParameters; `batch_sched_delay=0` halves start latency; jobs survive
# `scontrol shutdown`, so they are cancelled first; no accounting (read states with
# `scontrol show job`). Only processes whose PIDs this script recorded are ever signalled.
set -euo pipefail

die() { echo "slurm-local: $*" >&2; exit "${2:-1}"; }

cmd=${1:-}
case "$cmd" in up|down|env) ;; *) die "usage: $0 up [DIR] | down DIR | env DIR" 2 ;; esac

print_env() {
    echo "export SLURM_CONF=$1/slurm.conf"
}

pid_of() { [[ -s "$1" ]] && cat "$1" || true; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() {  # stop_pid PIDFILE NAME: TERM, wait up to 10 s, then KILL; only that PID
    local pid; pid=$(pid_of "$1")
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    echo "slurm-local: $2 (pid $pid) ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    local dir=$1
    [[ -f "$dir/slurm.conf" ]] || die "$dir holds no slurm.conf"
    export SLURM_CONF="$dir/slurm.conf"
    if alive "$(pid_of "$dir/run/slurmctld.pid")"; then
        # jobs outlive `scontrol shutdown`: cancel them and wait until none is left running
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 150); do
            [[ -z "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ]] && break
            sleep 0.1
        done
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_pid "$dir/run/slurmd.pid" slurmd
    stop_pid "$dir/run/slurmctld.pid" slurmctld
    stop_pid "$dir/run/munged.pid" munged
}

if [[ "$cmd" == down ]]; then
    [[ -n "${2:-}" ]] || die "usage: $0 down DIR" 2
    down "$2"
    exit 0
fi
if [[ "$cmd" == env ]]; then
    [[ -n "${2:-}" ]] || die "usage: $0 env DIR" 2
    print_env "$(cd "$2" && pwd)"
    exit 0
fi

# ---- up ----------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "needs root (slurmd must be able to run jobs as their owner)" 3
for exe in munged mungekey slurmctld slurmd sbatch scontrol sinfo squeue scancel; do
    command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v "$exe" >/dev/null 2>&1 ||
        die "$exe not found: apt-get install --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge" 4
done

dir=${2:-$(mktemp -d /tmp/i2p-slurm.XXXXXX)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/run" "$dir/log" "$dir/state" "$dir/spool" "$dir/munge"
chmod 0755 "$dir" "$dir/munge"   # munged refuses a socket dir that is group/other writable
chmod 0700 "$dir/state" "$dir/spool"

# free TCP ports for slurmctld and slurmd (several of these clusters may run side by side)
py=$(command -v python3 || command -v python) || die "python3 not found" 4
read -r ctld_port slurmd_port < <("$py" - <<'EOF'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
EOF
)

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
user=$(id -un)

mungekey --create --force --keyfile="$dir/munge/munge.key" >/dev/null
chmod 0600 "$dir/munge/munge.key"

cat > "$dir/slurm.conf" <<EOF
# one-node Slurm written by scripts/slurm-local.sh; all state lives in $dir
ClusterName=i2plocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
ReturnToService=2
MinJobAge=600
KillWait=10
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"

fail() {
    echo "slurm-local: $1 did not come up; last lines of its log:" >&2
    tail -n 20 "$dir/log/$1.log" >&2 2>/dev/null || true
    down "$dir" || true
    exit 1
}

munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
       --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
       --seed-file="$dir/munge/munged.seed" --force >/dev/null 2>>"$dir/log/munged.log" || fail munged
for _ in $(seq 50); do [[ -S "$dir/munge/munge.socket" ]] && break; sleep 0.1; done
[[ -S "$dir/munge/munge.socket" ]] || fail munged

slurmctld -f "$dir/slurm.conf" -i >>"$dir/log/slurmctld.log" 2>&1 || fail slurmctld
ok=0
for _ in $(seq 100); do
    if scontrol ping 2>/dev/null | grep -q "is UP"; then ok=1; break; fi
    sleep 0.1
done
[[ $ok -eq 1 ]] || fail slurmctld

slurmd -f "$dir/slurm.conf" -N "$host" >>"$dir/log/slurmd.log" 2>&1 || fail slurmd
ok=0
for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    if [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]; then ok=1; break; fi
    sleep 0.1
done
[[ $ok -eq 1 ]] || fail slurmd
print_env "$dir"
