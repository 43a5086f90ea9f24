"""Crash-loop figure (issue 20 item 4): how long a rollout to a version that crash-loops takes to revert.

One real etcd, 2 `discoverd agent` processes (servers c0, c1, 2 instances
each, default back-off) and one `discoverd controller`. Version 1.0 runs
`sleep`; version 2.0 exits 2 s after each start, while its own
`min_healthy_seconds` is 0.5 s, so the agent counts it as started (no agent
rollback) and then restarts it with back-off: a crash loop only the
controller can catch. The rollout asks for `min_healthy_seconds` 10 and the
default progress deadline (600 s, `--deadline`) and `max_restarts` (2).

Printed: the time from the rollout's config write to (a) its status
`Reverted` and (b) every instance `Running` on 1.0 again, both as they
arrive through one etcd watch in this process.

    .venv/bin/python bench/crash_loop.py                 # JSON lines on stdout, summary on stderr
    .venv/bin/python bench/crash_loop.py --deadline 120  # bound the run against a controller without the rule

Every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import common

from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.typed import Store, Write

BENCH = "crash_loop"
SERVICE = "looping"
PREFIX = "/bench"
AGENTS, PER_AGENT = 2, 2


async def follow(store: Store, start: int, status: dict[str, dict[str, Any]], rollout: dict[str, Any]) -> None:
    rollout_status = keys.rollout_status(PREFIX, SERVICE)
    async for batch in watch.watch(store, start):
        for event in batch:
            if isinstance(event, watch.Put):
                key = event.entry.key
                if "/status/instances/" in key:
                    status[key.rsplit("/", 1)[1]] = json.loads(event.entry.value)
                elif key == rollout_status:
                    rollout.clear()
                    rollout.update(json.loads(event.entry.value), arrived=time.time())


async def run(args: argparse.Namespace, tmp: Path) -> None:
    total = AGENTS * PER_AGENT
    with common.etcd_server(tmp) as etcd:
        store = Store(await client.connect(EtcdOptions(endpoints=etcd.endpoint, prefix=PREFIX)))
        children: list[common.Child] = []
        status: dict[str, dict[str, Any]] = {}
        rollout: dict[str, Any] = {}
        follower: asyncio.Task[None] | None = None

        def running_on(version: str) -> int:
            return sum(1 for s in status.values() if s.get("phase") == "Running" and s.get("version") == version)

        try:
            docs: dict[str, Any] = {
                keys.version_config(PREFIX, SERVICE, "1.0"): {
                    "name": SERVICE,
                    "run_script": {"command": "sleep", "argv": ["1000000"]},
                    "min_healthy_seconds": 0.5,
                },
                keys.version_config(PREFIX, SERVICE, "2.0"): {
                    "name": SERVICE,
                    "run_script": {"command": "sh", "argv": ["-c", "sleep 2; exit 3"]},
                    "min_healthy_seconds": 0.5,
                },
            }
            servers = [f"c{n}" for n in range(AGENTS)]
            docs.update(common.spread(PREFIX, SERVICE, [f"i{n}" for n in range(total)], servers))
            revision = await store.apply(Write(k, json.dumps(v).encode()) for k, v in docs.items())
            follower = asyncio.create_task(follow(store, revision + 1, status, rollout))
            base = [str(common.DISCOVERD), "--etcd-endpoints", etcd.endpoint, "--prefix", PREFIX]
            for server in servers:
                argv = common.agent_argv(etcd.endpoint, PREFIX, server, tmp / server)
                children.append(common.Child(argv, tmp / f"{server}.log").start())
            children.append(common.Child([*base, "controller", "--lease-ttl", "5"], tmp / "controller.log").start())
            await common.wait_for(lambda: running_on("1.0") == total, 120, f"{total} instances Running on 1.0")
            config = {
                "name": SERVICE,
                "to_version": "2.0",
                "max_unavailable": 2,
                "min_healthy_seconds": 10,
                "progress_deadline_seconds": args.deadline,
            }
            t0 = time.time()
            await store.apply([Write(keys.rollout_config(PREFIX, SERVICE), json.dumps(config).encode())])
            await common.wait_for(lambda: rollout.get("phase") == "Reverted", args.deadline + 120, "Reverted")
            t_reverted = float(rollout["arrived"])
            await common.wait_for(lambda: running_on("1.0") == total, 60, f"{total} Running on 1.0 again")
            t_back = time.time()
            note = f"{total} instances, exits 2 s after each start, deadline {args.deadline:g} s"
            common.emit(BENCH, "rollout_start_to_reverted", t_reverted - t0, "s", note=note)
            common.emit(BENCH, "rollout_start_to_all_running_old", t_back - t0, "s", note=str(rollout.get("message")))
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, Compacted):
                    await follower
            for child in reversed(children):
                child.stop()
            await store.close()
    common.summary("crash loop: rollout start -> Reverted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline", type=float, default=600.0, help="the rollout's progress_deadline_seconds")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args()
    with common.scratch_dir(args.keep) as tmp:
        asyncio.run(run(args, tmp))


if __name__ == "__main__":
    sys.exit(main())
