"""What to do for one key: the decision table (etcd wins) and the normal forms it compares; pure, no I/O.

`reconciler.Reconciler` reads both sides of a key, asks `decide()` here, and
carries the decision out.

Each object carries three annotations: the etcd key it mirrors, the key's
`mod_revision` it was last synced with, and a digest of its spec as of that
sync. A spec whose digest differs from the recorded one was changed by a
user; an etcd key whose revision differs from the recorded one was changed
in etcd. `decide()` turns (object, etcd entry) into one `Decision`:

| object                  | etcd                    | decision                                  |
| ----------------------- | ----------------------- | ----------------------------------------- |
| none                    | valid document          | create the object                         |
| unchanged by the user   | same revision           | nothing                                   |
| unchanged by the user   | newer revision          | update the object (or only annotations)   |
| unchanged by the user   | key gone                | delete the object                         |
| new (never synced)      | key absent              | create the key (must not exist)           |
| new or changed          | same content            | record the revision (adopt)               |
| changed by the user     | same revision           | write the key, guarded by that revision   |
| changed by the user     | newer revision / gone   | etcd wins: reset or delete, Warning event |
| being deleted, synced   | same revision           | delete the key, guarded, then release     |
| being deleted           | otherwise               | release (the key stays; Warning if newer) |
| not being deleted       | newer, invalid document | nothing; Warning event naming key, field  |

Digests are of normalized documents (the spec pruned as the API server
prunes it, validated into the model with every default filled in), so a
reformatted or re-sent spec that means the same never causes a write.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pydantic

from discoverd.errors import InvalidDocument
from discoverd.schema import crd, documents, keys, resources, untrusted

__all__ = [
    "ANNOTATION_DIGEST",
    "ANNOTATION_KEY",
    "ANNOTATION_REVISION",
    "Create",
    "Decision",
    "DeleteKey",
    "DeleteObject",
    "EtcdSide",
    "ObjectSide",
    "Patch",
    "Refuse",
    "Release",
    "Skip",
    "WriteKey",
    "decide",
    "digest",
    "etcd_side",
    "examine",
    "key_of_spec",
    "spec_of",
    "value_of",
]

ANNOTATION_KEY = f"{resources.GROUP}/key"
ANNOTATION_REVISION = f"{resources.GROUP}/mod-revision"
ANNOTATION_DIGEST = f"{resources.GROUP}/spec-digest"


@functools.cache
def _spec_schema(kind: keys.Kind) -> dict[str, Any]:
    return crd.spec_schema(kind)


def _validate_spec(kind: keys.Kind, spec: dict[str, Any]) -> resources.Spec:
    try:
        return resources.spec_for(kind).model_validate(crd.prune(spec, _spec_schema(kind)))
    except pydantic.ValidationError as error:
        raise documents.validation_error(f"{kind.value} spec", error) from None


def digest(kind: keys.Kind, spec: dict[str, Any]) -> str:
    """A short hash of the spec's normalized document; InvalidDocument when the spec does not validate
    or holds text Kubernetes cannot store (a lone surrogate would come back as U+FFFD, and the changed
    spec would then be written back to etcd), or when its etcd value would be over the size limit."""
    return _digest(kind, _validate_spec(kind, spec))


def examine(kind: keys.Kind, spec: dict[str, Any]) -> tuple[keys.Key | None, str | None, str | None]:
    """The key a spec names, its digest, and why it cannot be mirrored (key None: it does not
    validate; digest None: it names a key but cannot be mirrored, e.g. over the size limit)."""
    try:
        validated = _validate_spec(kind, spec)
        key = resources.to_document(validated).key
    except InvalidDocument as problem:
        return None, None, str(problem)
    try:
        return key, _digest(kind, validated), None
    except InvalidDocument as problem:
        return key, None, str(problem)


def _digest(kind: keys.Kind, validated: resources.Spec) -> str:
    try:  # the etcd value, encoded once: for its text and for its size
        _check_size(kind, documents.dumps(resources.to_document(validated).document))
    except UnicodeEncodeError as error:
        raise InvalidDocument(
            f"{kind.value} spec", "", f"holds text that is not valid Unicode: {error.reason}"
        ) from None
    canonical = json.dumps(validated.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def key_of_spec(kind: keys.Kind, spec: dict[str, Any]) -> keys.Key:
    """The etcd key a spec names; InvalidDocument when it does not validate."""
    return resources.to_document(_validate_spec(kind, spec)).key


def spec_of(key: keys.Key, doc: documents.Document) -> dict[str, Any]:
    """The spec an object gets for the document at `key`, as the API server will store it."""
    return dict(crd.prune(resources.to_spec(key, doc), _spec_schema(key.kind)))


def value_of(kind: keys.Kind, spec: dict[str, Any], current: documents.Document | None) -> bytes:
    """The etcd value for a spec; top-level fields etcd has and the spec does not know are kept."""
    doc = resources.to_document(_validate_spec(kind, spec)).document
    extra = dict(current.model_extra or {}) if current is not None else {}
    if extra:
        doc = type(doc).model_validate({**extra, **documents.dump(doc)})
    return _check_size(kind, documents.dumps(doc))


def _check_size(kind: keys.Kind, value: bytes) -> bytes:
    """`value`, or InvalidDocument when it is over the size every reader of etcd refuses
    (a spec the API server stores could otherwise reach etcd and be refused by every agent)."""
    if len(value) > untrusted.MAX_VALUE_BYTES:
        raise InvalidDocument(
            f"{kind.value} spec",
            "spec",
            f"is {len(value)} bytes in etcd, over the limit of {untrusted.MAX_VALUE_BYTES} bytes",
        )
    return value


@dataclass(frozen=True)
class EtcdSide:
    """One configuration key as etcd has it."""

    revision: int
    spec: dict[str, Any] | None
    """The object's spec for this document; None when the document is invalid."""
    digest: str | None
    document: documents.Document | None = None
    error: str | None = None


@dataclass(frozen=True)
class ObjectSide:
    """One custom resource as the API server has it (`objects.Object.side`)."""

    name: str
    digest: str | None
    """Of the current spec; None when it does not validate (see `error`)."""
    revision: int | None
    """The annotated mod_revision it was last synced with, if any."""
    synced_digest: str | None
    deleting: bool = False
    error: str | None = None

    @property
    def synced(self) -> bool:
        return self.synced_digest is not None and self.revision is not None

    @property
    def changed(self) -> bool:
        """Changed by a user since the last sync (or never synced)."""
        return not self.synced or self.digest != self.synced_digest


def etcd_side(key: keys.Key, entry_revision: int, doc: documents.Document | None, error: str | None) -> EtcdSide:
    if doc is None:
        return EtcdSide(entry_revision, None, None, error=error or "invalid document")
    spec = spec_of(key, doc)
    try:
        return EtcdSide(entry_revision, spec, digest(key.kind, spec), doc)
    except InvalidDocument as problem:
        return EtcdSide(entry_revision, None, None, doc, error=str(problem))


# Decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """Nothing to write; `warn`: post `reason` on the object as a Warning event (etcd holds an invalid document)."""

    reason: str = ""
    warn: bool = False


@dataclass(frozen=True)
class Create:
    """Create the object from etcd."""

    spec: dict[str, Any]
    revision: int
    digest: str


@dataclass(frozen=True)
class Patch:
    """Set the object to etcd's value (`spec` None: only the annotations); Warning when etcd won."""

    spec: dict[str, Any] | None
    revision: int
    digest: str
    warning: str | None = None


@dataclass(frozen=True)
class DeleteObject:
    warning: str | None = None


@dataclass(frozen=True)
class WriteKey:
    """Write the object's spec to etcd if the key's mod_revision is still `expect` (0: absent)."""

    expect: int


@dataclass(frozen=True)
class DeleteKey:
    expect: int


@dataclass(frozen=True)
class Release:
    """Let a deleted object go without touching etcd."""

    warning: str | None = None


@dataclass(frozen=True)
class Refuse:
    """The object cannot be mirrored (invalid spec): a permanent error until it changes."""

    reason: str


Decision = Skip | Create | Patch | DeleteObject | WriteKey | DeleteKey | Release | Refuse

CONFLICT = "etcd changed {key} (now revision {revision}) after this object was made from revision {base}; etcd wins: the object was reset to etcd's value"
EXISTS = "{key} already exists in etcd with other content; etcd wins: the object was set to etcd's value"
GONE = "{key} was deleted from etcd while this object was changed; etcd wins: the object is deleted"
KEPT = "etcd changed {key} (now revision {revision}) after this object was made from revision {base}; the key was kept and the object will be re-created from etcd"


def _deleting(obj: ObjectSide, etcd: EtcdSide | None, key: str) -> Decision:
    if etcd is None or not obj.synced:
        return Release()
    if etcd.revision == obj.revision:
        return DeleteKey(obj.revision)
    return Release(KEPT.format(key=key, revision=etcd.revision, base=obj.revision))


def _changed(obj: ObjectSide, etcd: EtcdSide | None, key: str) -> Decision:
    """The user created or changed the object."""
    if etcd is None:
        return WriteKey(0) if not obj.synced else DeleteObject(GONE.format(key=key))
    if etcd.digest is not None and etcd.digest == obj.digest:
        return Patch(None, etcd.revision, etcd.digest)
    if obj.synced and etcd.revision == obj.revision:
        return WriteKey(etcd.revision)
    if etcd.spec is None or etcd.digest is None:
        return Skip(f"{key} holds an invalid document ({etcd.error}); the object is left as it is", warn=True)
    template = EXISTS if not obj.synced else CONFLICT
    return Patch(
        etcd.spec, etcd.revision, etcd.digest, template.format(key=key, revision=etcd.revision, base=obj.revision)
    )


def decide(obj: ObjectSide | None, etcd: EtcdSide | None, key: str) -> Decision:
    """What to do so the object and the etcd key agree (see the table in the module docstring)."""
    if obj is None:
        if etcd is None or etcd.spec is None or etcd.digest is None:
            return Skip("no object and no valid document")
        return Create(etcd.spec, etcd.revision, etcd.digest)
    if obj.deleting:
        return _deleting(obj, etcd, key)
    if obj.error is not None:
        return Refuse(obj.error)
    if obj.changed:
        return _changed(obj, etcd, key)
    if etcd is None:
        return DeleteObject()
    if etcd.revision == obj.revision:
        return Skip()
    if etcd.spec is None or etcd.digest is None:
        return Skip(f"{key} holds an invalid document ({etcd.error}); the object keeps the last valid one", warn=True)
    return Patch(None if etcd.digest == obj.digest else etcd.spec, etcd.revision, etcd.digest)
