"""Figure 8: the rollout controller's cost against the size of the fleet (issue 22, item 3).

One real etcd (no fsync), one real `discoverd controller` process at a time;
the fleet is simulated: its keys are written to etcd directly, as live agents
and `discoverd apply` would have written them. Two parts:

1. **fleets of several sizes** (`--sizes`, default 10, 1,000, 10,000
   servers), each under a prefix of its own on the same etcd: every server
   with 10 instances of 20 services (server document, instance documents, a
   Running status per instance, an agent status, a listing per service
   unless `--no-listings`), plus the service `roll`:
   10 instances on 10 servers of their own. For each size, a controller
   starts; once /readyz answers 200 (it leads and its cache follows etcd):
   its RSS; its CPU while `--elsewhere` (2,000) status writes land on other
   servers' keys (no rollout runs); then `--repeat` (3) times a rollout of
   `roll` is started (config written, status deleted, in one transaction)
   and the time to its first instance-document write is taken (as seen by a
   watch of this process), then undone (`undo`, wait for `Reverted`). Target:
   RSS and time to start flat within 15 % of the 10-server case.
2. **simulated rollout**: `--agents` (100) simulated agents with
   `--per-agent` (10) instances each of the service `big` (1,000 instances);
   a simulated agent is a task that, when one of its instance documents
   changes, writes a `Running` status for it on the new version (after
   `--agent-delay` s). A rollout of all of them (`max_unavailable`
   `--max-unavailable`, `min_healthy_seconds` 0): the controller's overhead
   per step (from the status write that freed a slot arriving to the
   controller's next write arriving, as this process's watch sees both), its
   CPU per step, the rollout's duration.

    .venv/bin/python bench/controller_scale.py                   # both parts (~5 min)
    .venv/bin/python bench/controller_scale.py --quick           # 10/200/1,000 servers; 20 agents x 10
    .venv/bin/python bench/controller_scale.py --source /tmp/before/operator   # another checkout's code

`--source DIR` runs the controller as `python -m discoverd` with DIR first on
PYTHONPATH (e.g. `git archive main operator | tar -x -C /tmp/before`), so the
same bench measures the code before a change. JSON lines on stdout, a
summary with the load average on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import common

from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.typed import Store, Write

BENCH = "controller_scale"
SERVICES = 20
PER_SERVER = 10
ROLL = 10
"""Instances (and servers) of the service `roll` whose rollout is timed in part 1."""
TXN_OPS = 128
NOW = "2026-11-25T12:00:00+00:00"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def status_doc(version: str, restarts: int = 0, since: str = NOW) -> dict[str, Any]:
    return {
        "phase": "Running",
        "version": version,
        "pid": 10_000 + restarts,
        "restarts": restarts,
        "message": "",
        "since": since,
        "updated_at": since,
    }


def agent_doc(server: str) -> dict[str, Any]:
    return {"hostname": server, "agent_version": "0", "started_at": NOW, "heartbeat": NOW}


async def put_all(store: Store, items: Iterable[tuple[str, Any]], concurrency: int = 4, per_txn: int = TXN_OPS) -> None:
    """Many unguarded puts, `per_txn` per transaction, a few transactions in flight."""
    writes = [Write(k, json.dumps(v).encode()) for k, v in items]
    chunks = [writes[i : i + per_txn] for i in range(0, len(writes), per_txn)]
    for i in range(0, len(chunks), concurrency):
        await asyncio.gather(*(store.apply(c) for c in chunks[i : i + concurrency]))


LISTINGS = True
"""Write the listing keys agents keep (`services/<svc>/servers/<server>`); `--no-listings`: as older agents did."""


def fleet_keys(prefix: str, size: int) -> Iterable[tuple[str, Any]]:
    for n in range(size):
        server = f"fleet-{n:05d}"
        refs = [(f"svc-{(n + k) % SERVICES:02d}", f"f{n:05d}-{k}") for k in range(PER_SERVER)]
        yield keys.server_config(prefix, server), {"service_instances": [{"name": s, "id": i} for s, i in refs]}
        for s, i in refs:
            yield keys.instance_config(prefix, s, i), {"name": s, "service_version": "1.0"}
            yield keys.instance_status(prefix, server, s, i), status_doc("1.0", n % 7)
        yield keys.agent_status(prefix, server), agent_doc(server)
        if LISTINGS:
            for s in sorted({s for s, _ in refs}):
                yield keys.listing(prefix, s, server), {}


def service_keys(prefix: str, service: str, servers: list[str], per: int) -> Iterable[tuple[str, Any]]:
    """`per` instances of `service` on each of `servers`, all Running on 1.0, agents online."""
    for server in servers:
        ids = [f"{server}-{k}" for k in range(per)]
        yield keys.server_config(prefix, server), {"service_instances": [{"name": service, "id": i} for i in ids]}
        yield keys.agent_status(prefix, server), agent_doc(server)
        if LISTINGS:
            yield keys.listing(prefix, service, server), {}
        for i in ids:
            yield keys.instance_config(prefix, service, i), {"name": service, "service_version": "1.0"}
            yield keys.instance_status(prefix, server, service, i), status_doc("1.0")


def elsewhere(prefix: str, size: int, count: int) -> list[tuple[str, Any]]:
    """Status writes to the fleet's servers (no rollout concerns them)."""
    out = []
    for j in range(count):
        n = (j * 7919) % size
        k = j % PER_SERVER
        out.append(
            (
                keys.instance_status(prefix, f"fleet-{n:05d}", f"svc-{(n + k) % SERVICES:02d}", f"f{n:05d}-{k}"),
                status_doc("1.0", j),
            )
        )
    return out


# --- the controller -----------------------------------------------------------------------------


def start_controller(args: argparse.Namespace, etcd: Any, prefix: str, log: Path) -> tuple[common.Child, str]:
    port = common_free_port()
    program = [sys.executable, "-m", "discoverd"] if args.source else [str(common.DISCOVERD)]
    argv = [*program, "--etcd-endpoints", etcd.endpoint, "--prefix", prefix, "--log-format", "json"]
    argv += ["controller", "--lease-ttl", "5", "--metrics-address", f"127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    return common.Child(argv, log, env=env).start(), f"http://127.0.0.1:{port}"


def common_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(child: common.Child, base: str, timeout: float) -> float:
    t0 = time.monotonic()
    while not await asyncio.to_thread(ready, base):
        if child.proc is not None and child.proc.poll() is not None:
            raise RuntimeError(f"the controller exited: see {child.log_path}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the controller was not ready within {timeout:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


class Seen:
    """What this process's watch saw, with arrival times (monotonic)."""

    def __init__(self, prefix: str, service: str) -> None:
        self.instances = keys.service_instances_prefix(prefix, service)
        self.rollout_status = keys.rollout_status(prefix, service)
        self.writes: list[tuple[float, int, str, str]] = []
        """(arrival, revision, key, service_version) of every instance document put of the service."""
        self.reports: list[float] = []
        """Arrival of every instance status put."""
        self.phase: str | None = None

    def take(self, batch: list[watch.Event]) -> None:
        now = time.monotonic()
        for event in batch:
            if not isinstance(event, watch.Put):
                if isinstance(event, watch.Delete) and event.key == self.rollout_status:
                    self.phase = None
                continue
            key = event.entry.key
            if key.startswith(self.instances):
                doc = json.loads(event.entry.value)
                self.writes.append((now, event.entry.mod_revision, key, doc.get("service_version", "")))
            elif key == self.rollout_status:
                self.phase = json.loads(event.entry.value).get("phase")
            elif "/status/instances/" in key:
                self.reports.append(now)


async def follow(store: Store, start: int, under: str, seen: list[Seen]) -> None:
    async for batch in watch.watch(store, start, under=under):
        for s in seen:
            s.take(batch)


@contextlib.asynccontextmanager
async def following(store: Store, under: str, *seen: Seen) -> Any:
    task = asyncio.create_task(follow(store, await store.revision() + 1, under, list(seen)))
    await asyncio.sleep(0.2)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, Compacted):
            await task


def rollout_config(service: str, to_version: str, max_unavailable: int, undo: bool = False) -> bytes:
    config = {
        "name": service,
        "to_version": to_version,
        "max_unavailable": max_unavailable,
        "min_healthy_seconds": 0,
        "progress_deadline_seconds": 600,
        "undo": undo,
    }
    return json.dumps(config).encode()


# --- part 1: fleets of several sizes ------------------------------------------------------------


async def one_size(args: argparse.Namespace, tmp: Path, etcd: Any, store: Store, size: int) -> dict[str, Any]:
    prefix = f"/cs-{size}"
    child, base = start_controller(args, etcd, prefix, tmp / f"controller-{size}.log")
    out: dict[str, Any] = {}
    try:
        with common.Sampler(child.pid) as sampler:
            out["ready"] = await wait_ready(child, base, args.timeout)
            await asyncio.sleep(args.settle)
            out["rss"] = common.rss_mib(child.pid)
            cpu0 = common.cpu_seconds(child.pid)
            await put_all(store, elsewhere(prefix, size, args.elsewhere), concurrency=8, per_txn=1)
            await asyncio.sleep(2)
            out["cpu_elsewhere"] = common.cpu_seconds(child.pid) - cpu0

            seen = Seen(prefix, "roll")
            config = keys.rollout_config(prefix, "roll")
            status = keys.rollout_status(prefix, "roll")
            starts: list[float] = []
            async with following(store, prefix + "/services/roll/", seen):
                for r in range(args.repeat):
                    version = f"2.{r}"
                    first = len(seen.writes)
                    t0 = time.monotonic()
                    await store.apply([Write(config, rollout_config("roll", version, 1)), Write(status, None)])

                    def wrote(first: int = first, version: str = version) -> bool:
                        return any(w[3] == version for w in seen.writes[first:])

                    try:
                        await wait(wrote, args.timeout, f"the first step of rollout {r}")
                        starts.append(next(w[0] for w in seen.writes[first:] if w[3] == version) - t0)
                        await store.apply([Write(config, rollout_config("roll", version, 1, undo=True))])
                        await wait(lambda: seen.phase == "Reverted", args.timeout, f"rollout {r} reverted")
                    except TimeoutError as error:
                        common.log(f"{size} servers: {error}")
                        out["timeout"] = str(error)
                        break
                    await asyncio.sleep(args.settle)
            out["starts"] = starts
            out["rss_after"] = common.rss_mib(child.pid)
            out["peak"] = sampler.peak
    finally:
        child.stop()
        out["lost_lease"] = child.log_text().count("Lost the leader lease")
        out["read_all_servers"] = child.log_text().count("Reading every server")
    return out


async def sizes(args: argparse.Namespace, tmp: Path, etcd: Any, store: Store) -> list[str]:
    for size in args.sizes:
        prefix = f"/cs-{size}"
        t0 = time.monotonic()
        await put_all(store, fleet_keys(prefix, size))
        await put_all(store, service_keys(prefix, "roll", [f"roll-{n:02d}" for n in range(ROLL)], 1))
        common.log(f"fleet of {size} servers written under {prefix} in {time.monotonic() - t0:.1f} s")
    first: dict[str, Any] = {}
    target = "within 15 % of 10 servers"
    for size in args.sizes:
        load = os.getloadavg()[0]
        r = await one_size(args, tmp, etcd, store, size)
        common.log(f"{size} servers: {r}")
        first = first or r
        starts = r["starts"]
        start = statistics.median(starts) * 1000 if starts else None
        base_start = statistics.median(first["starts"]) * 1000 if first["starts"] else None
        note = f"load {load:.1f}; peak {r['peak']:.0f} MiB, {r['rss_after']:.0f} MiB after the rollouts"
        common.emit(BENCH, f"rss_idle_{size}_servers", r["rss"], "MiB", first["rss"], target=target, note=note)
        note = f"config written -> first instance write (median of {len(starts)}"
        note += f"; max {max(starts) * 1000:.0f} ms)" if starts else ")"
        if r.get("timeout"):
            note += f"; {r['timeout']}"
        if r["lost_lease"]:
            note += f"; lost its leader lease {r['lost_lease']} times"
        if r["read_all_servers"]:
            note += f"; read all of servers/ {r['read_all_servers']} times (instances no listing led to)"
        common.emit(BENCH, f"time_to_start_{size}_servers", start, "ms", base_start, target=target, note=note)
        common.emit(BENCH, f"ready_{size}_servers", r["ready"], "s", first["ready"], note="spawn -> /readyz 200")
        common.emit(
            BENCH,
            f"cpu_idle_elsewhere_{size}_servers",
            r["cpu_elsewhere"] * 1000,
            "ms",
            first["cpu_elsewhere"] * 1000,
            note=f"controller CPU while {args.elsewhere} status writes land elsewhere (no rollout)",
        )
    return []


# --- part 2: a rollout of 1,000 instances across 100 simulated agents -----------------------------


async def simulated_agent(store: Store, prefix: str, server: str, queue: asyncio.Queue[tuple[str, str]]) -> None:
    """Write `Running` on the new version for each of its instances whose document changed."""
    while True:
        instance, version = await queue.get()
        if AGENT_DELAY:
            await asyncio.sleep(AGENT_DELAY)
        key = keys.instance_status(prefix, server, "big", instance)
        await store.apply([Write(key, json.dumps(status_doc(version, since=_now())).encode())])


AGENT_DELAY = 0.0


async def dispatch(store: Store, prefix: str, start: int, owners: dict[str, asyncio.Queue[tuple[str, str]]]) -> None:
    head = keys.service_instances_prefix(prefix, "big")
    versions: dict[str, str] = {}
    async for batch in watch.watch(store, start, under=head):
        for event in batch:
            if isinstance(event, watch.Put):
                instance = event.entry.key[len(head) :].split("/")[0]
                version = json.loads(event.entry.value).get("service_version", "")
                if versions.get(instance) != version and instance in owners:
                    versions[instance] = version
                    owners[instance].put_nowait((instance, version))


async def simulation(args: argparse.Namespace, tmp: Path, etcd: Any, store: Store) -> list[str]:
    global AGENT_DELAY
    AGENT_DELAY = args.agent_delay
    prefix = "/cs-sim"
    servers = [f"sim-{a:03d}" for a in range(args.agents)]
    await put_all(store, service_keys(prefix, "big", servers, args.per_agent))
    total = args.agents * args.per_agent
    queues = {s: asyncio.Queue[tuple[str, str]]() for s in servers}
    owners = {f"{s}-{k}": queues[s] for s in servers for k in range(args.per_agent)}
    tasks = [asyncio.create_task(simulated_agent(store, prefix, s, q)) for s, q in queues.items()]
    tasks.append(asyncio.create_task(dispatch(store, prefix, await store.revision() + 1, owners)))
    child, base = start_controller(args, etcd, prefix, tmp / "controller-sim.log")
    seen = Seen(prefix, "big")
    try:
        await wait_ready(child, base, args.timeout)
        await asyncio.sleep(args.settle)
        async with following(store, prefix + "/", seen):
            load0 = os.getloadavg()[0]
            cpu0 = common.cpu_seconds(child.pid)
            t0 = time.monotonic()
            with common.Sampler(child.pid) as sampler:
                await store.apply(
                    [
                        Write(keys.rollout_config(prefix, "big"), rollout_config("big", "2.0", args.max_unavailable)),
                        Write(keys.rollout_status(prefix, "big"), None),
                    ]
                )
                await wait(lambda: seen.phase == "Succeeded", args.timeout, "the rollout of big to 2.0")
            duration = time.monotonic() - t0
            cpu = common.cpu_seconds(child.pid) - cpu0
            load1 = os.getloadavg()[0]
    finally:
        child.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    steps: dict[int, float] = {}
    for arrival, revision, _, version in seen.writes:
        if version == "2.0":
            steps.setdefault(revision, arrival)
    overheads = []
    for arrival in sorted(steps.values())[1:]:
        before = [t for t in seen.reports if t <= arrival]
        if before:
            overheads.append(arrival - before[-1])
    label = f"{args.agents}x{args.per_agent}"
    note = f"load {load0:.1f} -> {load1:.1f}; {total} instances, max_unavailable {args.max_unavailable}"
    common.emit(BENCH, f"sim_{label}_steps", len(steps), "transactions", note=note)
    common.emit(
        BENCH,
        f"sim_{label}_overhead_per_step_median",
        statistics.median(overheads) * 1000,
        "ms",
        note="a status write arriving -> the controller's next instance write arriving",
    )
    common.emit(BENCH, f"sim_{label}_overhead_per_step_p90", common.percentile(overheads, 90) * 1000, "ms")
    common.emit(BENCH, f"sim_{label}_cpu_per_step", cpu / max(len(steps), 1) * 1000, "ms", note=f"{cpu:.1f} s in all")
    common.emit(BENCH, f"sim_{label}_duration", duration, "s", note="config written -> Succeeded seen")
    common.emit(BENCH, f"sim_{label}_controller_peak_rss", sampler.peak, "MiB")
    return [f"simulated rollout: load average {load0:.1f} -> {load1:.1f}"]


async def run(args: argparse.Namespace, tmp: Path) -> None:
    notes: list[str] = [f"controller from {args.source}"] if args.source else []
    notes += [] if LISTINGS else ["no listing keys written"]
    with common.etcd_server(tmp / "etcd", ["--max-request-bytes", str(8 * 2**20)]) as etcd:
        store = Store(await client.connect(EtcdOptions(endpoints=etcd.endpoint, prefix="/cs")))
        try:
            if "sizes" in args.only:
                notes += await sizes(args, tmp, etcd, store)
            if "sim" in args.only:
                notes += await simulation(args, tmp, etcd, store)
        finally:
            await store.close()
    common.summary("controller cost against fleet size", notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="rollouts started per fleet size (median)")
    parser.add_argument("--elsewhere", type=int, default=2000, help="status writes elsewhere per size")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--per-agent", type=int, default=10)
    parser.add_argument("--max-unavailable", type=int, default=100)
    parser.add_argument("--agent-delay", type=float, default=0.0, help="seconds before a simulated agent reports")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", default="sizes,sim", help="sizes,sim")
    parser.add_argument("--source", help="run `python -m discoverd` from this directory (code before a change)")
    parser.add_argument("--quick", action="store_true", help="10/200/1,000 servers; 20 agents x 10")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-listings", action="store_true", help="write no listing keys (agents before them)")
    args = parser.parse_args()
    global LISTINGS
    LISTINGS = not args.no_listings
    if args.quick:
        args.sizes, args.agents, args.elsewhere, args.max_unavailable = [10, 200, 1000], 20, 500, 20
    args.only = set(args.only.split(","))
    with common.scratch_dir(keep=args.keep) as tmp:
        asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
