"""Carry out `mirror.decide()` for one key: read both sides, decide, write, under a per-key lock.

Both directions come through here: Kopf handlers (a user changed an object)
and the etcd watch (etcd changed a key) call `Mirror.sync_key`, so whichever
runs first does the work and the other finds nothing to do. The lock per key
keeps a handler's etcd write and its annotation patch together, so the etcd
event it causes is looked at only after the object records the new revision.
Objects are found through `objects.Index` (no list per key); every body the
API server returns is fed back into it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from discoverd import logs
from discoverd.errors import Conflict
from discoverd.operator import kube, mirror, objects, startup, status
from discoverd.schema import keys, names, resources
from discoverd.store import documents

__all__ = ["UNREAD", "Duplicate", "Mirror", "Outcome", "Unread", "merge_patch"]

logger = logging.getLogger(__name__)

_KINDS = {model.kind: kind for kind, model in resources.KINDS.items()}
_RETRY_DELETING = 1.0
_ATTEMPTS = 3


class Duplicate(Exception):
    """Another object already mirrors this object's etcd key."""


@dataclass(frozen=True)
class Outcome:
    decision: mirror.Decision
    body: dict[str, Any] | None


class Unread:
    """`sync_key` has not been given the key's value: read it from etcd."""


UNREAD = Unread()


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: removed fields become None."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif old[k] != v:
            patch[k] = merge_patch(old[k], v)
    return patch


def _annotations(key: str, revision: int, digest: str) -> dict[str, str]:
    return {mirror.ANNOTATION_KEY: key, mirror.ANNOTATION_REVISION: str(revision), mirror.ANNOTATION_DIGEST: digest}


class Mirror:
    """One prefix in etcd mirrored into one namespace."""

    def __init__(self, store: documents.Store, api: kube.Api) -> None:
        self.store = store
        self.api = api
        self.prefix = store.prefix
        self.view = status.View()
        self.etcd_writes = 0
        self.index = objects.Index()
        self.later: asyncio.Queue[keys.Key] = asyncio.Queue()
        self._locks: defaultdict[keys.Key, asyncio.Lock] = defaultdict(asyncio.Lock)

    def retry_later(self, key: keys.Key, delay: float = _RETRY_DELETING) -> None:
        """Look at `key` again after `delay` seconds (the etcd side's retry queue)."""
        asyncio.get_running_loop().call_later(delay, self.later.put_nowait, key)

    def key_of(self, kind: str, body: dict[str, Any]) -> keys.Key:
        """The etcd key an object's spec names (InvalidDocument when the spec does not validate)."""
        return mirror.key_of_spec(kind, body.get("spec") or {})

    async def load(self, kind: keys.Kind) -> None:
        """(Re)load the index of `kind` from one list."""
        async with self.index.lock(kind):
            items, revision = await self.api.list(kind)
            self.index.load(kind, items, revision)

    def observe(self, kind: keys.Kind, body: dict[str, Any] | None, name: str | None = None) -> None:
        """A body the API server returned (None: the object named `name` is gone)."""
        if body is not None:
            self.index.observe(kind, body)
        elif name is not None:
            self.index.forget(kind, name)

    async def find(self, key: keys.Key) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The object mirroring `key`, and any other objects naming it (duplicates)."""
        if not self.index.loaded(key.kind):
            async with self.index.lock(key.kind):
                if not self.index.loaded(key.kind):
                    items, revision = await self.api.list(key.kind)
                    self.index.load(key.kind, items, revision)
        matching = self.index.matching(key)
        if not matching:
            return None, []
        built = key.build(self.prefix)

        def rank(body: dict[str, Any]) -> tuple[int, str, str]:
            meta = body["metadata"]
            ours = (meta.get("annotations") or {}).get(mirror.ANNOTATION_KEY) == built
            return (0 if ours else 1, meta.get("creationTimestamp", ""), meta["name"])

        matching.sort(key=rank)
        return matching[0], matching[1:]

    async def sync_key(
        self,
        key: keys.Key,
        *,
        name: str | None = None,
        handler: bool = False,
        seen: documents.Entry | Unread | None = UNREAD,
    ) -> Outcome:
        """Make the object and the etcd key agree. `name`: the object a handler was called for.

        From the etcd side (`handler` False) an object being deleted is left to its
        finalizer's handler and looked at again later. `seen` is the key as a watch
        event just delivered it (None: deleted); it spares the first read from etcd.
        A newer value arrives as another event, and writes to etcd are guarded by
        mod_revision, so a stale `seen` can only cost a retry, never a lost write.
        """
        async with self._locks[key]:
            for _ in range(_ATTEMPTS):
                body, duplicates = await self.find(key)
                named = name is not None and any(d["metadata"]["name"] == name for d in duplicates)
                if body is not None and named:
                    raise Duplicate(f"{key.build(self.prefix)} is already mirrored by {body['metadata']['name']}")
                if name is not None and (body is None or body["metadata"]["name"] != name):
                    return Outcome(mirror.Skip("the object is gone"), None)
                if body is not None and body["metadata"].get("deletionTimestamp") and not handler:
                    self.retry_later(key)
                    return Outcome(mirror.Skip("being deleted"), body)
                if isinstance(seen, Unread):
                    entry = await self.store.get(key.build(self.prefix))
                else:
                    entry, seen = seen, UNREAD
                decision = self._decide(key, body, entry)
                try:
                    return Outcome(decision, await self._act(key, body, decision, entry))
                except Conflict:
                    continue
            raise Conflict(key.build(self.prefix), 0, "the key kept changing while being mirrored")

    def _decide(self, key: keys.Key, body: dict[str, Any] | None, entry: documents.Entry | None) -> mirror.Decision:
        built = key.build(self.prefix)
        etcd = None if entry is None else mirror.etcd_side(key, entry.mod_revision, entry.document, _error(entry))
        obj = None if body is None else mirror.object_side(_KINDS[key.kind], body, key, self.prefix)
        return mirror.decide(obj, etcd, built)

    async def _act(
        self, key: keys.Key, body: dict[str, Any] | None, decision: mirror.Decision, entry: documents.Entry | None
    ) -> dict[str, Any] | None:
        built = key.build(self.prefix)
        context = logs.kv(key=built, object=(body or {}).get("metadata", {}).get("name"))
        match decision:
            case mirror.Create(spec=spec, revision=revision, digest=digest):
                body = await self._create(key, spec, _annotations(built, revision, digest))
                self.observe(key.kind, body)
                logger.info("Created object from etcd", extra=logs.kv(key=built, object=body["metadata"]["name"]))
            case mirror.Patch(spec=spec, revision=revision, digest=digest, warning=warning):
                assert body is not None
                if warning:
                    await self.api.warn(body, "EtcdWins", warning)
                    logger.warning("Reset object to etcd's value", extra=context)
                patch: dict[str, Any] = {"metadata": {"annotations": _annotations(built, revision, digest)}}
                if spec is not None:
                    patch["spec"] = merge_patch(body.get("spec") or {}, spec)
                body = await self._patch(key.kind, body["metadata"]["name"], patch)
            case mirror.DeleteObject(warning=warning):
                assert body is not None
                if warning:
                    await self.api.warn(body, "EtcdWins", warning)
                name = body["metadata"]["name"]
                body = await self.api.delete(key.kind, name)
                self.observe(key.kind, body, name)
                logger.info("Deleted object: its etcd key is gone", extra=context)
                body = None
            case mirror.WriteKey(expect=expect):
                assert body is not None
                body = await self._write(key, body, expect, entry)
                logger.info("Wrote object to etcd", extra=context)
            case mirror.DeleteKey(expect=expect):
                await self.store.delete(built, expect=expect)
                self.etcd_writes += 1
                logger.info("Deleted etcd key: its object was deleted", extra=context)
            case mirror.Release(warning=warning):
                if warning and body is not None:
                    await self.api.warn(body, "EtcdWins", warning)
                self.retry_later(key)
            case mirror.Skip(reason=reason) if reason:
                logger.debug("Skipped: %s", reason, extra=context)
        return body

    async def _create(self, key: keys.Key, spec: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
        kind = _KINDS[key.kind]
        body = {
            "apiVersion": resources.API_VERSION,
            "kind": kind,
            "metadata": {"name": names.object_name(key), "annotations": annotations},
            "spec": spec,
        }
        return await self.api.create(key.kind, startup.as_handled(body))

    async def _write(
        self, key: keys.Key, body: dict[str, Any], expect: int, entry: documents.Entry | None
    ) -> dict[str, Any]:
        kind = _KINDS[key.kind]
        spec = body.get("spec") or {}
        value = mirror.value_of(kind, spec, entry.document if entry is not None else None)
        revision = await self.store.apply([documents.Write(key.build(self.prefix), value, expect)])
        self.etcd_writes += 1
        annotations = _annotations(key.build(self.prefix), revision, mirror.digest(kind, spec))
        return await self._patch(key.kind, body["metadata"]["name"], {"metadata": {"annotations": annotations}})

    async def _patch(self, kind: keys.Kind, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            patched = await self.api.patch(kind, name, patch)
        except kube.NotFound:
            self.index.forget(kind, name)
            raise
        self.observe(kind, patched)
        return patched

    async def sync_status(self, key: keys.Key) -> None:
        """Write the object's status if what the agents report changed it."""
        body, _ = await self.find(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        wanted = self.view.status_for(key)
        if status.normalized(key.kind, body.get("status")) != wanted:
            name = body["metadata"]["name"]
            try:
                self.observe(key.kind, await self.api.patch_status(key.kind, name, wanted))
            except kube.NotFound:
                self.index.forget(key.kind, name)
                raise


def _error(entry: documents.Entry) -> str | None:
    return str(entry.error) if entry.error is not None else None
