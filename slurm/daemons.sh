# shellcheck shell=bash
# Daemon bookkeeping shared by start_cluster.sh and stop_cluster.sh (sourced, not run).
#
# A daemon NAME is started with `spawn NAME CMD...`; its pid goes to $DIR/pids/NAME and its
# stdout/stderr to $DIR/log/NAME.out. A pid only counts as NAME while /proc/PID/comm says NAME
# (pids get reused), so `spawn` returns only once the launchers in front of the daemon (setsid,
# setpriv) have exec'd it: before that, comm names the launcher, and a check in that window
# called a daemon that was still starting dead (seen on a loaded CI machine: "slurmctld exited
# while waiting for slurmctld to answer" with slurmctld running).

live() {  # live PID: the process exists and is not a zombie
    [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

running() {  # running PID NAME: PID is live and runs the program NAME
    live "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

alive() {  # alive NAME: the pid recorded in $DIR/pids/NAME runs NAME
    local f="$DIR/pids/$1"
    [ -s "$f" ] && running "$(cat "$f")" "$1"
}

spawn() {  # spawn NAME CMD...: start CMD in its own session, record its pid as NAME, wait for the exec
    local name=$1 pid deadline; shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/pids/$name"
    deadline=$((SECONDS + ${TIMEOUT:-60}))
    # until it runs NAME, has exited (alive then says so), or the start timeout is spent
    while live "$pid" && ! running "$pid" "$name" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.02
    done
    if live "$pid" && ! running "$pid" "$name"; then
        # still in its launcher: stop it, or it would exec later, unrecorded, holding the ports
        kill -KILL "$pid" 2>/dev/null
        echo "[daemons] $name: its launcher did not exec it within ${TIMEOUT:-60} s; stopped it" >&2
    fi
}
# setsid runs as a background job of a non-interactive shell, so it is not a process-group
# leader and execs in place: $! is the daemon itself. Own session = Ctrl-C in the caller's
# terminal does not reach it; stop_cluster.sh does.
