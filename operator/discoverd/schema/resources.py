"""Custom-resource kinds: the registry, the specs (camelCase, DESIGN section 4) and their mapping onto etcd documents.

`RESOURCES` is the one place a kind is declared: its etcd key kind (whose
value is also the Kubernetes kind), plural, short names, spec and status
models, printer columns and the word `discoverd get` takes. The operator's
handlers, reconciler, index and decision table, the CRD generator and the
CLI all look kinds up here (`resource(kind)`), so a new kind is one entry.

A spec is the document's body plus the names that, in etcd, live in the key:
`ServiceVersion` adds `service` (the document's `name`) and `version`;
`ServiceInstance` adds `service` and `id`; `Server` adds `id`. The body's
fields are declared once, in `documents`; these models only add the names.
The same YAML is what `discoverd apply -f` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from discoverd.schema import documents, keys, resource_status

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Column",
    "Mapped",
    "Resource",
    "ServerSpec",
    "ServiceInstanceSpec",
    "ServiceVersionSpec",
    "Spec",
    "resource",
    "spec_for",
    "to_document",
    "to_spec",
]

GROUP = "discoverd.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_STRICT = ConfigDict(extra="forbid")


class ServiceVersionSpec(documents.VersionBody):
    model_config = _STRICT

    service: documents.Segment
    version: documents.Segment


class ServiceInstanceSpec(documents.InstanceBody):
    model_config = _STRICT

    service: documents.Segment
    id: documents.Segment


class ServerSpec(documents.ServerBody):
    model_config = _STRICT

    id: documents.Segment
    service_instances: list[documents.InstanceRef] = Field(default_factory=list)


Spec = ServiceVersionSpec | ServiceInstanceSpec | ServerSpec


@dataclass(frozen=True)
class Column:
    """A printer column (`kubectl get`); priority 1 shows only with `-o wide`."""

    name: str
    path: str
    type: str = "string"
    priority: int = 0


_AGE = Column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Resource:
    """One custom-resource kind and everything that names or shapes it."""

    kind: keys.Kind
    """The etcd key kind; its value is the Kubernetes kind (`ServiceVersion`)."""
    plural: str
    short_names: tuple[str, ...]
    spec: type[Spec]
    status: type[BaseModel]
    columns: tuple[Column, ...]
    cli_name: str
    """What `discoverd get` calls them."""

    @property
    def name(self) -> str:
        """The Kubernetes kind."""
        return self.kind.value


RESOURCES: dict[keys.Kind, Resource] = {
    r.kind: r
    for r in (
        Resource(
            keys.Kind.SERVER,
            "servers",
            ("dsrv",),
            ServerSpec,
            resource_status.ServerStatus,
            (
                Column("ID", ".spec.id"),
                Column("Phase", ".status.phase"),
                Column("Instances", ".status.instances", "integer"),
                Column("Running", ".status.running", "integer"),
                Column("Hostname", ".status.hostname", priority=1),
                _AGE,
            ),
            "servers",
        ),
        Resource(
            keys.Kind.VERSION,
            "serviceversions",
            ("sv", "dsv"),
            ServiceVersionSpec,
            resource_status.ServiceVersionStatus,
            (
                Column("Service", ".spec.service"),
                Column("Version", ".spec.version"),
                Column("Instances", ".status.instances", "integer"),
                Column("Running", ".status.running", "integer"),
                _AGE,
            ),
            "versions",
        ),
        Resource(
            keys.Kind.INSTANCE,
            "serviceinstances",
            ("si", "dsi"),
            ServiceInstanceSpec,
            resource_status.ServiceInstanceStatus,
            (
                Column("Service", ".spec.service"),
                Column("ID", ".spec.id"),
                Column("Version", ".spec.serviceVersion"),
                Column("Phase", ".status.phase"),
                Column("Server", ".status.server"),
                Column("Restarts", ".status.restarts", "integer"),
                _AGE,
                Column("Current", ".status.version", priority=1),
                Column("Message", ".status.message", priority=1),
            ),
            "instances",
        ),
    )
}
"""Every custom-resource kind, by etcd key kind."""


def resource(kind: keys.Kind | str) -> Resource:
    """The registry entry for a key kind or a Kubernetes kind name; ValueError for anything else."""
    try:
        return RESOURCES[keys.Kind(kind)]
    except (KeyError, ValueError):
        known = ", ".join(sorted(r.name for r in RESOURCES.values()))
        raise ValueError(f"unknown kind {kind!r} (expected one of {known})") from None


_NAMES = {"service", "version", "id"}


@dataclass(frozen=True)
class Mapped:
    """A spec as etcd sees it: the key it lives at and the document stored there."""

    key: keys.Key
    document: documents.Document


def spec_for(kind: keys.Kind | str) -> type[Spec]:
    return resource(kind).spec


def to_document(spec: Spec) -> Mapped:
    """The etcd key and document a spec stands for."""
    body = spec.model_dump(exclude=_NAMES, exclude_unset=True)
    if isinstance(spec, ServiceVersionSpec):
        key = keys.Key(keys.Kind.VERSION, service=spec.service, version=spec.version)
        doc: documents.Document = documents.Version.model_validate({"name": spec.service, **body})
    elif isinstance(spec, ServiceInstanceSpec):
        key = keys.Key(keys.Kind.INSTANCE, service=spec.service, instance=spec.id)
        doc = documents.Instance.model_validate({"name": spec.service, **body})
    else:
        key = keys.Key(keys.Kind.SERVER, server=spec.id)
        doc = documents.Server.model_validate({"service_instances": [], **body})
    return Mapped(key, doc)


def _known_fields(doc: documents.Document) -> dict[str, Any]:
    """camelCase fields of `doc` that a spec declares (unknown etcd fields stay in etcd only)."""
    extra = set(doc.model_extra or ())
    return doc.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"name", *extra})


def to_spec(key: keys.Key, doc: documents.Document) -> dict[str, Any]:
    """The camelCase spec (a plain dict, ready for the API) for the document at `key`."""
    match key.kind:
        case keys.Kind.VERSION:
            return {"service": key.service, "version": key.version, **_known_fields(doc)}
        case keys.Kind.INSTANCE:
            return {"service": key.service, "id": key.instance, **_known_fields(doc)}
        case keys.Kind.SERVER:
            return {"id": key.server, **_known_fields(doc)}
    raise ValueError(f"{key.kind} has no custom resource")
