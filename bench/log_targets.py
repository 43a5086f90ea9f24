"""`discoverd logs <service>` on a fleet: finding which servers run the service's instances.

One real etcd holding a fleet as `bench/controller_scale.py` writes it (10
instances a server over 20 services: each server's document, its agent
status, a status report per instance, the instance documents and listings),
then `logaccess.targets(store, "svc-00")`, what `discoverd logs svc-00` asks
first, `--repeat` times: wall time and this process's CPU per call.

    python bench/log_targets.py              # 10,000 servers
    python bench/log_targets.py --quick      # 1,000 servers
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import common
import controller_scale

from discoverd import logaccess
from discoverd.config import EtcdOptions
from discoverd.store import client
from discoverd.store.typed import Store

BENCH = "log_targets"
PREFIX = "/lt"


async def run(args: argparse.Namespace) -> None:
    with common.scratch_dir() as tmp, common.etcd_server(tmp, ["--max-request-bytes", str(8 * 2**20)]) as etcd:
        store = Store(await client.connect(EtcdOptions(endpoints=etcd.endpoint, prefix=PREFIX)))
        try:
            await controller_scale.put_all(store, controller_scale.fleet_keys(PREFIX, args.servers))
            walls, cpus, found = [], [], 0
            for _ in range(args.repeat):
                cpu0, t0 = time.process_time(), time.monotonic()
                found = len(await logaccess.targets(store, "svc-00"))
                walls.append(time.monotonic() - t0)
                cpus.append(time.process_time() - cpu0)
        finally:
            await store.close()
    note = f"{args.servers} servers, {found} targets, median of {args.repeat}"
    common.emit(BENCH, "targets_wall", statistics.median(walls), "s", note=note)
    common.emit(BENCH, "targets_cpu", statistics.median(cpus), "s", note="this process (decoding)")
    common.summary(f"logaccess.targets on {args.servers} servers")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 servers")
    args = parser.parse_args()
    if args.quick:
        args.servers = 1000
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
