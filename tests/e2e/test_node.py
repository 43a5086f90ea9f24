"""End to end on a real node: hack/node.sh (kubelet, containerd, runc, CNI) and the chart.

`make test` runs it (and `make e2e` alone), with DISCOVERD_E2E_NODE=1; without
that variable it skips. The steps share one node and one release, in order:

1. `helm install` of the chart with the image built here, its own etcd
   (etcd.server, an etcd image built here) on the host network;
2. the operator is Ready, the agent pod Running;
3. `kubectl apply -f` of two ServiceVersions, a ServiceInstance and the
   Server (ID = the node's name): the run script runs in the host's
   namespaces (a file on the host's filesystem, the host's hostname, a pid of
   the host's pid namespace);
4. `kubectl patch` of the instance's version upgrades it;
5. `kubectl delete pod` of the agent, then a `helm upgrade` that changes the
   agent's pod template: the instance keeps its pid and start time;
6. `helm test` passes, and no container of the release restarted;
7. `helm uninstall` removes the operator and the agent.

The nsenter target is a `sleep` this test starts on the host: pid 1 of these
machines refuses nsenter (docs/control-plane.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from discoverd.agent import identity as agent_identity
from discoverd.agent import layout, model
from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable
from discoverd.schema import documents, keys
from discoverd.schema import identity as wire
from discoverd.store import client
from discoverd.store.typed import Store
from kube import controlplane
from support import cgroups as test_cgroups
from support.wait import wait_until

REPO = controlplane.REPO
NOW = "2026-01-01T00:00:00Z"
NODE_SCRIPT = REPO / "hack" / "node.sh"
CHART = REPO / "charts" / "discoverd"
NAMESPACE = "discoverd"
RELEASE = "e2e"
SERVICE = "probe"
INSTANCE = "i1"

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("DISCOVERD_E2E_NODE") != "1",
        reason="starts a real kubelet node: run with `make test` or `make e2e` (DISCOVERD_E2E_NODE=1)",
    ),
    pytest.mark.timeout(1800),
]


@dataclass
class Node:
    env: dict[str, str]
    name: str
    kubectl: Path
    helm: Path
    api_port: str
    work: Path
    """A host directory for this test: the agent's state, etcd's data, the scripts' files."""
    host_pid: int
    """The nsenter target: a process of this test in the host's namespaces."""
    cgroup_root: str
    """The agent's `--cgroup-root`: this test's own, removed at the end (tests/support/cgroups.py)."""

    def run(self, tool: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(tool), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool.name} {shlex.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.run(self.kubectl, *args, "-o", "json").stdout)


def _exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    kubectl, helm = controlplane.find_tool("kubectl"), controlplane.find_tool("helm")
    assert kubectl and helm, controlplane.BUILD_HINT
    work = Path(tempfile.mkdtemp(prefix="discoverd-e2e-"))
    node_dir = Path(os.environ.get("DISCOVERD_E2E_NODE_DIR") or work / "node")
    started = time.monotonic()
    up = subprocess.run(
        ["bash", str(NODE_SCRIPT), "up", "--dir", str(node_dir)], capture_output=True, text=True, timeout=1500
    )
    print(f"hack/node.sh up: {time.monotonic() - started:.0f} s\n{up.stderr[-3000:]}")
    target = subprocess.Popen(["sleep", "infinity"], start_new_session=True)
    cgroup_root = test_cgroups.new_root()
    try:
        assert up.returncode == 0, f"hack/node.sh up failed:\n{up.stderr[-20000:]}"
        env = {**os.environ, **_exports(up.stdout)}
        api_port = env["DISCOVERD_KUBE_SERVER"].rsplit(":", 1)[1]
        yield Node(env, env["DISCOVERD_NODE_NAME"], kubectl, helm, api_port, work, target.pid, cgroup_root)
    finally:
        target.kill()
        target.wait()
        _stop_instances(work / "out")
        test_cgroups.remove_root(cgroup_root)
        started = time.monotonic()
        down = subprocess.run(
            ["bash", str(NODE_SCRIPT), "down", "--dir", str(node_dir)], capture_output=True, text=True, timeout=300
        )
        print(f"hack/node.sh down: {time.monotonic() - started:.0f} s (exit {down.returncode})\n{down.stderr[-3000:]}")
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _stop_instances(out: Path) -> None:
    """Kill the run scripts' processes that outlived the release (their pid files), if still theirs."""
    for pid_file in out.glob("pid-*"):
        pid = int(pid_file.read_text())
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep":
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _release_values(node: Node, etcd_ports: list[int], annotation: str) -> list[str]:
    image = node.env["DISCOVERD_NODE_IMAGE"]
    repository, tag = image.rsplit(":", 1)
    etcd_repository, etcd_tag = node.env["DISCOVERD_NODE_ETCD_IMAGE"].rsplit(":", 1)
    values = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "etcd.server.enabled": "true",
        "etcd.server.hostNetwork": "true",
        "etcd.server.clientPort": str(etcd_ports[0]),
        "etcd.server.peerPort": str(etcd_ports[1]),
        "etcd.server.image.repository": etcd_repository,
        "etcd.server.image.tag": etcd_tag,
        "etcd.server.image.pullPolicy": "Never",
        "etcd.server.storage.type": "hostPath",
        "etcd.server.storage.hostPath": str(node.work / "etcd"),
        # Node identity: the agent asks the host-network operator on this same node (no Service proxy).
        "nodeIdentity.port": str(etcd_ports[2]),
        "nodeIdentity.operatorURL": f"https://127.0.0.1:{etcd_ports[2]}",
        "operator.metrics.port": str(etcd_ports[3]),
        "agent.metrics.port": str(etcd_ports[4]),
        "agent.api.port": str(etcd_ports[5]),
        # No Service proxy on this node: the operator reaches the API server on loopback.
        "operator.hostNetwork": "true",
        "operator.extraEnv[0].name": "KUBERNETES_SERVICE_HOST",
        "operator.extraEnv[0].value": "127.0.0.1",
        "operator.extraEnv[1].name": "KUBERNETES_SERVICE_PORT",
        "operator.extraEnv[1].value": node.api_port,
        # This node's kubelet knows no address of its own (no cloud provider, no --node-ip), so the
        # downward API's podIP of a host-network pod is empty: bind metrics and publish the log API
        # on loopback instead.
        "metrics.bindAddress": "127.0.0.1",
        "agent.api.advertiseHost": "127.0.0.1",
        "agent.stateDir": str(node.work / "state"),
        "agent.hostPid": str(node.host_pid),
        "agent.extraArgs[0]": f"--cgroup-root={node.cgroup_root}",
        "agent.podAnnotations.e2e/generation": annotation,
    }
    strings = ("value", "generation")  # env values and annotations are strings, never numbers
    return [arg for k, v in values.items() for arg in ("--set-string" if k.endswith(strings) else "--set", f"{k}={v}")]


@dataclass
class Release:
    etcd_ports: list[int]


@pytest.fixture(scope="module")
def release(node: Node) -> Iterator[Release]:
    # etcd's client and peer ports, the operator's node-identity port, the operator's and the agent's
    # metrics ports and the agent's log API: all on this machine's network (host-network pods), so
    # none of the chart's fixed defaults, which a test running beside this one may hold.
    ports = _free_ports(6)
    started = time.monotonic()
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace"]
    node.run(node.helm, *args, *_release_values(node, ports, "1"), "--wait", "--timeout", "5m", timeout=400)
    print(f"helm install --wait: {time.monotonic() - started:.0f} s")
    try:
        yield Release(ports)
    finally:
        node.run(node.helm, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)


def failure_report(funcargs: dict[str, Any]) -> str | None:
    """What tests/e2e/conftest.py adds to a failed step's report: the release's logs and events.

    Read from the kubelet's pod log directory: `kubectl logs` cannot reach this kubelet (the node
    has no address the API server may use, docs/control-plane.md).
    """
    node = funcargs.get("node")
    if not isinstance(node, Node):
        return None
    parts = []
    for log in sorted(Path(node.env["DISCOVERD_NODE_DIR"], "pod-logs").glob(f"{NAMESPACE}_*/*/*.log")):
        lines = log.read_text(errors="replace").splitlines()[-200:]
        parts.append("\n".join([f"--- {log.parent.parent.name}/{log.parent.name}/{log.name} ---", *lines]))
    events = node.run(node.kubectl, "-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False)
    parts.append(f"--- events ---\n{events.stdout}{events.stderr}")
    return "\n".join(parts)


# --- what runs on the host ------------------------------------------------------------------------


def _process(node: Node) -> model.Process | None:
    """The instance's process as the agent saved it, read with the agent's own code (the image's)."""
    state = layout.Layout(node.work / "state").load(model.Ref(service=SERVICE, instance=INSTANCE))
    return state.process if state else None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _running(node: Node, version: str) -> tuple[int, int] | None:
    """(pid, start time) of the instance's process when it runs `version`, per its record and /proc."""
    process = _process(node)
    if process is None or process.version != version:
        return None
    start = _start_time(process.pid)
    return (process.pid, start) if start == process.start_time else None


def _written(path: Path) -> bool:
    """Whether the run script has written `path` (it writes its hostname first, then its pid)."""
    try:
        return bool(path.read_text().strip())
    except FileNotFoundError:
        return False


def _manifests(node: Node) -> str:
    out = node.work / "out"

    def version(v: str) -> dict[str, Any]:
        script = (
            f'hostname > "$0/hostname-{v}"; echo $$ > "$0/pid-{v}"; echo "probe {v} on $(hostname)"; exec sleep 100000'
        )
        return {
            "apiVersion": "discoverd.io/v1alpha1",
            "kind": "ServiceVersion",
            "metadata": {"name": f"{SERVICE}-{v.replace('.', '-')}"},
            "spec": {
                "service": SERVICE,
                "version": v,
                "downloadScript": {"command": "mkdir", "argv": ["-p", str(out)], "timeout": 60},
                "installScript": {"command": "true", "argv": [], "timeout": 60},
                "runScript": {"command": "sh", "argv": ["-c", script, str(out)]},
                "minHealthySeconds": 1,
            },
        }

    docs = [
        version("1.0"),
        version("2.0"),
        {
            "apiVersion": "discoverd.io/v1alpha1",
            "kind": "ServiceInstance",
            "metadata": {"name": f"{SERVICE}-{INSTANCE}"},
            "spec": {"service": SERVICE, "id": INSTANCE, "serviceVersion": "1.0"},
        },
        {
            "apiVersion": "discoverd.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": node.name},
            "spec": {"id": node.name, "serviceInstances": [{"name": SERVICE, "id": INSTANCE}]},
        },
    ]
    return yaml.safe_dump_all(docs)


def _agent_pod(node: Node) -> dict[str, Any] | None:
    pods = node.kubectl_json("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=agent")["items"]
    running = [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and "deletionTimestamp" not in p["metadata"]
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
    ]
    return running[0] if len(running) == 1 and len(pods) == 1 else None


# --- the scenario, in order -----------------------------------------------------------------------


def test_1_operator_ready_and_agent_running(node: Node, release: Release) -> None:
    deployment = node.kubectl_json("-n", NAMESPACE, "get", "deployment", f"{RELEASE}-discoverd-operator")
    assert deployment["status"].get("readyReplicas") == 1
    pod = wait_until(lambda: _agent_pod(node), timeout=120, interval=1, what="the agent pod Running")
    assert pod["spec"]["nodeName"] == node.name
    container = pod["spec"]["containers"][0]
    assert not container["securityContext"].get("privileged")
    assert f"--host-pid={node.host_pid}" in container["args"]
    # Node identity: no etcd password, client certificate or Secret of any kind in the agent's pod.
    names = {e["name"] for e in container["env"]}
    assert not {"DISCOVERD_ETCD_USER", "DISCOVERD_ETCD_PASSWORD", "DISCOVERD_ETCD_CERT", "DISCOVERD_ETCD_KEY"} & names
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v]


def test_2_run_script_runs_in_the_hosts_namespaces(node: Node, release: Release) -> None:
    manifest = node.work / "probe.yaml"
    manifest.write_text(_manifests(node))
    node.run(node.kubectl, "-n", NAMESPACE, "apply", "-f", str(manifest))
    pid, _ = wait_until(lambda: _running(node, "1.0"), timeout=180, interval=1, what="the instance running 1.0")
    out = node.work / "out"
    # The file is on the host's filesystem: the agent's container does not mount this directory.
    # The process is recorded as it starts; its first line writes the files a moment later.
    wait_until(lambda: _written(out / "pid-1.0"), timeout=30, interval=0.2, what="the run script's first line")
    assert (out / "hostname-1.0").read_text().strip() == socket.gethostname()
    script_pid = int((out / "pid-1.0").read_text())
    # A pid of the host's pid namespace, seen by the agent as the instance's process.
    assert Path(f"/proc/{script_pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    assert pid == script_pid or script_pid in _descendants(pid)
    # In a cgroup of its own, outside the agent pod's (so that it outlives the pod, step 5).
    assert f":{node.cgroup_root}/discoverd/{SERVICE}/{INSTANCE}\n" in Path(f"/proc/{script_pid}/cgroup").read_text()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def _identity_source(node: Node, server_id: str) -> agent_identity.Source:
    """What root on this node can take: the agent pod's token (from the kubelet's directory) and the CA."""
    pod = _agent_pod(node)
    assert pod is not None
    token = Path(node.env["DISCOVERD_NODE_DIR"], "kubelet", "pods", pod["metadata"]["uid"], "volumes")
    token = token / "kubernetes.io~projected" / "identity-token" / "token"
    ca_map = node.kubectl_json("-n", NAMESPACE, "get", "configmap", f"{RELEASE}-discoverd-operator-identity-ca")
    ca_file = node.work / "identity-ca.crt"
    ca_file.write_text(ca_map["data"]["ca.crt"])
    port = node.kubectl_json("-n", NAMESPACE, "get", "service", f"{RELEASE}-discoverd-operator")["spec"]["ports"][0]
    return agent_identity.Source(f"https://127.0.0.1:{port['port']}", server_id, token, ca_file)


def _fetch_unless_too_soon(source: agent_identity.Source) -> wire.Credentials | None:
    try:
        return asyncio.run(agent_identity.fetch(source))
    except agent_identity.Refused as refused:
        if "(429)" in str(refused):
            return None
        raise


def test_2b_agent_credentials_reach_only_its_own_status(node: Node, release: Release) -> None:
    """The agent's credentials, as root on the node gets them (its pod's token, asked of the operator):
    etcd refuses another server's status, a new key under its own status prefix, any configuration
    key, and a read of a service the server does not run; it reads the service it runs."""
    wait_until(lambda: _running(node, "1.0"), timeout=60, interval=1, what="1.0 running")
    with pytest.raises(agent_identity.Refused, match=f"runs on node '{node.name}', not on server 'another-node'"):
        asyncio.run(agent_identity.fetch(_identity_source(node, "another-node")))
    credentials = wait_until(
        lambda: _fetch_unless_too_soon(_identity_source(node, node.name)),
        timeout=30, interval=1, what="credentials (the operator issues at most one per server every 5 s)",
    )  # fmt: skip
    assert credentials.user == f"/discoverd/server/{node.name}"
    options = EtcdOptions(
        endpoints=f"http://127.0.0.1:{release.etcd_ports[0]}",
        user=credentials.user,
        password=credentials.password,
        allow_plaintext_password=True,  # the chart's own etcd is http on the pod network (docs/etcd-auth.md)
    )
    status = documents.AgentStatus.model_validate(
        {"hostname": "e2e", "agent_version": "0", "started_at": NOW, "heartbeat": NOW}
    )

    async def tries() -> dict[str, str]:
        store = Store(await client.connect(options))
        outcome = {}
        try:
            for what, key in (
                ("a new key under its own status", keys.agent_status(store.prefix, node.name) + "-e2e"),
                ("another server's status", keys.agent_status(store.prefix, "another-node")),
                ("own server document", keys.server_config(store.prefix, node.name)),
                ("an instance document", keys.instance_config(store.prefix, SERVICE, INSTANCE)),
                ("a version document", keys.version_config(store.prefix, SERVICE, "3.0")),
            ):
                try:
                    await store.put(key, status)
                    outcome[what] = "written"
                    await store.delete(key)
                except StoreUnavailable as error:
                    outcome[what] = "permission denied" if "permission denied" in str(error) else str(error)
            for what, key in (
                ("read: the version it runs", keys.version_config(store.prefix, SERVICE, "1.0")),
                ("read: a service it does not run", keys.version_config(store.prefix, "not-on-this-node", "1.0")),
            ):
                try:
                    outcome[what] = "read" if await store.get(key) is not None else "missing"
                except StoreUnavailable as error:
                    outcome[what] = "permission denied" if "permission denied" in str(error) else str(error)
        finally:
            await store.close()
        return outcome

    assert asyncio.run(tries()) == {
        # its status is one key per instance it runs plus its agent key (the role's exact grants)
        "a new key under its own status": "permission denied",
        "another server's status": "permission denied",
        "own server document": "permission denied",
        "an instance document": "permission denied",
        "a version document": "permission denied",
        "read: the version it runs": "read",
        "read: a service it does not run": "permission denied",
    }


def test_3_patching_the_instance_version_upgrades_it(node: Node, release: Release) -> None:
    before = wait_until(lambda: _running(node, "1.0"), timeout=60, interval=1, what="1.0 running")
    node.run(
        node.kubectl, "-n", NAMESPACE, "patch", "serviceinstance", f"{SERVICE}-{INSTANCE}",
        "--type=merge", "-p", '{"spec": {"serviceVersion": "2.0"}}',
    )  # fmt: skip
    after = wait_until(lambda: _running(node, "2.0"), timeout=180, interval=1, what="the instance running 2.0")
    assert after != before
    out = node.work / "out"
    wait_until(lambda: _written(out / "pid-2.0"), timeout=30, interval=0.2, what="the run script's first line")
    assert (out / "hostname-2.0").read_text().strip() == socket.gethostname()
    assert _start_time(before[0]) != before[1], "the 1.0 process still runs after the upgrade"
    # The rollout controller (in the operator, as etcd's root from the generated Secret) still leads.
    assert _controller_leader(node, release) is not None


def _root_password(node: Node) -> str:
    secret = node.kubectl_json("-n", NAMESPACE, "get", "secret", f"{RELEASE}-discoverd-etcd-root")
    return base64.b64decode(secret["data"]["password"]).decode()


def test_3b_logs_are_read_through_the_agents_host_network_port(node: Node, release: Release) -> None:
    """`discoverd logs` from off the node reaches the agent's log API on its host-network port, pinned
    by the certificate the agent published in its status, with a grant an admin wrote in etcd."""
    wait_until(lambda: _running(node, "2.0"), timeout=60, interval=1, what="2.0 running")
    env = {
        **node.env,
        "DISCOVERD_ETCD_ENDPOINTS": f"http://127.0.0.1:{release.etcd_ports[0]}",
        "DISCOVERD_ETCD_USER": "root",
        "DISCOVERD_ETCD_PASSWORD": _root_password(node),
        "DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true",
    }
    line = f"probe 2.0 on {socket.gethostname()}"

    def read() -> str | None:
        result = subprocess.run(
            ["discoverd", "logs", f"{SERVICE}/{INSTANCE}", "--tail", "20"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout if result.returncode == 0 and line in result.stdout else None

    assert line in wait_until(read, timeout=60, interval=2, what=f"{line!r} from discoverd logs")


def _controller_leader(node: Node, release: Release) -> object:
    password = _root_password(node)
    options = EtcdOptions(
        endpoints=f"http://127.0.0.1:{release.etcd_ports[0]}",
        user="root",
        password=password,
        allow_plaintext_password=True,
    )

    async def read() -> object:
        store = Store(await client.connect(options))
        try:
            return await store.get(keys.controller_leader(store.prefix))
        finally:
            await store.close()

    return asyncio.run(read())


def test_4_instance_outlives_agent_pod_deletion_and_daemonset_update(node: Node, release: Release) -> None:
    running = wait_until(lambda: _running(node, "2.0"), timeout=60, interval=1, what="2.0 running")
    old = _agent_pod(node)
    assert old is not None
    node.run(node.kubectl, "-n", NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=true")
    new = wait_until(
        lambda: (p := _agent_pod(node)) and p["metadata"]["uid"] != old["metadata"]["uid"] and p,
        timeout=180, interval=1, what="a new agent pod Running",
    )  # fmt: skip
    survived_delete = _start_time(running[0]) == running[1]
    args = ["upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE]
    node.run(
        node.helm, *args, *_release_values(node, release.etcd_ports, "2"), "--wait", "--timeout", "5m", timeout=400
    )
    wait_until(
        lambda: (p := _agent_pod(node)) and p["metadata"]["uid"] != new["metadata"]["uid"] and p,
        timeout=180, interval=1, what="the updated agent pod Running",
    )  # fmt: skip
    # The new agent adopts the instance (its record) rather than starting another.
    adopted = wait_until(lambda: _running(node, "2.0"), timeout=120, interval=1, what="2.0 running after the update")
    assert survived_delete, f"the instance (pid {running[0]}) died when the agent pod was deleted"
    assert adopted == running, f"after the DaemonSet update the instance is {adopted}, was {running}"


def test_5_helm_test_passes(node: Node, release: Release) -> None:
    proc = node.run(node.helm, "test", RELEASE, "--namespace", NAMESPACE, "--timeout", "3m", timeout=240, check=False)
    assert proc.returncode == 0, f"helm test failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Phase:          Succeeded" in proc.stdout
    # Nothing of the release restarted on the way (a crash-looping operator still passes the steps
    # above, late: Kopf once could not reach the API server from the host network).
    pods = node.kubectl_json("-n", NAMESPACE, "get", "pods")["items"]
    restarts = {
        f"{p['metadata']['name']}/{c['name']}": c["restartCount"]
        for p in pods
        for c in p["status"].get("containerStatuses", [])
        if c["restartCount"]
    }
    assert restarts == {}, f"containers restarted: {restarts}"


def test_6_helm_uninstall_removes_operator_and_agent(node: Node, release: Release) -> None:
    node.run(node.helm, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m", timeout=240)

    def gone() -> bool:
        pods = node.kubectl_json("-n", NAMESPACE, "get", "pods")["items"]
        workloads = node.kubectl_json("-n", NAMESPACE, "get", "deployments,daemonsets,statefulsets")["items"]
        return not pods and not workloads

    wait_until(gone, timeout=180, interval=1, what="no pod or workload of the release left")
    # The CRDs stay (crds.keep), and with them the objects applied above.
    node.run(node.kubectl, "get", "crd", "serviceinstances.discoverd.io")
