"""The dashboard's one etcd watch: every entry under the prefix, kept current, and who to wake on a change.

`Feed.run` reads the prefix once, then follows it with one watch from the
next revision (`store.watch`), applying each batch to `entries`: the runtime
kit's resync-then-watch loop (`runtime.Resync`). An unreachable etcd, or a
broken or stalled watch, is reported in `error` (the page shows it) and
followed by a fresh read after a back-off (0.5 s doubling to 10 s); a
compacted watch is read again at once. The page never shows a state that
silently stopped. Every browser tab holds a `Subscription`; the feed
sets it on each change, and the tab renders its page when it next gets to
it: changes that arrive while a tab is busy collapse into one render.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from discoverd import runtime
from discoverd.store import watch
from discoverd.store.typed import Entry, Store

__all__ = ["Feed", "Subscription"]


_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0


def _shown(entry: Entry) -> bool:
    """Whether a page can show `entry`: a document of the schema, or one that fails it. Other keys under the
    prefix (log grants, the controller's election) come and go often and no page shows them."""
    return entry.parsed is not None or entry.error is not None


class Subscription:
    """One reader's flag: set when the feed changed since the reader last looked."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.changed.set()  # render once at once

    async def wait(self, timeout: float) -> bool:
        """True when something changed within `timeout` seconds (the flag is cleared)."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True


class Feed:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.entries: dict[str, Entry] = {}
        self.revision = 0
        self.generation = 0
        """Bumped on every change, so a reader can tell whether what it derived is still current."""
        self.loaded = asyncio.Event()
        self.error = ""
        """Why the view may be stale (etcd unreachable, the watch broken), or "" while it is current."""
        self._subscriptions: set[Subscription] = set()
        self.resync = runtime.Resync(
            "dashboard", on_failure=self._failed, backoff=runtime.Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        )

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def _changed(self) -> None:
        self.generation += 1
        for subscription in self._subscriptions:
            subscription.changed.set()

    def _apply(self, batch: Iterable[watch.Event]) -> bool:
        changed = False
        for event in batch:
            if isinstance(event, watch.Put):
                if _shown(event.entry):
                    self.entries[event.entry.key] = event.entry
                    changed = True
            elif isinstance(event, watch.Delete):
                changed = self.entries.pop(event.key, None) is not None or changed
            self.revision = max(self.revision, event.revision)
        return changed

    async def run(self) -> None:
        """Read, then watch, forever; a failure is shown and retried with back-off."""
        await self.resync.run(self._cycle)

    async def _cycle(self) -> None:
        snapshot = await self.store.snapshot()
        self.entries = {key: e for key, e in snapshot.entries.items() if _shown(e)}
        self.revision, self.error = snapshot.revision, ""
        self.resync.synced()
        self.loaded.set()
        self._changed()
        async for batch in watch.watch(self.store, snapshot.revision + 1):
            self.resync.heard()
            if self._apply(batch):
                self._changed()

    def _failed(self, reason: str, wait: float) -> None:
        self.error = f"{reason}; reading again in {wait:.1f} s"
        self._changed()
