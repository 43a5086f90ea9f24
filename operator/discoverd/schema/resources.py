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

from discoverd.schema import documents, keys, resource_status, rollouts

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
    "ServiceRolloutSpec",
    "ServiceVersionSpec",
    "Spec",
    "key_names",
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


class ServiceRolloutSpec(rollouts.RolloutBody):
    """A fleet rollout of one service to a new version: canary, pause, batches, automatic revert."""

    model_config = _STRICT

    service: documents.Segment


Spec = ServiceVersionSpec | ServiceInstanceSpec | ServerSpec | ServiceRolloutSpec


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
    names: tuple[tuple[str, str], ...]
    """The names that live in the etcd key: (spec field, `keys.Key` attribute), in key order."""
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
            (("id", "server"),),
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
            (("service", "service"), ("version", "version")),
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
            (("service", "service"), ("id", "instance")),
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
        Resource(
            keys.Kind.ROLLOUT,
            "servicerollouts",
            ("sro", "dsro"),
            ServiceRolloutSpec,
            resource_status.ServiceRolloutStatus,
            (("service", "service"),),
            (
                Column("Service", ".spec.service"),
                Column("Target", ".spec.toVersion"),
                Column("Phase", ".status.phase"),
                Column("Updated", ".status.updated", "integer"),
                Column("Healthy", ".status.healthy", "integer"),
                Column("Total", ".status.total", "integer"),
                _AGE,
                Column("Message", ".status.message", priority=1),
            ),
            "rollouts",
        ),
    )
}
"""Every custom-resource kind, by etcd key kind."""
_BY_SPEC = {r.spec: r for r in RESOURCES.values()}


def resource(kind: keys.Kind | str) -> Resource:
    """The registry entry for a key kind or a Kubernetes kind name; ValueError for anything else."""
    try:
        return RESOURCES[keys.Kind(kind)]
    except (KeyError, ValueError):
        known = ", ".join(sorted(r.name for r in RESOURCES.values()))
        raise ValueError(f"unknown kind {kind!r} (expected one of {known})") from None


@dataclass(frozen=True)
class Mapped:
    """A spec as etcd sees it: the key it lives at and the document stored there."""

    key: keys.Key
    document: documents.Document


def spec_for(kind: keys.Kind | str) -> type[Spec]:
    return resource(kind).spec


def to_document(spec: Spec) -> Mapped:
    """The etcd key and document a spec stands for.

    The names (`Resource.names`) go into the key; the rest is the document's body.
    A document with a `name` field gets the spec's `service` there (the seed's
    convention); fields the document requires and the spec left at their
    default are written out.
    """
    entry = _BY_SPEC[type(spec)]
    fields = {field for field, _ in entry.names}
    key = keys.Key(entry.kind, **{attr: getattr(spec, field) for field, attr in entry.names})
    model = documents.model_for(entry.kind)
    body = spec.model_dump(exclude=fields, exclude_unset=True)
    required = {n for n, f in model.model_fields.items() if f.is_required() and n not in body}
    body |= spec.model_dump(include=required & set(type(spec).model_fields))
    if "name" in model.model_fields:
        body["name"] = spec.service  # type: ignore[union-attr]
    return Mapped(key, model.model_validate(body))


def _known_fields(doc: documents.Document) -> dict[str, Any]:
    """camelCase fields of `doc` that a spec declares (unknown etcd fields stay in etcd only)."""
    extra = set(doc.model_extra or ())
    return doc.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"name", *extra})


def to_spec(key: keys.Key, doc: documents.Document) -> dict[str, Any]:
    """The camelCase spec (a plain dict, ready for the API) for the document at `key`."""
    entry = resource(key.kind)
    return {**{field: getattr(key, attr) for field, attr in entry.names}, **_known_fields(doc)}


def key_names(key: keys.Key) -> tuple[str, ...]:
    """The names a key holds for its resource, in key order (`web`, `1.0`)."""
    return tuple(getattr(key, attr) for _, attr in resource(key.kind).names)
