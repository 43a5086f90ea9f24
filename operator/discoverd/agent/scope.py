"""The agent's own keys in etcd, read at one revision and watched on one stream; nothing else.

An agent needs exactly (DESIGN section 3):

- its server document, `servers/<id>/config/details`;
- the version documents of every service it runs: the prefix
  `services/<service>/versions/`, one per service, so an instance moved to
  another version that already exists needs no new read;
- its instance documents, `services/<service>/instances/<id>/config/details`.

Never other servers' keys, never status keys: what the agent holds, reads and
is sent depends on its own assignment, not on the size of the fleet.

A `Span` is one of those (a key, or a prefix); `spans()` derives them from the
instances the server document lists. `ScopedWatch.run` keeps `entries` equal
to etcd's values in those spans:

1. full read: the server document at etcd's current revision R, every span it
   implies at the same R, then one watcher per span from R+1, all on one gRPC
   Watch stream (`store.watch.Stream`);
2. when an event changes the server document, the watchers of spans no
   longer needed are cancelled (and their entries dropped); new spans are read
   at one revision R' and watched from R'+1, so nothing falls between read and
   watch;
3. a compacted, broken or stalled stream (no answer to a progress request
   within `stall_after`) is dropped and everything starts again at 1: the
   stream may have missed events without an error, so resuming from the last
   revision seen is not enough. The loop, its back-off and its readiness
   signal are the runtime kit's (`runtime.Resync`), shared with the operator
   and the controller.

With etcd auth on, the server's role reads exactly these spans, and the
controller grants a newly listed service's spans when it sees the same server
document change (`controller/roles.py`), so the agent may ask a moment before
it may. A span etcd refuses (permission denied) waits in `denied` and is read
again with back-off (`_retry`) until it is granted, then watched like the
others; the other spans, and so the other instances, go on meanwhile. A span
refused on a full read keeps the entries known before (the last known
configuration beats none). Only the server document itself must be readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from discoverd import logs, runtime
from discoverd.agent import desired, model
from discoverd.errors import PermissionDenied, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import watch
from discoverd.store.typed import Entry, Store

__all__ = ["ScopedWatch", "Span", "spans"]

log = logging.getLogger(__name__)

_CONFIG_KINDS = (keys.Kind.SERVER, keys.Kind.VERSION, keys.Kind.INSTANCE)
DENIED_FIRST = 0.2
"""Seconds before reading a refused span again (the controller usually grants it within milliseconds)."""
DENIED_MAX = 10.0
"""Longest wait between two reads of a refused span."""
_DENIED_WARN_TRIES = 5
"""A span refused this many times (about 5 s of tries) is worth a warning: nobody seems to grant it."""


@dataclass(frozen=True, order=True)
class Span:
    """One key (`prefix` False) or every key under a prefix."""

    key: str
    prefix: bool = False

    def range(self) -> tuple[bytes, bytes]:
        """etcd's (key, range_end): b"" as the end means the key alone."""
        start = self.key.encode()
        return start, keys.prefix_range_end(start) if self.prefix else b""

    def covers(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key


def spans(prefix: str, server_id: str, refs: Iterable[model.Ref]) -> frozenset[Span]:
    """What an agent serving `server_id` and running `refs` reads and watches."""
    todo = {Span(keys.server_config(prefix, server_id))}
    for ref in refs:
        todo.add(Span(keys.versions_prefix(prefix, ref.service), prefix=True))
        todo.add(Span(keys.instance_config(prefix, ref.service, ref.instance)))
    return frozenset(todo)


def _is_config(entry: Entry) -> bool:
    if entry.parsed is not None:
        return entry.parsed.kind in _CONFIG_KINDS
    return entry.error is not None and "/config/" in entry.key


class ScopedWatch:
    """Keeps `entries` = this server's configuration in etcd; calls `publish` with a copy on every change."""

    def __init__(
        self,
        store: Store,
        server_id: str,
        publish: Callable[[dict[str, Entry]], None],
        *,
        progress_every: float = 5.0,
        stall_after: float = 10.0,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.prefix = store.prefix
        self.server_id = server_id
        self.server_key = keys.server_config(self.prefix, server_id)
        self.publish = publish
        self.progress_every = progress_every
        self.stall_after = stall_after
        self.entries: dict[str, Entry] = {}
        self.refs: tuple[model.Ref, ...] = ()
        self.watches: dict[Span, int] = {}
        self.events = 0
        """Watch events received since the start (a debugging counter, logged with every change)."""
        self.resync = runtime.Resync("agent", on_lost=on_lost, context={"server": server_id})
        """Readiness (`current`: entries follow etcd), losses and the last answer heard."""
        self.denied: dict[Span, tuple[float, runtime.Backoff]] = {}
        """Spans etcd refused to read -> (monotonic time of the next try, its back-off)."""
        self._denied_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        """Held while entries and watches change: by an event batch or by a retry of refused spans."""

    @property
    def waiting(self) -> frozenset[str]:
        """Keys and prefixes (`Span.key`) this server may not read yet."""
        return frozenset(s.key for s in self.denied)

    def _kv(self, **more: object) -> dict[str, object]:
        return logs.kv(server=self.server_id, **more)

    @property
    def current(self) -> bool:
        """True from a full read until the stream is lost: `entries` follow etcd (the agent's readiness)."""
        return self.resync.current

    @property
    def last_heard(self) -> float | None:
        """`time.monotonic()` of the last answer on the stream (events or a progress notification)."""
        return self.resync.last_heard

    @property
    def lost(self) -> int:
        """Times the watch was lost and everything read again (etcd reconnects)."""
        return self.resync.lost

    async def run(self) -> None:
        """Read, watch, read again after a lost watch; returns only by cancellation."""
        await self.resync.run(self._cycle)

    async def _cycle(self) -> None:
        async with watch.Stream(self.store, progress_every=self.progress_every, stall_after=self.stall_after) as stream:
            async with self._lock:
                await self._read_all(stream)
            self.resync.synced()
            retrier = asyncio.create_task(self._retry(stream), name="read refused spans")
            try:
                async for watch_id, events in stream.responses():
                    self.resync.heard()
                    if watch_id != watch.PROGRESS:
                        async with self._lock:
                            await self._apply(stream, events)
            finally:
                retrier.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retrier

    async def _read_all(self, stream: watch.Stream) -> None:
        server = Span(self.server_key)
        first = await self.store.read([server.range()])
        revision = first.revision
        entries = _configs(first.entries)
        self.refs, _ = desired.listed(entries, self.prefix, self.server_id, self.refs)
        rest = sorted(spans(self.prefix, self.server_id, self.refs) - {server})
        more, _, refused = await self._read(rest, revision)
        entries.update(more)
        for span in refused:  # keep what we knew: it is about to be granted again
            entries.update({k: e for k, e in self.entries.items() if span.covers(k)})
        self.entries = entries
        self.watches = {
            span: stream.add(*span.range(), revision + 1) for span in (server, *rest) if span not in refused
        }
        self.denied.clear()
        self._deny(refused)
        log.info(
            "Read configuration",
            extra=self._kv(revision=revision, keys=len(entries), watches=len(self.watches), refused=len(refused)),
        )
        self.publish(dict(self.entries))

    async def _read(self, todo: Sequence[Span], revision: int = 0) -> tuple[dict[str, Entry], int, list[Span]]:
        """Read `todo` at one revision: (entries, that revision, the spans etcd refused to read).

        All of them in one go; when etcd refuses one, each again on its own, so that one refused
        span does not hold up the others. The revision is 0 when nothing could be read."""
        if not todo:
            return {}, revision, []
        try:
            snapshot = await self.store.read((s.range() for s in todo), revision)
            return _configs(snapshot.entries), snapshot.revision, []
        except PermissionDenied:
            pass
        entries: dict[str, Entry] = {}
        refused: list[Span] = []
        for span in todo:
            try:
                snapshot = await self.store.read([span.range()], revision)
            except PermissionDenied:
                refused.append(span)
                continue
            revision = snapshot.revision
            entries.update(_configs(snapshot.entries))
        return entries, revision, refused

    def _deny(self, refused: Iterable[Span]) -> None:
        now = time.monotonic()
        for span in refused:
            _, backoff = self.denied.get(span, (0.0, runtime.Backoff(DENIED_FIRST, DENIED_MAX)))
            delay = backoff.next()
            if backoff.tries == 1:  # usual for a moment: the controller grants it as we ask
                log.info(
                    "Waiting for permission to read; etcd refused this server's user",
                    extra=self._kv(key=span.key, retry_in=f"{delay:.3f}s"),
                )
            elif backoff.tries == _DENIED_WARN_TRIES:
                log.warning(
                    "Still refused permission to read: is a controller running as etcd's root user? "
                    "(or run `discoverd auth sync`)",
                    extra=self._kv(key=span.key, retry_in=f"{delay:.3f}s"),
                )
            self.denied[span] = (now + delay, backoff)
            self._denied_changed.set()

    async def _retry(self, stream: watch.Stream) -> None:
        """Read refused spans again when due; watch each one etcd now lets us read, from that read on."""
        backoff = runtime.Backoff(DENIED_FIRST, DENIED_MAX)
        while True:
            self._denied_changed.clear()
            due = min((t for t, _ in self.denied.values()), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._denied_changed.wait(), timeout)
            try:
                async with self._lock:
                    await self._retry_due(stream)
                backoff.reset()
            except StoreUnavailable as error:  # the watch notices an outage by itself
                log.info("Failed to read refused keys again", extra=self._kv(reason=str(error)))
                await asyncio.sleep(backoff.next())

    async def _retry_due(self, stream: watch.Stream) -> None:
        now = time.monotonic()
        todo = sorted(s for s, (t, _) in self.denied.items() if t <= now)
        if not todo:
            return
        entries, revision, refused = await self._read(todo)
        granted = [s for s in todo if s not in refused]
        for span in granted:
            del self.denied[span]
            for key in [k for k in self.entries if span.covers(k)]:
                del self.entries[key]
            self.watches[span] = stream.add(*span.range(), revision + 1)
        self._deny(refused)
        if granted:
            self.entries.update(entries)
            log.info(
                "Read keys etcd had refused", extra=self._kv(keys=",".join(s.key for s in granted), revision=revision)
            )
            self.publish(dict(self.entries))

    async def _apply(self, stream: watch.Stream, events: list[watch.Event]) -> None:
        revision = 0
        server_changed = False
        for event in events:
            if isinstance(event, watch.Progress):
                continue
            self.events += 1
            revision = max(revision, event.revision)
            if isinstance(event, watch.Put) and _is_config(event.entry):
                self.entries[event.entry.key] = event.entry
                server_changed = server_changed or event.entry.key == self.server_key
            elif isinstance(event, watch.Put | watch.Delete):
                key = event.entry.key if isinstance(event, watch.Put) else event.key
                self.entries.pop(key, None)
                server_changed = server_changed or key == self.server_key
        log.info("Received configuration change", extra=self._kv(revision=revision, events=self.events))
        if server_changed:
            await self._rescope(stream)
        self.publish(dict(self.entries))

    async def _rescope(self, stream: watch.Stream) -> None:
        """Watch what the server document now implies: cancel what is no longer needed, read and watch what is new."""
        self.refs, _ = desired.listed(self.entries, self.prefix, self.server_id, self.refs)
        wanted = spans(self.prefix, self.server_id, self.refs)
        gone = [s for s in self.watches if s not in wanted]
        for span in gone:
            stream.cancel(self.watches.pop(span))
        gone += [s for s in self.denied if s not in wanted]
        for span in gone:
            self.denied.pop(span, None)
            for key in [k for k in self.entries if span.covers(k)]:
                del self.entries[key]
        new = sorted(wanted - set(self.watches) - set(self.denied))
        entries, revision, refused = await self._read(new)
        self.entries.update(entries)
        for span in new:
            if span not in refused:
                self.watches[span] = stream.add(*span.range(), revision + 1)
        self._deny(refused)
        if gone or new:
            log.info(
                "Changed watches",
                extra=self._kv(added=len(new), cancelled=len(gone), watches=len(self.watches), revision=revision),
            )


def _configs(entries: Mapping[str, Entry]) -> dict[str, Entry]:
    return {k: e for k, e in entries.items() if _is_config(e)}
