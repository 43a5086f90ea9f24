"""Rollout figures (issue 14): a 50-instance rollout across 10 real agents, driven by a real controller.

One real etcd, 10 `discoverd agent` processes (servers r0..r9, 5 instances
each, run script `sleep`, exec'd directly) and one `discoverd controller`.
Everything is observed through one etcd watch in this process, with arrival
times on this machine's clock (agents and controller share it).

1. **Overhead per step**: roll out 1.0 -> 2.0 with `max_unavailable` 10 and
   `min_healthy_seconds` M (`--min-healthy`, 2 s). For every write of the
   controller after the first, the time from the moment the instance whose
   health freed the slot became healthy (its `Running` status's `since` + M)
   (or its report arriving, if later) to the controller's write arriving:
   what the controller adds beyond `min_healthy_seconds` and the agents'
   own reporting. Also the whole rollout's duration.
2. **Revert time**: roll out to 3.0, whose run script exits after 0.5 s while
   its agent probation is 1 s (so agents report `RolledBack`), with
   `min_healthy_seconds` 0 and `max_unavailable` 10. From the first failure
   report arriving to (a) the controller's revert writes arriving and (b) all
   50 instances `Running` on their old version again. Target (b) <= 2 s.

    .venv/bin/python bench/rollout.py            # JSON lines on stdout, summary on stderr
    .venv/bin/python bench/rollout.py --quick    # 20 instances on 4 agents

Every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.typed import Store, Write

BENCH = "rollout"
SERVICE = "fleet"
PREFIX = "/bench"


@dataclass
class Observed:
    """What the watch saw, with arrival times: instance document writes and instance status."""

    writes: list[tuple[float, int, str, str]] = field(default_factory=list)
    """(arrival, revision, instance, service_version) of every instance document put."""
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    rollout: dict[str, Any] | None = None

    def running_on(self, version: str) -> int:
        return sum(1 for s in self.status.values() if s.get("phase") == "Running" and s.get("version") == version)


async def follow(store: Store, start: int, seen: Observed) -> None:
    instances = keys.service_instances_prefix(PREFIX, SERVICE)
    rollout_status = keys.rollout_status(PREFIX, SERVICE)
    async for batch in watch.watch(store, start):
        now = time.time()
        for event in batch:
            if isinstance(event, watch.Put):
                key, value = event.entry.key, event.entry.value
                if key.startswith(instances):
                    doc = json.loads(value)
                    seen.writes.append((now, event.entry.mod_revision, key.split("/")[-3], doc["service_version"]))
                elif "/status/instances/" in key:
                    report = json.loads(value)
                    seen.status[key.rsplit("/", 1)[1]] = report
                    seen.reports.append((now, key.rsplit("/", 1)[1], report))
                elif key == rollout_status:
                    seen.rollout = json.loads(value)
            elif isinstance(event, watch.Delete) and "/status/instances/" in event.key:
                seen.status.pop(event.key.rsplit("/", 1)[1], None)


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def start_rollout(store: Store, to_version: str, min_healthy: float, max_unavailable: int) -> float:
    config = {
        "name": SERVICE,
        "to_version": to_version,
        "max_unavailable": max_unavailable,
        "min_healthy_seconds": min_healthy,
        "progress_deadline_seconds": 120,
    }
    t = time.time()
    await store.apply(
        [
            Write(keys.rollout_config(PREFIX, SERVICE), json.dumps(config).encode()),
            Write(keys.rollout_status(PREFIX, SERVICE), None),
        ]
    )
    return t


async def run(args: argparse.Namespace, tmp: Path) -> None:
    agents_n, per = (4, 5) if args.quick else (10, 5)
    total = agents_n * per
    with common.etcd_server(tmp) as etcd:
        options = EtcdOptions(endpoints=etcd.endpoint, prefix=PREFIX)
        store = Store(await client.connect(options))
        children: list[common.Child] = []
        seen = Observed()
        follower: asyncio.Task[None] | None = None
        try:
            sleep = {"command": "sleep", "argv": ["1000000"]}
            bad = {"command": "sh", "argv": ["-c", "sleep 0.5; exit 3"]}
            docs: dict[str, Any] = {
                keys.version_config(PREFIX, SERVICE, "1.0"): {
                    "name": SERVICE,
                    "run_script": sleep,
                    "min_healthy_seconds": 0,
                },
                keys.version_config(PREFIX, SERVICE, "2.0"): {
                    "name": SERVICE,
                    "run_script": sleep,
                    "min_healthy_seconds": 0,
                },
                keys.version_config(PREFIX, SERVICE, "3.0"): {
                    "name": SERVICE,
                    "run_script": bad,
                    "min_healthy_seconds": 1,
                },
            }
            servers = [f"r{n}" for n in range(agents_n)]
            docs.update(common.spread(PREFIX, SERVICE, [f"i{n:02d}" for n in range(total)], servers))
            revision = await store.apply(Write(k, json.dumps(v).encode()) for k, v in docs.items())
            follower = asyncio.create_task(follow(store, revision + 1, seen))
            base = [str(common.DISCOVERD), "--etcd-endpoints", etcd.endpoint, "--prefix", PREFIX]
            for server in servers:
                argv = common.agent_argv(etcd.endpoint, PREFIX, server, tmp / server)
                children.append(common.Child(argv, tmp / f"{server}.log").start())
            controller = common.Child([*base, "controller", "--lease-ttl", "5"], tmp / "controller.log").start()
            children.append(controller)
            await common.wait_for(lambda: seen.running_on("1.0") == total, 180, f"{total} instances Running on 1.0")
            common.log(f"{total} instances Running on 1.0 across {agents_n} agents")

            # 1. overhead per step beyond min_healthy_seconds
            m = args.min_healthy
            first = len(seen.writes)
            t0 = await start_rollout(store, "2.0", m, args.max_unavailable)
            await common.wait_for(lambda: (seen.rollout or {}).get("phase") == "Succeeded", 300, "the rollout to 2.0")
            t_done = time.time()
            writes = [w for w in seen.writes[first:] if w[3] == "2.0"]
            steps: dict[int, float] = {}
            for arrival, rev, _, _ in writes:
                steps.setdefault(rev, arrival)
            # An instance is healthy for the controller once Running on 2.0 for M seconds *and* reported
            # (an agent starved of CPU can report late): the later of the two, on this clock.
            ready = sorted(
                max(_ts(r["since"]) + m, t)
                for t, i, r in seen.reports
                if t >= t0 and r.get("phase") == "Running" and r.get("version") == "2.0"
            )
            overheads = []
            for arrival in sorted(steps.values())[1:]:
                enabling = [x for x in ready if x <= arrival]
                if enabling:
                    overheads.append(arrival - enabling[-1])
            common.emit(
                BENCH,
                "steps_written",
                len(steps),
                "transactions",
                note=f"{total} instances, max_unavailable {args.max_unavailable}",
            )
            common.emit(
                BENCH,
                "overhead_per_step_median",
                statistics.median(overheads) * 1000,
                "ms",
                note=f"beyond min_healthy_seconds {m:g}",
            )
            common.emit(BENCH, "overhead_per_step_max", max(overheads) * 1000, "ms")
            common.emit(
                BENCH, "rollout_duration", t_done - t0, "s", note=f"{total} instances, min_healthy_seconds {m:g}"
            )

            # 2. revert time
            first = len(seen.writes)
            first_report = len(seen.reports)
            await start_rollout(store, "3.0", 0, args.max_unavailable)

            def failed() -> float | None:
                for t, _, r in seen.reports[first_report:]:
                    if r.get("phase") in ("RolledBack", "Failed") and r.get("previous_version") == "3.0":
                        return t
                return None

            await common.wait_for(failed, 120, "the first failure report")
            t_fail = failed()
            assert t_fail is not None
            await common.wait_for(lambda: (seen.rollout or {}).get("phase") == "Reverted", 60, "the revert")
            await common.wait_for(lambda: seen.running_on("2.0") == total, 60, f"{total} Running on 2.0 again")
            t_all = max(t for t, _, r in seen.reports[first_report:] if r.get("phase") == "Running")
            reverts = [w for w in seen.writes[first:] if w[3] == "2.0"]
            changed = {w[2] for w in seen.writes[first:] if w[3] == "3.0"}
            common.emit(
                BENCH,
                "revert_writes_after_failure",
                (reverts[0][0] - t_fail) * 1000,
                "ms",
                note=f"{len(reverts)} instances set back",
            )
            common.emit(
                BENCH,
                "revert_all_running_old",
                t_all - t_fail,
                "s",
                target="<= 2 s",
                note=f"{total} instances, {len(changed)} had been changed",
            )
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, Compacted):
                    await follower
            for child in reversed(children):
                child.stop()
            await store.close()
    common.summary("rollout: 50 instances, 10 agents" if not args.quick else "rollout (quick)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--min-healthy", type=float, default=2.0)
    parser.add_argument("--max-unavailable", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args()
    with common.scratch_dir(args.keep) as tmp:
        asyncio.run(run(args, tmp))


if __name__ == "__main__":
    sys.exit(main())
