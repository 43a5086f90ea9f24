"""Figures 1 and 2: the agent's reaction latency and the upgrade gap, side by side with etcd's own latency.

One real etcd, one real `discoverd agent`, one instance. Versions v0..vN are
written first (no-op download and install scripts, `true`, and
`min_healthy_seconds` 0); then, N times, the instance document is pointed at
the next version. Its run script is a light shell script that appends the
version and `date +%s.%N` to `starts` when it begins and, from a TERM trap, to
`stops` when it is stopped:

- reaction latency = start stamp of version i - wall clock just before the put;
- baseline = arrival of that same put on a plain etcd watch in this process
  (etcd's own put -> watch delivery latency, measured in the same run);
- upgrade gap = start stamp of version i - stop stamp of version i-1 (the time
  with no run process alive; the old one's trap runs when SIGTERM arrives).

    .venv/bin/python bench/agent_latency.py              # 200 changes
    .venv/bin/python bench/agent_latency.py --changes 50

JSON lines on stdout, a summary on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import agent_world
import common

BENCH = "agent_latency"
SERVICE, INSTANCE = "lat", "i1"
RUN = (
    "trap 'date +\"$DISCOVERD_VERSION %s.%N\" >> stops; exit 0' TERM; "
    'date +"$DISCOVERD_VERSION %s.%N" >> starts; sleep 1000000 & wait'
)


def stamps(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            version, _, ts = line.partition(" ")
            if ts:
                out[version] = float(ts)
    return out


async def run(args: argparse.Namespace, tmp: Path) -> None:
    with common.etcd_server(tmp) as etcd:
        async with agent_world.world(tmp, etcd) as w:
            noop = {"command": "true"}
            doc = {
                "download_script": noop,
                "install_script": noop,
                "run_script": agent_world.sh_run(RUN),
                "min_healthy_seconds": 0,
                "stop_timeout": 5,
            }
            await w.put_many(
                (f"services/{SERVICE}/versions/v{i}/config/details", w.version_doc(SERVICE, **doc))
                for i in range(args.changes + 1)
            )
            await w.instance(SERVICE, INSTANCE, "v0")
            for i in range(args.bystanders):
                await w.instance(SERVICE, f"b{i}", "v0")
            await w.server([(SERVICE, INSTANCE), *((SERVICE, f"b{i}") for i in range(args.bystanders))])
            status = await w.status_watch()
            argv_prefix: list[str] | None = None
            if args.profile:
                spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                argv_prefix = [spy, "record", "-o", str(tmp / "agent.svg"), "--rate", "200", "--"]
            agent = w.start_agent(argv_prefix=argv_prefix)
            await common.wait_for(
                lambda: status.count("Running") == 1 + args.bystanders, 60, "v0 Running", interval=0.05
            )
            # the baseline: a plain watch on the instance's key in this process
            key = w.key(f"services/{SERVICE}/instances/{INSTANCE}/config/details")
            arrivals: dict[int, float] = {}
            watch = await w.client.watch(key)

            async def baseline() -> None:
                async for event in watch:
                    arrivals[event.kv.mod_revision] = time.time()

            watcher = asyncio.create_task(baseline())
            idir = w.state_dir / "instances" / SERVICE / INSTANCE
            sent: dict[str, tuple[float, int]] = {}
            cpu0 = common.cpu_seconds(agent.pid)
            for i in range(1, args.changes + 1):
                version = f"v{i}"
                await asyncio.sleep(args.pause)
                t0 = time.time()
                revision = await w.instance(SERVICE, INSTANCE, version)
                sent[version] = (t0, revision)

                def started(v: str = version) -> bool:
                    s = status.status.get((SERVICE, INSTANCE), {})
                    running = s.get("version") == v and s.get("phase") == "Running"
                    return running and v in stamps(idir / "starts")

                await common.wait_for(started, 30, f"{version} Running", interval=0.005)
            await asyncio.sleep(0.2)
            # CPU the agent spent per change (user + system): less sensitive to a loaded machine than latency
            cpu_per_change = 1000 * (common.cpu_seconds(agent.pid) - cpu0) / args.changes
            watcher.cancel()
            starts, stops = stamps(idir / "starts"), stamps(idir / "stops")

    latency, base, gap = [], [], []
    for i in range(1, args.changes + 1):
        version, previous = f"v{i}", f"v{i - 1}"
        t0, revision = sent[version]
        latency.append(1000 * (starts[version] - t0))
        if revision in arrivals:
            base.append(1000 * (arrivals[revision] - t0))
        if previous in stops:
            gap.append(1000 * (starts[version] - stops[previous]))
    n = args.changes
    p = common.percentile
    b50, b99 = p(base, 50), p(base, 99)
    note = f"{n} changes, {args.bystanders} other instances; no-op download/install (`true`), min_healthy_seconds 0"
    common.emit(BENCH, "baseline_watch_p50", b50, "ms", note="put -> event on a plain etcd watch, same run")
    common.emit(BENCH, "baseline_watch_p99", b99, "ms")
    common.emit(BENCH, "reaction_p50", p(latency, 50), "ms", b50, target="<= baseline + 30 ms", note=note)
    common.emit(BENCH, "reaction_p99", p(latency, 99), "ms", b99, target="<= baseline + 100 ms")
    common.emit(BENCH, "reaction_p50_above_baseline", p(latency, 50) - b50, "ms", 0, target="<= 30 ms")
    common.emit(BENCH, "reaction_p99_above_baseline", p(latency, 99) - b99, "ms", 0, target="<= 100 ms")
    common.emit(BENCH, "reaction_max", max(latency), "ms")
    common.emit(BENCH, "upgrade_gap_p50", p(gap, 50), "ms", target="<= 50 ms", note=f"{len(gap)} upgrades")
    common.emit(BENCH, "upgrade_gap_p99", p(gap, 99), "ms")
    common.emit(BENCH, "upgrade_gap_max", max(gap), "ms")
    common.emit(BENCH, "agent_cpu_per_change", cpu_per_change, "ms", note="agent user+system CPU / changes")
    extra = [f"baseline samples {len(base)}/{n}, gap samples {len(gap)}/{n}"]
    if args.profile:
        extra.append(f"profile: {tmp / 'agent.svg'}")
    common.summary(f"agent reaction latency and upgrade gap, {n} changes", extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200, help="version changes (default 200)")
    parser.add_argument("--bystanders", type=int, default=0, help="other running instances (default 0)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between a change settling and the next")
    parser.add_argument("--profile", action="store_true", help="record the agent with py-spy (flame graph SVG)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, stamps)")
    args = parser.parse_args()
    with common.scratch_dir(keep=args.keep or args.profile) as tmp:
        asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
