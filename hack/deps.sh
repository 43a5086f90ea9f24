#!/usr/bin/env bash
# Install the Debian packages `make test` needs that are missing (apt-get, as root), so that
# `make test` and `.ci/run` set up a fresh machine the same way. With --node, also what the
# real-node end-to-end suite needs (tests/e2e/test_node.py, docs/control-plane.md).
# Nothing is installed when everything is there; not root or no apt-get: it names what is missing.
set -euo pipefail

LOG_TAG=deps
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

node=0
case "${1:-}" in
"") ;;
--node) node=1 ;;
*)
	log "usage: $0 [--node]"
	exit 2
	;;
esac

need=()
# want PACKAGE... -- CHECK...: the packages when the check fails.
want() {
	local packages=()
	while [[ "$1" != -- ]]; do
		packages+=("$1")
		shift
	done
	shift
	"$@" >/dev/null 2>&1 || need+=("${packages[@]}")
}

want make -- command -v make
want python3-venv -- python3 -c 'import ensurepip, venv'
want openssl -- command -v openssl          # the control plane's certificates
want util-linux -- command -v nsenter       # nsenter/unshare: the host-namespace tests
want git -- command -v git                  # Go modules
want systemd -- command -v systemd-analyze  # `systemd-analyze verify` of the agent's unit
want chromium -- command -v chromium        # headless, driven by the dashboard's browser tests
if ((node)); then
	# The kubelet's container runtime and CNI plugins, Docker's engine and mmdebstrap to build the
	# images with no registry, gcc for the static pause binary, iproute2 and curl for hack/node.sh.
	want containerd -- command -v containerd
	want runc -- command -v runc
	want containernetworking-plugins -- test -x /usr/lib/cni/bridge
	want docker.io -- command -v dockerd
	want mmdebstrap -- command -v mmdebstrap
	want gcc libc6-dev -- command -v cc
	want iproute2 -- command -v ip
	want curl -- command -v curl
fi

((${#need[@]})) || exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
	log "missing Debian packages: ${need[*]}"
	log "install them as root: apt-get install ${need[*]}   (E2E_NODE=0 leaves the node's out)"
	exit 1
fi
log "installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
