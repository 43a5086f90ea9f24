"""Leases: the agent's status keys live as long as its lease, which is how others see it is gone."""

from __future__ import annotations

from aetcd import rpc

from discoverd.store import client as client_
from discoverd.store.typed import Store

__all__ = ["LeaseExpired", "grant", "keep_alive_once", "revoke"]


class LeaseExpired(Exception):
    """etcd no longer knows the lease (it expired while we could not reach etcd)."""


async def grant(store: Store, ttl: int) -> int:
    """A new lease id with `ttl` seconds to live."""
    c = store.client
    request = rpc.LeaseGrantRequest(TTL=ttl)
    response = await client_.call(
        c, lambda: c.leasestub.LeaseGrant(request, timeout=c.request_timeout, metadata=c.metadata)
    )
    return int(response.ID)


async def keep_alive_once(store: Store, lease_id: int) -> int:
    """Refresh the lease; its new TTL. LeaseExpired when etcd forgot it."""
    c = store.client

    async def refresh() -> int:
        stream = c.leasestub.LeaseKeepAlive(
            iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=c.request_timeout, metadata=c.metadata
        )
        async for reply in stream:
            return int(reply.TTL)
        return 0

    ttl = await client_.call(c, refresh)
    if ttl <= 0:
        raise LeaseExpired(f"lease {lease_id:x} has expired")
    return ttl


async def revoke(store: Store, lease_id: int) -> None:
    """Drop the lease and with it every key attached to it."""
    c = store.client
    request = rpc.LeaseRevokeRequest(ID=lease_id)
    await client_.call(c, lambda: c.leasestub.LeaseRevoke(request, timeout=c.request_timeout, metadata=c.metadata))
