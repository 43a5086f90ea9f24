"""Node identity: the operator's credential endpoint against a real kube-apiserver (real TokenReview) and a
real etcd with authentication on.

Pods here are never run (no kubelet): they exist so the API server can bind
tokens to them (TokenRequest with a bound Pod, as the kubelet asks for a
projected volume) and so the operator can read them and their node. The
agent's own client (agent/identity.py) asks, over HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from kubernetes import client as kclient

from discoverd.agent import identity as agent_identity
from discoverd.config import EtcdOptions
from discoverd.embedded_etcd import EtcdServer
from discoverd.errors import StoreUnavailable
from discoverd.operator import identity
from discoverd.schema import documents, keys
from discoverd.schema import identity as wire
from discoverd.store import client as etcd_client
from discoverd.store.typed import Store
from kube.controlplane import ControlPlane
from support import etcd_auth

T = TypeVar("T")
AUDIENCE = "discoverd"
LABELS = {"app.kubernetes.io/instance": "rel", "app.kubernetes.io/component": "agent"}


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd_auth.auth_etcd(tmp_path_factory.mktemp("identity-etcd") / "data") as etcd:
        yield etcd


@dataclass
class Cluster:
    cp: ControlPlane
    api: kclient.ApiClient
    namespace: str
    nodes: dict[str, str]
    """node name -> uid"""

    def token(self, service_account: str, pod: str | None, audience: str = AUDIENCE) -> str:
        bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if pod else []
        args = ["create", "token", service_account, "-n", self.namespace, "--audience", audience, *bound]
        return self.cp.kubectl_run(*args, "--duration=10m").stdout.strip()

    def pod(self, name: str, node: str, service_account: str = "agent", labels: dict[str, str] = LABELS) -> None:
        body = kclient.V1Pod(
            metadata=kclient.V1ObjectMeta(name=name, labels=dict(labels)),
            spec=kclient.V1PodSpec(
                service_account_name=service_account,
                node_name=node,
                containers=[kclient.V1Container(name="agent", image="discoverd:test")],
            ),
        )
        kclient.CoreV1Api(self.api).create_namespaced_pod(self.namespace, body)


@pytest.fixture
def cluster(control_plane: ControlPlane, kube_api: kclient.ApiClient, namespace: str) -> Iterator[Cluster]:
    core = kclient.CoreV1Api(kube_api)
    for sa in ("agent", "other"):
        core.create_namespaced_service_account(
            namespace, kclient.V1ServiceAccount(metadata=kclient.V1ObjectMeta(name=sa))
        )
    suffix = secrets.token_hex(3)
    nodes: dict[str, str] = {}
    for n in ("a", "b"):
        name = f"node-{n}-{suffix}"
        node = core.create_node(kclient.V1Node(metadata=kclient.V1ObjectMeta(name=name)))
        nodes[name] = str(node.metadata.uid if node.metadata else "")
    try:
        yield Cluster(control_plane, kube_api, namespace, nodes)
    finally:
        for name in nodes:
            core.delete_node(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoint:
    url: str
    ca_file: Path
    verifier: identity.Verifier
    root: EtcdOptions


@pytest.fixture
async def endpoint(cluster: Cluster, auth_etcd: EtcdServer, prefix: str, tmp_path: Path) -> AsyncIterator[Endpoint]:
    """The operator's endpoint, served as `discoverd operator --identity-address` serves it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    root = EtcdOptions(
        endpoints=auth_etcd.endpoint,
        prefix=prefix,
        user="root",
        password=etcd_auth.ROOT_PASSWORD,
        allow_plaintext_password=True,
    )
    admin = await etcd_client.connect(root)
    settings = identity.Settings(cluster.namespace, "agent", LABELS, AUDIENCE, ttl=120, min_interval=0)
    verifier = identity.Verifier(cluster.api, admin, settings)
    port = _free_port()
    task = asyncio.create_task(identity.serve(f"127.0.0.1:{port}", cert_file, key_file, verifier))
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and not task.done(), "the endpoint did not start"
            await asyncio.sleep(0.05)
    try:
        yield Endpoint(url, ca_file, verifier, root)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()


async def _ask(endpoint: Endpoint, tmp_path: Path, token: str, server_id: str) -> documents.Document | object:
    token_file = tmp_path / f"token-{secrets.token_hex(4)}"
    token_file.write_text(token)
    source = agent_identity.Source(endpoint.url, server_id, token_file, endpoint.ca_file)
    try:
        return await agent_identity.fetch(source)
    except agent_identity.Refused as refused:
        return refused


def _status(phase: str) -> documents.InstanceStatus:
    now = "2026-01-01T00:00:00Z"
    return documents.InstanceStatus.model_validate({"phase": phase, "version": "1.0", "since": now, "updated_at": now})


async def _as(endpoint: Endpoint, user: str, password: str) -> Store:
    options = endpoint.root.model_copy(update={"user": user, "password": password})
    return Store(await etcd_client.connect(options))


async def test_agent_gets_credentials_for_its_own_server_only(
    cluster: Cluster, endpoint: Endpoint, tmp_path: Path
) -> None:
    node = next(iter(cluster.nodes))
    other = list(cluster.nodes)[1]
    cluster.pod("agent-a", node)
    prefix = endpoint.root.prefix
    # Its server document lists web/i1: the issued role writes that instance's status key (and no other).
    root = Store(await etcd_client.connect(endpoint.root))
    try:
        listing = documents.Server.model_validate({"service_instances": [{"name": "web", "id": "i1"}]})
        await root.put(keys.server_config(prefix, node), listing)
    finally:
        await root.close()
    answer = await _ask(endpoint, tmp_path, cluster.token("agent", "agent-a"), node)
    assert isinstance(answer, wire.Credentials), answer
    store = await _as(endpoint, answer.user, answer.password)
    try:
        await store.put(keys.instance_status(prefix, node, "web", "i1"), _status("Running"))
        for key in (
            keys.instance_status(prefix, other, "web", "i1"),  # another server's status
            keys.instance_status(prefix, node, "web", "i2"),  # a status key of an instance it does not run
            keys.server_config(prefix, node),  # its own configuration
            keys.instance_config(prefix, "web", "i1"),  # any configuration
        ):
            with pytest.raises(StoreUnavailable, match="permission denied"):
                await store.put(key, _status("Running"))
    finally:
        await store.close()
    # Asking again rotates the password: the earlier one no longer logs in.
    again = await _ask(endpoint, tmp_path, cluster.token("agent", "agent-a"), node)
    assert isinstance(again, wire.Credentials) and again.password != answer.password
    with pytest.raises(StoreUnavailable, match="authentication failed"):
        await (await _as(endpoint, answer.user, answer.password)).close()


async def test_agent_on_another_node_is_refused_with_the_reason(
    cluster: Cluster, endpoint: Endpoint, tmp_path: Path
) -> None:
    node, other = list(cluster.nodes)
    cluster.pod("agent-a", node)
    answer = await _ask(endpoint, tmp_path, cluster.token("agent", "agent-a"), other)
    assert isinstance(answer, agent_identity.Refused)
    assert f"runs on node {node!r}, not on server {other!r}" in str(answer)
    events = kclient.CoreV1Api(cluster.api).list_namespaced_event(cluster.namespace).items
    assert any(e.reason == "CredentialsRefused" and e.involved_object.name == "agent-a" for e in events)


async def test_token_of_another_service_account_is_refused(
    cluster: Cluster, endpoint: Endpoint, tmp_path: Path
) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("intruder", node, service_account="other")
    answer = await _ask(endpoint, tmp_path, cluster.token("other", "intruder"), node)
    assert isinstance(answer, agent_identity.Refused)
    assert "not of the agents' ServiceAccount" in str(answer)


async def test_pod_without_the_agent_labels_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("lookalike", node, labels={"app.kubernetes.io/component": "agent"})
    answer = await _ask(endpoint, tmp_path, cluster.token("agent", "lookalike"), node)
    assert isinstance(answer, agent_identity.Refused)
    assert "is not an agent pod of this release" in str(answer)


async def test_token_for_another_audience_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("agent-a", node)
    answer = await _ask(
        endpoint, tmp_path, cluster.token("agent", "agent-a", audience="https://kubernetes.default.svc"), node
    )
    assert isinstance(answer, agent_identity.Refused)
    assert f"not valid for audience {AUDIENCE!r}" in str(answer)


async def test_token_not_bound_to_a_pod_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    answer = await _ask(endpoint, tmp_path, cluster.token("agent", None), node)
    assert isinstance(answer, agent_identity.Refused)
    assert "not bound to a pod" in str(answer)


async def test_token_of_a_deleted_pod_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("agent-a", node)
    token = cluster.token("agent", "agent-a")
    kclient.CoreV1Api(cluster.api).delete_namespaced_pod("agent-a", cluster.namespace, grace_period_seconds=0)
    answer = await _ask(endpoint, tmp_path, token, node)
    assert isinstance(answer, agent_identity.Refused)
    assert "not valid for audience" in str(answer) or "no longer exists" in str(answer)


async def test_garbage_token_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    answer = await _ask(endpoint, tmp_path, "not-a-token", next(iter(cluster.nodes)))
    assert isinstance(answer, agent_identity.Refused)
    assert "(401)" in str(answer) and "not valid" in str(answer)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _resigned(cp: ControlPlane, token: str, shift: int) -> str:
    """`token` with its times moved `shift` seconds, signed again with the API server's own key."""
    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for name in ("exp", "iat", "nbf"):
        claims[name] += shift
    signed = f"{header}.{_b64(json.dumps(claims).encode())}"
    key = serialization.load_pem_private_key((cp.dir / "pki" / "sa.key").read_bytes(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):  # RS256
        return f"{signed}.{_b64(key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256()))}"
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # ES256: r and s, 32 bytes each, not DER
    r, s = utils.decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signed}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


async def test_expired_token_is_refused(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("agent-a", node)
    valid = cluster.token("agent", "agent-a")
    # The re-signing itself is right: the same claims re-signed with unchanged times are accepted.
    accepted = await _ask(endpoint, tmp_path, _resigned(cluster.cp, valid, 0), node)
    assert isinstance(accepted, wire.Credentials), accepted
    answer = await _ask(endpoint, tmp_path, _resigned(cluster.cp, valid, -7200), node)
    assert isinstance(answer, agent_identity.Refused)
    assert "(401)" in str(answer) and "expired" in str(answer)


async def test_unrenewed_password_expires(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> None:
    node = next(iter(cluster.nodes))
    cluster.pod("agent-a", node)
    answer = await _ask(endpoint, tmp_path, cluster.token("agent", "agent-a"), node)
    assert isinstance(answer, wire.Credentials)
    endpoint.verifier._deadlines[node] = time.monotonic() - 1  # as if its ttl had run out
    await endpoint.verifier.sweep()
    with pytest.raises(StoreUnavailable, match="authentication failed"):
        await (await _as(endpoint, answer.user, answer.password)).close()


# --- the agent's side: a real `discoverd agent` that holds nothing but its pod's token ---------------

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
SLEEP = {"command": sys.executable, "argv": ["-c", "import time\nwhile True: time.sleep(3600)"]}


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None


async def _running(admin: Store, server: str, instance: str) -> tuple[int, int] | None:
    entry = await admin.get(keys.instance_status(admin.prefix, server, "web", instance))
    doc = entry.document if entry is not None else None
    if not isinstance(doc, documents.InstanceStatus) or doc.phase != "Running" or not doc.pid:
        return None
    start = _start_time(doc.pid)
    return (doc.pid, start) if start is not None else None


async def _until(what: str, check: Callable[[], Awaitable[T | None]], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@dataclass
class RunningAgent:
    node: str
    admin: Store
    token_file: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    pids: list[int]

    async def assign(self, *instances: str) -> None:
        doc = documents.Server.model_validate({"service_instances": [{"name": "web", "id": i} for i in instances]})
        await self.admin.put(keys.server_config(self.admin.prefix, self.node), doc)

    async def running(self, instance: str, timeout: float = 60) -> tuple[int, int]:
        found = await _until(f"{instance} running", lambda: _running(self.admin, self.node, instance), timeout)
        self.pids.append(found[0])
        return found

    def renewals(self) -> int:
        return _count(self.log_path, "Renewed node credentials")


@contextlib.asynccontextmanager
async def _agent(cluster: Cluster, endpoint: Endpoint, tmp_path: Path) -> AsyncIterator[RunningAgent]:
    """A real agent for server = the first node, in pod agent-a, assigned web/i1 (i2 configured, not assigned)."""
    node = next(iter(cluster.nodes))
    cluster.pod("agent-a", node)
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token("agent", "agent-a"))
    admin = Store(await etcd_client.connect(endpoint.root))
    prefix = endpoint.root.prefix
    await admin.put(keys.version_config(prefix, "web", "1.0"), documents.Version.model_validate(
        {"name": "web", "run_script": SLEEP, "min_healthy_seconds": 0}
    ))  # fmt: skip
    for i in ("i1", "i2"):
        await admin.put(keys.instance_config(prefix, "web", i), documents.Instance.model_validate(
            {"name": "web", "service_version": "1.0"}
        ))  # fmt: skip
    log_path = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_")}  # no etcd user of its own
    argv = [
        DISCOVERD, "--etcd-endpoints", endpoint.root.describe(), "--prefix", prefix, "agent",
        "--server-id", node, "--state-dir", str(tmp_path / "state"), "--cgroups", "none", "--metrics-address", "",
        "--identity-url", endpoint.url, "--identity-token-file", str(token_file),
        "--identity-ca-file", str(endpoint.ca_file),
    ]  # fmt: skip
    agent = RunningAgent(node, admin, token_file, log_path, _spawn(argv, env, log_path), [])
    try:
        await agent.assign("i1")
        yield agent
        assert agent.process.poll() is None, "the agent exited"
    finally:
        agent.process.terminate()
        agent.process.wait(timeout=20)
        for pid in agent.pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        await admin.close()


async def test_agent_renews_its_credentials_without_restarting_instances(
    cluster: Cluster, endpoint: Endpoint, tmp_path: Path
) -> None:
    endpoint.verifier.settings = dataclasses.replace(endpoint.verifier.settings, ttl=4)  # renewed every 2 s
    async with _agent(cluster, endpoint, tmp_path) as agent:
        before = await agent.running("i1")
        await _until("two renewals", lambda: _at_least(agent.renewals, 2), timeout=30)
        # Still reading and writing with the renewed password: a new instance is started and reported.
        await agent.assign("i1", "i2")
        await agent.running("i2")
        assert await _running(agent.admin, agent.node, "i1") == before, "i1 was restarted"


async def test_agent_asks_again_at_once_when_its_password_was_replaced(
    cluster: Cluster, endpoint: Endpoint, tmp_path: Path
) -> None:
    async with _agent(cluster, endpoint, tmp_path) as agent:  # ttl 120 s: not due for a minute
        before = await agent.running("i1")
        # Someone with the pod's token (root on its node) asks too: the agent's password is replaced.
        stolen = await _ask(endpoint, tmp_path, agent.token_file.read_text(), agent.node)
        assert isinstance(stolen, wire.Credentials)
        await agent.assign("i1", "i2")
        await agent.running("i2", timeout=30)
        assert agent.renewals() >= 1
        assert await _running(agent.admin, agent.node, "i1") == before, "i1 was restarted"


async def _at_least(count: Callable[[], int], wanted: int) -> bool:
    return count() >= wanted


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)


def _count(log_path: Path, text: str) -> int:
    return log_path.read_text(errors="replace").count(text)
