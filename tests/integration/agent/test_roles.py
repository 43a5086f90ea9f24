"""Server roles follow assignment (`store/auth.py`, `controller/roles.py`), against a real etcd with auth on.

A server's etcd user reads the services and instances its server document
lists and nothing else, writes one status key per listed instance, one
listing per listed service and its agent key and nothing else; the
controller grants a newly listed service and revokes a removed one; an agent
that asks before the grant waits for it without stopping anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.embedded_etcd import EtcdServer
from discoverd.errors import Conflict, PermissionDenied
from discoverd.schema import documents, keys
from discoverd.store import auth, leases
from discoverd.store.typed import Write
from support.cli import discoverd
from support.etcd import RawEtcd
from support.etcd_auth import ROOT_PASSWORD, add_server, auth_etcd, bootstrap, store_as
from support.wait import async_wait_until, wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
Node = Any  # conftest.Node: a server's configuration, status, state directory and agents
STATUS = documents.InstanceStatus.model_validate(
    {"phase": "Running", "since": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
)


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """This module's etcd has auth on (it replaces the session's for the fixtures built on it)."""
    with auth_etcd(tmp_path_factory.mktemp("roles-etcd") / "data") as server:
        yield server


@pytest.fixture
def root(etcd_server: EtcdServer, prefix: str) -> dict[str, str]:
    return bootstrap(etcd_server, prefix)


@pytest.fixture
def node(node: Node, etcd_server: EtcdServer) -> Node:
    """Server node-1; its configuration is written as root, its agents get their own user (`login`)."""
    node.etcd = RawEtcd(etcd_server.endpoint, "root", ROOT_PASSWORD)
    return node


def login(monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]) -> None:
    """Agents this test starts log in as `credentials`' user (the `discoverd` CLI calls pass root's own)."""
    monkeypatch.setenv("DISCOVERD_ETCD_USER", credentials["DISCOVERD_ETCD_USER"])
    monkeypatch.setenv("DISCOVERD_ETCD_PASSWORD", credentials["DISCOVERD_ETCD_PASSWORD"])
    monkeypatch.setenv("DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD", "true")  # a loopback etcd without TLS


@contextlib.contextmanager
def controller(root: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `discoverd controller` process with etcd's root user (the one etcd lets change roles)."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [DISCOVERD, "controller", "--metrics-address", ""],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **root},
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def sleeper(n: Node, service: str, *versions: str) -> None:
    for version in versions:
        n.version(service, version, run_script=n.py(n.sleep_forever, version), min_healthy_seconds=0.3)


async def refused(operation: Callable[[], Awaitable[object]]) -> bool:
    try:
        await operation()
    except PermissionDenied:
        return True
    return False


async def test_a_server_reads_and_writes_exactly_its_assignment(root: dict[str, str], node: Node, prefix: str) -> None:
    sleeper(node, "web", "1.0")
    sleeper(node, "db", "1.0")
    node.instance("web", "a", "1.0")
    node.instance("db", "b", "1.0")
    node.server(("web", "a"))
    node.put("servers/node-2/config/details", {"service_instances": [{"name": "db", "id": "b"}]})
    node.put("servers/node-2/status/instances/db/b", STATUS.model_dump_json())
    async with store_as(add_server(root, "node-1")) as store:
        # Its assignment: readable.
        assert await store.get(keys.version_config(prefix, "web", "1.0")) is not None
        assert await store.get(keys.instance_config(prefix, "web", "a")) is not None
        assert await store.get(keys.server_config(prefix, "node-1")) is not None
        # Another service's version document (env values included), another instance, another server.
        for key in (
            keys.version_config(prefix, "db", "1.0"),
            keys.instance_config(prefix, "db", "b"),
            keys.instance_status(prefix, "node-2", "db", "b"),
            keys.server_config(prefix, "node-2"),
        ):
            assert await refused(lambda k=key: store.get(k)), key
        # Exactly its own status keys, under its lease.
        lease = await leases.grant(store, 10)
        agent = documents.AgentStatus.model_validate(
            {"hostname": "h", "agent_version": "1", "started_at": STATUS.since, "heartbeat": STATUS.since}
        )
        await store.put(keys.agent_status(prefix, "node-1"), agent, lease=lease)
        await store.put(keys.instance_status(prefix, "node-1", "web", "a"), STATUS, lease=lease)
        # Its listing of web, created only when missing (a compare: read as well as write).
        listing = Write(keys.listing(prefix, "web", "node-1"), b"{}", expect=0)
        await store.apply([listing])
        with pytest.raises(Conflict):
            await store.apply([listing])
        for key in (keys.listing(prefix, "db", "node-1"), keys.listing(prefix, "web", "node-2")):
            assert await refused(lambda k=key: store.apply([Write(k, b"{}", expect=0)])), key
        for key in (
            keys.instance_status(prefix, "node-1", "web", "made-up"),  # one more key under its own prefix
            keys.instance_status(prefix, "node-1", "db", "b"),  # an instance it does not run
            keys.instance_status_prefix(prefix, "node-1") + "x/y/z",
            keys.servers_prefix(prefix) + "node-1/status/other",
            keys.instance_status(prefix, "node-2", "db", "b"),
        ):
            assert await refused(lambda k=key: store.put(k, STATUS, lease=lease)), key
        await leases.revoke(store, lease)


def _running(n: Node, service: str, instance: str, version: str = "1.0") -> bool:
    s = n.status(service, instance)
    return s is not None and s["phase"] == "Running" and s["version"] == version


async def test_the_controller_grants_a_new_service_and_revokes_a_removed_instance(
    root: dict[str, str], node: Node, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeper(node, "web", "1.0")
    sleeper(node, "db", "1.0")
    node.instance("web", "a", "1.0")
    node.instance("db", "d1", "1.0")
    node.server(("web", "a"))
    credentials = add_server(root, "node-1")
    login(monkeypatch, credentials)
    with controller(root, tmp_path / "controller.log"):
        agent = node.agent()
        wait_until(lambda: _running(node, "web", "a"), 30, what="web/a Running")
        a = node.wait_process("web", "a")
        # Its agent lists node-1 under web: the index a rollout start reads.
        listing = {s: keys.listing(prefix, s, "node-1") for s in ("web", "db")}
        assert node.etcd.get(listing["web"]) == b"{}"
        # The server document gains a service: the agent runs it, nobody granted anything by hand.
        node.server(("web", "a"), ("db", "d1"))
        wait_until(lambda: _running(node, "db", "d1"), 30, what="db/d1 Running on node-1")
        assert node.process("web", "a") == a
        wait_until(lambda: node.etcd.get(listing["db"]) is not None, 10, what="node-1 listed under db")
        # It loses web/a: stopped, its status key gone, and with it every right on web.
        node.server(("db", "d1"))
        wait_until(lambda: node.process("web", "a") is None, 30, what="web/a stopped")
        wait_until(lambda: node.status("web", "a") is None, 30, what="web/a's status key deleted")
        assert node.etcd.get(listing["web"]) is None, "its listing goes before its last status key"
        assert node.etcd.get(listing["db"]) is not None
        async with store_as(credentials) as store:
            gone = (
                lambda: store.get(keys.version_config(prefix, "web", "1.0")),
                lambda: store.get(keys.instance_config(prefix, "web", "a")),
                lambda: store.put(keys.instance_status(prefix, "node-1", "web", "a"), STATUS),
            )
            for operation in gone:
                await async_wait_until(lambda o=operation: refused(o), 15, interval=0.1)
            assert await store.get(keys.version_config(prefix, "db", "1.0")) is not None
        # Its status is still written (its lease never held a key its user could not write, which
        # would make etcd refuse every put on it): a restart of d1 shows up.
        d1 = node.wait_process("db", "d1")
        node.instance("db", "d1", "1.0", run_script={"command": "", "argv": ["again"]})
        wait_until(lambda: node.process("db", "d1") not in (None, d1), 30, what="db/d1 restarted")
        wait_until(lambda: _running(node, "db", "d1") and node.status("db", "d1")["pid"] != d1[0], 30, what="status")
        assert agent.process is not None and agent.process.poll() is None
        # Its lease can be revoked (etcd wants write on every key attached to it): its keys go at once.
        assert agent.terminate() == 0
        assert "Left the lease to expire" not in agent.log()
        assert node.etcd.get(keys.agent_status(prefix, "node-1")) is None
        assert node.status("db", "d1") is None


async def test_a_refused_new_service_is_read_again_and_never_stops_the_others(
    root: dict[str, str], node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeper(node, "web", "1.0", "2.0")
    sleeper(node, "db", "1.0")
    node.instance("web", "a", "1.0")
    node.instance("db", "d1", "1.0")
    node.server(("web", "a"))
    login(monkeypatch, add_server(root, "node-1"))
    # No controller: nothing grants db to node-1 until `discoverd auth sync`.
    agent = node.agent()
    wait_until(lambda: _running(node, "web", "a"), 30, what="web/a Running")
    node.server(("web", "a"), ("db", "d1"))
    agent.wait_log("Waiting for permission to read")
    agent.wait_log("Waiting for permission to write status")  # d1's status key is not granted either
    # Meanwhile the others go on: web/a upgrades, and its status says so.
    node.instance("web", "a", "2.0")
    wait_until(lambda: _running(node, "web", "a", "2.0"), 30, what="web/a Running 2.0")
    assert node.process("db", "d1") is None
    synced = discoverd("auth", "sync", env=root)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout == "Updated 1 server role\n"
    # Read again with back-off: it runs without any restart or change.
    wait_until(lambda: _running(node, "db", "d1"), 30, what="db/d1 Running after the grant")
    assert "Read keys etcd had refused" in agent.log()
    assert agent.process is not None and agent.process.poll() is None


def test_add_server_grants_what_the_server_document_lists_now(root: dict[str, str], node: Node) -> None:
    sleeper(node, "web", "1.0")
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    result = discoverd("auth", "add-server", "node-1", env=root)
    assert result.returncode == 0, result.stderr
    assert f"read {node.prefix}/services/web/versions/" in result.stderr
    assert f"write {node.prefix}/servers/node-1/status/instances/web/a" in result.stderr


def test_a_controller_that_may_not_change_roles_says_so_once_and_goes_on(
    root: dict[str, str], node: Node, tmp_path: Path
) -> None:
    result = discoverd("auth", "add-admin", "operator", env=root)
    assert result.returncode == 0, result.stderr
    admin = {**root, **dict(line.split("=", 1) for line in result.stdout.splitlines())}
    log_path = tmp_path / "controller.log"
    with controller(admin, log_path) as process:
        wait_until(lambda: "Not keeping server roles in step" in log_path.read_text(), 20, what="the warning")
        assert "Became the acting controller" in log_path.read_text()
        assert process.poll() is None
    assert log_path.read_text().count("Not keeping server roles in step") == 1


async def test_auth_sync_replaces_the_prefix_wide_grants_of_before(root: dict[str, str], node: Node) -> None:
    prefix = node.prefix
    sleeper(node, "web", "1.0")
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    add_server(root, "node-1")
    role = auth.server_role(prefix, "node-1")
    before = [
        auth.Grant(f"{prefix}/services/", auth.Access.READ),
        auth.Grant(f"{prefix}/servers/node-1/status/", auth.Access.READWRITE),
    ]
    async with store_as(root) as store:
        await auth.ensure_role(store.client, role, before)  # as the old `add-server` made it
    synced = discoverd("auth", "sync", env=root)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout == "Updated 1 server role\n"
    async with store_as(root) as store:
        held = await auth.role_permissions(store.client, role)
    assert held is not None
    assert {(k.decode(), e.decode(), a.name) for (k, e), a in held.items()} == {
        (f"{prefix}/servers/node-1/config/", f"{prefix}/servers/node-1/config0", "READ"),
        (f"{prefix}/servers/node-1/status/agent", "", "WRITE"),
        (f"{prefix}/grants/node-1/", f"{prefix}/grants/node-10", "READ"),
        (f"{prefix}/services/web/versions/", f"{prefix}/services/web/versions0", "READ"),
        (f"{prefix}/services/web/instances/a/config/details", "", "READ"),
        (f"{prefix}/servers/node-1/status/instances/web/a", "", "WRITE"),
        (f"{prefix}/services/web/servers/node-1", "", "READWRITE"),
    }
    again = discoverd("auth", "sync", env=root)
    assert again.stdout == "Updated 0 server roles\n"


async def test_a_server_added_while_the_controller_runs_follows_its_next_assignment(
    root: dict[str, str], node: Node, tmp_path: Path
) -> None:
    prefix = node.prefix
    sleeper(node, "web", "1.0")
    sleeper(node, "db", "1.0")
    node.instance("web", "a", "1.0")
    node.instance("db", "b", "1.0")
    node.server(("web", "a"))
    log_path = tmp_path / "controller.log"
    with controller(root, log_path):
        wait_until(lambda: "Keeping server roles in step" in log_path.read_text(), 20, what="the first resync")
        credentials = add_server(root, "node-1")  # after the controller looked for users
        node.server(("web", "a"), ("db", "b"))
        async with store_as(credentials) as store:
            version = keys.version_config(prefix, "db", "1.0")
            await async_wait_until(lambda: _readable(store, version), 10, interval=0.1, what="db granted")


async def _readable(store: Any, key: str) -> bool:
    return not await refused(lambda: store.get(key))
