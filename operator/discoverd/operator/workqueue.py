"""A per-key work queue with de-duplication and exponential back-off, as controller-runtime's workqueue.

Producers `add` keys (the etcd watch, the Kopf handlers, retries); workers
`get` a key, reconcile it, then call `done`. The rules, from client-go's
`workqueue`:

- a key waiting in the queue is there once, however often it is added;
- a key being processed is never handed to a second worker; added meanwhile,
  it is processed again after `done` (so the newest value is never missed);
- `add_rate_limited` adds the key after `base * 2**failures` seconds (capped
  at `cap`) and counts a failure; `forget` resets the count once the key
  succeeds; `add_after` adds it after a fixed delay (the earliest wins when
  several are pending).

`KeyLocks` serialises work on one key that does not go through the queue
(a Kopf handler and a queue worker on the same key), keeping a lock only
while someone holds or waits for it, so the keys of a churning fleet do not
pile up.

Pure asyncio, no I/O; the clock is the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

__all__ = ["KeyLocks", "WorkQueue"]

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to reconcile: de-duplicated, one worker per key at a time, back-off per key."""

    def __init__(self, base_delay: float = 0.05, max_delay: float = 300.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        """Keys waiting to be handed out (not those in flight or delayed)."""
        return len(self._queue)

    def add(self, key: K) -> None:
        """Process `key` as soon as a worker is free (once, however often it is added)."""
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # processed again by `done`
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """`add(key)` in `delay` seconds; an earlier pending add of the same key wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._waiting[key] = (when, loop.call_at(when, self._due, key))

    def _due(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def delay(self, key: K) -> float:
        """The back-off the next `add_rate_limited(key)` waits."""
        failures = self._failures.get(key, 0)
        return float(min(self.base_delay * 2.0 ** min(failures, 64), self.max_delay))

    def add_rate_limited(self, key: K) -> float:
        """`key` failed: add it after its back-off, which then doubles; the delay used."""
        delay = self.delay(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        """Failures since the last `forget`."""
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """`key` succeeded: its back-off starts over."""
        self._failures.pop(key, None)

    async def get(self) -> K:
        """The next key to process (waiting until there is one); call `done(key)` after.

        Always lets the event loop run other tasks first, even with keys queued: a worker whose
        keys need no API call or etcd read (the resync of a restart, every key in sync) would
        otherwise hold the loop for the whole queue, and the etcd watch and the leader lease
        starved with it (100,000 objects: the watch was declared stalled after each resync,
        which queued every key again, for ever; bench/operator_mirror.py, restart).
        """
        await asyncio.sleep(0)
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        """A worker finished `key`; if it was added meanwhile, it is queued again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def close(self) -> None:
        """Cancel delayed adds (on shutdown)."""
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()


class KeyLocks(Generic[K]):
    """One `asyncio.Lock` per key, kept only while it is held or awaited (a defaultdict of locks
    would keep one for every key ever seen)."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
