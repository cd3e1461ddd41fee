#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, for tests and local trials.
#
# Usage: slurm/start_cluster.sh [--no-accounting] [--no-install] [--gpus N] [--cpus N] [--mem-mb N] [DIR]
#
#   DIR               where config, state, logs and pids go (default: a new `mktemp -d`)
#   --no-accounting   skip MariaDB + slurmdbd (faster; but then `sacct` fails, submitit job
#                     states stay UNKNOWN and a cancelled job makes submitit's result() hang)
#   --no-install      never call apt-get; fail (exit 3) if the daemons are missing
#   --gpus N          fake GPUs to declare as GRES (default 2; char devices like /dev/null)
#   --cpus N          pretend the node has N CPUs (SlurmdParameters=config_overrides), so
#   --mem-mb N        realistic requests such as cpus_per_task=10 fit on a small machine
#
# Environment: SLURM_PORT_BASE gives slurmctld, slurmd, slurmdbd and MariaDB the ports
# BASE..BASE+3 (a busy one is an error); unset, 6817..6820 are used, or the first free block of
# 4 above them when they are taken. START_TIMEOUT_S (default 60) bounds each wait.
#
# On success stdout carries only `export ...` lines (also written to DIR/env.sh), so
#     eval "$(slurm/start_cluster.sh)"
# works; progress goes to stderr. Stop with slurm/stop_cluster.sh DIR.
# Exit codes: 0 running, 1 a daemon failed to start (log tails printed, everything
# started here is stopped again), 2 bad usage, 3 prerequisites missing (not root, no apt,
# packages not installable) -- tests skip on 3 and fail on 1 (a busy port is 1: loud).
#
# Why it looks like this (measured facts; slurm/README.md has the details):
# munged must run as the munge user, GPU GRES need File= char devices, CR_Core (not
# CR_Core_Memory), cred_expire=10 + sched_interval=2 so requeues restart in seconds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACCOUNTING=1
INSTALL=1
GPUS=2
FAKE_CPUS=""
FAKE_MEM=""
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-accounting) ACCOUNTING=0 ;;
        --no-install) INSTALL=0 ;;
        --gpus) GPUS=${2:?--gpus needs a number}; shift ;;
        --cpus) FAKE_CPUS=${2:?--cpus needs a number}; shift ;;
        --mem-mb) FAKE_MEM=${2:?--mem-mb needs a number}; shift ;;
        -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
        -*) echo "start_cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [ -z "$DIR" ] || { echo "start_cluster.sh: only one DIR allowed" >&2; exit 2; }; DIR=$1 ;;
    esac
    shift
done
PORT_BASE=${SLURM_PORT_BASE:-6817}
TIMEOUT=${START_TIMEOUT_S:-60}

log() { echo "[start_cluster] $*" >&2; }
die() { echo "[start_cluster] ERROR: $*" >&2; exit 1; }
prereq() { echo "[start_cluster] PREREQUISITE MISSING: $*" >&2; exit 3; }

# ---------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || prereq "must run as root (daemons, mknod, apt-get); running as $(id -un)"

PKGS=(slurm-wlm munge)
BINS=(slurmctld slurmd munged sinfo)
if [ "$ACCOUNTING" = 1 ]; then
    PKGS+=(slurmdbd mariadb-server)
    BINS+=(slurmdbd mariadbd mariadb-install-db)
fi
missing_bins() { local b; for b in "${BINS[@]}"; do command -v "$b" >/dev/null || echo "$b"; done; }

install_packages() {
    command -v apt-get >/dev/null || prereq "missing $(missing_bins | xargs) and no apt-get to install ${PKGS[*]}"
    # Keep apt from starting the packages' own services (they would take our ports and
    # /run/munge). Docker-style images already have this file; add it only for the install.
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added=1
    fi
    log "installing ${PKGS[*]} with apt-get (first time only)"
    local ok=0
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PKGS[@]}" >"$DIR/log/apt.log" 2>&1; then
        ok=1
    else
        log "apt-get install failed; running apt-get update and retrying"
        if DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$DIR/log/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PKGS[@]}" >>"$DIR/log/apt.log" 2>&1; then
            ok=1
        fi
    fi
    [ "$added" = 0 ] || rm -f "$policy"
    [ "$ok" = 1 ] || { tail -n 15 "$DIR/log/apt.log" >&2; prereq "apt-get could not install ${PKGS[*]} (log: $DIR/log/apt.log)"; }
}

if [ -z "$DIR" ]; then DIR=$(mktemp -d -t slurm-cluster-XXXXXX); fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR"/{state,spool,log,pids,fakegpu}
# Unix socket paths (MariaDB's DIR/mysqld.sock) are limited to 107 bytes.
if [ ${#DIR} -gt 90 ]; then die "DIR path is too long for a Unix socket (${#DIR} > 90 chars): $DIR"; fi

if [ -n "$(missing_bins)" ]; then
    [ "$INSTALL" = 1 ] || prereq "missing $(missing_bins | xargs) and --no-install given"
    install_packages
    [ -z "$(missing_bins)" ] || prereq "still missing after install: $(missing_bins | xargs)"
fi

export SLURM_CONF="$DIR/slurm.conf"

# ---------------------------------------------------------------- helpers
# running, alive, spawn
# shellcheck source=slurm/daemons.sh
. "$HERE/daemons.sh"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_logs() {  # the end of each daemon's log and stderr (.out), in start order
    local name f log_file
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        log_file="$DIR/log/$name.log"
        if [ "$name" = mariadbd ]; then log_file="$DIR/log/mysqld.err"; fi
        for f in "$log_file" "$DIR/log/$name.out"; do  # .out: stderr (fatal errors, crashes)
            [ -s "$f" ] || continue
            echo "----- last lines of $f" >&2
            tail -n 8 "$f" >&2
        done
    done
}

fail() {  # fail MESSAGE: say why, show the logs, stop what was started, exit 1
    echo "[start_cluster] ERROR: $*" >&2
    show_logs
    "$HERE/stop_cluster.sh" "$DIR" >&2 || true
    echo "[start_cluster] logs kept in $DIR/log" >&2
    exit 1
}

wait_for() {  # wait_for WHAT NAME COMMAND...: poll COMMAND until it succeeds; NAME must stay alive
    local what=$1 name=$2 deadline=$((SECONDS + TIMEOUT)); shift 2
    until "$@" >/dev/null 2>&1; do
        if [ -n "$name" ] && ! alive "$name"; then fail "$name exited while waiting for $what"; fi
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

print_env() {
    {
        echo "export SLURM_CONF=$DIR/slurm.conf"
        echo "export SLURM_CLUSTER_DIR=$DIR"
    } | tee "$DIR/env.sh"
}

# ---------------------------------------------------------------- already running?
if alive slurmctld && alive slurmd && [ "$(sinfo -h -o %T 2>/dev/null | head -n1)" = idle ]; then
    log "cluster in $DIR is already running"
    print_env
    exit 0
fi
if ls "$DIR"/pids/* >/dev/null 2>&1; then
    log "found a half-running cluster in $DIR; stopping it first"
    "$HERE/stop_cluster.sh" "$DIR" >&2
fi
ports_free() {  # ports_free BASE: BASE..BASE+3 all free
    local p
    for p in "$1" $(($1 + 1)) $(($1 + 2)) $(($1 + 3)); do
        if port_busy "$p"; then return 1; fi
    done
}
if [ -n "${SLURM_PORT_BASE:-}" ]; then   # asked for: those ports or nothing
    ports_free "$PORT_BASE" || die "a port of $PORT_BASE..$((PORT_BASE + 3)) is in use (another cluster? stop it with stop_cluster.sh DIR, or set another SLURM_PORT_BASE)"
else   # default 6817.., else the first free block of 4 above it
    base=$PORT_BASE
    until ports_free "$base"; do
        base=$((base + 4))
        [ "$base" -lt $((PORT_BASE + 400)) ] || die "no 4 free ports in $PORT_BASE..$((PORT_BASE + 400))"
    done
    [ "$base" = "$PORT_BASE" ] || log "ports $PORT_BASE..$((PORT_BASE + 3)) are taken; using $base..$((base + 3))"
    PORT_BASE=$base
fi
: >"$DIR/log/starting"  # marks a fresh start; removed below

# ---------------------------------------------------------------- config
HOST=$(hostname -s)
# the machine's cores: `nproc` follows OMP_NUM_THREADS (1 there gave a 1-CPU node that a
# 2-CPU profile never fits: jobs pended forever)
NCPU=$(python3 -c 'import os; print(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())' 2>/dev/null \
       || grep -c '^processor' /proc/cpuinfo)
REALMEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[ -n "$REALMEM" ] || die "could not read RealMemory from 'slurmd -C'"
NODE_CPUS=${FAKE_CPUS:-$NCPU}
NODE_MEM=${FAKE_MEM:-$REALMEM}

rm -f "$DIR"/fakegpu/nvidia*
for ((i = 0; i < GPUS; i++)); do mknod "$DIR/fakegpu/nvidia$i" c 1 3; done

{
    cat <<EOF
# Single-node test cluster written by slurm/start_cluster.sh
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
GresTypes=gpu
EOF
    if [ "$ACCOUNTING" = 1 ]; then
        cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT_BASE + 2))
AccountingStorageTRES=gres/gpu
EOF
    else
        echo "AccountingStorageType=accounting_storage/none"
    fi
    if [ -n "$FAKE_CPUS$FAKE_MEM" ]; then echo "SlurmdParameters=config_overrides"; fi
    GRES_SPEC=""
    if [ "$GPUS" -gt 0 ]; then GRES_SPEC=" Gres=gpu:$GPUS"; fi
    echo "NodeName=$HOST CPUs=$NODE_CPUS RealMemory=$NODE_MEM$GRES_SPEC State=UNKNOWN"
    echo "PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
} >"$DIR/slurm.conf"

{
    echo "AutoDetect=off"
    if [ "$GPUS" -gt 0 ]; then echo "NodeName=$HOST Name=gpu File=$DIR/fakegpu/nvidia[0-$((GPUS - 1))]"; fi
} >"$DIR/gres.conf"

# ---------------------------------------------------------------- munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "reusing the munged already running on this machine (not ours: stop_cluster.sh leaves it)"
else
    [ -s /etc/munge/munge.key ] || { mungekey --create >&2 && chown munge:munge /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    # munged refuses to run as root ("PRNG seed dir is insecure"): run it as munge.
    spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    wait_for "munge to answer" munged sh -c 'munge -n | unmunge'
fi

# ---------------------------------------------------------------- accounting
if [ "$ACCOUNTING" = 1 ]; then
    DBPORT=$((PORT_BASE + 3))
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root \
            --auth-root-authentication-method=normal >"$DIR/log/mariadb-install.log" 2>&1 ||
            { tail -n 8 "$DIR/log/mariadb-install.log" >&2; fail "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"; }
    fi
    spawn mariadbd mariadbd --no-defaults --datadir="$DIR/mysql" --user=root --socket="$DIR/mysqld.sock" \
        --bind-address=127.0.0.1 --port="$DBPORT" --pid-file="$DIR/mysqld.pid" \
        --log-error="$DIR/log/mysqld.err" --skip-name-resolve
    wait_for "MariaDB to answer" mariadbd mariadb -S "$DIR/mysqld.sock" -u root -e 'select 1'
    mariadb -S "$DIR/mysqld.sock" -u root -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail "could not create the slurm DB user"
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT_BASE + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
    chown root:root "$DIR/slurmdbd.conf"
    chmod 600 "$DIR/slurmdbd.conf"
    spawn slurmdbd slurmdbd -D
    wait_for "slurmdbd to listen on port $((PORT_BASE + 2))" slurmdbd port_busy $((PORT_BASE + 2))
fi

# ---------------------------------------------------------------- slurmctld + slurmd
(cd "$DIR" && spawn slurmctld slurmctld -D -i)
wait_for "slurmctld to answer" slurmctld scontrol ping
spawn slurmd slurmd -D
# A drain reason is kept in the state dir across restarts: clear it (fresh dirs have none).
node_idle() { [ "$(sinfo -h -o %T | head -n1)" = idle ]; }
deadline=$((SECONDS + TIMEOUT))
until node_idle 2>/dev/null; do
    alive slurmctld || fail "slurmctld exited while waiting for the node"
    alive slurmd || fail "slurmd exited while waiting for the node"
    state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
    case "$state" in drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;; esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node not idle after ${TIMEOUT}s (state: '${state}'; $(sinfo -h -o '%E' 2>/dev/null | head -n1))"
    sleep 0.2
done
rm -f "$DIR/log/starting"
log "cluster up in $DIR: node $HOST, ${NODE_CPUS} CPUs, ${GPUS} fake GPUs, accounting=$ACCOUNTING"
print_env
