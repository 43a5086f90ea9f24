"""Figure 6: the agent's cost against the size of the fleet (issue 11).

One real etcd (no fsync), real `discoverd agent` processes, instances whose
run script is `sleep` (exec'd directly, no shell). Two parts:

1. **one agent, growing fleet**: the fleet grows to `--sizes` servers (default
   10, 1,000, 10,000), each with 10 instances of 20 services (instance
   documents, a status key per instance and an agent status key, as live
   agents would have written). At each size a fresh agent (its own server ID
   and state directory) starts with 10 instances of its own: its time from
   spawn until the bench sees all 10 `Running` in etcd, its RSS once settled,
   and the watch events etcd sends while `--elsewhere` status updates and
   configuration changes happen on other servers (etcd's
   `etcd_debugging_mvcc_events_total`; the only other watcher is the bench's,
   on the agent's own status keys, which nothing writes meanwhile). The goal:
   RSS and time within 10 % of the 10-server case, zero events.
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
    client: aetcd.Client, items: Iterable[tuple[str, Any]], concurrency: int = 4, per_txn: int = TXN_OPS
) -> None:
    """Many puts, `per_txn` per transaction, a few transactions in flight."""
    ops = [
        rpc.RequestOp(request_put=rpc.PutRequest(key=f"{PREFIX}/{k}".encode(), value=json.dumps(v).encode()))
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


def agent_argv(args: argparse.Namespace, etcd: Any, server_id: str, state_dir: Path, *extra: str) -> list[str]:
    program = [sys.executable, "-m", "discoverd"] if args.source else [str(common.DISCOVERD)]
    return [
        *program,
        "--etcd-endpoints",
        etcd.endpoint,
        "--prefix",
        PREFIX,
        "--log-format",
        "json",
        "agent",
        "--server-id",
        server_id,
        "--state-dir",
        str(state_dir),
        "--stop-instances-on-exit",
        *extra,
    ]


def start_agent(args: argparse.Namespace, w: agent_world.World, argv: list[str], log: Path) -> common.Child:
    env = {**os.environ, agent_world.MARKER: w.token, "PYTHONUNBUFFERED": "1"}
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    child = common.Child(argv, log, env=env).start()
    w.agents.append(child)
    return child


async def running(client: aetcd.Client, server_id: str) -> int:
    """Instances of `server_id` whose status is Running (one range over its own status keys)."""
    head = f"{PREFIX}/servers/{server_id}/status/instances/".encode()
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
    args: argparse.Namespace, tmp: Path, etcd: Any, w: agent_world.World, probe: str, keep: bool
) -> tuple[common.Child, Path, tuple[float, float, float, float] | None]:
    """A fresh agent with 10 instances: (spawn -> all Running s, its configuration read s, RSS, peak RSS)."""
    client = w.client
    refs = [(f"svc-{k % SERVICES:02d}", f"{probe}-{k}") for k in range(PER_SERVER)]
    items: list[tuple[str, Any]] = [
        (f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": "1.0"}) for s, i in refs
    ]
    items.append((f"servers/{probe}/config/details", {"service_instances": [{"name": s, "id": i} for s, i in refs]}))
    await put_all(client, items)
    log = tmp / f"{probe}.log"
    spawned = time.monotonic()
    agent = start_agent(args, w, agent_argv(args, etcd, probe, tmp / f"state-{probe}"), log)
    result = None
    with common.Sampler(agent.pid) as sampler:
        while time.monotonic() < spawned + args.timeout:
            if await running(client, probe) >= PER_SERVER:
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


# --- part 1: one agent, growing fleet -----------------------------------------------------------


async def one_agent(args: argparse.Namespace, tmp: Path, etcd: Any, w: agent_world.World) -> list[str]:
    notes: list[str] = []
    client = w.client
    await put_all(
        client,
        (
            (
                f"services/svc-{s:02d}/versions/1.0/config/details",
                {
                    "name": f"svc-{s:02d}",
                    "run_script": {"command": "sleep", "argv": ["1000000"]},
                    "min_healthy_seconds": 0,
                },
            )
            for s in range(SERVICES)
        ),
    )
    base: dict[str, float] = {}
    size = 0
    for target in args.sizes:
        t0 = time.monotonic()
        await put_all(client, fleet_keys(size, target))
        common.log(f"fleet of {target} servers written in {time.monotonic() - t0:.1f} s")
        size = target
        times: list[float] = []
        reads: list[float] = []
        rsses: list[float] = []
        peak = 0.0
        for r in range(args.repeat):
            agent, log, result = await probe_agent(args, tmp, etcd, w, f"probe-{target}-{r}", keep=r == args.repeat - 1)
            if result is None:
                notes.append(f"probe-{target}-{r}: not all {PER_SERVER} Running after {args.timeout:g} s")
                continue
            times.append(result[0])
            reads.append(result[1])
            rsses.append(result[2])
            peak = max(peak, result[3])
        to_running = statistics.median(times) if times else None
        read = statistics.median(reads) if reads else None
        rss = statistics.median(rsses) if rsses else 0.0

        # writes elsewhere: other servers' status and configuration, other services' versions
        logged0 = watch_events_logged(log)
        m0 = metrics(etcd.endpoint)
        writes: list[tuple[str, Any]] = []
        for j in range(args.elsewhere):
            n = (j * 7919) % size
            server = f"fleet-{n:05d}"
            s, i = f"svc-{(n + j % PER_SERVER) % SERVICES:02d}", f"f{n:05d}-{j % PER_SERVER}"
            if j % 10 == 0:
                writes.append(
                    (f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": "1.0", "note": j})
                )
            elif j % 10 == 1:
                writes.append(
                    (f"servers/{server}/config/details", {"service_instances": [{"name": s, "id": i}], "note": j})
                )
            else:
                writes.append(
                    (f"servers/{server}/status/instances/{s}/{i}", status_doc(j, "BackOff" if j % 2 else "Running"))
                )
        await put_all(client, writes, concurrency=8, per_txn=1)  # one revision each, as real writers make
        await asyncio.sleep(2)
        m1 = metrics(etcd.endpoint)
        events = delta(m1, m0, "etcd_debugging_mvcc_events_total")
        sent = delta(m1, m0, "etcd_network_client_grpc_sent_bytes_total")
        logged1 = watch_events_logged(log)
        agent.stop()

        label = f"{target}"
        if not base:
            base = {"rss": rss, "run": to_running or 0.0, "read": read or 0.0}
        common.emit(
            BENCH,
            f"rss_{label}_servers",
            rss,
            "MiB",
            base["rss"],
            target="within 10 % of 10 servers",
            note=f"peak {peak:.0f} MiB",
        )
        common.emit(
            BENCH,
            f"config_read_{label}_servers",
            read,
            "s",
            base["read"],
            note="its log: Started agent -> Read configuration (median)",
        )
        common.emit(
            BENCH,
            f"time_to_running_{label}_servers",
            to_running,
            "s",
            base["run"],
            target="within 10 % of 10 servers",
            note=f"agent spawn -> its {PER_SERVER} instances Running in etcd (median of {args.repeat})",
        )
        note = f"{args.elsewhere} writes to other servers' keys; etcd sent {sent / 1024:.0f} KiB on all streams"
        if any("watches" in e for e in agent_world.agent_events(log, "Read configuration")):  # it counts them
            note += f"; the agent counted {(logged1 or 0) - (logged0 or 0)} events"
        common.emit(BENCH, f"events_from_elsewhere_{label}_servers", events, "events", target="0", note=note)
    return notes


# --- part 2: fleet simulation -------------------------------------------------------------------


def identity(state_dir: Path, service: str, instance: str) -> tuple[int, int] | None:
    """(pid, start time) of the run process the agent recorded, if that very process is alive."""
    from discoverd.agent import observe

    path = state_dir / "instances" / service / instance / ".discoverd" / "record.json"
    try:
        p = json.loads(path.read_text()).get("process")
    except (OSError, ValueError):
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
