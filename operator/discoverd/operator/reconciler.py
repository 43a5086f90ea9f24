"""The reconciler: make one key's object and etcd value agree, and keep its status current.

Everything that changes a key comes here. The etcd watch (`etcd_to_k8s`)
and retries `enqueue` keys on a `workqueue.WorkQueue`; `work()` is one
worker (several run at once, never two on the same key), each taking a key,
reconciling its configuration (`sync_key`: read both sides, ask
`decision.decide`, carry it out) and its status (`sync_status`). Kopf
handlers call `sync_key` directly for the object they were given, so a
user's change reaches etcd before the handler returns; the per-key lock
keeps a handler's etcd write and its annotation patch together, so the etcd
event it causes is looked at only after the object records the new revision.

A key that fails is retried with back-off per key; an unexpected exception
(a value nobody foresaw) is logged with its traceback once, posted on the
object as a Warning event, and retried with back-off like any other failure:
it never stops the other keys. Objects are found through `objects.Index`
(no list per key); every body the API server returns is fed back into it.
The index keeps a small record per object, not its body: a spec that etcd
replaces is replaced whole (a JSON patch, guarded by the resourceVersion the
decision was made on), and the rare write of a user's spec to etcd reads the
object first unless the handler that called was given it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from discoverd import logs, metrics, runtime
from discoverd.errors import Conflict, DiscoverdError
from discoverd.operator import decision, kube, objects, startup, status, workqueue
from discoverd.schema import keys, names, resources
from discoverd.store import typed

__all__ = ["UNREAD", "Duplicate", "Outcome", "Reconciler", "Unread", "describe", "merge_patch"]

logger = logging.getLogger(__name__)

_ATTEMPTS = 3


class Duplicate(Exception):
    """Another object already mirrors this object's etcd key."""


@dataclass(frozen=True)
class Outcome:
    decision: decision.Decision
    obj: objects.Object | None
    retry: bool = False
    """Look at the key again later (with back-off): an object is being deleted meanwhile."""


class Unread:
    """`sync_key` has not been given the key's value: read it from etcd."""


UNREAD = Unread()


class _StatusOnly:
    """The key was queued for its status only."""


_STATUS_ONLY = _StatusOnly()


def describe(error: Exception) -> str:
    """One line for a log: an API error by its status and the API server's message, not its headers."""
    if not isinstance(error, ApiException):
        return str(error)
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{error.status} {error.reason}: {message or error.body or ''}"[:1000]


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
    return {
        decision.ANNOTATION_KEY: key,
        decision.ANNOTATION_REVISION: str(revision),
        decision.ANNOTATION_DIGEST: digest,
    }


def _pointer(*path: str) -> str:
    """A JSON pointer (RFC 6901) to `path`."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def spec_patch(obj: objects.Object, spec: dict[str, Any], annotations: dict[str, str]) -> list[dict[str, Any]]:
    """The JSON patch that sets the object's whole spec and our annotations, if it is still at the
    resourceVersion the decision was made on (a user's change meanwhile fails it with 409)."""
    operations: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": obj.resource_version},
        {"op": "add", "path": "/spec", "value": spec},
    ]
    if not obj.annotated:
        return [*operations, {"op": "add", "path": "/metadata/annotations", "value": annotations}]
    return [
        *operations,
        *({"op": "add", "path": _pointer("metadata", "annotations", k), "value": v} for k, v in annotations.items()),
    ]


class Reconciler:
    """One prefix in etcd mirrored into one namespace, key by key."""

    def __init__(self, store: typed.Store, api: kube.Api, metrics_: metrics.OperatorMetrics | None = None) -> None:
        self.store = store
        self.api = api
        self.prefix = store.prefix
        self.view = status.View()
        self.etcd_writes = 0
        self.index = objects.Index()
        self.queue: workqueue.WorkQueue[keys.Key] = workqueue.WorkQueue()
        self.metrics = metrics_ or metrics.OperatorMetrics()
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        self.resync = runtime.Resync("operator", on_lost=self.metrics.etcd_reconnects.inc)
        """Readiness (`current`: true from a full resync until the etcd watch is lost) and losses."""
        self._config: dict[keys.Key, typed.Entry | Unread | None] = {}
        """Queued keys whose configuration needs syncing, with the newest value the watch delivered."""
        self._locks: workqueue.KeyLocks[keys.Key] = workqueue.KeyLocks()

    def enqueue(self, key: keys.Key, *, config: bool = True, seen: typed.Entry | Unread | None = UNREAD) -> None:
        """Reconcile `key` soon: its configuration (with `seen`, the value a watch event just delivered,
        None: deleted) and status, or with `config` False only its status."""
        if config:
            self._config[key] = seen
        self.queue.add(key)

    def retry(self, key: keys.Key, *, config: bool = True) -> float:
        """Reconcile `key` again after its back-off (which doubles each time until it succeeds)."""
        if config:
            self._config.setdefault(key, UNREAD)
        return self.queue.add_rate_limited(key)

    async def work(self) -> None:
        """One worker: reconcile queued keys, one at a time, forever."""
        while True:
            key = await self.queue.get()
            began = time.monotonic()
            try:
                await self._reconcile(key)
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - began)
                self.queue.done(key)

    async def _reconcile(self, key: keys.Key) -> None:
        seen = self._config.pop(key, _STATUS_ONLY)
        config = not isinstance(seen, _StatusOnly)
        built = key.build(self.prefix)
        try:
            again = created = False
            if not isinstance(seen, _StatusOnly):
                outcome = await self.sync_key(key, seen=seen)
                again, created = outcome.retry, isinstance(outcome.decision, decision.Create)
            if created:
                # A new object's status goes behind the keys queued meanwhile: in a burst of new keys
                # (a fleet added, a first start) every object exists first, then the statuses follow.
                self.enqueue(key, config=False)
            else:
                await self.sync_status(key)
        except (DiscoverdError, ApiException, kube.NotFound, Duplicate) as error:
            delay = self.retry(key, config=config)
            logger.warning(
                "Failed to mirror key, will retry: %s", describe(error), extra=logs.kv(key=built, retry_in=delay)
            )
        except Exception as error:  # a value nobody foresaw: report it, keep the other keys going
            delay = self.retry(key, config=config)
            await self._report(key, error, delay)
        else:
            if again:
                self.retry(key)
            else:
                self.queue.forget(key)

    async def _report(self, key: keys.Key, error: Exception, delay: float) -> None:
        """An unexpected failure: the traceback once per run of failures, then one line; a Warning on the object."""
        built = key.build(self.prefix)
        context = logs.kv(key=built, error=type(error).__name__, retry_in=delay)
        if self.queue.failures(key) == 1:
            logger.error("Failed to mirror key (unexpected error), will retry", exc_info=error, extra=context)
            matching = self.index.matching(key)
            if matching:
                message = f"mirroring {built} failed: {type(error).__name__}: {error}"
                try:
                    await self.api.warn(matching[0].ref(), "MirrorFailed", message)
                except Exception as failed:  # the report must not fail the worker
                    logger.warning("Failed to post event: %s", failed, extra=logs.kv(key=built))
        else:
            logger.warning("Failed to mirror key again (unexpected error), will retry: %s", error, extra=context)

    def key_of(self, kind: keys.Kind, body: dict[str, Any]) -> keys.Key:
        """The etcd key an object's spec names (InvalidDocument when the spec does not validate)."""
        return decision.key_of_spec(kind, body.get("spec") or {})

    async def load(self, kind: keys.Kind) -> None:
        """(Re)load the index of `kind` from one list, a page at a time."""
        async with self.index.lock(kind):
            await self._list(kind)

    async def _list(self, kind: keys.Kind) -> None:
        listed: set[str] = set()
        revision: int | None = None
        async for page, at in self.api.pages(kind):
            revision = at
            for body in page:
                if self.index.observe(kind, body) is not None:
                    listed.add(body["metadata"]["name"])
        self.index.loaded_list(kind, listed, revision)

    def observe(self, kind: keys.Kind, body: dict[str, Any] | None, name: str | None = None) -> None:
        """A body the API server returned (None: the object named `name` is gone)."""
        if body is not None:
            self.index.observe(kind, body)
        elif name is not None:
            self.index.forget(kind, name)

    async def find(self, key: keys.Key) -> tuple[objects.Object | None, list[objects.Object]]:
        """The object mirroring `key`, and any other objects naming it (duplicates)."""
        if not self.index.loaded(key.kind):
            async with self.index.lock(key.kind):
                if not self.index.loaded(key.kind):
                    await self._list(key.kind)
        matching = self.index.matching(key)
        if not matching:
            return None, []
        built = key.build(self.prefix)

        def rank(obj: objects.Object) -> tuple[int, str, str]:
            return (0 if obj.synced_key == built else 1, obj.created, obj.name)

        matching.sort(key=rank)
        return matching[0], matching[1:]

    async def sync_key(
        self,
        key: keys.Key,
        *,
        name: str | None = None,
        handler: bool = False,
        seen: typed.Entry | Unread | None = UNREAD,
        given: dict[str, Any] | None = None,
    ) -> Outcome:
        """Make the object and the etcd key agree. `name`: the object a handler was called for,
        `given`: its body (spares reading it should its spec be written to etcd).

        From the etcd side (`handler` False) an object being deleted is left to its
        finalizer's handler and looked at again later. `seen` is the key as a watch
        event just delivered it (None: deleted); it spares the first read from etcd.
        A newer value arrives as another event, and writes to etcd are guarded by
        mod_revision, so a stale `seen` can only cost a retry, never a lost write.
        """
        async with self._locks.hold(key):
            for _ in range(_ATTEMPTS):
                obj, duplicates = await self.find(key)
                named = name is not None and any(d.name == name for d in duplicates)
                if obj is not None and named:
                    raise Duplicate(f"{key.build(self.prefix)} is already mirrored by {obj.name}")
                if name is not None and (obj is None or obj.name != name):
                    return Outcome(decision.Skip("the object is gone"), None)
                if obj is not None and obj.deleting and not handler:
                    return Outcome(decision.Skip("being deleted"), obj, retry=True)
                hint = not isinstance(seen, Unread)
                if isinstance(seen, Unread):
                    entry = await self.store.get(key.build(self.prefix))
                else:
                    entry, seen = seen, UNREAD
                chosen = self._decide(key, obj, entry)
                if hint and isinstance(chosen, decision.DeleteObject):
                    # Deleting an object is never guarded by etcd's revision: a key the resync or a
                    # watch saw absent may have been written since (by this object's own create
                    # handler), so read it again before acting on its absence.
                    continue
                try:
                    obj = await self._act(key, obj, chosen, entry, given)
                except Conflict:
                    continue
                return Outcome(chosen, obj, retry=isinstance(chosen, decision.Release))
            raise Conflict(key.build(self.prefix), 0, "the key kept changing while being mirrored")

    def _decide(self, key: keys.Key, obj: objects.Object | None, entry: typed.Entry | None) -> decision.Decision:
        built = key.build(self.prefix)
        etcd = None if entry is None else decision.etcd_side(key, entry.mod_revision, entry.document, _error(entry))
        return decision.decide(None if obj is None else obj.side(key, self.prefix), etcd, built)

    async def _act(
        self,
        key: keys.Key,
        obj: objects.Object | None,
        chosen: decision.Decision,
        entry: typed.Entry | None,
        given: dict[str, Any] | None = None,
    ) -> objects.Object | None:
        built = key.build(self.prefix)
        context = logs.kv(key=built, object=None if obj is None else obj.name)
        match chosen:
            case decision.Create(spec=spec, revision=revision, digest=digest):
                created = await self._create(key, spec, _annotations(built, revision, digest))
                self.metrics.mirrored.labels("create").inc()
                obj = self.index.observe(key.kind, created, objects.Known(spec, key, digest))
                logger.info("Created object from etcd", extra=logs.kv(key=built, object=created["metadata"]["name"]))
            case decision.Patch(spec=spec, revision=revision, digest=digest, warning=warning):
                assert obj is not None
                annotations = _annotations(built, revision, digest)
                decided_on = obj
                if spec is None:
                    obj = await self._patch(key.kind, obj.name, {"metadata": {"annotations": annotations}})
                else:
                    # Guarded by the version the decision was made on: a user's change the index has not
                    # seen yet fails the patch and is decided again, never overwritten unannounced.
                    known = objects.Known(spec, key, digest)
                    obj = await self._patch(key.kind, obj.name, spec_patch(obj, spec, annotations), known)
                    self.metrics.mirrored.labels("patch").inc()
                if warning:
                    self.metrics.etcd_wins.inc()
                    await self.api.warn(decided_on.ref(), "EtcdWins", warning)
                    logger.warning("Reset object to etcd's value", extra=context)
            case decision.DeleteObject(warning=warning):
                assert obj is not None
                if warning:
                    self.metrics.etcd_wins.inc()
                    await self.api.warn(obj.ref(), "EtcdWins", warning)
                left = await self.api.delete(key.kind, obj.name)
                self.metrics.mirrored.labels("delete_object").inc()
                self.observe(key.kind, left, obj.name)
                logger.info("Deleted object: its etcd key is gone", extra=context)
                obj = None
            case decision.WriteKey(expect=expect):
                assert obj is not None
                obj = await self._write(key, obj, expect, entry, given)
                self.metrics.mirrored.labels("write_key").inc()
                logger.info("Wrote object to etcd", extra=context)
            case decision.DeleteKey(expect=expect):
                await self.store.delete(built, expect=expect)
                self.etcd_writes += 1
                self.metrics.mirrored.labels("delete_key").inc()
                logger.info("Deleted etcd key: its object was deleted", extra=context)
            case decision.Release(warning=warning):
                if warning and obj is not None:
                    self.metrics.etcd_wins.inc()
                    await self.api.warn(obj.ref(), "EtcdWins", warning)
            case decision.Skip(reason=reason, warn=True) if obj is not None:
                await self.api.warn(obj.ref(), "InvalidDocument", reason)
                logger.warning("Left object as it is: %s", reason, extra=context)
            case decision.Skip(reason=reason) if reason:
                logger.debug("Skipped: %s", reason, extra=context)
        return obj

    async def _create(self, key: keys.Key, spec: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
        body = {
            "apiVersion": resources.API_VERSION,
            "kind": resources.resource(key.kind).name,
            "metadata": {"name": names.object_name(key), "annotations": annotations},
            "spec": spec,
        }
        return await self.api.create(key.kind, startup.as_handled(body))

    async def _write(
        self,
        key: keys.Key,
        obj: objects.Object,
        expect: int,
        entry: typed.Entry | None,
        given: dict[str, Any] | None,
    ) -> objects.Object | None:
        """Write the object's spec to etcd: the spec of `given` if it is the version decided on, else
        the object's as read now (a newer one than decided on is decided again)."""
        kind = key.kind
        body = given
        if body is None or str((body.get("metadata") or {}).get("resourceVersion")) != obj.resource_version:
            try:
                body = await self.api.get(kind, obj.name)
            except kube.NotFound:
                self.index.forget(kind, obj.name)
                raise
            if self.index.observe(kind, body) != obj:
                raise Conflict(f"{kind.value} {obj.name}", 0, f"{kind.value} {obj.name} changed meanwhile")
        spec = body.get("spec") or {}
        value = decision.value_of(kind, spec, entry.document if entry is not None else None)
        revision = await self.store.apply([typed.Write(key.build(self.prefix), value, expect)])
        self.etcd_writes += 1
        annotations = _annotations(key.build(self.prefix), revision, decision.digest(kind, spec))
        return await self._patch(key.kind, obj.name, {"metadata": {"annotations": annotations}})

    async def _patch(
        self,
        kind: keys.Kind,
        name: str,
        patch: dict[str, Any] | list[dict[str, Any]],
        known: objects.Known | None = None,
    ) -> objects.Object | None:
        """A merge patch (a dict) or a JSON patch (a list of operations); the record of the result."""
        try:
            if isinstance(patch, list):
                patched = await self.api.patch_json(kind, name, patch)
            else:
                patched = await self.api.patch(kind, name, patch)
        except kube.NotFound:
            self.index.forget(kind, name)
            raise
        except ApiException as error:
            # 409: a guarded patch lost; 422: a JSON patch's test of the resourceVersion failed
            if error.status in (409, 422):  # decide again on a newer body
                raise Conflict(f"{kind.value} {name}", 0, f"{kind.value} {name} changed meanwhile") from None
            raise
        return self.index.observe(kind, patched, known)

    async def sync_status(self, key: keys.Key) -> None:
        """Write the object's status if what the agents report, or the generation mirrored, changed it.

        Whatever happened meanwhile, one write brings it to the latest: a burst of reports for one key
        while its last write is in flight is one more write (the queue holds the key once), not one each.
        """
        obj, _ = await self.find(key)
        if obj is None or obj.deleting:
            return
        wanted = {**self.view.status_for(key), "observedGeneration": obj.observed_generation}
        if _mirrored(key, obj, self.prefix):
            wanted["observedGeneration"] = obj.generation
        if objects.status_fingerprint(key.kind, wanted) != obj.status:
            try:
                self.observe(key.kind, await self.api.patch_status(key.kind, obj.name, wanted))
            except kube.NotFound:
                self.index.forget(key.kind, obj.name)
                raise


def _mirrored(key: keys.Key, obj: objects.Object, prefix: str) -> bool:
    """The object's current spec is the one last synced with etcd (its digest annotation says so)."""
    return obj.synced_key == key.build(prefix) and obj.digest is not None and obj.digest == obj.synced_digest


def _error(entry: typed.Entry) -> str | None:
    return str(entry.error) if entry.error is not None else None
