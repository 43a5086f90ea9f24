"""Thin Kopf handlers: a user's create, change or delete of an object goes to `sync.Mirror`.

The same two functions serve all three kinds, and `on_event` keeps the
mirror's index of objects (`objects.Index`) current from Kopf's watch, so
finding the object for a key never lists. Errors are translated here:
an invalid or duplicate object is permanent (Kopf stops retrying until it
changes), an unreachable etcd or a lost compare-and-swap is temporary.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from discoverd.errors import Conflict, InvalidDocument, StoreUnavailable
from discoverd.operator import mirror, startup, sync
from discoverd.schema import resources

_KINDS = {name: model.kind for name, model in resources.KINDS.items()}

__all__ = ["on_change", "on_delete", "on_event"]


async def _sync(body: kopf.Body, memo: Any, *, deleting: bool) -> mirror.Decision | None:
    m: sync.Mirror = memo["mirror"]
    m.observe(_KINDS[body["kind"]], dict(body))
    try:
        key = m.key_of(body["kind"], dict(body))
        return (await m.sync_key(key, name=body.metadata.name, handler=True)).decision
    except (InvalidDocument, sync.Duplicate) as error:
        if deleting:
            return None  # never mirrored: nothing in etcd to delete
        raise kopf.PermanentError(str(error)) from None
    except StoreUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=error.retry_after) from None
    except Conflict as error:
        raise kopf.TemporaryError(str(error), delay=1) from None


async def on_change(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Created, changed (spec) or found at start-up: write it to etcd, or reset it to etcd's value."""
    decision = await _sync(body, memo, deleting=False)
    if isinstance(decision, mirror.Refuse):
        raise kopf.PermanentError(decision.reason)


async def on_delete(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Deleted: delete the etcd key if it is still what the object was made from (the finalizer waits)."""
    await _sync(body, memo, deleting=True)


async def on_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Every object Kopf's watch sees (listed, added, changed, deleted) goes into the index."""
    m: sync.Mirror = memo["mirror"]
    body = event["object"]
    kind = _KINDS[body["kind"]]
    if event["type"] == "DELETED":
        m.index.forget(kind, body["metadata"]["name"])
    else:
        m.observe(kind, dict(body))


for _model in resources.KINDS.values():
    _where = (resources.GROUP, resources.VERSION, resources.PLURALS[_model.kind])
    kopf.on.create(*_where, registry=startup.registry, id="mirror")(on_change)
    kopf.on.update(*_where, registry=startup.registry, id="mirror", field="spec")(on_change)
    kopf.on.resume(*_where, registry=startup.registry, id="mirror")(on_change)
    kopf.on.delete(*_where, registry=startup.registry, id="mirror")(on_delete)
    kopf.on.event(*_where, registry=startup.registry, id="index")(on_event)
