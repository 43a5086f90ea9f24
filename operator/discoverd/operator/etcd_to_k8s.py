"""The etcd side of the mirror: a full resync, then a watch that creates, patches and deletes objects.

On start (and after compaction or a lost watch) every key under the prefix
and every object in the namespace is looked at once, so whatever changed on
either side while the operator was away converges by `mirror.decide`. Then
each watch batch updates the status view, syncs the configuration keys it
touched, and rewrites the status of the objects it affects, up to
`kube.CONCURRENCY` keys at once. etcd outages are
waited out with back-off, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from kubernetes.client.exceptions import ApiException

from discoverd import logs
from discoverd.errors import Compacted, DiscoverdError, InvalidDocument, StoreUnavailable
from discoverd.operator import kube, status, sync
from discoverd.schema import keys
from discoverd.store import documents, watch

__all__ = ["CONFIG_KINDS", "resync", "retry_keys", "run"]

logger = logging.getLogger(__name__)

CONFIG_KINDS = (keys.Kind.SERVER, keys.Kind.VERSION, keys.Kind.INSTANCE)
_MAX_BACKOFF = 10.0


async def _sync(
    m: sync.Mirror, key: keys.Key, *, config: bool, seen: documents.Entry | sync.Unread | None = sync.UNREAD
) -> None:
    """Sync one key (and its object's status); a failure is logged and the key retried later."""
    try:
        if config:
            await m.sync_key(key, seen=seen)
        await m.sync_status(key)
    except (DiscoverdError, ApiException, kube.NotFound) as error:
        logger.warning("Failed to mirror key, will retry: %s", error, extra=logs.kv(key=key.build(m.prefix)))
        m.retry_later(key, 2.0)


async def _object_keys(m: sync.Mirror) -> set[keys.Key]:
    """The keys the objects name, reloading the index from one list per kind."""
    for kind in CONFIG_KINDS:
        await m.load(kind)
    return m.index.named_keys()


async def _sync_all(
    m: sync.Mirror,
    todo: Iterable[keys.Key],
    *,
    config: bool,
    seen: Mapping[keys.Key, documents.Entry | None] | None = None,
) -> None:
    """Sync keys concurrently, at most kube.CONCURRENCY at once (each key under its own lock).

    `seen`: the latest value the watch delivered for some of the keys (None: deleted).
    """
    limit = asyncio.Semaphore(kube.CONCURRENCY)
    known = seen or {}

    async def one(key: keys.Key) -> None:
        async with limit:
            await _sync(m, key, config=config, seen=known.get(key, sync.UNREAD))

    async with asyncio.TaskGroup() as group:
        for key in sorted(todo):
            group.create_task(one(key))


async def resync(m: sync.Mirror) -> int:
    """Converge every key and every object; the revision to watch from."""
    snapshot = await m.store.snapshot()
    m.view = status.View()
    config: set[keys.Key] = set()
    for entry in snapshot.entries.values():
        if entry.parsed is None:
            continue
        m.view.put(entry.parsed, entry.document)
        if entry.parsed.kind in CONFIG_KINDS:
            config.add(entry.parsed)
        if entry.error is not None:
            logger.warning("Ignored invalid document: %s", entry.error, extra=logs.kv(key=entry.key))
    config |= await _object_keys(m)
    await _sync_all(m, config, config=True)
    logger.info("Resynced etcd and Kubernetes", extra=logs.kv(revision=snapshot.revision, keys=len(config)))
    return snapshot.revision


async def _apply(m: sync.Mirror, batch: list[watch.Event]) -> None:
    touched: dict[keys.Key, documents.Entry | None] = {}
    statuses: set[keys.Key] = set()
    for event in batch:
        if isinstance(event, watch.Progress):
            continue
        entry = event.entry if isinstance(event, watch.Put) else None
        if isinstance(event, watch.Put):
            parsed, doc = event.entry.parsed, event.entry.document
            if event.entry.error is not None:
                logger.warning("Ignored invalid document: %s", event.entry.error, extra=logs.kv(key=event.entry.key))
        else:
            try:
                parsed, doc = keys.parse(m.prefix, event.key), None
            except InvalidDocument:
                continue
        if parsed is None:
            continue
        m.view.put(parsed, doc)
        if parsed.kind in CONFIG_KINDS:
            touched[parsed] = entry  # the last event of the batch for a key is its current value
        statuses |= status.affected(m.view, parsed)
    await _sync_all(m, touched, config=True, seen=touched)
    await _sync_all(m, statuses - touched.keys(), config=False)


async def run(m: sync.Mirror) -> None:
    """Resync, then follow the watch; start over after compaction, a lost watch or an outage."""
    delay = 0.5
    while True:
        try:
            revision = await resync(m)
            delay = 0.5
            async for batch in watch.watch(m.store, revision + 1):
                await _apply(m, batch)
        except Compacted as error:
            logger.warning("Resyncing: the watch was compacted", extra=logs.kv(reason=str(error)))
        except StoreUnavailable as error:
            logger.warning("etcd is unavailable, retrying", extra=logs.kv(reason=str(error), retry_in=delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
        except ApiException as error:
            logger.warning(
                "The Kubernetes API failed, retrying", extra=logs.kv(reason=str(error.reason), retry_in=delay)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)


async def retry_keys(m: sync.Mirror) -> None:
    """Keys asked to be looked at again (deleted objects to re-create, failures to retry)."""
    while True:
        key = await m.later.get()
        if key.kind in CONFIG_KINDS:
            await _sync(m, key, config=True)
