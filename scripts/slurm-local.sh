#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages: munged,
# slurmctld and slurmd on localhost, as root, without systemd. Everything it
# makes (config, munge key, state, spool, logs, sockets, pid files) lives in
# one directory, and nothing under /etc or /run is touched, so it can run
# beside a real installation without disturbing it.
#
#   scripts/slurm-local.sh install     apt-get install munge slurmctld slurmd slurm-client
#   scripts/slurm-local.sh start DIR   start the daemons; prints the SLURM_CONF to export
#   scripts/slurm-local.sh stop DIR    cancel its jobs and stop the daemons, by their pids
#
# Exit 3: Slurm is not installed and cannot be installed here (not root, or
# no package registry); callers may skip then. Any other failure exits 1 with
# the daemons' log tails.
set -euo pipefail

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }
unavailable() { say "$*"; exit 3; }

binaries=(munged munge slurmctld slurmd sbatch squeue sinfo scancel)

installed() {
    local b
    for b in "${binaries[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
    done
}

install() {
    installed && return 0
    [ "$(id -u)" = 0 ] || unavailable "Slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null || unavailable "Slurm is not installed and there is no apt-get"
    say "installing munge slurmctld slurmd slurm-client (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null; }; then
        unavailable "apt-get could not install Slurm"
    fi
    installed || unavailable "Slurm's binaries are still missing after apt-get"
}

# A TCP port on 127.0.0.1 that nothing listens on, from a range away from
# Slurm's defaults (6817/6818), so a real installation is left alone.
free_port() {
    local port tries
    for tries in $(seq 50); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

# The pid in FILE if that process is still the daemon NAME (a pid file left
# behind may name a process that has since been reused).
daemon_pid() {
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 1
    pid=$(head -c 32 "$file" | tr -dc 0-9)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && alive "$pid" && echo "$pid"
}

# Whether PID runs; a zombie does not (where nobody reaps the daemons, their
# exited processes linger as zombies).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

logs() {
    local log
    for log in "$dir"/munged.log "$dir"/slurmctld.log "$dir"/slurmd.log; do
        [ -f "$log" ] && { say "--- $log"; tail -n 20 "$log" >&2; }
    done
    return 0
}

start() {
    install
    [ "$(id -u)" = 0 ] || unavailable "the local cluster runs its daemons as root"
    mkdir -p "$dir"
    chmod 0700 "$dir"
    [ -L "$dir" ] && die "$dir is a symbolic link; give a directory of its own"
    if daemon_pid "$dir/slurmctld.pid" slurmctld >/dev/null; then
        die "a cluster is already running in $dir; stop it first"
    fi
    mkdir -p "$dir/state" "$dir/spool"

    # munge authenticates every Slurm message: a fresh key, a socket of our own.
    head -c 1024 /dev/urandom >"$dir/munge.key"
    chmod 0600 "$dir/munge.key"
    munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munged.seed" || { logs; die "munged did not start"; }

    local host cpus memory ctld_port slurmd_port
    host=$(hostname -s)
    cpus=$(nproc)
    # Most of the memory, in MB, so that jobs asking for --mem can run.
    memory=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((ctld_port + 1))
    cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: one node, this machine.
ClusterName=upatlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups and no systemd: processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# A job whose afterok dependency failed is cancelled, not left pending.
SchedulerParameters=kill_invalid_depend
ReturnToService=2
# A job that does not ask for memory gets its CPUs' share, not the node's.
DefMemPerCPU=$((memory / cpus))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" || { logs; stop; die "slurmctld did not start"; }
    slurmd -f "$SLURM_CONF" || { logs; stop; die "slurmd did not start"; }

    local state
    for _ in $(seq 60); do
        state=$(sinfo --noheader --format=%t 2>/dev/null || true)
        if [ "$state" = idle ]; then
            say "cluster up in $dir: node $host, $cpus CPUs, ports $ctld_port/$slurmd_port"
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    logs
    stop
    die "the node did not become idle in 30 s (state: ${state:-none})"
}

stop() {
    export SLURM_CONF="$dir/slurm.conf"
    if daemon_pid "$dir/slurmctld.pid" slurmctld >/dev/null; then
        scancel --full --user="$(id -un)" 2>/dev/null || true
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(daemon_pid "$dir/$name.pid" "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            say "$name ($pid) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    return 0
}

command=${1:-}
case "$command" in
    install) install ;;
    start | stop)
        [ $# = 2 ] || die "usage: $0 $command DIR"
        dir=$(realpath -m -- "$2")
        "$command"
        ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
