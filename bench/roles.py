"""Server roles (issue 19): how long the controller takes to keep 1,000 servers' etcd roles in step.

One real etcd with auth on (a root user; `--unsafe-no-fsync`). N servers
(`--servers`, 1,000), each with a user and a role (`<prefix>/server/<ID>`, no
password: etcd hashes passwords with bcrypt, which would only time the
set-up) and a server document listing K instances (`--instances`, 5) spread
over S services (`--services`, 50). Then, with the controller's own code
(`controller/roles.py` `Roles`, connected as root, in this process):

1. **Cold resync**: every role holds nothing yet (an upgrade from the old,
   prefix-wide roles looks the same: every permission changes); the time of
   one `resync` and the grants it made.
2. **Warm resync**: the same again with every role in step: the periodic
   cost (every 60 s): one UserList and one RoleGet per server.
3. **One server document changed**: a server gains an instance of another
   service; the time from the watch event to its role granted (`step`).

    .venv/bin/python bench/roles.py              # 1,000 servers
    .venv/bin/python bench/roles.py --quick      # 100 servers

Every process started (etcd, etcdctl) is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import common
from aetcd import rpc

from discoverd.config import EtcdOptions
from discoverd.controller import roles
from discoverd.embedded_etcd import find_binary
from discoverd.schema import keys
from discoverd.store import auth, client, watch
from discoverd.store.typed import Store, Write, decode

BENCH = "roles"
PREFIX = "/bench"
ROOT_PASSWORD = "bench"
_TXN = 100
"""Puts per transaction (etcd's --max-txn-ops is 128)."""


def _documents(servers: int, instances: int, services: int) -> dict[str, bytes]:
    docs: dict[str, bytes] = {}
    for s in range(servers):
        refs = []
        for k in range(instances):
            service = f"svc-{(s * instances + k) % services}"
            refs.append({"name": service, "id": f"i-{s}-{k}"})
        docs[keys.server_config(PREFIX, f"s{s}")] = json.dumps({"service_instances": refs}).encode()
    return docs


async def _users(store: Store, servers: int) -> None:
    c = store.client
    semaphore = asyncio.Semaphore(32)

    async def one(server: str) -> None:
        name = auth.server_role(PREFIX, server)
        async with semaphore:
            await auth.ensure_role(c, name, [])
            request = rpc.AuthUserAddRequest(name=name, options=rpc.UserAddOptions(no_password=True))
            await client.call(c, lambda: c.auth_stub.UserAdd(request, timeout=c.request_timeout, metadata=c.metadata))
            grant = rpc.AuthUserGrantRoleRequest(user=name, role=name)
            await client.call(
                c, lambda: c.auth_stub.UserGrantRole(grant, timeout=c.request_timeout, metadata=c.metadata)
            )

    await asyncio.gather(*(one(f"s{s}") for s in range(servers)))


async def run(args: argparse.Namespace, endpoint: str) -> None:
    options = EtcdOptions(
        endpoints=endpoint, prefix=PREFIX, user="root", password=ROOT_PASSWORD, allow_plaintext_password=True
    )
    store = Store(await client.connect(options))
    try:
        began = time.monotonic()
        await _users(store, args.servers)
        docs = _documents(args.servers, args.instances, args.services)
        items = list(docs.items())
        for i in range(0, len(items), _TXN):
            await store.apply(Write(k, v) for k, v in items[i : i + _TXN])
        common.log(f"set up {args.servers} users, roles and server documents in {time.monotonic() - began:.1f} s")

        r = roles.Roles(store)
        r.load((await store.snapshot(keys.servers_prefix(PREFIX))).entries.values())
        began = time.monotonic()
        await r.resync()
        cold = time.monotonic() - began
        grants = sum(len(p) for p in r.roles.values())
        common.emit(BENCH, f"cold resync, {args.servers} servers", cold, "s", note=f"{grants} permissions granted")

        began = time.monotonic()
        changed = r.changed
        await r.resync()
        warm = time.monotonic() - began
        assert r.changed == changed, "a warm resync changed roles"
        common.emit(BENCH, f"warm resync, {args.servers} servers", warm, "s", target="well under 60 s (its period)")

        key = keys.server_config(PREFIX, "s0")
        doc = json.loads(docs[key])
        doc["service_instances"].append({"name": "extra", "id": "x"})
        value = json.dumps(doc).encode()
        revision = await store.apply([Write(key, value)])
        began = time.monotonic()
        r.observe([watch.Put(decode(PREFIX, key, value, revision))])
        await r.step()
        common.emit(BENCH, "one server document changed -> role granted", (time.monotonic() - began) * 1000, "ms")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=5, help="instances per server")
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="100 servers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if args.quick:
        args.servers = 100
    with common.scratch_dir(args.keep) as scratch, common.etcd_server(scratch) as etcd:
        etcdctl = str(Path(find_binary()).with_name("etcdctl"))
        for more in (["user", "add", f"root:{ROOT_PASSWORD}"], ["auth", "enable"]):
            subprocess.run([etcdctl, f"--endpoints={etcd.endpoint}", *more], check=True, capture_output=True)
        asyncio.run(run(args, etcd.endpoint))
    common.summary(f"server roles, {args.servers} servers x {args.instances} instances over {args.services} services")


if __name__ == "__main__":
    sys.exit(main())
