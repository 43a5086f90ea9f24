"""Fixtures for agent tests: a real `discoverd agent` process, seed JSON written with a plain etcd client.

Every process a test starts is ended by pid in teardown: the agents, and the
process group of every instance recorded in the state directory (instances
outlive the agent on purpose, so the fixture has to end them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from discoverd import embedded_etcd
from discoverd.agent import observe
from support import cgroups as test_cgroups
from support.etcd import RawEtcd
from support.wait import wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
PY = sys.executable

SLEEP_FOREVER = "import time\nwhile True: time.sleep(3600)"


def py(code: str, *args: str, **script: Any) -> dict[str, Any]:
    """A seed Script running Python code (argv only, no shell)."""
    return {"command": PY, "argv": ["-c", code, *args], **script}


@dataclass
class Agent:
    """One `discoverd agent` subprocess."""

    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        return wait_until(lambda: text in self.log() and self.log(), timeout, what=f"{text!r} in the agent log")

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Node:
    """One server's world: etcd, prefix, state directory, its agents."""

    etcd: RawEtcd
    endpoint: str
    prefix: str
    state_dir: Path
    server_id: str = "node-1"
    agents: list[Agent] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    cgroup_root: str = field(default_factory=test_cgroups.new_root)
    """A cgroup root of this test's own (see support/cgroups.py), removed by `cleanup`."""

    python = PY
    sleep_forever = SLEEP_FOREVER

    @staticmethod
    def py(code: str, *args: str, **script: Any) -> dict[str, Any]:
        return py(code, *args, **script)

    @staticmethod
    def group_alive(pgid: int) -> bool:
        return group_alive(pgid)

    @staticmethod
    def wait_gone(pgid: int, timeout: float = 15.0) -> None:
        wait_gone(pgid, timeout)

    # configuration, written as the seed's JSON by a plain etcd client

    def put(self, key: str, value: Any) -> int:
        data = value if isinstance(value, str | bytes) else json.dumps(value)
        return self.etcd.put(f"{self.prefix}/{key}", data)

    def server(self, *instances: tuple[str, str]) -> int:
        refs = [{"name": s, "id": i} for s, i in instances]
        return self.put(f"servers/{self.server_id}/config/details", {"service_instances": refs})

    def version(self, service: str, version: str, **doc: Any) -> int:
        return self.put(f"services/{service}/versions/{version}/config/details", {"name": service, **doc})

    def instance(self, service: str, instance: str, version: str, **doc: Any) -> int:
        body = {"name": service, "service_version": version, **doc}
        return self.put(f"services/{service}/instances/{instance}/config/details", body)

    # what the agent reports

    def status(self, service: str, instance: str) -> dict[str, Any] | None:
        raw = self.etcd.get(f"{self.prefix}/servers/{self.server_id}/status/instances/{service}/{instance}")
        return None if raw is None else dict(json.loads(raw))

    def wait_phase(self, service: str, instance: str, *phases: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.status(service, instance)
            return s if s is not None and s["phase"] in phases else None

        return wait_until(check, timeout, interval=0.1, what=f"{service}/{instance} in phase {phases}")

    # the state directory

    def instance_dir(self, service: str, instance: str) -> Path:
        return self.state_dir / "instances" / service / instance

    def log_dir(self, service: str, instance: str) -> Path:
        """Where the agent writes the instance's step logs: its own directory, out of the run script's reach."""
        return self.state_dir / "logs" / service / instance

    def version_dir(self, service: str, version: str) -> Path:
        return self.state_dir / "versions" / service / version

    def record_path(self, service: str, instance: str) -> Path:
        """The saved state of an instance: outside the instance directory, which the run script can write."""
        return self.state_dir / "records" / service / f"{instance}.json"

    def record(self, service: str, instance: str) -> dict[str, Any] | None:
        """The saved `InstanceRecord` as JSON (`process`, `current`, `rejected`...)."""
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return dict(json.loads(self.record_path(service, instance).read_text())["state"])
        return None

    def edit_record(self, service: str, instance: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the saved state in place (as an agent killed at some moment would have left it)."""
        path = self.record_path(service, instance)
        saved = json.loads(path.read_text())
        change(saved["state"])
        path.write_text(json.dumps(saved))

    def process(self, service: str, instance: str) -> tuple[int, int] | None:
        """(pid, start time) of the live run process the record names, or None."""
        record = self.record(service, instance)
        p = record and record.get("process")
        if not p or not observe.alive(p["pid"], p["start_time"]):
            return None
        return int(p["pid"]), int(p["start_time"])

    def wait_process(self, service: str, instance: str, timeout: float = 30.0) -> tuple[int, int]:
        return wait_until(lambda: self.process(service, instance), timeout, what=f"{service}/{instance} running")

    # agents

    def agent(self, *args: str, start: bool = True) -> Agent:
        argv = [
            DISCOVERD,
            "--etcd-endpoints",
            self.endpoint,
            "--prefix",
            self.prefix,
            "--etcd-timeout",
            "2",
            "agent",
            "--server-id",
            self.server_id,
            "--state-dir",
            str(self.state_dir),
            "--backoff-base",
            "0.2",
            "--cgroup-root",
            self.cgroup_root,
            *self.extra_args,
            # Tests run agents side by side: none on the default metrics port unless a test asks.
            *([] if "--metrics-address" in args else ["--metrics-address", ""]),
            *args,
        ]
        a = Agent(argv, self.state_dir.parent / f"agent-{len(self.agents)}.log")
        self.agents.append(a)
        return a.start() if start else a

    def cleanup(self) -> None:
        for a in self.agents:
            a.kill()
        records = [
            *self.state_dir.glob("records/*/*.json"),
            *self.state_dir.glob("instances/*/*/.discoverd/record.json"),
        ]
        for record in records:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(record.read_text())
                p = data.get("state", data).get("process")
                if p and observe.alive(p["pid"], p["start_time"]):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p["pid"], signal.SIGKILL)
        # Daemons that left their group (setsid) still carry their instance directory, which is
        # under this test's own tmp_path: a tag no process of anyone else's has.
        for pid in started_under(self.state_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        test_cgroups.remove_root(self.cgroup_root)


def started_under(state_dir: Path) -> list[int]:
    """Pids of live processes whose DISCOVERD_INSTANCE_DIR, or working directory, lies under `state_dir`.

    (The working directory catches daemons that cleared their environment.)
    """
    dirs = {str(state_dir), str(state_dir.resolve())}
    tags = {b"DISCOVERD_INSTANCE_DIR=" + os.fsencode(d) + b"/" for d in dirs}
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            entries = environ.read_bytes().split(b"\0")
            cwd = os.readlink(environ.parent / "cwd")
            if any(entry.startswith(tag) for entry in entries for tag in tags) or any(
                cwd.startswith(d + "/") for d in dirs
            ):
                found.append(int(environ.parent.name))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # members that are zombies (exited, not yet reaped) do not count
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _node(etcd: embedded_etcd.EtcdServer, prefix: str, tmp_path: Path) -> Iterator[Node]:
    node = Node(RawEtcd(etcd.endpoint), etcd.endpoint, prefix, tmp_path / "state")
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def node(etcd_server: embedded_etcd.EtcdServer, prefix: str, tmp_path: Path) -> Iterator[Node]:
    """A server on the shared etcd."""
    yield from _node(etcd_server, prefix, tmp_path)


@pytest.fixture
def private_node(private_etcd: embedded_etcd.EtcdServer, prefix: str, tmp_path: Path) -> Iterator[Node]:
    """A server on an etcd of its own, for tests that stop, pause or compact it."""
    yield from _node(private_etcd, prefix, tmp_path)


def wait_gone(pgid: int, timeout: float = 15.0) -> None:
    wait_until(lambda: not group_alive(pgid), timeout, what=f"process group {pgid} gone")
