#!/usr/bin/env bash
# Stop a cluster started by slurm/start_cluster.sh DIR.
#
# Usage: slurm/stop_cluster.sh DIR
#
# Cancels what is still queued, then stops the daemons recorded in DIR/pids in the reverse
# order of starting (slurmd, slurmctld, slurmdbd, mariadbd, munged): SIGTERM, wait up to
# STOP_TIMEOUT_S (default 30) seconds each, then SIGKILL. A pid is only signalled while it
# still runs the program it was recorded for (pids get reused). Succeeds when nothing runs,
# so it is safe to call twice or on a half-started cluster. DIR itself is kept (logs).
set -uo pipefail

DIR=${1:?usage: stop_cluster.sh DIR}
[ -d "$DIR/pids" ] || { echo "[stop_cluster] nothing to stop in $DIR (no pids dir)" >&2; exit 0; }
TIMEOUT=${STOP_TIMEOUT_S:-30}

# shellcheck source=slurm/daemons.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/daemons.sh"  # running

# Cancel leftover jobs while slurmctld still answers, so their slurmstepd processes end too.
if [ -s "$DIR/pids/slurmctld" ] && running "$(cat "$DIR/pids/slurmctld")" slurmctld; then
    export SLURM_CONF="$DIR/slurm.conf"
    jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | xargs)
    if [ -n "$jobs" ]; then
        echo "[stop_cluster] cancelling jobs: $jobs" >&2
        # shellcheck disable=SC2086
        timeout 5 scancel $jobs 2>/dev/null
        for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
    f="$DIR/pids/$name"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if running "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null
        deadline=$((SECONDS + TIMEOUT))
        while running "$pid" "$name" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if running "$pid" "$name"; then
            echo "[stop_cluster] $name (pid $pid) ignored SIGTERM for ${TIMEOUT}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null
            for _ in $(seq 100); do running "$pid" "$name" || break; sleep 0.1; done
        fi
        echo "[stop_cluster] stopped $name (pid $pid)" >&2
    fi
    rm -f "$f"
done
exit 0
