# Helpers shared by hack/control-plane.sh, hack/node.sh, hack/image.sh and hack/deps.sh:
# sourced, not run. The caller sets LOG_TAG (the `[tag]` of its log lines)
# before sourcing, and DIR (its scratch directory) before using the process
# helpers. Each process helper touches only the pids recorded in DIR/NAME.pid,
# and only while that process still has a path under DIR on its command line.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
	echo "usage: $0 up|down|env [--dir DIR]" >&2
	exit 2
}

# parse_command DEFAULT_DIR ARGS...: set `cmd` and `DIR` (absolute) from `up|down|env [--dir DIR]`.
parse_command() {
	DIR="$1"
	shift
	cmd="${1:-}"
	[[ -n "$cmd" ]] || usage
	shift
	while (($#)); do
		case "$1" in
		--dir)
			[[ $# -ge 2 ]] || usage
			DIR="$2"
			shift 2
			;;
		--dir=*)
			DIR="${1#--dir=}"
			shift
			;;
		*) usage ;;
		esac
	done
	DIR="$(realpath -m "$DIR")"
}

# Running, not just a zombie waiting for its (re)parent to reap it.
alive() {
	[[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[[ "${stat:0:1}" != Z ]]
}

# Is PID still the process this DIR started (guards against pid reuse)?
ours() {
	alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

# start NAME CMD...: run CMD detached (own session, no tty, output to DIR/NAME.log), record its pid.
start() {
	local name="$1"
	shift
	setsid "$@" </dev/null >"$DIR/$name.log" 2>&1 &
	echo $! >"$DIR/$name.pid"
}

show_log() { # NAME: the error lines (klog E/F, logfmt, JSON) of DIR/NAME.log, else its tail
	local file="$DIR/$1.log"
	log "last lines of $file:"
	{ grep -E '^[EF][0-9]{4} |level=(error|fatal)|"level":"(error|fatal|panic)"' "$file" || tail -n 25 "$file"; } |
		tail -n 25 >&2 || true
}

# wait_for NAME SECONDS CMD...: poll CMD every POLL_SECONDS (default 0.2) until it succeeds;
# fail, showing NAME's log, if NAME exits or time runs out.
wait_for() {
	local name="$1" timeout="$2"
	shift 2
	local deadline=$((SECONDS + timeout)) pid
	pid="$(cat "$DIR/$name.pid")"
	until "$@" >/dev/null 2>&1; do
		if ! alive "$pid"; then
			log "$name exited"
			show_log "$name"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "$name not ready after ${timeout}s"
			show_log "$name"
			return 1
		fi
		sleep "${POLL_SECONDS:-0.2}"
	done
}

# stop_pid NAME: TERM the recorded pid, KILL after STOP_SECONDS (default 10), only if it is still ours.
stop_pid() {
	local name="$1" pid
	[[ -f "$DIR/$name.pid" ]] || return 0
	pid="$(cat "$DIR/$name.pid")"
	if ours "$pid"; then
		local t0=$EPOCHREALTIME
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + ${STOP_SECONDS:-10}))
		while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		if alive "$pid"; then
			log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			while alive "$pid"; do sleep 0.1; done
		fi
		log "stopped $name (pid $pid) in $(elapsed "$t0")s"
	fi
	rm -f "$DIR/$name.pid"
}

# free_ports N: N distinct free TCP ports on 127.0.0.1 (held together while chosen, so distinct).
free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# find_tool NAME: the path of a Go-built tool ($KUBEBUILDER_ASSETS, then TOOLS_BIN, then PATH), or nothing.
find_tool() {
	if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$1" ]]; then
		echo "$KUBEBUILDER_ASSETS/$1"
	elif [[ -x "$TOOLS_BIN/$1" ]]; then
		echo "$TOOLS_BIN/$1"
	else
		command -v "$1" || true
	fi
}

b64() { base64 -w0 <"$1"; }
