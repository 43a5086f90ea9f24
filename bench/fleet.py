"""Figure 6: the agent's cost against the size of the fleet (issue 11).

One real etcd (no fsync), real `discoverd agent` processes, instances whose
run script is `sleep` (exec'd directly, no shell). Two parts:

1. **one agent, fleets of several sizes**: one fleet per `--sizes` entry
   (default 10, 1,000, 10,000 servers), each under a prefix of its own
   (`/fleet-<size>`) on the same etcd, every server with 10 instances of 20
   services (server and instance documents, a status key per instance and an
   agent status key, as live agents would have written). Then, `--repeat`
   times (3), for each size in turn (so the load of this shared machine drifts
   over all sizes alike), a fresh agent (its own server ID and state
   directory) starts with 10 instances of its own: its time from spawn until
   all 10 are `Running` in etcd, the time its log shows from start to its
   configuration read, and its RSS once settled (medians). Last, with one more
   fresh agent per size, `--elsewhere` (2,000) writes to other servers' status
   and configuration: the watch events etcd sends meanwhile
   (`etcd_debugging_mvcc_events_total`; the bench itself watches nothing), and
   the agent's own count. The goal: RSS and time within 10 % of the 10-server
   case, zero events.
2. **fleet simulation**: `--agents` real agents (50; distinct server IDs and
   state directories) on one etcd, `--instances` each (20); once all run,
   `--kill-rate` random run processes a second (5) are SIGKILLed, so their
   agents write status (BackOff, then Running again): over `--window`
   seconds (60) of this churn, the watch events
   and bytes etcd sends (`etcd_debugging_mvcc_events_total`,
   `etcd_network_client_grpc_sent_bytes_total` from its `/metrics`) and the
   key writes (`etcd_mvcc_put_total` + deletes) that caused them.

    .venv/bin/python bench/fleet.py                       # both parts (~6 min)
    .venv/bin/python bench/fleet.py --quick               # 10/200/1,000 servers; 10 agents x 5, 20 s
    .venv/bin/python bench/fleet.py --only sim --agents 20
    .venv/bin/python bench/fleet.py --source /tmp/before/operator   # another checkout's code (before/after)

`--source DIR` runs the agents as `python -m discoverd` with DIR first on
PYTHONPATH (e.g. `git archive main operator | tar -x -C /tmp/before`), so the
same bench measures the code before a change. JSON lines on stdout, a summary
on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aetcd
import agent_world
import common
from aetcd import rpc

BENCH = "fleet"
PREFIX = "/bench"
SERVICES = 20
PER_SERVER = 10
TXN_OPS = 128


# --- etcd ---------------------------------------------------------------------------------------


def metrics(endpoint: str) -> dict[str, float]:
    """etcd's counters from its /metrics (sums over labels)."""
    wanted = (
        "etcd_debugging_mvcc_events_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_mvcc_put_total",
        "etcd_mvcc_delete_total",
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_mvcc_watch_stream_total",
    )
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after[name] - before[name]


async def put_all(
    client: aetcd.Client,
    items: Iterable[tuple[str, Any]],
    concurrency: int = 4,
    per_txn: int = TXN_OPS,
    prefix: str = PREFIX,
) -> None:
    """Many puts, `per_txn` per transaction, a few transactions in flight."""
    ops = [
        rpc.RequestOp(request_put=rpc.PutRequest(key=f"{prefix}/{k}".encode(), value=json.dumps(v).encode()))
        for k, v in items
    ]
    chunks = [ops[i : i + per_txn] for i in range(0, len(ops), per_txn)]
    for i in range(0, len(chunks), concurrency):
        await asyncio.gather(*(client.kvstub.Txn(rpc.TxnRequest(success=c)) for c in chunks[i : i + concurrency]))


def status_doc(n: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "phase": phase,
        "version": "1.0",
        "previous_version": None,
        "pid": 10_000 + n,
        "restarts": n % 7,
        "last_exit_code": None,
        "message": "",
        "since": "2026-11-25T12:00:00+00:00",
        "updated_at": "2026-11-25T12:00:00+00:00",
    }


def fleet_keys(first: int, last: int) -> Iterable[tuple[str, Any]]:
    """Servers first..last-1: server document, instance documents, instance status and agent status."""
    for n in range(first, last):
        server = f"fleet-{n:05d}"
        refs = [(f"svc-{(n + k) % SERVICES:02d}", f"f{n:05d}-{k}") for k in range(PER_SERVER)]
        yield f"servers/{server}/config/details", {"service_instances": [{"name": s, "id": i} for s, i in refs]}
        for s, i in refs:
            yield f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": "1.0"}
            yield f"servers/{server}/status/instances/{s}/{i}", status_doc(n)
        yield (
            f"servers/{server}/status/agent",
            {"hostname": server, "agent_version": "0", "started_at": "2026-11-25T12:00:00+00:00"},
        )


# --- agents -------------------------------------------------------------------------------------


def agent_argv(args: argparse.Namespace, etcd: Any, server_id: str, state_dir: Path, prefix: str = PREFIX) -> list[str]:
    program = [sys.executable, "-m", "discoverd"] if args.source else [str(common.DISCOVERD)]
    return [
        *program,
        "--etcd-endpoints",
        etcd.endpoint,
        "--prefix",
        prefix,
        "--log-format",
        "json",
        "agent",
        "--metrics-address",
        "",
        "--server-id",
        server_id,
        "--state-dir",
        str(state_dir),
        "--stop-instances-on-exit",
        "--cgroups",
        "none",
    ]


def start_agent(args: argparse.Namespace, w: agent_world.World, argv: list[str], log: Path) -> common.Child:
    env = {**os.environ, agent_world.MARKER: w.token, "PYTHONUNBUFFERED": "1"}
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    child = common.Child(argv, log, env=env).start()
    w.agents.append(child)
    return child


async def running(client: aetcd.Client, server_id: str, prefix: str = PREFIX) -> int:
    """Instances of `server_id` whose status is Running (one range over its own status keys)."""
    head = f"{prefix}/servers/{server_id}/status/instances/".encode()
    got = await client.get_prefix(head)
    return sum(1 for kv in got if json.loads(kv.value).get("phase") == "Running")


async def running_all(client: aetcd.Client, servers: list[str]) -> int:
    head = f"{PREFIX}/servers/".encode()
    got = await client.get_prefix(head)
    wanted = {f"{PREFIX}/servers/{s}/status/instances/" for s in servers}
    total = 0
    for kv in got:
        key = kv.key.decode()
        if "/status/instances/" in key and key[: key.index("/status/instances/") + 18] in wanted:
            total += json.loads(kv.value).get("phase") == "Running"
    return total


def watch_events_logged(log: Path) -> int | None:
    """The agent's own count of watch events received (None for an agent that does not log it)."""
    counts = [int(e["events"]) for e in agent_world.agent_events(log, "Received configuration change")]
    return max(counts) if counts else None


async def probe_agent(
    args: argparse.Namespace, tmp: Path, etcd: Any, w: agent_world.World, prefix: str, probe: str, keep: bool
) -> tuple[common.Child, Path, tuple[float, float, float, float] | None]:
    """A fresh agent with 10 instances: (spawn -> all Running s, its configuration read s, RSS, peak RSS)."""
    client = w.client
    refs = [(f"svc-{k % SERVICES:02d}", f"{probe}-{k}") for k in range(PER_SERVER)]
    items: list[tuple[str, Any]] = [
        (f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": "1.0"}) for s, i in refs
    ]
    items.append((f"servers/{probe}/config/details", {"service_instances": [{"name": s, "id": i} for s, i in refs]}))
    await put_all(client, items, prefix=prefix)
    log = tmp / f"{prefix.strip('/')}-{probe}.log"
    spawned = time.monotonic()
    agent = start_agent(args, w, agent_argv(args, etcd, probe, tmp / f"state-{prefix.strip('/')}-{probe}", prefix), log)
    result = None
    with common.Sampler(agent.pid) as sampler:
        while time.monotonic() < spawned + args.timeout:
            if await running(client, probe, prefix) >= PER_SERVER:
                to_running = time.monotonic() - spawned
                await asyncio.sleep(args.settle)
                started = agent_world.agent_events(log, "Started agent")[0]["t"]
                read = agent_world.agent_events(log, "Read configuration")[0]["t"] - started
                result = (to_running, read, common.rss_mib(agent.pid), 0.0)
                break
            await asyncio.sleep(0.02)
    if result is not None:
        result = (*result[:3], sampler.peak)
    if not keep:
        agent.stop()
    return agent, log, result


def elsewhere_writes(size: int, count: int) -> list[tuple[str, Any]]:
    """Writes to other servers' keys: mostly status, some server and instance documents."""
    writes: list[tuple[str, Any]] = []
    for j in range(count):
        n = (j * 7919) % size
        server = f"fleet-{n:05d}"
        s, i = f"svc-{(n + j % PER_SERVER) % SERVICES:02d}", f"f{n:05d}-{j % PER_SERVER}"
        if j % 10 == 0:
            doc = {"name": s, "service_version": "1.0", "note": j}
            writes.append((f"services/{s}/instances/{i}/config/details", doc))
        elif j % 10 == 1:
            writes.append(
                (f"servers/{server}/config/details", {"service_instances": [{"name": s, "id": i}], "note": j})
            )
        else:
            writes.append(
                (f"servers/{server}/status/instances/{s}/{i}", status_doc(j, "BackOff" if j % 2 else "Running"))
            )
    return writes


# --- part 1: one agent, fleets of several sizes -------------------------------------------------


async def one_agent(args: argparse.Namespace, tmp: Path, etcd: Any, w: agent_world.World) -> list[str]:
    """Each fleet size under a prefix of its own on one etcd; probes alternate between sizes, so load drift hits all."""
    notes: list[str] = []
    client = w.client
    prefixes = {size: f"/fleet-{size}" for size in args.sizes}
    for size, prefix in prefixes.items():
        t0 = time.monotonic()
        versions = [
            (
                f"services/svc-{s:02d}/versions/1.0/config/details",
                {
                    "name": f"svc-{s:02d}",
                    "run_script": {"command": "sleep", "argv": ["1000000"]},
                    "min_healthy_seconds": 0,
                },
            )
            for s in range(SERVICES)
        ]
        await put_all(client, versions, prefix=prefix)
        await put_all(client, fleet_keys(0, size), prefix=prefix)
        common.log(f"fleet of {size} servers written under {prefix} in {time.monotonic() - t0:.1f} s")
    await asyncio.sleep(args.settle)

    results: dict[int, list[tuple[float, float, float, float]]] = {size: [] for size in args.sizes}
    for r in range(args.repeat):
        for size, prefix in prefixes.items():
            _, _, result = await probe_agent(args, tmp, etcd, w, prefix, f"probe-{r}", keep=False)
            if result is None:
                notes.append(f"{prefix} probe-{r}: not all {PER_SERVER} Running after {args.timeout:g} s")
            else:
                results[size].append(result)

    base: dict[str, float] = {}
    for size, prefix in prefixes.items():
        got = results[size]
        to_running = statistics.median(x[0] for x in got) if got else None
        read = statistics.median(x[1] for x in got) if got else None
        rss = statistics.median(x[2] for x in got) if got else None
        peak = max((x[3] for x in got), default=0.0)

        # writes elsewhere in this fleet while a fresh agent of it runs
        agent, log, _ = await probe_agent(args, tmp, etcd, w, prefix, "probe-quiet", keep=True)
        logged0 = watch_events_logged(log)
        m0 = metrics(etcd.endpoint)
        await put_all(client, elsewhere_writes(size, args.elsewhere), concurrency=8, per_txn=1, prefix=prefix)
        await asyncio.sleep(2)
        m1 = metrics(etcd.endpoint)
        logged1 = watch_events_logged(log)
        agent.stop()
        events = delta(m1, m0, "etcd_debugging_mvcc_events_total")
        sent = delta(m1, m0, "etcd_network_client_grpc_sent_bytes_total")

        if not base:
            base = {"rss": rss or 0.0, "run": to_running or 0.0, "read": read or 0.0}
        target = "within 10 % of 10 servers"
        n = f"median of {len(got)}"
        common.emit(
            BENCH, f"rss_{size}_servers", rss, "MiB", base["rss"], target=target, note=f"{n}; peak {peak:.0f} MiB"
        )
        common.emit(
            BENCH,
            f"time_to_running_{size}_servers",
            to_running,
            "s",
            base["run"],
            target=target,
            note=f"agent spawn -> its {PER_SERVER} instances Running in etcd ({n})",
        )
        common.emit(
            BENCH,
            f"config_read_{size}_servers",
            read,
            "s",
            base["read"],
            note=f"its log: Started agent -> Read configuration ({n})",
        )
        note = f"{args.elsewhere} writes to other servers' keys; etcd sent {sent / 1024:.0f} KiB on all streams"
        if any("watches" in e for e in agent_world.agent_events(log, "Read configuration")):  # it counts them
            note += f"; the agent counted {(logged1 or 0) - (logged0 or 0)} events"
        common.emit(BENCH, f"events_from_elsewhere_{size}_servers", events, "events", target="0", note=note)
    return notes


# --- part 2: fleet simulation -------------------------------------------------------------------


def identity(state_dir: Path, service: str, instance: str) -> tuple[int, int] | None:
    """(pid, start time) of the run process the agent recorded, if that very process is alive."""
    from discoverd.agent import observe

    path = state_dir / "records" / service / f"{instance}.json"  # the saved InstanceRecord (format 2)
    try:
        p = json.loads(path.read_text())["state"].get("process")
    except (OSError, ValueError, KeyError):
        return None
    if not p or not observe.alive(int(p["pid"]), int(p["start_time"])):
        return None
    return int(p["pid"]), int(p["start_time"])


async def churn(args: argparse.Namespace, tmp: Path, servers: list[str], seconds: float) -> int:
    """SIGKILL a random run process `--kill-rate` times a second: each makes its agent write status."""
    rng = random.Random(11)
    kills = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server = rng.choice(servers)
        ident = identity(tmp / f"state-{server}", "churn", f"{server}-{rng.randrange(args.instances):02d}")
        if ident is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ident[0], signal.SIGKILL)
                kills += 1
        await asyncio.sleep(1 / args.kill_rate)
    return kills


async def simulation(args: argparse.Namespace, tmp: Path, etcd: Any, w: agent_world.World) -> list[str]:
    client = w.client
    servers = [f"sim-{a:02d}" for a in range(args.agents)]
    version = {"name": "churn", "run_script": {"command": "sleep", "argv": ["1000000"]}, "min_healthy_seconds": 0}
    items: list[tuple[str, Any]] = [("services/churn/versions/1.0/config/details", version)]
    for server in servers:
        refs = [f"{server}-{k:02d}" for k in range(args.instances)]
        body = {"service_instances": [{"name": "churn", "id": i} for i in refs]}
        items.append((f"servers/{server}/config/details", body))
        for i in refs:
            items.append((f"services/churn/instances/{i}/config/details", {"name": "churn", "service_version": "1.0"}))
    await put_all(client, items)
    t0 = time.monotonic()
    agents = []
    for server in servers:
        argv = agent_argv(args, etcd, server, tmp / f"state-{server}")
        agents.append(start_agent(args, w, argv, tmp / f"{server}.log"))
        await asyncio.sleep(args.stagger)
    total = args.agents * args.instances
    up = 0
    while time.monotonic() - t0 < args.timeout:
        up = await running_all(client, servers)
        if up >= total:
            break
        await asyncio.sleep(0.5)
    started = time.monotonic() - t0
    common.log(f"{up} of {total} instances Running {started:.1f} s after the first agent started")
    await asyncio.sleep(args.settle)

    load0 = os.getloadavg()[0]
    cpu0 = sum(common.cpu_seconds(a.pid) for a in agents)
    m0 = metrics(etcd.endpoint)
    etcd_cpu0 = common.cpu_seconds(etcd.process.pid)
    t1 = time.monotonic()
    kills = await churn(args, tmp, servers, args.window)
    await asyncio.sleep(3)  # the last restarts (back-off about 1 s) write their status
    seconds = time.monotonic() - t1
    m1 = metrics(etcd.endpoint)
    cpu1 = sum(common.cpu_seconds(a.pid) for a in agents)
    etcd_cpu1 = common.cpu_seconds(etcd.process.pid)
    rss = [common.rss_mib(a.pid) for a in agents]
    load1 = os.getloadavg()[0]
    received = [watch_events_logged(a.log_path) for a in agents]
    for a in agents:
        a.stop()

    events = delta(m1, m0, "etcd_debugging_mvcc_events_total")
    sent = delta(m1, m0, "etcd_network_client_grpc_sent_bytes_total")
    writes = delta(m1, m0, "etcd_mvcc_put_total") + delta(m1, m0, "etcd_mvcc_delete_total")
    label = f"{args.agents}x{args.instances}"
    common.emit(
        BENCH,
        f"sim_{label}_key_writes",
        writes,
        "writes",
        note=f"in {seconds:.0f} s: status written after {kills} kills",
    )
    common.emit(
        BENCH, f"sim_{label}_watch_events_sent", events, "events", note=f"{events / max(writes, 1):.2f} per key write"
    )
    common.emit(
        BENCH, f"sim_{label}_bytes_sent", sent / 2**20, "MiB", note="all gRPC responses etcd sent in the window"
    )
    common.emit(
        BENCH,
        f"sim_{label}_agent_cpu",
        100 * (cpu1 - cpu0) / seconds,
        "% of one core",
        note=f"all {args.agents} agents together",
    )
    common.emit(BENCH, f"sim_{label}_etcd_cpu", 100 * (etcd_cpu1 - etcd_cpu0) / seconds, "% of one core")
    common.emit(BENCH, f"sim_{label}_agent_rss_mean", sum(rss) / len(rss), "MiB")
    counted = [r for r in received if r is not None]
    notes = [f"load average {load0:.1f} -> {load1:.1f} during the window"]
    if counted:
        notes.append(f"events the agents counted since their start: {sum(counted)} (max {max(counted)} for one agent)")
    return notes


async def run(args: argparse.Namespace, tmp: Path) -> None:
    notes: list[str] = []
    if args.source:
        notes.append(f"agents run from {args.source}")
    if "one" in args.only:
        with common.etcd_server(tmp / "one") as etcd:
            async with agent_world.world(tmp / "one", etcd, prefix=PREFIX) as w:
                notes += await one_agent(args, tmp / "one", etcd, w)
    if "sim" in args.only:
        with common.etcd_server(tmp / "sim") as etcd:
            async with agent_world.world(tmp / "sim", etcd, prefix=PREFIX) as w:
                notes += await simulation(args, tmp / "sim", etcd, w)
    common.summary("agent cost against fleet size", notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="fresh agents started per fleet size (median)")
    parser.add_argument("--elsewhere", type=int, default=2000, help="writes to other servers' keys per size")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--instances", type=int, default=20, help="instances per simulated agent")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of status churn measured")
    parser.add_argument("--kill-rate", type=float, default=5.0, help="run processes killed per second (status churn)")
    parser.add_argument("--stagger", type=float, default=0.2, help="seconds between agent starts")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--only", default="one,sim", help="one,sim")
    parser.add_argument("--source", help="run `python -m discoverd` from this directory (code before a change)")
    parser.add_argument("--quick", action="store_true", help="10/200/1,000 servers; 10 agents x 5 instances, 20 s")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.agents, args.instances, args.window, args.elsewhere = [10, 200, 1000], 10, 5, 20.0, 500
    args.only = set(args.only.split(","))
    with common.scratch_dir(keep=args.keep) as tmp:
        for directory in ("one", "sim"):
            (tmp / directory).mkdir()
        asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
