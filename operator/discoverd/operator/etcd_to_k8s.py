"""The etcd side of the mirror: a full resync, then a watch whose events queue keys for the reconciler.

On start (and after compaction or a lost watch) every key under the prefix
and every object in the namespace is queued once, so whatever changed on
either side while the operator was away converges by `decision.decide`.
Then each watch batch updates the status view and queues the configuration
keys it touched (with the value it delivered) and the keys whose status it
affects; the reconciler's workers do the rest. A bad value is logged with
its key and field and skipped; etcd outages are waited out with back-off,
never fatal.
"""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from discoverd import logs
from discoverd.errors import InvalidDocument, StoreUnavailable
from discoverd.operator import reconciler, status
from discoverd.schema import keys, resources
from discoverd.store import typed, watch

__all__ = ["resync", "run"]

logger = logging.getLogger(__name__)


def _utf8(key: str) -> bool:
    """etcd keys are bytes; one that is not UTF-8 (read with surrogateescape) names no object."""
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def _parsed(entry: typed.Entry) -> keys.Key | None:
    """The entry's key if the mirror looks at it; an invalid one is logged (key and field) and skipped."""
    if not _utf8(entry.key):
        logger.warning("Ignored key: not valid UTF-8", extra=logs.kv(key=ascii(entry.key)))
        return None
    if entry.error is not None:
        logger.warning("Ignored invalid document: %s", entry.error, extra=logs.kv(key=entry.key))
    return entry.parsed


async def _object_keys(r: reconciler.Reconciler) -> set[keys.Key]:
    """The keys the objects name, reloading the index from one list per kind."""
    for kind in resources.RESOURCES:
        await r.load(kind)
    return r.index.named_keys()


async def resync(r: reconciler.Reconciler) -> int:
    """Queue every key and every object; the revision to watch from."""
    snapshot = await r.store.snapshot()
    r.view = status.View()
    config: dict[keys.Key, typed.Entry] = {}
    for entry in snapshot.entries.values():
        parsed = _parsed(entry)
        if parsed is None:
            continue
        r.view.put(parsed, entry.document)
        if parsed.kind in resources.RESOURCES:
            config[parsed] = entry
    named = await _object_keys(r)
    for key in sorted(config.keys() | named):
        r.enqueue(key, seen=config.get(key))  # None: not in etcd at the snapshot's revision
    logger.info(
        "Resynced etcd and Kubernetes", extra=logs.kv(revision=snapshot.revision, keys=len(config.keys() | named))
    )
    return snapshot.revision


def _apply(r: reconciler.Reconciler, batch: list[watch.Event]) -> None:
    """Queue what one watch response changed."""
    statuses: set[keys.Key] = set()
    for event in batch:
        if isinstance(event, watch.Progress):
            continue
        entry: typed.Entry | None = None
        if isinstance(event, watch.Put):
            entry = event.entry
            parsed = _parsed(entry)
        elif _utf8(event.key):
            try:
                parsed = keys.parse(r.prefix, event.key)
            except InvalidDocument:
                continue
        else:
            continue
        if parsed is None:
            continue
        statuses |= status.affected(r.view, parsed)  # before the change too: a server's old list counts
        r.view.put(parsed, entry.document if entry is not None else None)
        if parsed.kind in resources.RESOURCES:
            r.enqueue(parsed, seen=entry)  # the last event of a batch for a key is its current value
        statuses |= status.affected(r.view, parsed)
    for key in sorted(statuses):
        r.enqueue(key, config=False)


async def run(r: reconciler.Reconciler) -> None:
    """Resync, then follow the watch; start over after compaction, a lost watch or an outage (`runtime.Resync`)."""

    async def cycle() -> None:
        revision = await resync(r)
        r.resync.synced()
        async for batch in watch.watch(r.store, revision + 1):
            r.resync.heard()
            _apply(r, batch)

    await r.resync.run(cycle, retry_on=(StoreUnavailable, ApiException))
