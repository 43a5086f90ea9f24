"""The dashboard's one etcd watch: every entry under the prefix, kept current, and who to wake on a change.

`Feed.run` reads the prefix once, then follows it with one watch from the
next revision (`store.watch`), applying each batch to `entries`. A broken,
stalled or compacted watch is reported in `error` (the page shows it) and
followed by a fresh read after a back-off, so the page never shows a state
that silently stopped. Every browser tab holds a `Subscription`; the feed
sets it on each change, and the tab renders its page when it next gets to
it: changes that arrive while a tab is busy collapse into one render.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from discoverd.errors import Compacted, StoreUnavailable
from discoverd.store import watch
from discoverd.store.typed import Entry, Store

__all__ = ["Feed", "Subscription"]

log = logging.getLogger(__name__)

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
        delay = _BACKOFF_FIRST
        while True:
            try:
                snapshot = await self.store.snapshot()
                self.entries = {key: e for key, e in snapshot.entries.items() if _shown(e)}
                self.revision, self.error = snapshot.revision, ""
                self.loaded.set()
                self._changed()
                delay = _BACKOFF_FIRST
                async for batch in watch.watch(self.store, snapshot.revision + 1):
                    if self._apply(batch):
                        self._changed()
            except (StoreUnavailable, Compacted) as error:
                log.warning("Lost the etcd watch error=%s retry_in=%.1fs", error, delay)
                self.error = f"{error}; reading again in {delay:g} s"
                self._changed()
                await asyncio.sleep(delay)
                delay = min(_BACKOFF_MAX, delay * 2)
