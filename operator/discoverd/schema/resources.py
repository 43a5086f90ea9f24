"""Custom-resource specs (camelCase, DESIGN section 4) and their mapping onto etcd documents.

A spec is the document's body plus the names that, in etcd, live in the key:
`ServiceVersion` adds `service` (the document's `name`) and `version`;
`ServiceInstance` adds `service` and `id`; `Server` adds `id`. The body's
fields are declared once, in `documents`; these models only add the names.
The same YAML is what `discoverd apply -f` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from discoverd.schema import documents, keys

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "PLURALS",
    "VERSION",
    "Mapped",
    "ServerSpec",
    "ServiceInstanceSpec",
    "ServiceVersionSpec",
    "Spec",
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
    kind: ClassVar[keys.Kind] = keys.Kind.VERSION

    service: documents.Segment
    version: documents.Segment


class ServiceInstanceSpec(documents.InstanceBody):
    model_config = _STRICT
    kind: ClassVar[keys.Kind] = keys.Kind.INSTANCE

    service: documents.Segment
    id: documents.Segment


class ServerSpec(documents.ServerBody):
    model_config = _STRICT
    kind: ClassVar[keys.Kind] = keys.Kind.SERVER

    id: documents.Segment
    service_instances: list[documents.InstanceRef] = Field(default_factory=list)


Spec = ServiceVersionSpec | ServiceInstanceSpec | ServerSpec

KINDS: dict[str, type[Spec]] = {
    "ServiceVersion": ServiceVersionSpec,
    "ServiceInstance": ServiceInstanceSpec,
    "Server": ServerSpec,
}
PLURALS: dict[keys.Kind, str] = {
    keys.Kind.VERSION: "serviceversions",
    keys.Kind.INSTANCE: "serviceinstances",
    keys.Kind.SERVER: "servers",
}
_NAMES = {"service", "version", "id"}


@dataclass(frozen=True)
class Mapped:
    """A spec as etcd sees it: the key it lives at and the document stored there."""

    key: keys.Key
    document: documents.Document


def spec_for(kind: str) -> type[Spec]:
    try:
        return KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise ValueError(f"unknown kind {kind!r} (expected one of {known})") from None


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
