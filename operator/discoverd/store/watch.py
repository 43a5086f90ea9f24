"""Watch the prefix from a revision, as typed events, noticing compaction and silent stalls.

`watch()` yields batches of `Put` / `Delete` (one etcd response each, so a
transaction arrives whole) and `Progress` (etcd's current revision while
nothing changes). It raises `Compacted` when the start revision is gone (the
caller re-lists with `Store.snapshot` and watches again from there), and
`StoreUnavailable` when the stream breaks or stalls. A paused or half-dead
etcd can leave a stream open and silent forever, so every `progress_every`
seconds we ask etcd for a progress notification on the stream itself; no
answer within `stall_after` seconds means the watch is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aetcd import rpc

from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client as client_
from discoverd.store.documents import Entry, Store

__all__ = ["Delete", "Event", "Progress", "Put", "watch"]


@dataclass(frozen=True)
class Put:
    entry: Entry

    @property
    def revision(self) -> int:
        return self.entry.mod_revision


@dataclass(frozen=True)
class Delete:
    key: str
    revision: int


@dataclass(frozen=True)
class Progress:
    revision: int


Event = Put | Delete | Progress


async def watch(
    store: Store,
    start_revision: int,
    *,
    under: str | None = None,
    progress_every: float = 5.0,
    stall_after: float = 10.0,
) -> AsyncIterator[list[Event]]:
    """Events under `under` (default: the prefix) from `start_revision` on, in batches."""
    c = store.client
    key = (under or store.prefix + "/").encode()
    create = rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=key, range_end=keys.prefix_range_end(key), start_revision=start_revision
        )
    )
    progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())

    async with client_.translated(c):
        await c.connect()
        # No request iterator: we write on the stream ourselves, so nothing is left pending in
        # gRPC's own request-consuming task when the stream is cancelled.
        stream = c.watchstub.Watch(metadata=c.metadata)

    async def ask_progress() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await stream.write(create)
            while True:
                await asyncio.sleep(progress_every)
                await stream.write(progress)

    writer = asyncio.create_task(ask_progress(), name="etcd-watch-requests")
    try:
        while True:
            try:
                response = await asyncio.wait_for(stream.read(), stall_after)
            except TimeoutError:
                raise StoreUnavailable(
                    f"the etcd watch stalled: no answer from etcd at {c.etcd_options.describe()} in {stall_after:g} s"
                ) from None
            except grpc.aio.AioRpcError as error:
                raise StoreUnavailable(
                    "the etcd watch broke: " + client_.describe_error(error, c.etcd_options)
                ) from error
            if response is grpc.aio.EOF:
                raise StoreUnavailable("the etcd watch was closed by the server")
            if response.compact_revision:
                raise Compacted(start_revision, response.compact_revision)
            if response.canceled:
                raise StoreUnavailable(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")
            if response.created:
                continue
            if not response.events:
                yield [Progress(response.header.revision)]
                continue
            batch: list[Event] = []
            for event in response.events:
                name = event.kv.key.decode("utf-8", errors="surrogateescape")
                if event.type == rpc.Event.EventType.DELETE:
                    batch.append(Delete(name, event.kv.mod_revision))
                else:
                    batch.append(Put(store._decode(event.kv)))
            yield batch
    finally:
        writer.cancel()
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
