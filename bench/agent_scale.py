"""Figure 3: the agent's scale and footprint.

One real etcd, one real `discoverd agent`, instances whose run script is
`sleep` (exec'd directly, no shell). In one run:

1. RSS of the idle agent with no instances;
2. 50 instances: RSS, CPU over an idle window (`--idle`, 60 s by default),
   key writes under the prefix in that window (etcd watch in this process;
   lease keep-alives are not key writes), and the time from SIGKILL of a run
   process to the agent noticing it (the `Exited instance` line of its JSON
   log, microsecond timestamps) for `--kills` kills;
3. 1,000 instances: time from the server document write until all 1,000 are
   `Running` in etcd status (`min_healthy_seconds` 0 unless `--min-healthy`),
   RSS, CPU and writes over the idle window again.

    .venv/bin/python bench/agent_scale.py              # 60 s idle windows
    .venv/bin/python bench/agent_scale.py --idle 15    # shorter

JSON lines on stdout, a summary on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

import agent_world
import common

BENCH = "agent_scale"
SERVICE = "sleepy"


async def idle_window(
    w: agent_world.World, status: agent_world.StatusWatch, pid: int, seconds: float
) -> tuple[float, int, float]:
    """(CPU % of one core, key writes, RSS MiB) over `seconds` of nothing changing."""
    cpu0, t0 = common.cpu_seconds(pid), time.time()
    await asyncio.sleep(seconds)
    cpu1, t1 = common.cpu_seconds(pid), time.time()
    return 100 * (cpu1 - cpu0) / (t1 - t0), len(status.writes_between(t0, t1)), common.rss_mib(pid)


async def run(args: argparse.Namespace, tmp: Path) -> None:
    notes: list[str] = []
    with common.etcd_server(tmp) as etcd:
        async with agent_world.world(tmp, etcd) as w:
            doc = {
                "run_script": {"command": "sleep", "argv": ["1000000"]},
                "min_healthy_seconds": args.min_healthy,
            }
            await w.version(SERVICE, "1.0", **doc)
            status = await w.status_watch()
            agent = w.start_agent()
            log_path = agent.log_path
            await common.wait_for(lambda: agent_world.agent_events(log_path, "Read configuration"), 60, "agent up", 0.1)
            pid = agent.pid
            await asyncio.sleep(args.settle)
            rss0 = common.rss_mib(pid)

            # 50 instances
            refs = [(SERVICE, f"i{i}") for i in range(args.count)]
            await w.put_many(
                (f"services/{SERVICE}/instances/{i}/config/details", {"name": s, "service_version": "1.0"})
                for s, i in refs
            )
            await w.server(refs[:50])
            await common.wait_for(lambda: status.count("Running") >= 50, 60, "50 Running", 0.05)
            await asyncio.sleep(args.settle)
            cpu50, writes50, rss50 = await idle_window(w, status, pid, args.idle)

            # exits noticed
            notice: list[float] = []
            rng = random.Random(1)
            for k in range(args.kills):
                name = refs[rng.randrange(50)][1]
                ident = w.identity(SERVICE, name)
                if ident is None:
                    await asyncio.sleep(0.1)
                    continue
                t_kill = time.time()
                os.kill(ident[0], signal.SIGKILL)

                def seen(p: int = ident[0]) -> list[dict[str, object]]:
                    return [e for e in agent_world.agent_events(log_path, "Exited instance") if e.get("pid") == p]

                events = await common.wait_for(seen, 10, f"exit {k} noticed", 0.02)
                notice.append(1000 * (float(events[0]["t"]) - t_kill))
                await asyncio.sleep(args.kill_every)
            await common.wait_for(lambda: status.count("Running") >= 50, 120, "50 Running again", 0.1)

            # 1,000 instances
            await asyncio.sleep(args.settle)
            profile = tmp / "agent-start-all.txt"
            t0 = time.time()
            await w.server(refs)
            with common.Sampler(pid) as sampler, agent_world.profiled(pid if args.profile else None, profile):
                try:
                    await common.wait_for(
                        lambda: status.count("Running") >= args.count, args.timeout, f"{args.count} Running", 0.05
                    )
                    all_running: float | None = (
                        max(_since(s) for s in status.status.values() if s.get("phase") == "Running") - t0
                    )
                    seen_running = time.time() - t0
                except TimeoutError:
                    all_running = seen_running = None
                    notes.append(f"only {status.count('Running')} of {args.count} Running after {args.timeout:g} s")
            await asyncio.sleep(args.settle)
            with common.Sampler(pid) as sampler2:
                cpu1k, writes1k, rss1k = await idle_window(w, status, pid, args.idle)
                peak = max(sampler.peak, sampler2.peak)
            processes = len(w.marked())

    n = args.count
    common.emit(BENCH, "rss_idle_0", rss0, "MiB", target="<= 40 MiB", note="no instances")
    common.emit(BENCH, "rss_idle_50", rss50, "MiB", target="<= 60 MiB")
    common.emit(BENCH, "idle_cpu_50", cpu50, "% of one core", target="<= 1 %", note=f"{args.idle:g} s idle")
    common.emit(
        BENCH,
        "idle_writes_50",
        writes50 / args.idle,
        "writes/s",
        0,
        target="0 (keep-alives only)",
        note=f"{writes50} key writes in {args.idle:g} s",
    )
    common.emit(
        BENCH,
        "exit_noticed_p50",
        common.percentile(notice, 50),
        "ms",
        note=f"{len(notice)} SIGKILLs of a run process, 50 instances",
    )
    common.emit(BENCH, "exit_noticed_p99", common.percentile(notice, 99), "ms", target="<= 100 ms")
    common.emit(
        BENCH,
        f"all_running_{n}",
        all_running,
        "s",
        target="<= 20 s",
        note=f"server document write -> last status Running (status 'since'), min_healthy_seconds {args.min_healthy:g}",
    )
    common.emit(BENCH, f"all_running_{n}_seen", seen_running, "s", note="-> the bench's etcd watch saw all Running")
    common.emit(BENCH, f"rss_idle_{n}", rss1k, "MiB", target="<= 100 MiB")
    common.emit(BENCH, f"rss_peak_{n}", peak, "MiB", note="while starting them")
    common.emit(BENCH, f"idle_cpu_{n}", cpu1k, "% of one core", note=f"{args.idle:g} s idle")
    common.emit(
        BENCH, f"idle_writes_{n}", writes1k / args.idle, "writes/s", 0, note=f"{writes1k} key writes in {args.idle:g} s"
    )
    notes.append(f"{processes} run processes alive at the end")
    if args.profile:
        notes.append(f"profile of the start of all {n} (py-spy, inclusive):")
        notes.extend(agent_world.top_frames(profile))
    common.summary(f"agent scale and footprint, 0/50/{n} instances", notes)


def _since(status: dict[str, object]) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(str(status["since"])).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="instances in the big step (default 1000)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of each idle window (default 60)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to settle before measuring")
    parser.add_argument("--kills", type=int, default=100, help="run processes killed to time exit noticing")
    parser.add_argument("--kill-every", type=float, default=0.1, help="seconds between kills")
    parser.add_argument("--min-healthy", type=float, default=0.0, help="min_healthy_seconds of the version (default 0)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting for all Running after this")
    parser.add_argument("--profile", action="store_true", help="record the agent with py-spy (flame graph SVG)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    with common.scratch_dir(keep=args.keep or args.profile) as tmp:
        asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
