"""Thin Kopf handlers: a user's create, change or delete of an object goes to the `reconciler.Reconciler`.

The same functions serve every kind in `resources.RESOURCES`, and `on_event`
keeps the reconciler's index of objects (`objects.Index`) current from
Kopf's watch, so finding the object for a key never lists. Errors are
translated here: an invalid or duplicate object is permanent (Kopf stops
retrying until it changes), an unreachable etcd or a lost compare-and-swap
is temporary.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from discoverd.errors import Conflict, InvalidDocument, StoreUnavailable
from discoverd.operator import decision, reconciler, startup
from discoverd.schema import keys, resources

__all__ = ["on_change", "on_delete", "on_event", "unseen"]


async def _sync(body: kopf.Body, memo: Any, *, deleting: bool) -> decision.Decision | None:
    r: reconciler.Reconciler = memo["reconciler"]
    kind = resources.resource(body["kind"]).kind
    given = dict(body)
    r.observe(kind, given)
    try:
        key = r.key_of(kind, given)
        outcome = await r.sync_key(key, name=body.metadata.name, handler=True, given=given)
    except (InvalidDocument, reconciler.Duplicate) as error:
        if deleting:
            return None  # never mirrored: nothing in etcd to delete
        raise kopf.PermanentError(str(error)) from None
    except StoreUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=error.retry_after) from None
    except Conflict as error:
        raise kopf.TemporaryError(str(error), delay=1) from None
    if outcome.retry:
        r.retry(key)
    else:
        r.enqueue(key, config=False)  # its status: the generation just mirrored
    return outcome.decision


async def on_change(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Created or changed (spec), also while the operator was away: write it to etcd, or reset it to etcd's value.

    No resume handler: at start-up the resync (`etcd_to_k8s.resync`) queues the key of every object
    with the value etcd had, so an object nobody changed needs no handler. One would read its key
    from etcd, once per object at once: 20,000 reads timed out on a loaded machine, and each
    failure was a Kopf progress annotation written on the object (bench/operator_mirror.py).
    """
    chosen = await _sync(body, memo, deleting=False)
    if isinstance(chosen, decision.Refuse):
        raise kopf.PermanentError(chosen.reason)


async def on_delete(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Deleted: delete the etcd key if it is still what the object was made from (the finalizer waits)."""
    await _sync(body, memo, deleting=True)


async def on_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Every object Kopf's watch sees (listed, added, changed, deleted) goes into the index, but
    for versions it already holds (`unseen`: the echo of the mirror's own writes).

    A deleted object's key is reconciled again: if etcd still has it (the user's delete lost
    to a newer etcd value), the object is re-created.
    """
    r: reconciler.Reconciler = memo["reconciler"]
    body = event["object"]
    kind = resources.resource(body["kind"]).kind
    if event["type"] != "DELETED":
        r.observe(kind, dict(body))
        return
    r.index.forget(kind, body["metadata"]["name"])
    try:
        key: keys.Key | None = r.key_of(kind, dict(body))
    except InvalidDocument:
        key = None
    if key is not None:
        r.enqueue(key)


def unseen(event: kopf.RawEvent, memo: Any, **_: Any) -> bool:
    """Kopf's filter of `on_event`: a deletion, or a version of the object the index does not hold.

    Most events are the echo of the mirror's own writes, whose results the index already
    holds (`Index.observe` would return at once); filtered here, Kopf skips its handler
    machinery for them: 7 % of the operator's CPU per created object at 20,000 objects
    (bench/README.md, Figure 4).
    """
    body = event["object"]
    if event["type"] == "DELETED":
        return True
    r: reconciler.Reconciler = memo["reconciler"]
    return r.index.held(resources.resource(body["kind"]).kind, body) is None


for _resource in resources.RESOURCES.values():
    _where = (resources.GROUP, resources.VERSION, _resource.plural)
    kopf.on.create(*_where, registry=startup.registry, id="mirror")(on_change)
    kopf.on.update(*_where, registry=startup.registry, id="mirror", field="spec")(on_change)
    kopf.on.delete(*_where, registry=startup.registry, id="mirror")(on_delete)
    kopf.on.event(*_where, registry=startup.registry, id="index", when=unseen)(on_event)
