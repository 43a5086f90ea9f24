"""Artifacts (issue 21): one fetch per server, and an upgrade that fetches nothing.

One real etcd, one real `discoverd agent`, and an HTTP server in this process
on 127.0.0.1 serving one random file (50 MiB; `--quick`: 8 MiB) that counts
every request and byte. Two services side by side, each with `--count`
instances (50) of version 1.0, then all upgraded to 2.0 (a new version
document, the same file):

- `art`: the file is a version `artifacts` entry (sha256), fetched by the agent
  into its cache;
- `seed` (the baseline): the seed's way, a `download_script` fetching the same
  URL (Python's urllib, argv only) into the version directory.

Figures: requests and bytes served for version 1.0 and for the upgrade, and the
time from the write until every instance is `Running` on the version.

    .venv/bin/python bench/artifacts.py            # 50 instances, 50 MiB
    .venv/bin/python bench/artifacts.py --quick    # 10 instances, 8 MiB

JSON lines on stdout, a summary on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import agent_world
import common

BENCH = "artifacts"


class Counter:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.bytes


@contextmanager
def file_server(data: bytes) -> Iterator[tuple[str, Counter]]:
    """Serve `data` at /blob.bin on a free loopback port; count requests and bytes sent."""
    counter = Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with counter.lock:
                counter.requests += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            view = memoryview(data)
            for at in range(0, len(data), 1 << 20):
                self.wfile.write(view[at : at + (1 << 20)])
                with counter.lock:
                    counter.bytes += min(1 << 20, len(data) - at)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/blob.bin", counter
    finally:
        httpd.shutdown()
        httpd.server_close()


FETCH = "import sys, urllib.request\nurllib.request.urlretrieve(sys.argv[1], 'blob.bin')"


def version_doc(kind: str, url: str, sha: str, argv: str) -> dict[str, object]:
    doc: dict[str, object] = {"run_script": {"command": "sleep", "argv": [argv]}, "min_healthy_seconds": 0}
    if kind == "art":
        doc["artifacts"] = [{"url": url, "sha256": sha, "extract": "none"}]
    else:
        doc["download_script"] = {"command": sys.executable, "argv": ["-c", FETCH, url], "timeout": 600}
    return doc


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float | int | None]]:
    data = os.urandom(args.mib << 20)
    sha = hashlib.sha256(data).hexdigest()
    out: dict[str, dict[str, float | int | None]] = {}
    with common.etcd_server(tmp) as etcd, file_server(data) as (url, counter):
        async with agent_world.world(tmp, etcd) as w:
            status = await w.status_watch()
            agent = w.start_agent()
            await common.wait_for(
                lambda: agent_world.agent_events(agent.log_path, "Read configuration"), 60, "agent up", 0.1
            )
            listed: list[tuple[str, str]] = []
            for kind in ("art", "seed"):
                refs = [(kind, f"i{i}") for i in range(args.count)]
                figures: dict[str, float | int | None] = {}
                for version, argv in (("1.0", "1000000"), ("2.0", "1000001")):
                    await w.version(kind, version, **version_doc(kind, url, sha, argv))
                    before = counter.snapshot()
                    t0 = time.monotonic()
                    await w.put_many(
                        (f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": version})
                        for s, i in refs
                    )
                    if version == "1.0":
                        listed += refs
                        await w.server(listed)

                    def done(v: str = version, k: str = kind) -> bool:
                        return (
                            sum(
                                1
                                for (s, _), doc in status.status.items()
                                if s == k and doc.get("phase") == "Running" and doc.get("version") == v
                            )
                            >= args.count
                        )

                    try:
                        await common.wait_for(done, args.timeout, f"{kind} {version} Running", 0.05)
                        seconds: float | None = time.monotonic() - t0
                    except TimeoutError:
                        seconds = None
                    after = counter.snapshot()
                    tag = "v1" if version == "1.0" else "upgrade"
                    figures[f"requests_{tag}"] = after[0] - before[0]
                    figures[f"bytes_{tag}"] = after[1] - before[1]
                    figures[f"seconds_{tag}"] = seconds
                out[kind] = figures
            await status.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 instances, an 8 MiB file")
    parser.add_argument("--count", type=int, default=None, help="instances per service (default 50)")
    parser.add_argument("--mib", type=int, default=None, help="size of the file (default 50 MiB)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    args.count = args.count or (10 if args.quick else 50)
    args.mib = args.mib or (8 if args.quick else 50)
    with common.scratch_dir(args.keep) as tmp:
        got = asyncio.run(run(args, tmp))
    art, seed = got["art"], got["seed"]
    n, mib = args.count, args.mib
    common.emit(
        BENCH,
        "requests_v1",
        art["requests_v1"],
        "requests",
        seed["requests_v1"],
        target="1",
        note=f"{n} instances of one version, {mib} MiB file",
    )
    common.emit(BENCH, "mib_served_v1", (art["bytes_v1"] or 0) / 2**20, "MiB", (seed["bytes_v1"] or 0) / 2**20)
    common.emit(
        BENCH,
        "seconds_all_running_v1",
        art["seconds_v1"],
        "s",
        seed["seconds_v1"],
        note=f"server document write -> {n} Running",
    )
    common.emit(
        BENCH,
        "requests_upgrade",
        art["requests_upgrade"],
        "requests",
        seed["requests_upgrade"],
        target="0",
        note="2.0: a new version document, the same file",
    )
    common.emit(
        BENCH,
        "mib_served_upgrade",
        (art["bytes_upgrade"] or 0) / 2**20,
        "MiB",
        (seed["bytes_upgrade"] or 0) / 2**20,
        target="0",
    )
    common.emit(
        BENCH,
        "seconds_all_running_upgrade",
        art["seconds_upgrade"],
        "s",
        seed["seconds_upgrade"],
        note=f"instance writes -> {n} Running on 2.0",
    )
    common.summary("artifacts: value = agent artifacts, baseline = the seed's download script")
    return 0


if __name__ == "__main__":
    sys.exit(main())
