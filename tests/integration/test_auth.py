"""Per-server etcd identity (`discoverd auth`) against a real etcd with authentication on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd.embedded_etcd import EtcdServer
from discoverd.errors import StoreUnavailable
from discoverd.schema import documents, keys, logaccess
from discoverd.store import leases
from discoverd.store.typed import Store
from support import cgroups as test_cgroups
from support import etcd_auth
from support.cli import discoverd
from support.etcd_auth import ROOT_PASSWORD, add_server, env_of, store_as
from support.wait import wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd_auth.auth_etcd(tmp_path_factory.mktemp("auth-etcd") / "data") as etcd:
        yield etcd


@pytest.fixture
def root(auth_etcd: EtcdServer, prefix: str) -> dict[str, str]:
    env = env_of(auth_etcd, prefix, "root", ROOT_PASSWORD)
    result = discoverd("auth", "bootstrap", env=env)
    assert result.returncode == 0, result.stderr
    assert f"role {prefix}/admin: readwrite {prefix}/" in result.stdout
    return env


def apply_config(root: dict[str, str], instances: dict[str, list[str]]) -> None:
    docs: list[dict[str, object]] = [
        {
            "kind": "ServiceVersion",
            "spec": {
                "service": "web",
                "version": "1.0",
                "runScript": {"command": sys.executable, "argv": ["-c", "import time\nwhile True: time.sleep(3600)"]},
                "minHealthySeconds": 0.3,
            },
        }
    ]
    for server, ids in instances.items():
        docs += [{"kind": "ServiceInstance", "spec": {"service": "web", "id": i, "serviceVersion": "1.0"}} for i in ids]
        docs.append(
            {"kind": "Server", "spec": {"id": server, "serviceInstances": [{"name": "web", "id": i} for i in ids]}}
        )
    text = "".join("---\n" + json.dumps({"apiVersion": "discoverd.io/v1alpha1", **d}) + "\n" for d in docs)
    result = discoverd("apply", "-f", "-", input=text, env=root)
    assert result.returncode == 0, result.stderr


def test_bootstrap_is_idempotent_and_a_server_user_is_created_once(root: dict[str, str], prefix: str) -> None:
    again = discoverd("auth", "bootstrap", env=root)
    assert again.returncode == 0, again.stderr
    node = add_server(root, "node-1")
    assert node["DISCOVERD_ETCD_USER"] == f"{prefix}/server/node-1"
    assert len(node["DISCOVERD_ETCD_PASSWORD"]) >= 24
    twice = discoverd("auth", "add-server", "node-1", env=root)
    assert twice.returncode == 1
    assert twice.stderr == f"error: etcd user '{prefix}/server/node-1' already exists\n"
    bad = discoverd("auth", "add-server", "../x", env=root)
    assert bad.returncode == 2 and "'../x'" in bad.stderr


def test_adding_users_needs_root(root: dict[str, str], prefix: str) -> None:
    node = add_server(root, "node-1")
    result = discoverd("auth", "add-server", "node-2", env=node)
    assert result.returncode == 1
    assert "permission denied" in result.stderr and result.stderr.count("\n") == 1


async def test_a_server_writes_only_its_own_status(root: dict[str, str], prefix: str) -> None:
    apply_config(root, {"node-1": ["a"], "node-2": ["b"]})
    node = add_server(root, "node-1")
    user = node["DISCOVERD_ETCD_USER"]
    async with store_as(node) as store:
        # What its agent needs works: its configuration, the services' documents, its own status with a lease.
        assert (await store.get(keys.server_config(prefix, "node-1"))) is not None
        assert (await store.get(keys.instance_config(prefix, "web", "a"))) is not None
        assert (await store.get(keys.version_config(prefix, "web", "1.0"))) is not None
        lease = await leases.grant(store, 10)
        status = documents.InstanceStatus.model_validate(
            {"phase": "Running", "since": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
        )
        await store.put(keys.instance_status(prefix, "node-1", "web", "a"), status, lease=lease)
        await leases.revoke(store, lease)
        # Nothing else: another server's status or configuration, any configuration at all.
        denied = {
            "another server's status": keys.instance_status(prefix, "node-2", "web", "b"),
            "its own server document": keys.server_config(prefix, "node-1"),
            "another server's document": keys.server_config(prefix, "node-2"),
            "an instance document": keys.instance_config(prefix, "web", "a"),
            "a version document": keys.version_config(prefix, "web", "1.0"),
        }
        for what, key in denied.items():
            with pytest.raises(StoreUnavailable) as error:
                await store.put(key, status)
            assert f"permission denied: etcd user {user!r} has no role allowing this request" in str(error.value), what
        with pytest.raises(StoreUnavailable, match="permission denied"):
            await store.get(keys.server_config(prefix, "node-2"))
    # The CLI says the same in one line.
    result = discoverd("apply", "-f", "-", input=_instance_yaml(), env=node)
    assert result.returncode == 1
    assert "permission denied" in result.stderr and result.stderr.count("\n") == 1


def _instance_yaml() -> str:
    return (
        "apiVersion: discoverd.io/v1alpha1\nkind: ServiceInstance\nspec: {service: web, id: a, serviceVersion: '2.0'}\n"
    )


def _start_time(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[19])


def test_an_agent_with_its_server_credentials_runs_its_instances(
    root: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    apply_config(root, {"node-1": ["a", "b"], "node-2": ["c"]})
    node = add_server(root, "node-1")
    password = node.pop("DISCOVERD_ETCD_PASSWORD")
    password_file = tmp_path / "etcd-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    argv = [DISCOVERD, "--etcd-password-file", str(password_file), "agent", "--server-id", "node-1"]
    # A cgroup root of its own (tests/support/cgroups.py): never the machine's `/discoverd`.
    cgroup_root = test_cgroups.new_root()
    argv += ["--state-dir", str(tmp_path / "state"), "--backoff-base", "0.2", "--cgroup-root", cgroup_root]
    log_path = tmp_path / "agent.log"
    pids: set[int] = set()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_ETCD_PASSWORD")}
    with open(log_path, "ab") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={**environment, **node})
    try:
        # The password is in no process listing, nor in the agent's environment.
        for listing in ("cmdline", "environ"):
            assert password.encode() not in Path(f"/proc/{agent.pid}/{listing}").read_bytes()

        def running() -> dict[str, int] | None:
            result = discoverd("get", "instances", "-o", "json", env=root)
            assert result.returncode == 0, result.stderr
            found = {
                item["spec"]["id"]: s.get("pid")
                for item in json.loads(result.stdout)["items"]
                for s in item["status"]["servers"]
                if s["server"] == "node-1" and s["phase"] == "Running"
            }
            pids.update(p for p in found.values() if p)
            return found if set(found) == {"a", "b"} else None

        found = wait_until(running, 60, interval=0.3, what="a and b Running on node-1")
        assert all(_start_time(pid) is not None for pid in found.values())
        assert agent.poll() is None
        assert "permission denied" not in log_path.read_text(errors="replace")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        test_cgroups.remove_root(cgroup_root)


def test_password_file_errors_are_one_line(tmp_path: Path) -> None:
    missing = discoverd("--etcd-user", "root", "--etcd-password-file", str(tmp_path / "nope"), "get", "servers")
    assert missing.returncode == 1
    assert (
        missing.stderr == f"error: --etcd-password-file: cannot read {tmp_path / 'nope'}: No such file or directory\n"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    result = discoverd("--etcd-user", "root", "--etcd-password-file", str(empty), "get", "servers")
    assert result.stderr == f"error: --etcd-password-file: {empty} is empty\n"
    both = discoverd("--etcd-password", "x", "--etcd-password-file", str(empty), "get", "servers")
    assert both.stderr == "error: give --etcd-password or --etcd-password-file, not both\n"


def test_root_password_from_a_file_works(root: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "root-password"
    secret.write_text(ROOT_PASSWORD + "\n")
    secret.chmod(0o600)
    env = {k: v for k, v in root.items() if k != "DISCOVERD_ETCD_PASSWORD"}
    result = discoverd("--etcd-password-file", str(secret), "auth", "bootstrap", env=env)
    assert result.returncode == 0, result.stderr


def add_logs_reader(root: dict[str, str], name: str) -> dict[str, str]:
    """The credentials `auth add-logs-reader` prints, as an environment."""
    result = discoverd("auth", "add-logs-reader", name, env=root)
    assert result.returncode == 0, result.stderr
    return {**root, **dict(line.split("=", 1) for line in result.stdout.splitlines())}


async def _write_grant(store: Store, server: str) -> None:
    lease = await leases.grant(store, 10)
    grant = logaccess.LogGrant(service="web", instance="a")
    digest = logaccess.token_sha256(logaccess.new_token()) or ""
    await store.put(keys.log_grant(store.prefix, server, digest), grant, lease=lease)


async def test_only_a_logs_reader_or_admin_writes_log_grants(root: dict[str, str], prefix: str) -> None:
    apply_config(root, {"node-1": ["a"]})
    node = add_server(root, "node-1")
    reader = add_logs_reader(root, "alice")
    assert reader["DISCOVERD_ETCD_USER"] == "alice"
    async with store_as(node) as store:
        # A server reads the grants for itself (its agent checks them), and writes none, not even its own.
        assert (await store.snapshot(keys.log_grants_prefix(prefix, "node-1"))).entries == {}
        for server in ("node-1", "node-2"):
            with pytest.raises(StoreUnavailable, match="permission denied"):
                await _write_grant(store, server)
        with pytest.raises(StoreUnavailable, match="permission denied"):
            await store.get(keys.log_grant(prefix, "node-2", "0" * 64))
    async with store_as(reader) as store:
        await _write_grant(store, "node-1")
        assert (await store.get(keys.server_config(prefix, "node-1"))) is not None  # finds where instances run
        status = documents.AgentStatus.model_validate(
            {
                "hostname": "h",
                "agent_version": "0",
                "started_at": "2026-01-01T00:00:00Z",
                "heartbeat": "2026-01-01T00:00:00Z",
            }
        )
        for key in (keys.instance_config(prefix, "web", "a"), keys.agent_status(prefix, "node-1")):
            with pytest.raises(StoreUnavailable, match="permission denied"):
                await store.put(key, status)


def test_a_logs_reader_reads_an_agent_running_with_its_server_credentials(
    root: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    apply_config(root, {"node-1": ["a"]})
    node = add_server(root, "node-1")
    reader = add_logs_reader(root, "bob")
    cgroup_root = test_cgroups.new_root()
    argv = [DISCOVERD, "agent", "--server-id", "node-1", "--state-dir", str(tmp_path / "state")]
    argv += ["--cgroup-root", cgroup_root, "--metrics-address", ""]
    pid: int | None = None
    with open(tmp_path / "agent.log", "ab") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={**os.environ, **node})
    try:

        def running() -> int | None:
            result = discoverd("get", "instances", "-o", "json", env=root)
            for item in json.loads(result.stdout)["items"] if result.returncode == 0 else []:
                for s in item["status"]["servers"]:
                    if s["phase"] == "Running":
                        return int(s["pid"])
            return None

        pid = wait_until(running, 60, interval=0.3, what="a Running on node-1")
        # The run script prints nothing: the agent's header line is the log.
        result = wait_until(
            lambda: (r := discoverd("logs", "web/a", env=reader)).returncode == 0 and r, 20, what="logs read"
        )
        assert "discoverd: running" in result.stdout
    finally:
        agent.kill()
        agent.wait(10)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        test_cgroups.remove_root(cgroup_root)
