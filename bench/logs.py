"""`discoverd logs -f`: how soon a line the run script writes reaches the reader (issue 20).

One real etcd, one `discoverd agent` (its log API on loopback, its own
certificate), one instance whose run script prints `time.time()` every
50-70 ms (jittered, so the writes do not fall in step with the agent's poll),
and one `discoverd logs -f` process: the real CLI, with its grant in etcd,
the pinned TLS connection, the agent's follow loop and the JSON messages.
For every line, latency = the moment the bench reads it from the CLI's stdout
minus the time the run script wrote in it (one machine, one clock).

    python bench/logs.py            # 400 lines
    python bench/logs.py --quick    # 100 lines

Also: the agent's CPU per second while it serves the follow, against the same
agent idle (the log index alone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import common

RUN = (
    "import random,time\n"
    "while True:\n"
    "    print(repr(time.time()), flush=True)\n"
    "    time.sleep(0.05 + random.random() * 0.02)\n"
)


def put(etcd: str, prefix: str, key: str, doc: object) -> None:
    subprocess.run(
        [str(common.DISCOVERD.with_name("etcdctl")), f"--endpoints={etcd}", "put", f"{prefix}/{key}", json.dumps(doc)],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lines", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    count = args.lines or (100 if args.quick else 400)
    prefix = "/bench-logs"
    with common.scratch_dir(args.keep) as scratch, common.etcd_server(scratch) as etcd:
        put(etcd.endpoint, prefix, "services/web/versions/1.0/config/details", {
            "name": "web", "run_script": {"command": sys.executable, "argv": ["-u", "-c", RUN]}, "min_healthy_seconds": 0,
        })  # fmt: skip
        put(
            etcd.endpoint, prefix, "services/web/instances/i1/config/details", {"name": "web", "service_version": "1.0"}
        )
        put(etcd.endpoint, prefix, "servers/b1/config/details", {"service_instances": [{"name": "web", "id": "i1"}]})
        base = [str(common.DISCOVERD), "--etcd-endpoints", etcd.endpoint, "--prefix", prefix]
        agent = common.Child(
            [*base, "agent", "--server-id", "b1", "--state-dir", str(scratch / "state"), "--metrics-address", "",
             "--cgroups", "none", "--stop-instances-on-exit"],
            scratch / "agent.log",
        ).start()  # fmt: skip
        reader: subprocess.Popen[str] | None = None
        try:
            agent.wait_for_log("Started instance", 60)
            time.sleep(3)
            idle_cpu = common.cpu_seconds(agent.pid)
            time.sleep(5)
            idle = (common.cpu_seconds(agent.pid) - idle_cpu) / 5
            reader = subprocess.Popen(
                [*base, "logs", "-f", "--tail", "0", "web/i1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            latencies: list[float] = []
            done = threading.Event()

            def read() -> None:
                assert reader is not None and reader.stdout is not None
                for line in reader.stdout:
                    arrived = time.time()
                    try:
                        latencies.append(arrived - float(line))
                    except ValueError:
                        continue
                    if len(latencies) >= count:
                        break
                done.set()

            thread = threading.Thread(target=read, daemon=True)
            thread.start()
            common.wait_until(lambda: len(latencies) >= 10, 60, "the first lines")
            cpu_before, began = common.cpu_seconds(agent.pid), time.monotonic()
            if not done.wait(count * 0.1 + 60):
                raise TimeoutError(f"only {len(latencies)} of {count} lines arrived")
            busy = (common.cpu_seconds(agent.pid) - cpu_before) / (time.monotonic() - began)
        finally:
            if reader is not None and reader.poll() is None:
                reader.terminate()
                reader.wait(10)
            agent.stop()
        ms = [x * 1000 for x in latencies]
        common.emit("logs", "write -> discoverd logs -f, p50", common.percentile(ms, 50), "ms", target="<= 50 ms")
        common.emit("logs", "write -> discoverd logs -f, p95", common.percentile(ms, 95), "ms")
        common.emit("logs", "write -> discoverd logs -f, max", max(ms), "ms")
        common.emit("logs", "agent CPU while following", busy * 100, "% of a core", idle * 100, note="baseline: idle")
        common.summary("discoverd logs -f", [f"{len(ms)} lines, one every 50-70 ms"])


if __name__ == "__main__":
    sys.exit(main())
