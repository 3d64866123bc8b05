#!/usr/bin/env bash
# Stops exactly what start_services.sh / start_vllm_services.sh started, as recorded in
# RUN_DIR (run/): each server and every process it started (worker subprocesses, a vLLM
# server's engine processes), never anything found by name.
#
#   scripts/stop_services.sh            every service in run/
#   scripts/stop_services.sh tts asr    only those
#
# A service's processes are: its PID (run/NAME.pid, checked against the start time in
# run/NAME.meta so a reused PID is never signalled), the processes whose environment carries
# its FAC_SERVICE_ID token (inherited by everything it starts, also after a crash reparents
# them), its descendants and the members of its process group (it leads its own session).
# SIGTERM goes to the server first: it drains (in-flight turns and requests finish, up to its
# --drain-timeout, 30 s by default), then stops its own workers and exits. STOP_TIMEOUT (45 s)
# after SIGTERM a server still running is killed (SIGKILL, with all its processes); processes
# left once it is gone get SIGTERM, then SIGKILL after CHILD_TIMEOUT (5 s). All services are
# stopped at once. RUN_DIR as for start_services.sh.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUN_DIR="${RUN_DIR:-run}"
STOP_TIMEOUT="${STOP_TIMEOUT:-45}"
CHILD_TIMEOUT="${CHILD_TIMEOUT:-5}"

meta_get() {  # name, key
    [[ -f $RUN_DIR/$1.meta ]] || return 0
    sed -n "s/^$2=//p" "$RUN_DIR/$1.meta" | head -1
}

start_time_of() {  # pid -> /proc/PID/stat field 22
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    awk '{print $20}' <<<"$stat"
}

leader_ok() {  # name -> its recorded PID is alive and is the process we started
    local pid want
    pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
    [[ -n $(alive_of "$pid") ]] || return 1
    want=$(meta_get "$1" start_time)
    [[ -z $want || $(start_time_of "$pid") == "$want" ]]
}

descendants() {  # pid -> every descendant's PID (one `ps` snapshot of the PPid links)
    local -A children=()
    local pid ppid
    while read -r pid ppid; do
        children[$ppid]+=" $pid"
    done < <(ps -e -o pid=,ppid=)
    local queue=("$1") next
    while ((${#queue[@]})); do
        next=${queue[0]}; queue=("${queue[@]:1}")
        for pid in ${children[$next]:-}; do
            echo "$pid"
            queue+=("$pid")
        done
    done
}

members() {  # name -> PIDs of its processes that are still there (the leader included)
    local name=$1 id pid pgid
    id=$(meta_get "$name" service_id)
    pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null)
    pgid=$(meta_get "$name" pgid)
    {
        if [[ -n $id ]]; then  # the token is one whole NUL-separated environment entry
            grep -lzxF "FAC_SERVICE_ID=$id" /proc/[0-9]*/environ 2>/dev/null | sed -E 's#/proc/([0-9]+)/environ#\1#'
        fi
        if leader_ok "$name"; then
            echo "$pid"
            descendants "$pid"
            [[ -n $pgid ]] && ps -o pid= --sid "$pgid" 2>/dev/null  # its session (setsid)
        fi
    } | tr -d ' ' | grep -vx -e "$$" -e '' | sort -un
}

alive_of() {  # pids... -> those still alive (not zombies: exited, waiting to be reaped)
    local pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        [[ ${stat:0:1} != Z ]] && echo "$pid"
    done
    return 0
}

current() {  # name -> its processes still alive: those found before SIGTERM and any found now
    local -a before now
    read -r -a before <<<"${procs[$1]}"
    mapfile -t now < <(members "$1")
    alive_of "${before[@]}" "${now[@]}" | sort -un
}

shopt -s nullglob
names=("$@")
if ((${#names[@]} == 0)); then
    for pidfile in "$RUN_DIR"/*.pid; do names+=("$(basename "$pidfile" .pid)"); done
fi
if ((${#names[@]} == 0)); then
    echo "[stop] nothing recorded in $RUN_DIR/"
    exit 0
fi

declare -A procs=() leaders=()
for name in "${names[@]}"; do
    if [[ ! -f $RUN_DIR/$name.pid ]]; then
        echo "[stop] $name: no $RUN_DIR/$name.pid"
        continue
    fi
    procs[$name]=$(members "$name" | tr '\n' ' ')
    if leader_ok "$name"; then
        leaders[$name]=$(cat "$RUN_DIR/$name.pid")
        kill -TERM "${leaders[$name]}" 2>/dev/null
        echo "[stop] $name: SIGTERM to pid ${leaders[$name]} (draining; $(wc -w <<<"${procs[$name]}") processes)"
    elif [[ -n ${procs[$name]// /} ]]; then
        echo "[stop] $name: server pid $(cat "$RUN_DIR/$name.pid") is gone; its processes remain: ${procs[$name]}"
    else
        echo "[stop] $name was not running (stale pid $(cat "$RUN_DIR/$name.pid"))"
    fi
done

# Each server drains and stops its own workers; wait for the servers, up to STOP_TIMEOUT.
deadline=$((SECONDS + STOP_TIMEOUT))
while ((SECONDS < deadline)); do
    waiting=0
    for name in "${!leaders[@]}"; do
        [[ -n $(alive_of "${leaders[$name]}") ]] && waiting=1
    done
    ((waiting)) || break
    sleep 0.5
done

status=0
for name in "${!procs[@]}"; do
    leader=${leaders[$name]:-}
    if [[ -n $leader && -n $(alive_of "$leader") ]]; then
        echo "[stop] $name (pid $leader) did not exit in $STOP_TIMEOUT s; SIGKILL to it and its processes"
        mapfile -t left < <(current "$name")
        ((${#left[@]})) && kill -KILL "${left[@]}" 2>/dev/null
    fi
    # Processes the server left behind (or all of them, after a crash): SIGTERM, then SIGKILL.
    mapfile -t left < <(current "$name")
    if ((${#left[@]})); then
        echo "[stop] $name: ${#left[@]} processes left (${left[*]}): SIGTERM"
        kill -TERM "${left[@]}" 2>/dev/null
        child_deadline=$((SECONDS + CHILD_TIMEOUT))
        while ((SECONDS < child_deadline)) && [[ -n $(alive_of "${left[@]}") ]]; do sleep 0.2; done
        mapfile -t left < <(alive_of "${left[@]}")
        if ((${#left[@]})); then
            echo "[stop] $name: SIGKILL to ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null
        fi
    fi
    sleep 0.1
    mapfile -t left < <(current "$name")
    if ((${#left[@]})); then
        echo "[stop] $name: processes still alive: ${left[*]}" >&2
        status=1
        continue
    fi
    [[ -n $leader ]] && echo "[stop] $name stopped (pid $leader)"
    rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.meta"
done
exit $status
