"""Leader election through one etcd key held by a lease: `<prefix>/controller/leader`.

A candidate grants a lease and creates the key in a transaction that checks
it does not exist; the one that succeeds acts and keeps its lease alive. The
others watch the key and campaign again when it is deleted (the leader
stopped and revoked its lease) or expires (it died: after at most one TTL).
Leadership only decides who does the work: every write the leader makes is
also guarded by the rollout status's mod_revision, so a leader that lost its
lease without noticing can never write a step twice.
"""

from __future__ import annotations

import asyncio
import logging

from discoverd import logs
from discoverd.errors import Compacted, Conflict, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import leases, watch
from discoverd.store.typed import Store, Write

__all__ = ["campaign", "hold"]

log = logging.getLogger(__name__)


async def _wait_for_vacancy(store: Store, key: str) -> None:
    """Return once `key` is absent (deleted, or its lease expired)."""
    while True:
        entry = await store.get(key)
        if entry is None:
            return
        try:
            async for batch in watch.watch(store, entry.mod_revision + 1, under=key):
                if any(isinstance(e, watch.Delete) and e.key == key for e in batch):
                    return
        except Compacted:
            continue


async def campaign(store: Store, identity: str, ttl: int) -> int:
    """Block until this process leads; the lease that holds the leader key."""
    key = keys.controller_leader(store.prefix)
    while True:
        lease = await leases.grant(store, ttl)
        try:
            await store.apply([Write(key, identity.encode(), expect=0, lease=lease)])
        except Conflict:
            await leases.revoke(store, lease)
            entry = await store.get(key)
            holder = entry.value.decode(errors="replace") if entry is not None else "?"
            log.info("Following the acting controller", extra=logs.kv(leader=holder))
            await _wait_for_vacancy(store, key)
            continue
        except BaseException:
            await asyncio.shield(leases.revoke(store, lease))
            raise
        log.info("Became the acting controller", extra=logs.kv(identity=identity, lease=f"{lease:x}", ttl=ttl))
        return lease


async def hold(store: Store, lease: int, ttl: int) -> None:
    """Keep the lease alive; return when it is lost (etcd forgot it, or was unreachable for a TTL)."""
    loop = asyncio.get_running_loop()
    every = max(0.5, ttl / 3)
    last_ok = loop.time()
    while True:
        await asyncio.sleep(every)
        try:
            await leases.keep_alive_once(store, lease)
            last_ok = loop.time()
        except leases.LeaseExpired:
            log.warning("Lost the leader lease", extra=logs.kv(lease=f"{lease:x}"))
            return
        except StoreUnavailable as error:
            if loop.time() - last_ok >= ttl:
                log.warning("Lost the leader lease", extra=logs.kv(lease=f"{lease:x}", reason=str(error)))
                return
