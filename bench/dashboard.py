"""The dashboard's live latency: an etcd write of a status phase change -> the DOM showing it in Chromium.

One real etcd, one real `discoverd dashboard`, Debian's headless Chromium on
the instance page of web/a (driven over the DevTools protocol by
tests/support/chromium.py). N times, the status key of web/a is written with
the other phase (Running <-> Unhealthy) and a new message, by a plain etcd
client, as the agent writes it:

- latency = from just before the put to the moment Chromium answers that a
  promise it was awaiting resolved: a MutationObserver saw the page's phase
  and message fields show the new values (so it includes the DevTools
  round trip back to this process: an upper bound);
- baseline = arrival of that same put on a plain etcd watch in this process
  (etcd's own put -> watch delivery latency, measured in the same run).

`--fleet N` adds N other instances (listed, with Running status) so every
change re-renders from a larger index: the cost of a bigger fleet.
`--page service` watches the service page instead, whose table then has a row
per instance: the browser's own cost of a large page.

    .venv/bin/python bench/dashboard.py                # 100 changes
    .venv/bin/python bench/dashboard.py --quick        # 20 changes
    .venv/bin/python bench/dashboard.py --fleet 1000
    .venv/bin/python bench/dashboard.py --fleet 1000 --page service

JSON lines on stdout, a summary on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import aetcd
import common

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import chromium  # the test suite's CDP client: one copy

BENCH = "dashboard"
PREFIX = "/bench-dashboard"
T = "2026-01-01T00:00:00+00:00"
DISCOVERD = str(Path(sys.executable).parent / "discoverd")

FIELDS = {
    # page -> (its path, the elements showing web/a's phase and message)
    "instance": ("/instances/web/a", "[data-field=phase]", "[data-field=message]"),
    "service": ("/services/web", "[data-instance=a] .phase", "[data-instance=a] .error"),
}

SEEN = """
new Promise((resolve) => {
  const done = () => {
    const phase = document.querySelector(%(phase_at)s), message = document.querySelector(%(message_at)s);
    return phase && message && phase.textContent === %(phase)s && message.textContent === %(message)s;
  };
  if (done()) return resolve(true);
  const observer = new MutationObserver(() => { if (done()) { observer.disconnect(); resolve(true); } });
  observer.observe(document.getElementById('main'), {childList: true, subtree: true, characterData: true});
})
"""


def status(phase: str, message: str) -> bytes:
    doc = {"phase": phase, "version": "1.0", "message": message, "since": T, "updated_at": T}
    return json.dumps(doc).encode()


async def seed(client: aetcd.Client, fleet: int) -> None:
    ids = ["a", *(f"f{i}" for i in range(fleet))]
    puts: list[tuple[str, Any]] = [
        ("services/web/versions/1.0/config/details", {"name": "web"}),
        ("servers/node-1/config/details", {"service_instances": [{"name": "web", "id": i} for i in ids]}),
        ("servers/node-1/status/agent", {"hostname": "h", "agent_version": "0", "started_at": T, "heartbeat": T}),
    ]
    for i in ids:
        puts.append((f"services/web/instances/{i}/config/details", {"name": "web", "service_version": "1.0"}))
        puts.append((f"servers/node-1/status/instances/web/{i}", json.loads(status("Running", "start"))))
    for key, doc in puts:
        await client.put(f"{PREFIX}/{key}".encode(), json.dumps(doc).encode())


async def run(args: argparse.Namespace, tmp: Path) -> None:
    with common.etcd_server(tmp) as etcd:
        host, port = etcd.endpoint.removeprefix("http://").rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port)) as client:
            await seed(client, args.fleet)
            argv = [DISCOVERD, "--etcd-endpoints", etcd.endpoint, "--prefix", PREFIX, "dashboard"]
            board = common.Child([*argv, "--address", "127.0.0.1:0"], tmp / "dashboard.log").start()
            browser = chromium.Browser(tmp / "chromium-profile", tmp / "chromium.log")
            try:
                board.wait_for_log("Dashboard at", 30)
                url = re.search(r"at (http://\S+)", board.log_text())
                assert url is not None
                await browser.start()
                page = await browser.page()
                await page.goto(url.group(1))
                path, phase_at, message_at = FIELDS[args.page]
                await page.goto(url.group(1).split("/?")[0] + path)
                await page.wait_for(f"!!document.querySelector({json.dumps(phase_at)})", 30, f"the {args.page} page")
                key = f"{PREFIX}/servers/node-1/status/instances/web/a".encode()
                arrivals: dict[int, float] = {}
                watch = await client.watch(key)

                async def baseline() -> None:
                    async for event in watch:
                        arrivals[event.kv.mod_revision] = time.perf_counter()

                watcher = asyncio.create_task(baseline())
                latency, base, render = [], [], []
                for i in range(args.changes):
                    phase, message = ("Unhealthy" if i % 2 == 0 else "Running"), f"change {i}"
                    await asyncio.sleep(args.pause)
                    seen = asyncio.create_task(
                        page.evaluate(
                            SEEN
                            % {
                                "phase": json.dumps(phase),
                                "message": json.dumps(message),
                                "phase_at": json.dumps(phase_at),
                                "message_at": json.dumps(message_at),
                            }
                        )
                    )
                    await asyncio.sleep(0.02)  # the observer is in place before the write
                    t0 = time.perf_counter()
                    revision = int((await client.put(key, status(phase, message))).header.revision)
                    await asyncio.wait_for(seen, 10)
                    latency.append(1000 * (time.perf_counter() - t0))
                    drawn = await page.evaluate("document.body.dataset.renderMs")
                    if drawn is not None:
                        render.append(float(drawn))
                    if revision in arrivals:
                        base.append(1000 * (arrivals[revision] - t0))
                watcher.cancel()
                if page.errors:
                    common.log(f"page errors: {page.errors}")
            finally:
                await browser.stop()
                board.stop()
    p = common.percentile
    note = f"{args.changes} changes, {1 + args.fleet} instances in the fleet, one tab on the {args.page} page"
    b50, b95 = p(base, 50), p(base, 95)
    common.emit(BENCH, "baseline_watch_p50", b50, "ms", note="put -> event on a plain etcd watch, same run")
    common.emit(BENCH, "baseline_watch_p95", b95, "ms")
    common.emit(BENCH, "write_to_dom_p50", p(latency, 50), "ms", b50, target="<= 200 ms", note=note)
    common.emit(BENCH, "write_to_dom_p95", p(latency, 95), "ms", b95, target="<= 200 ms")
    common.emit(BENCH, "write_to_dom_max", max(latency), "ms")
    common.emit(BENCH, "page_render_p50", p(render, 50), "ms", note="app.js: the newest view -> the page's DOM")
    common.emit(BENCH, "page_render_p95", p(render, 95), "ms")
    common.summary("dashboard: etcd write -> DOM", [note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--fleet", type=int, default=0, help="other instances in the fleet")
    parser.add_argument("--page", choices=sorted(FIELDS), default="instance", help="the page the tab shows")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between changes")
    parser.add_argument("--quick", action="store_true", help="20 changes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args()
    if args.quick:
        args.changes = 20
    reason = chromium.missing_reason()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    with common.scratch_dir(args.keep) as tmp:
        asyncio.run(run(args, tmp))


if __name__ == "__main__":
    main()
