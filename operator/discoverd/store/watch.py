"""Watch keys from a revision, as typed events, noticing compaction and silent stalls.

etcd's Watch RPC multiplexes: one gRPC stream carries any number of
watchers, each created by a `WatchCreateRequest` with its own watch ID and
cancelled by a `WatchCancelRequest` naming it; every response names the
watcher it belongs to. `Stream` is one such stream: `add` a key or a range
from a revision, `cancel` it, and read `(watch_id, events)` batches from
`responses()` (one etcd response each, so a transaction arrives whole; a
revision etcd splits into fragments is put back together). Events are `Put` /
`Delete`; `Progress` carries etcd's current revision while nothing changes.

`responses()` raises `Compacted` when a start revision is gone (the caller
reads its keys again and watches from there), and `StoreUnavailable` when the
stream breaks or stalls. A paused or half-dead etcd can leave a stream open
and silent forever, so every `progress_every` seconds we ask etcd for a
progress notification on the stream itself; no answer within `stall_after`
seconds means the watch is dead.

`watch()` is the one-watcher form: everything under a prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from aetcd import rpc

from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client as client_
from discoverd.store.typed import Entry, Store, decode_kv

__all__ = ["PROGRESS", "Delete", "Event", "Progress", "Put", "Stream", "watch"]

PROGRESS = -1
"""The watch ID of etcd's answer to a progress request: it speaks for every watcher of the stream."""


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


class Stream:
    """One gRPC Watch stream with any number of watchers; `async with Stream(store) as s:`."""

    def __init__(
        self,
        store: Store,
        *,
        progress_every: float = 5.0,
        stall_after: float = 10.0,
        where: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        self.store = store
        self.where = where
        """Puts it refuses (given the raw key and value) are dropped before decoding (deletes always pass)."""
        self.progress_every = progress_every
        self.stall_after = stall_after
        self._requests: list[Any] = []
        self._requested = asyncio.Event()
        self._next_id = 1
        self._watching: dict[int, tuple[bytes, int]] = {}
        """Watch ID -> (key, start revision) of every watcher not cancelled."""
        self._fragments: dict[int, list[Any]] = {}
        self._call: Any = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def watch_ids(self) -> frozenset[int]:
        return frozenset(self._watching)

    async def __aenter__(self) -> Stream:
        c = self.store.client
        async with client_.translated(c):
            await c.connect()
            # No request iterator: we write on the stream ourselves, so nothing is left pending in
            # gRPC's own request-consuming task when the stream is cancelled.
            self._call = c.watchstub.Watch(metadata=c.metadata)
        self._writer = asyncio.create_task(self._write(), name="etcd-watch-requests")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._call is not None:
            self._call.cancel()

    def close(self) -> None:
        """End the gRPC call now, so that a `responses()` read in another task ends at once.

        Cancelling that task alone is not enough: a read pending in gRPC may not see the
        cancellation until the stream answers (a progress notification, seconds later).
        """
        if self._call is not None:
            self._call.cancel()

    def add(self, key: bytes, range_end: bytes, start_revision: int) -> int:
        """Watch `key` (to `range_end`, b"" for the key alone) from `start_revision`; its watch ID."""
        watch_id = self._next_id
        self._next_id += 1
        self._watching[watch_id] = (key, start_revision)
        create = rpc.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, watch_id=watch_id, fragment=True
        )
        self._send(rpc.WatchRequest(create_request=create))
        return watch_id

    def cancel(self, watch_id: int) -> None:
        """Stop watcher `watch_id`; its events still in flight are dropped."""
        if self._watching.pop(watch_id, None) is not None:
            self._fragments.pop(watch_id, None)
            cancel = rpc.WatchCancelRequest(watch_id=watch_id)
            self._send(rpc.WatchRequest(cancel_request=cancel))

    def _send(self, request: Any) -> None:
        self._requests.append(request)
        self._requested.set()

    async def _write(self) -> None:
        """The only writer on the stream: create and cancel requests, and a progress request now and then."""
        progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        loop = asyncio.get_running_loop()
        next_progress = loop.time() + self.progress_every
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                if not self._requests:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._requested.wait(), max(0.0, next_progress - loop.time()))
                self._requested.clear()
                todo, self._requests = self._requests, []
                if loop.time() >= next_progress:
                    todo.append(progress)
                    next_progress = loop.time() + self.progress_every
                for request in todo:
                    await self._call.write(request)

    async def responses(self) -> AsyncIterator[tuple[int, list[Event]]]:
        """`(watch_id, events)` per etcd response with events, `(PROGRESS, [Progress])` for progress answers."""
        c = self.store.client
        while True:
            try:
                response = await asyncio.wait_for(self._call.read(), self.stall_after)
            except TimeoutError:
                raise StoreUnavailable(
                    f"the etcd watch stalled: no answer from etcd at {c.etcd_options.describe()} "
                    f"in {self.stall_after:g} s"
                ) from None
            except grpc.aio.AioRpcError as error:
                raise StoreUnavailable(
                    "the etcd watch broke: " + client_.describe_error(error, c.etcd_options)
                ) from error
            if response is grpc.aio.EOF:
                raise StoreUnavailable("the etcd watch was closed by the server")
            watch_id = int(response.watch_id)
            if response.compact_revision:
                start = self._watching.get(watch_id, (b"", 0))[1]
                raise Compacted(start, response.compact_revision)
            if response.canceled:
                if watch_id not in self._watching:
                    continue  # the answer to our own cancel request
                reason = response.cancel_reason or "no reason given"
                raise StoreUnavailable(f"etcd cancelled the watch: {reason}")
            if response.created:
                continue
            if not response.events:
                if watch_id == PROGRESS or watch_id in self._watching:
                    yield watch_id, [Progress(int(response.header.revision))]
                continue
            if watch_id not in self._watching:
                continue  # in flight when we cancelled it
            if response.fragment:
                self._fragments.setdefault(watch_id, []).extend(response.events)
                continue
            events = [*self._fragments.pop(watch_id, []), *response.events]
            yield watch_id, [self._event(e) for e in events if self._wanted(e)]

    def _wanted(self, event: Any) -> bool:
        return (
            self.where is None or event.type == rpc.Event.EventType.DELETE or self.where(event.kv.key, event.kv.value)
        )

    def _event(self, event: Any) -> Event:
        if event.type == rpc.Event.EventType.DELETE:
            return Delete(event.kv.key.decode("utf-8", errors="surrogateescape"), int(event.kv.mod_revision))
        return Put(decode_kv(self.store.prefix, event.kv))


async def watch(
    store: Store,
    start_revision: int,
    *,
    under: str | None = None,
    progress_every: float = 5.0,
    stall_after: float = 10.0,
) -> AsyncIterator[list[Event]]:
    """Events under `under` (default: the prefix) from `start_revision` on, in batches."""
    key = (under or store.prefix + "/").encode()
    async with Stream(store, progress_every=progress_every, stall_after=stall_after) as stream:
        stream.add(key, keys.prefix_range_end(key), start_revision)
        async for _, batch in stream.responses():
            yield batch
