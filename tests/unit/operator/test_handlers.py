"""Which watch events reach the operator's index handler, decided by Kopf's own handler matching."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import kopf
from kopf._cogs.structs import references
from kopf._core.intents import causes

from discoverd.operator import handlers, reconciler, startup
from discoverd.schema import keys, resources

KIND = keys.Kind.INSTANCE


def body(rv: int) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "ServiceInstance",
        "metadata": {"name": "web.i1", "resourceVersion": str(rv), "generation": 1},
        "spec": {"service": "web", "id": "i1", "serviceVersion": "1.0"},
    }


def index_handlers(r: reconciler.Reconciler, event_type: str, raw: dict[str, Any]) -> list[str]:
    """The ids of the watching handlers Kopf would call for this event (Kopf's matching, our `when`)."""
    plural = resources.resource(KIND).plural
    cause = causes.WatchingCause(
        resource=references.Resource(resources.GROUP, resources.VERSION, plural, kind="ServiceInstance"),
        indices={},
        logger=logging.getLogger(__name__),
        patch=kopf.Patch(),
        memo=kopf.Memo(reconciler=r),
        body=kopf.Body(raw),  # type: ignore[arg-type]
        type=event_type,  # type: ignore[arg-type]
        event={"type": event_type, "object": raw},  # type: ignore[typeddict-item]
    )
    found = startup.registry._watching.get_handlers(cause=cause)
    assert all(h.fn is handlers.on_event for h in found)
    return [str(h.id) for h in found]


def test_only_versions_the_index_lacks_and_deletions_reach_the_index_handler() -> None:
    r = reconciler.Reconciler(SimpleNamespace(prefix="/p"), None)  # type: ignore[arg-type]  # only the index is used
    assert index_handlers(r, "ADDED", body(5)) == ["index"]  # a user's new object
    r.index.observe(KIND, body(5))  # what the mirror's own create returned
    assert index_handlers(r, "ADDED", body(5)) == []  # its echo: Kopf skips the handler
    assert index_handlers(r, "MODIFIED", body(6)) == ["index"]  # a user's change since
    assert index_handlers(r, "DELETED", body(5)) == ["index"]  # a deletion always
