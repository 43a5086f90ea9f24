"""Shared pieces of the agent benches (figures 1, 2, 3 and the fault table): one server's world.

A `World` is a real etcd (from `common.etcd_server`), a state directory, and
`discoverd agent` processes started by pid. Configuration is written as the
seed's JSON by a plain etcd client (aetcd, no discoverd code in the way), and
status is read the same way, so the figures see what any other etcd client
would see.

Every agent runs with a unique `BENCH_DISCOVERD_RUN=<token>` in its
environment. Scripts inherit the agent's environment, so every process the
agent ever started (run scripts, their children, daemons that double-forked
out of their process group) carries the token: `World.marked()` finds them
all in /proc, which is how the benches count surviving descendants and double
starts, and how `cleanup` ends exactly what this run started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import common

from discoverd.embedded_etcd import EtcdServer

__all__ = ["MARKER", "StatusWatch", "World", "agent_events", "profiled", "sh_run", "top_frames", "world"]

MARKER = "BENCH_DISCOVERD_RUN"


def sh_run(code: str, **script: Any) -> dict[str, Any]:
    """A seed Script running `sh -c code` (argv only; the shell is the script's own choice)."""
    return {"command": "sh", "argv": ["-c", code], **script}


def agent_events(log_path: Path, msg: str | None = None) -> list[dict[str, Any]]:
    """The agent's JSON log lines (optionally only those with message `msg`), with `t` = epoch seconds."""
    import datetime as dt

    out: list[dict[str, Any]] = []
    if not log_path.exists():
        return out
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg is not None and data.get("msg") != msg:
            continue
        data["t"] = dt.datetime.fromisoformat(data["ts"]).timestamp()
        out.append(data)
    return out


@dataclass
class StatusWatch:
    """Instance status of one server, kept current by an etcd watch in the bench process.

    `phases[(service, id)]` is the last status document; `events` counts every put/delete under the
    whole prefix with its arrival time (a quiet agent writes nothing but lease keep-alives, which are
    not key events).
    """

    endpoint: str
    prefix: str
    server_id: str
    reconnects: int = 0
    status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def _status_key(self, key: str) -> tuple[str, str] | None:
        head = f"{self.prefix}/servers/{self.server_id}/status/instances/"
        if not key.startswith(head):
            return None
        service, _, instance = key[len(head) :].partition("/")
        return service, instance

    async def _follow(self, client: aetcd.Client) -> None:
        got = await client.get_prefix(f"{self.prefix}/".encode())
        revision = int(got.header.revision) if getattr(got, "header", None) else 0
        status: dict[tuple[str, str], dict[str, Any]] = {}
        for kv in got:
            ref = self._status_key(kv.key.decode(errors="replace"))
            if ref is not None:
                with contextlib.suppress(ValueError):
                    status[ref] = json.loads(kv.value)
            revision = max(revision, kv.mod_revision)
        self.status = status
        self._ready.set()
        async for event in await client.watch_prefix(f"{self.prefix}/".encode(), start_revision=revision + 1):
            now = time.time()
            key = event.kv.key.decode(errors="replace")
            kind = "delete" if event.kind == aetcd.EventKind.DELETE else "put"
            self.events.append((now, kind, key))
            ref = self._status_key(key)
            if ref is None:
                continue
            if kind == "delete":
                self.status.pop(ref, None)
            else:
                with contextlib.suppress(ValueError):
                    self.status[ref] = json.loads(event.kv.value)

    async def _run(self) -> None:
        """Follow the prefix; when etcd goes away (a fault scenario), list and watch again once it is back."""
        host, port = self.endpoint.removeprefix("http://").rsplit(":", 1)
        while True:
            client = aetcd.Client(host=host, port=int(port), timeout=5)
            try:
                await client.connect()
                await self._follow(client)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.reconnects += 1
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

    async def start(self) -> StatusWatch:
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="status watch")
        await asyncio.wait_for(self._ready.wait(), 30)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def phase(self, service: str, instance: str) -> str | None:
        s = self.status.get((service, instance))
        return None if s is None else str(s.get("phase"))

    def count(self, phase: str, version: str | None = None) -> int:
        return sum(
            1
            for s in self.status.values()
            if s.get("phase") == phase and (version is None or s.get("version") == version)
        )

    def writes_between(self, start: float, end: float) -> list[tuple[float, str, str]]:
        return [e for e in self.events if start <= e[0] < end]


@dataclass
class World:
    """One server: an etcd, a state directory, its agents, and what they started."""

    tmp: Path
    etcd: EtcdServer
    client: aetcd.Client
    prefix: str = "/bench"
    server_id: str = "bench-node"
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    agents: list[common.Child] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    # configuration (the seed's JSON)

    def key(self, rest: str) -> bytes:
        return f"{self.prefix}/{rest}".encode()

    async def put(self, rest: str, value: Any) -> int:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return int((await self.client.put(self.key(rest), data)).header.revision)

    async def put_many(self, items: Iterable[tuple[str, Any]], chunk: int = 100) -> None:
        todo = list(items)
        for i in range(0, len(todo), chunk):
            await asyncio.gather(*(self.put(k, v) for k, v in todo[i : i + chunk]))

    async def server(self, refs: Iterable[tuple[str, str]]) -> int:
        body = {"service_instances": [{"name": s, "id": i} for s, i in refs]}
        return await self.put(f"servers/{self.server_id}/config/details", body)

    def version_doc(self, service: str, **doc: Any) -> dict[str, Any]:
        return {"name": service, **doc}

    async def version(self, service: str, version: str, **doc: Any) -> int:
        return await self.put(f"services/{service}/versions/{version}/config/details", {"name": service, **doc})

    async def instance(self, service: str, instance: str, version: str, **doc: Any) -> int:
        body = {"name": service, "service_version": version, **doc}
        return await self.put(f"services/{service}/instances/{instance}/config/details", body)

    async def status_watch(self) -> StatusWatch:
        return await StatusWatch(self.etcd.endpoint, self.prefix, self.server_id).start()

    # agents

    def agent_argv(self, *extra: str) -> list[str]:
        return [
            str(common.DISCOVERD),
            "--etcd-endpoints",
            self.etcd.endpoint,
            "--prefix",
            self.prefix,
            "--log-format",
            "json",
            "agent",
            "--metrics-address",
            "",
            "--server-id",
            self.server_id,
            "--state-dir",
            str(self.state_dir),
            # Instances stay in the agent's cgroup: figures comparable with earlier runs, and no two
            # benches on one machine share a cgroup `/discoverd/<service>/<ID>` (a stop kills all in it).
            "--cgroups",
            "none",
            *extra,
        ]

    def start_agent(self, *extra: str, argv_prefix: list[str] | None = None) -> common.Child:
        env = {**os.environ, MARKER: self.token, "PYTHONUNBUFFERED": "1"}
        argv = [*(argv_prefix or []), *self.agent_argv(*extra)]
        child = common.Child(argv, self.tmp / f"agent-{len(self.agents)}.log", env=env).start()
        self.agents.append(child)
        return child

    def agent_pids(self) -> set[int]:
        return {a.proc.pid for a in self.agents if a.proc is not None}

    # what runs

    def marked(self) -> dict[int, dict[str, str]]:
        """Every live process carrying this run's token (agents excluded): pid -> its DISCOVERD_* env and `pgid`."""
        needle = f"{MARKER}={self.token}".encode()
        agents = self.agent_pids()
        found: dict[int, dict[str, str]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in agents or pid == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if needle not in env.split(b"\0"):
                continue
            state = stat[stat.rindex(b")") + 2 :].split()[0]
            if state in (b"Z", b"X"):
                continue
            fields: dict[str, str] = {"pgid": stat[stat.rindex(b")") + 2 :].split()[2].decode()}
            for item in env.split(b"\0"):
                if item.startswith(b"DISCOVERD_"):
                    name, _, value = item.partition(b"=")
                    fields[name.decode()] = value.decode(errors="replace")
            found[pid] = fields
        return found

    def record(self, service: str, instance: str) -> dict[str, Any] | None:
        """The instance's saved state (`records/<service>/<id>.json`, format 2)."""
        path = self.state_dir / "records" / service / f"{instance}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return dict(json.loads(path.read_text())["state"])
        return None

    def identity(self, service: str, instance: str) -> tuple[int, int] | None:
        """(pid, start time) of the run process the record names, if that very process is alive."""
        from discoverd.agent import observe

        rec = self.record(service, instance)
        p = rec and rec.get("process")
        if not p or not observe.alive(int(p["pid"]), int(p["start_time"])):
            return None
        return int(p["pid"]), int(p["start_time"])

    def cleanup(self) -> None:
        """Stop the agents (by pid), then SIGKILL every process carrying this run's token (by pid)."""
        for a in self.agents:
            a.stop(timeout=10)
        for _ in range(3):
            pids = self.marked()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


@contextlib.contextmanager
def profiled(pid: int | None, out: Path, rate: int = 100) -> Iterator[None]:
    """py-spy recording `pid` (collapsed stacks in `out`) while the block runs; nothing when `pid` is None."""
    if pid is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "-o", str(out), "--nonblocking"]
    child = common.Child(argv, out.with_suffix(".log")).start()
    try:
        yield
    finally:
        assert child.proc is not None
        child.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            child.proc.wait(30)
        finally:
            child.stop()


def top_frames(collapsed: Path, n: int = 25) -> list[str]:
    """The functions with the most samples anywhere on the stack (inclusive), from py-spy's raw output."""
    total = 0
    inclusive: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]
    return [f"{100 * c / max(total, 1):5.1f}% {f}" for f, c in ranked]


@contextlib.asynccontextmanager
async def world(tmp: Path, etcd: EtcdServer, **kw: Any) -> AsyncIterator[World]:
    """A World on `etcd` with a plain aetcd client; always cleaned up."""
    host, port = etcd.endpoint.removeprefix("http://").rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    w = World(tmp, etcd, client, **kw)
    try:
        yield w
    finally:
        w.cleanup()
        with contextlib.suppress(Exception):
            await client.close()
