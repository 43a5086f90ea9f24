"""Kopf's registry and settings, set in one startup function (our API group for everything Kopf stores).

Kopf keeps a finalizer, its progress and the last handled configuration on
each object; all of them are named under `discoverd.io` so nothing of
Kopf's defaults (`kopf.zalando.org`) appears on our objects. The last handled
configuration is a hash of the spec (`SpecDiffBase`): the handlers react to
spec changes only and never read Kopf's `old`, `new` or `diff`. The operator
runs standalone (one replica, `strategy: Recreate`: Kopf's peering is not
leader election) and with cluster scanning off, so it needs no cluster-wide
rights (docs/kubernetes.md lists the RBAC).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from discoverd.schema import resources

__all__ = [
    "DIFFBASE",
    "FINALIZER",
    "LEGACY_DIFFBASE",
    "SpecDiffBase",
    "as_handled",
    "configure",
    "in_cluster_server",
    "login",
    "registry",
    "spec_hash",
]

FINALIZER = f"{resources.GROUP}/mirror"
PAGE = 500
"""Objects per page of Kopf's lists (as `kube.PAGE` for the mirror's)."""
LEGACY_DIFFBASE = f"{resources.GROUP}/last-handled-configuration"
"""Kopf's own diff base (a JSON copy of the spec, labels and annotations), on objects of older operators."""


def spec_hash(spec: Any) -> str:
    """A short hash of a spec as the API server returned it (no spec and an empty one are alike)."""
    text = json.dumps(spec or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class SpecDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's last handled configuration as a hash of the spec, in `discoverd.io/handled-spec`.

    Kopf's own storage keeps a JSON copy of the spec, labels and annotations on every
    object (twice: the annotation's text, and the copy Kopf's change detection makes
    of each body it sees). The handlers need to know only whether the spec changed
    since it was last handled (`on.update(field="spec")`; they never read `old`, `new`
    or `diff`), which a hash of the spec tells as well; labels and annotations are
    no longer part of it, so changing them calls no handler and writes nothing.
    An object handled by an operator before this one (`LEGACY_DIFFBASE`) is compared
    by the hash of the spec in that annotation, so an upgrade calls no handler; the
    old annotation is dropped the next time Kopf stores this one.
    """

    def __init__(self) -> None:
        super().__init__(prefix=resources.GROUP, key="handled-spec")

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {"spec": spec_hash(body.get("spec"))})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        annotations = body.metadata.annotations
        for full_key in self.make_keys(self.key, body=body):
            if value := annotations.get(full_key):
                return cast(kopf.BodyEssence, {"spec": value.strip()})
        try:
            legacy = json.loads(annotations.get(LEGACY_DIFFBASE) or "null")
        except ValueError:
            return None
        if not isinstance(legacy, dict):
            return None
        return cast(kopf.BodyEssence, {"spec": spec_hash(legacy.get("spec"))})

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        for full_key in self.make_keys(self.key, body=body):
            patch.metadata.annotations[full_key] = str(essence.get("spec", ""))
        if LEGACY_DIFFBASE in body.metadata.annotations:
            patch.metadata.annotations[LEGACY_DIFFBASE] = None
        self._store_marker(prefix=self.prefix, patch=patch, body=body)


DIFFBASE = SpecDiffBase()
registry = kopf.OperatorRegistry()


def as_handled(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as Kopf leaves a new object once its creation is handled: our finalizer, the last
    handled configuration (made by the diff-base storage Kopf uses) and Kopf's marker.

    The mirror creates its objects this way. Otherwise Kopf patches each one twice
    right after the create (the finalizer, then the configuration), only to call
    the create handler, which finds the object in sync: two of every three API
    writes when etcd adds keys (bench/operator_mirror.py). Should the stored
    object differ (the API server changed the spec), Kopf sees a change and
    handles it as usual.

    The annotations are made by the diff-base storage (`DIFFBASE.store`, which also
    adds Kopf's `kopf-managed` marker); only the finalizer is added by hand, which
    is Kopf's internal behaviour. This is the one place that knows it:
    `test_created_objects_look_handled_to_kopf` runs Kopf's own change detection on
    the result and fails when Kopf changes its format.
    """
    metadata = dict(body.get("metadata") or {})
    metadata["finalizers"] = [*(metadata.get("finalizers") or []), FINALIZER]
    handled = {**body, "metadata": metadata}
    essence = str(DIFFBASE.build(body=kopf.Body(cast(kopf.RawBody, handled))).get("spec", ""))
    stored = {name: essence if value == _ESSENCE else value for name, value in _stored_annotations()}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **stored}
    return handled


_ESSENCE = "\0essence\0"


@functools.cache
def _stored_annotations() -> tuple[tuple[str, str], ...]:
    """What `DIFFBASE.store` adds to a new object's annotations, `_ESSENCE` where the essence goes.

    Made once: Kopf's making of annotation names (`make_keys`, its marker) for every created
    object was half the cost of building its body (0.62 ms -> 0.30 ms per body).
    """
    patch = kopf.Patch()
    empty = kopf.Body(cast(kopf.RawBody, {"metadata": {}}))
    DIFFBASE.store(body=empty, patch=patch, essence=cast(kopf.BodyEssence, {"spec": _ESSENCE}))
    return tuple((str(k), str(v)) for k, v in patch["metadata"]["annotations"].items())


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: $KUBECONFIG (Kopf's own readers, no client library).

    In a pod, the API server is the one `KUBERNETES_SERVICE_HOST`/`_PORT` name, as for client-go's
    in-cluster configuration and the client library the mirror uses (`kube.py`). Kopf's reader
    always names `https://kubernetes.default.svc`, which needs the cluster's DNS: a pod on the host
    network (`operator.hostNetwork`) does not resolve it, nor does a cluster without DNS, and Kopf
    and the mirror would then talk to two different servers, or Kopf to none (it crash-looped so).
    """
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is None:
        info = kopf.login_with_kubeconfig(**kwargs)
    elif server := in_cluster_server(os.environ):
        info = dataclasses.replace(info, server=server)
    return info


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server a pod is given in its environment (client-go's `InClusterConfig`), or None."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _quiet_index(record: logging.LogRecord) -> bool:
    """Drop Kopf's "Handler 'index' succeeded." (one line per watch event, see handlers.on_event)."""
    return record.getMessage() != "Handler 'index' succeeded."


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Every Kopf setting the operator changes, with why."""
    settings.persistence.finalizer = FINALIZER
    logging.getLogger("kopf.objects").addFilter(_quiet_index)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=resources.GROUP)
    settings.persistence.diffbase_storage = DIFFBASE
    settings.peering.standalone = True
    # Only our own namespace: no CRD or namespace scanning, hence no cluster-wide RBAC.
    settings.scanning.disabled = True
    # Events only for problems: an INFO event per handled change would be API writes for nothing.
    # Kopf 1.45 posts only explicit kopf.event() calls unless `loggers` is on; we want its own
    # warnings and errors about an object (a handler failing permanently: a second object for a
    # key already mirrored) to reach `kubectl describe` as events too.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # Ask the API server to end idle watches after 5 minutes and reconnect, so a watch silently
    # dropped by a proxy or load balancer is noticed; the client gives up a little later.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # A user's change reaches etcd within a second: retry temporary failures quickly.
    settings.execution.max_workers = 8
    # Fleet scale: Kopf lists in pages (by default one response of every object, held until all are
    # dispatched), and a worker per object (holding its last body) ends 1 s after its last event,
    # not 5 s: at start-up every object has one at once (bench/operator_mirror.py, restart).
    settings.watching.chunk_size = PAGE
    settings.queueing.idle_timeout = 1.0
