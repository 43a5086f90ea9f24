#!/usr/bin/env bash
# A real Kubernetes node for the end-to-end tests, on top of
# hack/control-plane.sh: kubelet, kube-controller-manager and kube-scheduler
# (built by `hack/build-tools.sh --node` from the same Kubernetes release as
# kube-apiserver), containerd with its CRI plugin and runc from Debian, CNI
# plugins from Debian (a bridge network whose addresses exist only inside the
# pods' network namespaces), a pause image built here, and the discoverd,
# pause and etcd images built with hack/image.sh and loaded into containerd.
#
#   hack/node.sh up   [--dir DIR]  start; print export lines on stdout
#   hack/node.sh env  [--dir DIR]  print the export lines again
#   hack/node.sh down [--dir DIR]  stop exactly the pids started, remove
#                                  containers, mounts, cgroups, the bridge, DIR
#
#   eval "$(hack/node.sh up)"; kubectl get nodes; hack/node.sh down
#
# DIR defaults to ${TMPDIR:-/tmp}/discoverd-node (keep it short: containerd's
# socket lives there). Environment: DISCOVERD_NODE_NAME (default
# discoverd-node), IMAGE (the discoverd image, default discoverd:dev),
# BASE_IMAGE (default local: a Debian base made here, see hack/image.sh),
# DISCOVERD_NODE_TIMEOUT (seconds to wait for Ready, default 120).
#
# Needs root, cgroups (v1 or v2) and Debian's containerd, runc,
# containernetworking-plugins, docker.io (to build the images), mmdebstrap and
# gcc (see docs/control-plane.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${DISCOVERD_TOOLS_DIR:-$HOME/.cache/discoverd/tools}/bin"
NODE_NAME="${DISCOVERD_NODE_NAME:-discoverd-node}"
IMAGE="${IMAGE:-discoverd:dev}"
PAUSE_IMAGE="localhost/discoverd/pause:3.10"
ETCD_IMAGE="localhost/discoverd/etcd:local"
READY_TIMEOUT="${DISCOVERD_NODE_TIMEOUT:-120}"
MARKER=".discoverd-node"
CNI_BIN="${CNI_BIN:-/usr/lib/cni}"

LOG_TAG=node
POLL_SECONDS=0.5 # the checks run kubectl and ctr
STOP_SECONDS=15 # before stop_pid sends SIGKILL
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"
parse_command "${TMPDIR:-/tmp}/discoverd-node" "$@"
CP_DIR="$DIR/cp"
CTR="$DIR/containerd"
SOCK="$CTR/containerd.sock"
# The pods' cgroups go under this parent, in every hierarchy (kubelet's cgroupRoot).
CGROUP_ROOT="/discoverd-node-$(printf '%s' "$DIR" | sha256sum | cut -c1-8)"
# The CNI bridge in the host's network namespace: no address on it, so the
# pods' addresses exist only inside their own network namespaces.
BRIDGE="dn$(printf '%s' "$DIR" | sha256sum | cut -c1-8)"

# --- processes: lib.sh (as hack/control-plane.sh) ------------------------------------
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# --- pieces ------------------------------------------------------------------------

# A client certificate for the kubelet (the Node authorizer's system:node:<name>).
make_kubelet_pki() {
	local pki="$DIR/pki" ca="$CP_DIR/pki"
	mkdir -p "$pki"
	(
		cd "$pki"
		umask 077
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out kubelet.key 2>/dev/null
		openssl req -new -key kubelet.key -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out kubelet.csr 2>/dev/null
		printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=clientAuth" >kubelet.ext
		openssl x509 -req -in kubelet.csr -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
			-CAserial "$pki/ca.srl" -days 3650 -extfile kubelet.ext -out kubelet.crt 2>/dev/null
		rm -f kubelet.csr kubelet.ext ca.srl
	) || die "openssl failed to make the kubelet's certificate"
	local server
	server="$(sed -n 's/^export DISCOVERD_KUBE_SERVER=//p' "$CP_DIR/env")"
	cat >"$DIR/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: discoverd-test
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$ca/ca.crt")
users:
- name: kubelet
  user:
    client-certificate-data: $(b64 "$pki/kubelet.crt")
    client-key-data: $(b64 "$pki/kubelet.key")
contexts:
- name: kubelet
  context: {cluster: discoverd-test, user: kubelet}
current-context: kubelet
EOF
	chmod 600 "$DIR/kubelet.kubeconfig"
}

write_containerd_config() {
	mkdir -p "$CTR/root" "$CTR/state" "$DIR/cni/net.d" "$DIR/cni/ipam"
	cat >"$CTR/config.toml" <<EOF
# containerd for hack/node.sh: its own root, state and socket; CRI for the kubelet.
version = 2
root = "$CTR/root"
state = "$CTR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$CTR/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built here (hack/pause.c) and imported below: no registry is reachable.
  sandbox_image = "$PAUSE_IMAGE"
  # The kubelet lowers the sandbox's OOM score, which needs CAP_SYS_RESOURCE;
  # without it runc fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, so down removes them with it.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$DIR/cni/net.d"
EOF
	# The bridge has no address (isGateway false, no masquerade): pods reach
	# each other on it, nothing else, and the host's own routes stay as they are.
	cat >"$DIR/cni/net.d/10-discoverd.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "discoverd-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "10.244.0.0/24"}]]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

write_kubelet_config() { # PORT HEALTHZ_PORT
	mkdir -p "$DIR/kubelet" "$DIR/pod-logs"
	cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines have cgroup v1 and no systemd; kubelets from 1.35 on refuse
# cgroup v1 unless told (KEP-5573).
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$SOCK
address: 127.0.0.1
port: $1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $2
podLogsDir: $DIR/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CP_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
failSwapOn: false
resolvConf: /etc/resolv.conf
# Images cannot be pulled again here: never garbage-collect them, never evict
# for the disk of a shared machine.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
EOF
}

build_images() {
	mkdir -p "$DIR/images"
	local img=(bash "$REPO/hack/image.sh")
	"${img[@]}" pause --save "$DIR/images/pause.tar"
	"${img[@]}" etcd --save "$DIR/images/etcd.tar"
	BASE_IMAGE="${BASE_IMAGE:-local}" "${img[@]}" build --tag "$IMAGE" --save "$DIR/images/discoverd.tar"
}

import_images() {
	local tar t0
	for tar in "$DIR"/images/*.tar; do
		t0=$SECONDS
		ctr_ images import "$tar" >/dev/null || die "ctr images import $tar failed"
		log "imported $(basename "$tar") into containerd in $((SECONDS - t0))s"
	done
	rm -rf "$DIR/images"
}

# --- down ----------------------------------------------------------------------------
# Every task and container in containerd's k8s.io namespace, killed and removed.
remove_containers() {
	[[ -S "$SOCK" ]] && ours "$(cat "$DIR/containerd.pid" 2>/dev/null || echo 0)" || return 0
	local id
	for id in $(ctr_ tasks ls -q 2>/dev/null); do
		ctr_ tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
	done
	for id in $(ctr_ tasks ls -q 2>/dev/null); do
		local deadline=$((SECONDS + 10))
		until ctr_ tasks delete "$id" >/dev/null 2>&1 || ((SECONDS >= deadline)); do sleep 0.2; done
	done
	for id in $(ctr_ containers ls -q 2>/dev/null); do
		ctr_ containers delete "$id" >/dev/null 2>&1 || true
	done
}

# containerd-shim processes serving this containerd (they outlive it by design).
stop_shims() {
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" 2>/dev/null || true); do
		if ours "$pid"; then
			kill -KILL "$pid" 2>/dev/null || true
			log "killed leftover shim (pid $pid)"
		fi
	done
}

unmount_all() { # every mount point under DIR, deepest first
	local mp
	awk -v dir="$DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r mp; do
		umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "could not unmount $mp"
	done
}

cgroup_mounts() { # mount points of cgroup hierarchies (the fs type follows the " - " field)
	awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) ~ /^cgroup2?$/) print $5; break } }' /proc/self/mountinfo | sort -u
}

# The kubelet wants its cgroupRoot to exist in every hierarchy (cgroup v1: one
# per controller and named ones; v2: the unified one).
make_cgroups() {
	local mp
	while read -r mp; do
		mkdir -p "$mp$CGROUP_ROOT"
		# A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
		if [[ -f "$mp/cpuset.cpus" && -f "$mp$CGROUP_ROOT/cpuset.cpus" && -z "$(cat "$mp$CGROUP_ROOT/cpuset.cpus")" ]]; then
			cat "$mp/cpuset.cpus" >"$mp$CGROUP_ROOT/cpuset.cpus"
			cat "$mp/cpuset.mems" >"$mp$CGROUP_ROOT/cpuset.mems"
		fi
	done < <(cgroup_mounts)
}

remove_cgroups() { # the pods' cgroup tree in every hierarchy, deepest first
	local top
	for top in $(cgroup_mounts); do
		top="$top$CGROUP_ROOT"
		[[ -d "$top" ]] || continue
		find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ ! -d "$top" ]] || log "cgroup $top not empty; left in place"
	done
}

do_down() {
	stop_pid kubelet
	stop_pid kube-scheduler
	stop_pid kube-controller-manager
	remove_containers
	stop_pid containerd
	stop_shims
	unmount_all
	remove_cgroups
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link delete "$BRIDGE" && log "removed bridge $BRIDGE"
	fi
	if [[ -d "$CP_DIR" ]]; then
		bash "$REPO/hack/control-plane.sh" down --dir "$CP_DIR"
	fi
	if [[ -f "$DIR/$MARKER" ]]; then
		rm -rf "$DIR"
	fi
}

# --- up --------------------------------------------------------------------------------
print_env() {
	[[ -f "$DIR/env" ]] || die "no node in $DIR (run: $0 up --dir $DIR)"
	cat "$DIR/env"
}

running() {
	local name
	for name in containerd kubelet kube-controller-manager kube-scheduler; do
		[[ -f "$DIR/$name.pid" ]] && ours "$(cat "$DIR/$name.pid")" || return 1
	done
	[[ -f "$DIR/env" ]]
}

node_ready() {
	[[ "$(kubectl --kubeconfig "$CP_DIR/kubeconfig" get node "$NODE_NAME" \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

do_up() {
	if running; then
		log "already running in $DIR"
		print_env
		return 0
	fi
	[[ "$(id -u)" == 0 ]] || die "needs root (containerd, runc, mounts, cgroups)"
	local kubelet kcm sched name
	kubelet="$(find_tool kubelet)"
	kcm="$(find_tool kube-controller-manager)"
	sched="$(find_tool kube-scheduler)"
	[[ -n "$kubelet" && -n "$kcm" && -n "$sched" ]] ||
		die "kubelet, kube-controller-manager or kube-scheduler not found in $TOOLS_BIN: run  bash hack/build-tools.sh --node"
	for name in containerd containerd-shim-runc-v2 runc ctr openssl curl kubectl ip; do
		command -v "$name" >/dev/null || die "$name not found (apt-get install containerd runc containernetworking-plugins iproute2 openssl curl kubectl)"
	done
	[[ -x "$CNI_BIN/bridge" && -x "$CNI_BIN/host-local" ]] ||
		die "CNI plugins not found in $CNI_BIN: apt-get install containernetworking-plugins"
	do_down # leftovers of a crashed run in the same DIR
	mkdir -p "$DIR"
	touch "$DIR/$MARKER"
	local t0=$SECONDS t

	# Images first: the slowest step, and nothing runs yet if it fails.
	t=$SECONDS
	build_images
	log "images built in $((SECONDS - t))s"

	# A shared, loaded machine can take minutes to make kube-apiserver ready.
	DISCOVERD_CONTROL_PLANE_NODE=1 DISCOVERD_CONTROL_PLANE_TIMEOUT="${DISCOVERD_CONTROL_PLANE_TIMEOUT:-300}" \
		bash "$REPO/hack/control-plane.sh" up --dir "$CP_DIR" >/dev/null ||
		die "control plane did not start"
	local kubeconfig="$CP_DIR/kubeconfig"
	make_kubelet_pki

	write_containerd_config
	start containerd containerd --config "$CTR/config.toml" --log-level warn
	wait_for containerd 30 ctr --address "$SOCK" version || die "containerd did not start"
	log "containerd ready (pid $(cat "$DIR/containerd.pid"))"
	import_images

	local kubelet_port healthz_port kcm_port sched_port
	read -r kubelet_port healthz_port kcm_port sched_port <<<"$(free_ports 4)"
	start kube-controller-manager "$kcm" \
		--kubeconfig="$kubeconfig" \
		--authentication-kubeconfig="$kubeconfig" \
		--authorization-kubeconfig="$kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$kcm_port" \
		--cert-dir="$DIR/pki/kcm" \
		--service-account-private-key-file="$CP_DIR/pki/sa.key" \
		--root-ca-file="$CP_DIR/pki/ca.crt" \
		--use-service-account-credentials=false \
		--leader-elect=false \
		--v=1
	start kube-scheduler "$sched" \
		--kubeconfig="$kubeconfig" \
		--authentication-kubeconfig="$kubeconfig" \
		--authorization-kubeconfig="$kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$sched_port" \
		--cert-dir="$DIR/pki/scheduler" \
		--leader-elect=false \
		--v=1
	wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$kcm_port/healthz" ||
		die "kube-controller-manager did not start"
	wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$sched_port/healthz" ||
		die "kube-scheduler did not start"
	log "kube-controller-manager and kube-scheduler ready"

	make_cgroups
	write_kubelet_config "$kubelet_port" "$healthz_port"
	# --node-ip: a loopback address, the only one this node may use (the
	# kubelet logs that it is refused for the node's status addresses; the
	# node still becomes Ready, and nothing here needs to reach the kubelet).
	start kubelet "$kubelet" \
		--config="$DIR/kubelet.yaml" \
		--kubeconfig="$DIR/kubelet.kubeconfig" \
		--root-dir="$DIR/kubelet" \
		--cert-dir="$DIR/pki/kubelet" \
		--hostname-override="$NODE_NAME" \
		--node-ip=127.0.0.1 \
		--v=1
	wait_for kubelet "$READY_TIMEOUT" node_ready || die "node $NODE_NAME did not become Ready"
	log "node $NODE_NAME Ready (kubelet pid $(cat "$DIR/kubelet.pid")); up in $((SECONDS - t0))s"

	{
		cat "$CP_DIR/env"
		echo "export DISCOVERD_NODE_NAME=$NODE_NAME"
		echo "export DISCOVERD_NODE_DIR=$DIR"
		echo "export DISCOVERD_NODE_IMAGE=$IMAGE"
		echo "export DISCOVERD_NODE_ETCD_IMAGE=$ETCD_IMAGE"
		echo "export CONTAINERD_ADDRESS=$SOCK"
	} >"$DIR/env"
	print_env
}

case "$cmd" in
up)
	# On any failure (die exits): keep the logs, then undo everything.
	on_failure() {
		local rc=$?
		((rc)) || return 0
		local keep="$DIR.failed.$$"
		mkdir -p "$keep"
		cp "$DIR"/*.log "$CP_DIR"/*.log "$keep/" 2>/dev/null || true
		log "up failed; logs kept in $keep; cleaning up"
		do_down
		exit "$rc"
	}
	trap on_failure EXIT
	do_up
	trap - EXIT
	;;
down) do_down ;;
env) print_env ;;
*) usage ;;
esac
