"""Fleet rollouts (DESIGN 2b) with real etcd, real agents, real controllers and real instances.

One fleet per module: 3 `discoverd agent` processes (servers node-1..3, own
state directories) and `discoverd controller` processes, all on one prefix;
each test rolls out its own service of 3 x 3 instances, through the real
`discoverd rollout` command. Health periods are short so the file stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pty
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from discoverd import embedded_etcd
from discoverd.config import EtcdOptions
from discoverd.store import client, watch
from discoverd.store.typed import Store
from integration.agent.conftest import DISCOVERD, Agent, Node
from support.cli import discoverd
from support.etcd import RawEtcd
from support.http import free_port, get, value
from support.wait import wait_until

SERVE = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: time.sleep(3600)"
EXIT_AFTER_1S = "import sys,time\ntime.sleep(1)\nsys.exit(3)"
EXIT_AFTER_2S = "import sys,time\ntime.sleep(2)\nsys.exit(2)"
SERVERS = ("node-1", "node-2", "node-3")


@dataclass
class Fleet:
    endpoint: str
    prefix: str
    root: Path
    nodes: list[Node]
    controllers: list[Agent] = field(default_factory=list)
    metrics: dict[int, str] = field(default_factory=dict)
    """Controller pid -> the base URL of its /metrics, /healthz and /readyz."""
    assigned: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def etcd(self) -> RawEtcd:
        return self.nodes[0].etcd

    def controller(self) -> Agent:
        argv = [DISCOVERD, "--etcd-endpoints", self.endpoint, "--prefix", self.prefix, "--etcd-timeout", "2"]
        port = free_port()
        c = Agent(
            [*argv, "controller", "--lease-ttl", "2", "--metrics-address", f"127.0.0.1:{port}"],
            self.root / f"controller-{len(self.controllers)}.log",
        )
        self.controllers.append(c.start())
        self.metrics[c.pid] = f"http://127.0.0.1:{port}"
        return c

    def acting(self) -> Agent:
        """The controller process that holds the leader key."""

        def find() -> Agent | None:
            raw = self.etcd.get(f"{self.prefix}/controller/leader")
            pid = int(raw.decode().rsplit("/", 1)[1]) if raw else None
            return next((c for c in self.controllers if c.process and c.pid == pid and c.process.poll() is None), None)

        return wait_until(find, 20, what="an acting controller")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return discoverd("--etcd-endpoints", self.endpoint, "--prefix", self.prefix, *args)

    def service(self, name: str, *, bad: bool = False, crash_loop: bool = False) -> list[str]:
        """Versions 1.0 and 2.0 (2.0 exits after 1 s when `bad`), 3 instances per server on 1.0, all Running.

        `crash_loop`: 2.0 exits 2 s after each start, past its agent probation of 0.5 s, so the agent
        counts it as started and restarts it with back-off instead of rolling it back.
        """
        node = self.nodes[0]
        # The agent's own probation: 0.5 s, but 2 s for the bad version, so its exit after 1 s is a rollback.
        new = EXIT_AFTER_1S if bad else EXIT_AFTER_2S if crash_loop else SERVE
        for version, code, probation in (
            ("1.0", SERVE, 0.5),
            ("2.0", new, 2 if bad else 0.5),
        ):
            node.version(name, version, run_script=node.py(code), min_healthy_seconds=probation, stop_timeout=5)
        ids = [f"{name}-{n}" for n in range(1, 10)]
        for i, instance in enumerate(ids):
            node.instance(name, instance, "1.0")
            self.assigned.setdefault(SERVERS[i % 3], []).append((name, instance))
        for n in self.nodes:
            n.server(*self.assigned.get(n.server_id, []))
        for i, instance in enumerate(ids):
            self.nodes[i % 3].wait_phase(name, instance, "Running", timeout=120)
        return ids

    def doc(self, service: str, instance: str) -> dict[str, Any]:
        raw = self.etcd.get(f"{self.prefix}/services/{service}/instances/{instance}/config/details")
        assert raw is not None
        return dict(json.loads(raw))

    def versions(self, service: str, ids: list[str]) -> dict[str, str]:
        return {i: self.doc(service, i)["service_version"] for i in ids}

    def statuses(self, service: str) -> dict[str, dict[str, Any]]:
        """Instance ID -> what its server reports (absent when its agent is offline)."""
        found = {}
        for key, raw in self.etcd.keys(f"{self.prefix}/servers/").items():
            parts = key.split("/")
            if len(parts) >= 3 and parts[-3] == "instances" and parts[-2] == service:
                found[parts[-1]] = dict(json.loads(raw))
        return found

    def rollout(self, service: str) -> dict[str, Any] | None:
        raw = self.etcd.get(f"{self.prefix}/services/{service}/rollout/status")
        return None if raw is None else dict(json.loads(raw))

    def wait_rollout(self, service: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.rollout(service)
            return s if s is not None and s["phase"] in phases else None

        try:
            return wait_until(check, timeout, interval=0.1, what=f"rollout of {service} in {phases}")
        except AssertionError as error:
            logs = "".join(f"\n--- {c.log_path.name}\n{c.log()[-3000:]}" for c in self.controllers)
            raise AssertionError(f"{error}\nstatus: {self.statuses(service)}{logs}") from None

    def all_running_on(self, service: str, ids: list[str], version: str) -> bool:
        s = self.statuses(service)
        return all(i in s and s[i]["phase"] == "Running" and s[i]["version"] == version for i in ids)

    def history(self, service: str, since: int) -> list[tuple[str, str]]:
        """(instance, service_version) of every write to the service's instance documents since `since`."""

        async def read() -> list[tuple[str, str]]:
            store = Store(await client.connect(EtcdOptions(endpoints=self.endpoint, prefix=self.prefix)))
            try:
                now = await store.revision()
                under = f"{self.prefix}/services/{service}/instances/"
                found: list[tuple[str, str]] = []
                if now < since:
                    return found
                async for batch in watch.watch(store, since, under=under, progress_every=0.2):
                    for event in batch:
                        if isinstance(event, watch.Put):
                            doc = json.loads(event.entry.value)
                            found.append((event.entry.key.split("/")[-3], doc["service_version"]))
                    if any(e.revision >= now for e in batch):
                        return found
                return found
            finally:
                await store.close()

        return asyncio.run(read())

    def revision(self) -> int:
        return self.etcd.put(f"{self.prefix}/test/marker", uuid.uuid4().hex)


@contextlib.contextmanager
def running_fleet(etcd_server: embedded_etcd.EtcdServer, root: Path, controllers: int) -> Iterator[Fleet]:
    """An agent on each of `SERVERS` and `controllers` controllers, under a prefix of their own; all ended after."""
    prefix = f"/t-{uuid.uuid4().hex[:10]}"
    nodes = []
    for server_id in SERVERS:
        (root / server_id).mkdir()
        nodes.append(
            Node(RawEtcd(etcd_server.endpoint), etcd_server.endpoint, prefix, root / server_id / "state", server_id)
        )
    f = Fleet(etcd_server.endpoint, prefix, root, nodes)
    try:
        for n in nodes:
            n.agent()
        for _ in range(controllers):
            f.controller()
        yield f
    finally:
        for c in f.controllers:
            c.kill()
        for n in nodes:
            n.cleanup()


@pytest.fixture(scope="module")
def fleet(etcd_server: embedded_etcd.EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(etcd_server, tmp_path_factory.mktemp("fleet"), controllers=2) as f:
        yield f


class Sampler:
    """Samples the service's status keys every 100 ms: the most instances not Running at once."""

    def __init__(self, fleet: Fleet, service: str, ids: list[str]) -> None:
        self.fleet, self.service, self.ids = fleet, service, ids
        self.worst = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self.fleet.statuses(self.service)
            down = sum(1 for i in self.ids if i not in s or s[i]["phase"] != "Running")
            self.worst = max(self.worst, down)
            self.samples += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def stays(predicate: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(0.1)


def start(fleet: Fleet, service: str, *args: str) -> None:
    result = fleet.cli("rollout", "start", service, "--to", "2.0", "--min-healthy-seconds", "1", *args)
    assert result.returncode == 0, result.stderr


def test_canary_pauses_then_batches_respect_max_unavailable(fleet: Fleet) -> None:
    ids = fleet.service("canary")
    with Sampler(fleet, "canary", ids) as sampler:
        start(fleet, "canary", "--canary", "1", "--pause-after-canary", "--max-unavailable", "2")
        paused = fleet.wait_rollout("canary", "Paused")
        assert len(paused["updated"]) == 1 and paused["healthy"] == paused["updated"]
        canary = paused["updated"][0]

        def one_on_new() -> bool:
            on_new = [i for i, v in fleet.versions("canary", ids).items() if v == "2.0"]
            running_new = [i for i, s in fleet.statuses("canary").items() if s["version"] == "2.0"]
            return on_new == [canary] and running_new == [canary]

        stays(one_on_new, 2.0)
        # Two watchers: one on a terminal (a progress bar), one on a pipe (plain lines).
        base = [DISCOVERD, "--etcd-endpoints", fleet.endpoint, "--prefix", fleet.prefix, "rollout", "status", "canary"]
        master, slave = pty.openpty()
        on_tty = subprocess.Popen([*base, "-w"], stdout=slave, stderr=subprocess.STDOUT)
        os.close(slave)
        screen_chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(master, screen_chunks), daemon=True)
        reader.start()
        on_pipe = subprocess.Popen([*base, "-w"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert on_pipe.stdout is not None
        first = on_pipe.stdout.readline()  # both watchers have shown the pause before the resume
        wait_until(lambda: screen_chunks, 30, what="the terminal watcher's first line")
        result = fleet.cli("rollout", "resume", "canary")
        assert result.returncode == 0, result.stderr
        done = fleet.wait_rollout("canary", "Succeeded", "Failed", "Reverted")
        assert on_tty.wait(30) == 0 and on_pipe.wait(30) == 0
        reader.join(10)
        screen = b"".join(screen_chunks).decode(errors="replace")
        lines = [first.rstrip("\n"), *on_pipe.stdout.read().splitlines()]
    assert done["phase"] == "Succeeded", done
    assert sorted(done["healthy"]) == ids and done["skipped"] == []
    assert fleet.all_running_on("canary", ids, "2.0")
    assert sampler.samples > 20 and 1 <= sampler.worst <= 2, (sampler.worst, sampler.samples)
    shown = fleet.cli("rollout", "status", "canary", "-o", "json")
    assert json.loads(shown.stdout)["phase"] == "Succeeded"
    assert "Succeeded" in fleet.cli("rollout", "status", "canary").stdout
    table = fleet.cli("get", "rollouts").stdout.splitlines()
    assert table[0].split()[:6] == ["SERVICE", "TARGET", "PHASE", "UPDATED", "HEALTHY", "TOTAL"]
    assert next(line for line in table if line.startswith("canary ")).split()[:6] == [
        "canary",
        "2.0",
        "Succeeded",
        "9",
        "9",
        "9",
    ]
    listed = json.loads(fleet.cli("get", "rollouts", "-o", "json").stdout)["items"]
    canary_obj = next(o for o in listed if o["spec"]["service"] == "canary")
    assert canary_obj["kind"] == "ServiceRollout" and canary_obj["status"]["rollout"]["phase"] == "Succeeded"
    assert "\r\x1b[K" in screen and "[" + "#" * 30 + "] 9/9 healthy" in screen, screen
    assert lines[0].startswith("canary -> 2.0: Paused") and lines[-1].startswith("canary -> 2.0: Succeeded"), lines
    assert "\x1b" not in "".join(lines) and len(lines) >= 3


def _read_all(fd: int, chunks: list[bytes]) -> None:
    with contextlib.suppress(OSError):  # EIO once the writer has gone
        while data := os.read(fd, 65536):
            chunks.append(data)
    os.close(fd)


def test_a_version_that_exits_fails_and_every_instance_goes_back(fleet: Fleet) -> None:
    ids = fleet.service("bad", bad=True)
    since = fleet.revision()
    start(fleet, "bad", "--max-unavailable", "2")
    fleet.wait_rollout("bad", "Reverted", timeout=60)
    wait_until(lambda: fleet.all_running_on("bad", ids, "1.0"), 30, what="every instance Running on 1.0")
    assert set(fleet.versions("bad", ids).values()) == {"1.0"}
    phases = [p for p in _status_phases(fleet, "bad", since)]
    assert phases.index("Failed") < phases.index("Reverted"), phases
    final = fleet.rollout("bad")
    assert final is not None and "RolledBack" in final["message"], final
    # Only the instances the rollout changed went to 2.0, each once, and came back once.
    writes = fleet.history("bad", since)
    changed = {i for i, v in writes if v == "2.0"}
    assert 1 <= len(changed) <= 2
    assert sorted(writes) == sorted([(i, "2.0") for i in changed] + [(i, "1.0") for i in changed])


def test_a_version_that_crash_loops_after_the_agents_probation_fails_long_before_the_deadline(fleet: Fleet) -> None:
    """The agent promotes 2.0 after 0.5 s, then it exits every 2 s: the controller counts its restarts.

    The rollout's own health period (5 s) is never reached, so before `max_restarts` it stayed
    Progressing until its 600 s progress deadline.
    """
    ids = fleet.service("loop", crash_loop=True)
    since = fleet.revision()
    result = fleet.cli(
        "rollout", "start", "loop", "--to", "2.0", "--min-healthy-seconds", "5", "--max-unavailable", "2",
        "--max-restarts", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads(fleet.etcd.get(f"{fleet.prefix}/services/loop/rollout/config/details") or b"{}")
    assert config["max_restarts"] == 2 and "progress_deadline_seconds" not in config  # the default: 600 s
    final = fleet.wait_rollout("loop", "Reverted", "Succeeded", timeout=90)  # the deadline is 600 s
    assert final["phase"] == "Reverted", final
    assert "restarted 2 time(s) on 2.0 before it was healthy" in final["message"], final
    wait_until(lambda: fleet.all_running_on("loop", ids, "1.0"), 30, what="every instance Running on 1.0")
    assert fleet.versions("loop", ids) == dict.fromkeys(ids, "1.0")
    assert _status_phases(fleet, "loop", since)[-2:] == ["Failed", "Reverted"]
    writes = fleet.history("loop", since)
    changed = {i for i, v in writes if v == "2.0"}  # the first batch only, each set back once
    assert 1 <= len(changed) <= 2 and sorted(writes) == sorted([(i, v) for i in changed for v in ("2.0", "1.0")])


def _status_phases(fleet: Fleet, service: str, since: int) -> list[str]:
    async def read() -> list[str]:
        store = Store(await client.connect(EtcdOptions(endpoints=fleet.endpoint, prefix=fleet.prefix)))
        try:
            now = await store.revision()
            found: list[str] = []
            async for batch in watch.watch(store, since, under=f"{fleet.prefix}/services/{service}/rollout/"):
                for event in batch:
                    if isinstance(event, watch.Put) and event.entry.key.endswith("/status"):
                        phase = json.loads(event.entry.value)["phase"]
                        if not found or found[-1] != phase:
                            found.append(phase)
                if any(e.revision >= now for e in batch):
                    return found
            return found
        finally:
            await store.close()

    return asyncio.run(read())


def test_instances_of_a_stopped_agent_count_as_unavailable(fleet: Fleet) -> None:
    ids = fleet.service("offline")
    down = fleet.nodes[2]
    on_down = [i for n, i in fleet.assigned[down.server_id] if n == "offline"]
    agent = down.agents[-1]
    assert agent.terminate() == 0
    wait_until(lambda: not any(i in fleet.statuses("offline") for i in on_down), 20, what="node-3 offline")
    with Sampler(fleet, "offline", ids) as sampler:
        start(fleet, "offline", "--max-unavailable", "4")
        waiting = wait_until(
            lambda: (s := fleet.rollout("offline")) is not None and len(s["healthy"]) == 6 and s,
            60,
            what="the 6 online instances updated and healthy",
        )
        assert waiting["phase"] == "Progressing" and "waiting for their server" in waiting["message"]
        assert all(fleet.versions("offline", on_down)[i] == "1.0" for i in on_down)
        down.agent()
        done = fleet.wait_rollout("offline", "Succeeded", "Failed", "Reverted")
    assert done["phase"] == "Succeeded", done
    # 3 offline + at most 1 being upgraded: max_unavailable 4 held while the agent was away.
    assert sampler.worst <= 4, sampler.worst
    assert fleet.all_running_on("offline", ids, "2.0")


def test_a_killed_controller_is_replaced_and_no_step_is_written_twice(fleet: Fleet) -> None:
    ids = fleet.service("failover")
    since = fleet.revision()
    acting = fleet.acting()
    start(fleet, "failover", "--max-unavailable", "2")
    wait_until(lambda: (s := fleet.rollout("failover")) is not None and len(s["updated"]) >= 3, 30, what="a batch")
    assert acting.process is not None
    acting.process.send_signal(signal.SIGKILL)
    acting.process.wait(10)
    fleet.controller()  # keep two copies for the tests after this one
    done = fleet.wait_rollout("failover", "Succeeded", "Failed", "Reverted", timeout=60)
    assert done["phase"] == "Succeeded", done
    assert fleet.acting() is not acting
    writes = fleet.history("failover", since)
    assert sorted(writes) == sorted((i, "2.0") for i in ids), writes  # each instance written once


def test_an_instance_edited_by_hand_is_left_alone_and_skipped(fleet: Fleet) -> None:
    ids = fleet.service("handedit")
    start(fleet, "handedit", "--canary", "1", "--pause-after-canary", "--max-unavailable", "3")
    paused = fleet.wait_rollout("handedit", "Paused")
    edited = next(i for i in ids if i not in paused["updated"])
    fleet.nodes[0].instance("handedit", edited, "1.0", run_script={"command": "", "argv": ["--by-hand"]})
    assert fleet.cli("rollout", "resume", "handedit").returncode == 0
    done = fleet.wait_rollout("handedit", "Succeeded", "Failed", "Reverted")
    assert done["phase"] == "Succeeded", done
    assert done["skipped"] == [edited]
    assert fleet.doc("handedit", edited) == {
        "name": "handedit",
        "service_version": "1.0",
        "run_script": {"command": "", "argv": ["--by-hand"]},
    }
    others = [i for i in ids if i != edited]
    assert set(fleet.versions("handedit", others).values()) == {"2.0"}


def test_undo_mid_rollout_sets_every_changed_instance_back(fleet: Fleet) -> None:
    ids = fleet.service("undo")
    since = fleet.revision()
    start(fleet, "undo", "--canary", "2", "--pause-after-canary", "--max-unavailable", "2")
    paused = fleet.wait_rollout("undo", "Paused")
    assert len(paused["updated"]) == 2
    result = fleet.cli("rollout", "undo", "undo")
    assert result.returncode == 0, result.stderr
    reverted = fleet.wait_rollout("undo", "Reverted")
    assert sorted(reverted["reverted"]) == sorted(paused["updated"])
    wait_until(lambda: fleet.all_running_on("undo", ids, "1.0"), 30, what="every instance Running on 1.0")
    assert set(fleet.versions("undo", ids).values()) == {"1.0"}
    assert len(fleet.history("undo", since)) == 4  # two there, two back
    again = fleet.cli("rollout", "undo", "undo")
    assert again.returncode == 1 and "already reverted" in again.stderr


def test_rollout_commands_refuse_bad_input_in_one_line(fleet: Fleet) -> None:
    for args, text in (
        (("rollout", "start", "nothing", "--to", "2.0"), "has no version '2.0'"),
        (("rollout", "start", "canary", "--to", "2.0", "--max-unavailable", "0%"), "between 1% and 100%"),
        (("rollout", "start", "a/b", "--to", "2.0"), "must not contain '/'"),
        (("rollout", "pause", "nothing"), "has no rollout"),
    ):
        result = fleet.cli(*args)
        assert result.returncode != 0 and text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_an_invalid_rollout_config_is_named_and_stops_nothing(fleet: Fleet) -> None:
    fleet.etcd.put(
        f"{fleet.prefix}/services/junk/rollout/config/details",
        '{"name": "junk", "to_version": "2", "max_unavailable": "lots"}',
    )
    shown = fleet.cli("rollout", "status", "junk")
    assert "services/junk/rollout/config/details: field 'max_unavailable'" in shown.stderr, shown.stderr
    paused = fleet.cli("rollout", "pause", "junk")
    assert paused.returncode == 1 and "field 'max_unavailable'" in paused.stderr and "Traceback" not in paused.stderr
    acting = fleet.acting()
    wait_until(lambda: "Ignored invalid rollout config" in acting.log(), 20, what="the controller naming it")
    assert "services/junk/rollout/config/details" in acting.log()
    alive = [c for c in fleet.controllers if c.process is not None and c.process.poll() is None]
    assert len(alive) == 2 and acting in alive  # only the one the failover test SIGKILLed is gone


def test_the_acting_controller_exports_rollouts_by_phase(fleet: Fleet) -> None:
    ids = fleet.service("metered")
    start(fleet, "metered")
    fleet.wait_rollout("metered", "Succeeded", timeout=120)
    acting = fleet.acting()
    base = fleet.metrics[acting.pid]

    def by_phase() -> dict[str, int]:
        """Per rollout config in etcd: its status's phase, "Pending" when it has none yet."""
        every = fleet.etcd.keys(f"{fleet.prefix}/services/")
        found: dict[str, int] = {}
        for key in every:
            if key.endswith("/rollout/config/details"):
                status = every.get(key.removesuffix("config/details") + "status")
                phase = json.loads(status)["phase"] if status is not None else "Pending"
                found[phase] = found.get(phase, 0) + 1
        return found

    def exported() -> dict[str, int]:
        phases = ("Pending", "Progressing", "Paused", "Succeeded", "Failed", "Reverted")
        counts = {p: int(value(base, "discoverd_controller_rollouts", phase=p) or 0) for p in phases}
        return {p: n for p, n in counts.items() if n}

    wait_until(lambda: exported() == by_phase(), 20, what=f"the gauge equal to the rollouts in etcd: {by_phase()}")
    assert exported().get("Succeeded", 0) >= 1
    assert value(base, "discoverd_controller_leader") == 1
    assert (value(base, "discoverd_controller_steps_total") or 0) >= 1
    for c in fleet.controllers:
        if c.process is not None and c.process.poll() is None:
            assert get(f"{fleet.metrics[c.pid]}/healthz")[0] == 200
            assert get(f"{fleet.metrics[c.pid]}/readyz") == (200, "ok\n")
            if c is not acting:
                assert value(fleet.metrics[c.pid], "discoverd_controller_leader") == 0
    assert fleet.all_running_on("metered", ids, "2.0")


def _compromised_server(fleet: Fleet, service: str, instance: str) -> str:
    """A server `evil` whose agent is "online" and runs `instance` on 1.0, all written by raw puts: what
    root on a node can write with that node's own etcd identity (its server's status keys)."""
    fleet.nodes[0].instance(service, instance, "1.0")
    etcd, base = fleet.etcd, f"{fleet.prefix}/servers/evil"
    etcd.put(f"{base}/config/details", json.dumps({"service_instances": [{"name": service, "id": instance}]}))
    now = "2026-01-01T00:00:00Z"
    agent = {"hostname": "evil", "agent_version": "1", "started_at": now, "heartbeat": now}
    etcd.put(f"{base}/status/agent", json.dumps(agent))
    running = {"phase": "Running", "version": "1.0", "since": now, "updated_at": now}
    etcd.put(f"{base}/status/instances/{service}/{instance}", json.dumps(running))
    return f"{base}/status/instances/{service}/{instance}"


def _huge_failure(version: str) -> bytes:
    """A Failed report on `version` whose message makes it just under the 1 MiB every reader accepted
    before status had caps; copied into a rollout status, it made that larger than any reader accepts."""
    now = dt.datetime.now(dt.UTC).isoformat()
    doc = {"phase": "Failed", "version": version, "since": now, "updated_at": now, "message": ""}
    doc["message"] = "x" * (1024 * 1024 - 200 - len(json.dumps(doc)))
    raw = json.dumps(doc).encode()
    assert 1024 * 1024 - 300 < len(raw) < 1024 * 1024
    return raw


def _attack(fleet: Fleet, service: str, *rollout_args: str) -> list[str]:
    """Service `service` (9 instances on the real agents, 2.0 fails) plus `<service>-0` on the compromised
    server, the canary; once the controller moves it to 2.0, the server reports it Failed with a
    huge message. Returns every instance ID."""
    ids = fleet.service(service, bad=True)
    canary = f"{service}-0"
    status_key = _compromised_server(fleet, service, canary)
    start(fleet, service, "--canary", "1", "--progress-deadline-seconds", "5", *rollout_args)
    wait_until(lambda: fleet.versions(service, [canary])[canary] == "2.0", 30, what="the canary moved to 2.0")
    fleet.etcd.put(status_key, _huge_failure("2.0"))
    return [canary, *ids]


def test_a_huge_status_message_does_not_stop_the_automatic_revert(fleet: Fleet) -> None:
    """Issue 19: the controller copied the message into the rollout status, which then no reader
    accepted; it started the rollout afresh, recorded 2.0 as the canary's previous version, and the
    revert left it on 2.0."""
    ids = _attack(fleet, "huge")
    done = fleet.wait_rollout("huge", "Reverted", timeout=60)
    assert done["from_versions"]["huge-0"] == "1.0", done["from_versions"]
    assert fleet.versions("huge", ids) == dict.fromkeys(ids, "1.0")
    raw = fleet.etcd.get(f"{fleet.prefix}/services/huge/rollout/status")
    assert raw is not None and len(raw) < 64 * 1024
    assert any("Ignored invalid agent status" in c.log() and "servers/evil" in c.log() for c in fleet.controllers)


def test_a_huge_status_message_does_not_stop_rollout_undo(fleet: Fleet) -> None:
    ids = _attack(fleet, "hugeundo", "--no-auto-revert")
    failed = fleet.wait_rollout("hugeundo", "Failed", timeout=60)
    assert failed["from_versions"]["hugeundo-0"] == "1.0", failed["from_versions"]
    result = fleet.cli("rollout", "undo", "hugeundo")
    assert result.returncode == 0, result.stderr
    fleet.wait_rollout("hugeundo", "Reverted", timeout=30)
    assert fleet.versions("hugeundo", ids) == dict.fromkeys(ids, "1.0")
