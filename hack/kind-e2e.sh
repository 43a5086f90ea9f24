#!/usr/bin/env bash
# End-to-end test of discoverd on a real Kubernetes cluster made with kind:
#
#   1. create a kind cluster (one control plane, two workers);
#   2. build the image from the Dockerfile and load it into the nodes;
#   3. (etcd comes with the release: etcd.server.enabled, the official image);
#   4. helm install charts/discoverd (CRDs, operator, agent DaemonSet, etcd);
#   5. kubectl apply examples/service.yaml, its servers node-1 and node-2
#      renamed to the two worker nodes (the agent's server ID is the node name);
#   6. wait until both instances are Running on their nodes, and answer on the node;
#   7. `helm test` (a round trip through the operator);
#   8. move instance i1 to version 2.0 and wait until it runs 2.0;
#   9. delete the agent pod on i1's node, then `helm upgrade` with a changed
#      agent pod template: i1 keeps its pid and process start time (the same
#      check as tests/e2e/test_node.py on the test node);
#  10. helm uninstall removes the operator and the agents;
#  11. delete the cluster (also on failure), unless KEEP_CLUSTER=1.
#
# Needs docker (a running engine), kind, kubectl and helm on PATH (kubectl and
# helm also from ${DISCOVERD_TOOLS_DIR:-~/.cache/discoverd/tools}/bin).
# The kind nodes need python3 for the example's scripts (they run on the node
# through nsenter); it is installed with apt in each worker if missing.
#
# Environment: CLUSTER (default discoverd-e2e), IMAGE (default discoverd:e2e),
# NAMESPACE (default discoverd), TIMEOUT seconds per wait (default 300),
# KEEP_CLUSTER=1 to keep the cluster for debugging, KIND_NODE_IMAGE to pin the
# node image.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${CLUSTER:-discoverd-e2e}"
IMAGE="${IMAGE:-discoverd:e2e}"
NAMESPACE="${NAMESPACE:-discoverd}"
TIMEOUT="${TIMEOUT:-300}"
TOOLS_BIN="${DISCOVERD_TOOLS_DIR:-$HOME/.cache/discoverd/tools}/bin"
PATH="$PATH:$TOOLS_BIN"

log() { printf '[kind-e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}

for tool in docker kind kubectl helm; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH"
done
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (docker info failed)"

# A kubeconfig of its own: the user's ~/.kube/config is never touched.
KUBECONFIG_FILE="$(mktemp -t "kind-$CLUSTER.XXXXXX")"
export KUBECONFIG="$KUBECONFIG_FILE"
created=0
cleanup() {
	local rc=$?
	if ((rc != 0 && created)); then
		log "diagnostics after failure:"
		kubectl get nodes -o wide >&2 || true
		kubectl -n "$NAMESPACE" get pods,servers,serviceversions,serviceinstances -o wide >&2 || true
		kubectl -n "$NAMESPACE" logs deployment/discoverd-operator --tail=100 >&2 || true
		kubectl -n "$NAMESPACE" logs daemonset/discoverd-agent --tail=100 --all-containers >&2 || true
	fi
	if ((created)) && [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
		log "deleting cluster $CLUSTER"
		kind delete cluster --name "$CLUSTER" >&2 || true
	elif ((created)); then
		log "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG_FILE)"
		return
	fi
	rm -f "$KUBECONFIG_FILE"
	exit "$rc"
}
trap cleanup EXIT

# wait_for WHAT CMD...: run CMD every 2 s until it succeeds, at most $TIMEOUT s.
wait_for() {
	local what="$1" deadline=$((SECONDS + TIMEOUT))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
		sleep 2
	done
	log "ok: $what"
}

# --- 1. cluster -----------------------------------------------------------------------------
log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 120s \
	${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --config - <<'EOF' >&2
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
EOF
created=1
mapfile -t WORKERS < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
((${#WORKERS[@]} == 2)) || die "expected 2 worker nodes, got: ${WORKERS[*]}"
log "workers: ${WORKERS[*]}"

# The example's scripts run on the node itself (nsenter into the node's namespaces).
for node in "${WORKERS[@]}"; do
	docker exec "$node" sh -c 'command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null; }' >&2 ||
		die "could not install python3 on $node"
done

# --- 2. image -------------------------------------------------------------------------------
log "building $IMAGE"
IMAGE="$IMAGE" bash "$REPO/hack/image.sh" build --tag "$IMAGE" >&2
kind load docker-image "$IMAGE" --name "$CLUSTER" >&2

# --- 3. etcd: run by the release (etcd.server.enabled) ------------------------------------------
kubectl create namespace "$NAMESPACE" >&2

# --- 4. the chart ---------------------------------------------------------------------------
# The agents run on the host network, so they reach etcd from their node's address, which the
# chart's NetworkPolicy cannot select by labels (kindnet enforces NetworkPolicy): admit the kind
# nodes' IPv4 network, as docs/install-kubernetes.md says to.
node_cidr="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')"
log "installing the chart (etcd admits the nodes' network $node_cidr)"
helm install discoverd "$REPO/charts/discoverd" --namespace "$NAMESPACE" \
	--set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
	--set etcd.server.enabled=true \
	--set "etcd.server.networkPolicy.extraFrom[0].ipBlock.cidr=$node_cidr" \
	--set logFormat=text --wait --timeout "${TIMEOUT}s" >&2
kubectl -n "$NAMESPACE" rollout status daemonset/discoverd-agent --timeout="${TIMEOUT}s" >&2

# --- 5. the example service -----------------------------------------------------------------
example="$(sed -e "s/node-1/${WORKERS[0]}/g" -e "s/node-2/${WORKERS[1]}/g" "$REPO/examples/service.yaml")"
kubectl -n "$NAMESPACE" apply -f - <<<"$example" >&2

# instance_is INSTANCE PHASE VERSION SERVER: the agent's status, mirrored by the operator into the
# ServiceInstance (status.phase, status.version, status.server), says so.
instance_is() {
	local instance="$1" want_phase="$2" want_version="$3" want_server="$4" got
	got="$(kubectl -n "$NAMESPACE" get serviceinstances -o json |
		python3 -c '
import json, sys
instance = sys.argv[1]
for item in json.load(sys.stdin)["items"]:
    if item["spec"].get("id") == instance:
        status = item.get("status") or {}
        print(status.get("phase", ""), status.get("version", ""), status.get("server", ""))
' "$instance")"
	[[ "$got" == "$want_phase $want_version $want_server" ]]
}

# served_on NODE PORT TEXT: the instance answers on the node itself (it runs in the node's namespaces).
served_on() {
	docker exec "$1" python3 -c 'import sys, urllib.request; sys.exit(sys.argv[2] not in urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
		"http://127.0.0.1:$2/" "$3"
}

# --- 6. running -----------------------------------------------------------------------------
wait_for "instance i1 Running version 1.0 on ${WORKERS[0]}" instance_is i1 Running 1.0 "${WORKERS[0]}"
wait_for "instance i2 Running version 2.0 on ${WORKERS[1]}" instance_is i2 Running 2.0 "${WORKERS[1]}"
wait_for "i1 serving web 1.0 on ${WORKERS[0]}:18081" served_on "${WORKERS[0]}" 18081 "web 1.0"
wait_for "i2 serving web 2.0 on ${WORKERS[1]}:18082" served_on "${WORKERS[1]}" 18082 "web 2.0"

# --- 7. helm test ---------------------------------------------------------------------------
helm test discoverd --namespace "$NAMESPACE" --logs --timeout "${TIMEOUT}s" >&2

# --- 8. upgrade i1 to 2.0 -------------------------------------------------------------------
log "upgrading instance i1 to version 2.0"
kubectl -n "$NAMESPACE" patch serviceinstance web.i1 --type=merge -p '{"spec":{"serviceVersion":"2.0"}}' >&2
wait_for "instance i1 Running version 2.0 on ${WORKERS[0]}" instance_is i1 Running 2.0 "${WORKERS[0]}"
wait_for "i1 serving web 2.0 on ${WORKERS[0]}:18081" served_on "${WORKERS[0]}" 18081 "web 2.0"

# --- 9. the instance outlives the agent's pod --------------------------------------------------
# pid_start NODE: "<pid> <start time>" of i1's process, from its record and the node's /proc.
pid_start() {
	docker exec "$1" python3 -c '
import json, sys
record = json.load(open("/var/lib/discoverd/instances/web/i1/.discoverd/record.json"))
pid = record["process"]["pid"]
print(pid, open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])'
}
agent_pod_on() {
	kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent --field-selector "spec.nodeName=$1" \
		-o jsonpath='{.items[0].metadata.name}'
}
before="$(pid_start "${WORKERS[0]}")"
log "i1 runs as (pid start time) $before; deleting the agent pod on ${WORKERS[0]}"
kubectl -n "$NAMESPACE" delete pod "$(agent_pod_on "${WORKERS[0]}")" --wait=true >&2
kubectl -n "$NAMESPACE" rollout status daemonset/discoverd-agent --timeout="${TIMEOUT}s" >&2
after_delete="$(pid_start "${WORKERS[0]}" || echo gone)"
helm upgrade discoverd "$REPO/charts/discoverd" --namespace "$NAMESPACE" --reuse-values \
	--set-string agent.podAnnotations.e2e/generation=2 --wait --timeout "${TIMEOUT}s" >&2
kubectl -n "$NAMESPACE" rollout status daemonset/discoverd-agent --timeout="${TIMEOUT}s" >&2
wait_for "instance i1 Running version 2.0 after the agent update" instance_is i1 Running 2.0 "${WORKERS[0]}"
after_update="$(pid_start "${WORKERS[0]}" || echo gone)"
[[ "$after_delete" == "$before" ]] || die "i1 did not survive the agent pod's deletion: $before -> $after_delete"
[[ "$after_update" == "$before" ]] || die "i1 did not survive the DaemonSet update: $before -> $after_update"
log "ok: i1 kept pid and start time $before"

# --- 10. uninstall ---------------------------------------------------------------------------
helm uninstall discoverd --namespace "$NAMESPACE" --wait --timeout "${TIMEOUT}s" >&2
no_workloads() { [[ -z "$(kubectl -n "$NAMESPACE" get deployments,daemonsets,statefulsets -o name)" ]]; }
wait_for "operator, agents and etcd removed" no_workloads

log "PASS"
