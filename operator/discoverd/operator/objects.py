"""The operator's objects by etcd key: a cache kept from Kopf's watch and from our own writes.

Finding the object for a key used to list every object of its kind, once per
etcd event: fine for tens of objects, quadratic for thousands (5,000 keys in
one etcd transaction took hours). The index is loaded by one list per kind
(at start-up and at every resync) and then kept current by

- Kopf's watch: an `on.event` handler observes every added, changed and
  deleted object (`handlers.py`);
- our own writes: the bodies the API server returns from create, patch and
  delete are observed as soon as the call returns, so the next etcd event for
  the same key finds the object just created (never a second create).

A body never replaces a newer one of the same object (resourceVersions are
compared as etcd revisions, which is what the API server uses). The index can
lag a user's change by the watch delay; so could the list it replaces, and
every etcd write stays guarded by the key's mod_revision.

The index keeps an `Object` per object, never its body: what the mirror
decides on (the spec's digest and the key it names, the three sync
annotations, the deletion mark), what guards and reports a write (name, uid,
resourceVersion, generation) and a fingerprint of the status. A body
(managedFields, Kopf's annotations, the spec and status as nested dicts) is
about 10 KiB in Python; an `Object` under 1 KiB (bench/README.md, figure 4).
The spec is digested once per generation (the API server bumps it on every
spec change and on nothing else), the status once per resourceVersion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discoverd.operator import decision, status
from discoverd.schema import keys, resources

__all__ = ["Index", "Known", "Object", "status_fingerprint"]


def _number(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def status_fingerprint(kind: keys.Kind, value: dict[str, Any]) -> bytes:
    """A short hash of a status as `status.normalized` leaves it: equal for statuses that compare equal."""
    text = json.dumps(status.normalized(kind, value), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Known:
    """A spec we just wrote, with the key it names and its digest (from the etcd side of a decision)."""

    spec: dict[str, Any]
    key: keys.Key
    digest: str


@dataclass(frozen=True, slots=True)
class Object:
    """What the mirror keeps of one object (see the module docstring)."""

    kind: keys.Kind
    name: str
    uid: str
    resource_version: str
    generation: int | None
    created: str
    """creationTimestamp: the oldest of several objects naming one key is the one mirrored."""
    deleting: bool
    annotated: bool
    """It has an annotations map (a JSON patch adds our annotations to it, or makes it)."""
    key: keys.Key | None
    """The etcd key its spec names; None when the spec does not validate (see `error`)."""
    digest: str | None
    error: str | None
    synced_key: str | None
    synced_revision: str | None
    synced_digest: str | None
    status: bytes
    """`status_fingerprint` of its status."""
    observed_generation: int | None

    @classmethod
    def of(
        cls, kind: keys.Kind, body: dict[str, Any], previous: Object | None = None, known: Known | None = None
    ) -> Object:
        """The record of `body`; the spec's key and digest are taken from `previous` when its generation
        is the same (the spec is unchanged), or from `known` when the spec is the one it names (what we
        just wrote); the status fingerprint from `previous` when the resourceVersion is the same."""
        metadata = body.get("metadata") or {}
        annotations = metadata.get("annotations")
        generation = _number(metadata.get("generation"))
        rv = str(metadata.get("resourceVersion") or "")
        if previous is not None and generation is not None and previous.generation == generation:
            key, digest, error = previous.key, previous.digest, previous.error
        elif known is not None and body.get("spec") == known.spec:
            key, digest, error = known.key, known.digest, None
        else:
            key, digest, error = decision.examine(kind, body.get("spec") or {})
        value = body.get("status") or {}
        if previous is not None and previous.resource_version == rv and rv:
            fingerprint = previous.status
        else:
            fingerprint = _EMPTY[kind] if not value else status_fingerprint(kind, value)
        synced_digest = (annotations or {}).get(decision.ANNOTATION_DIGEST)
        return cls(
            kind=kind,
            name=str(metadata.get("name") or ""),
            uid=str(metadata.get("uid") or ""),
            resource_version=rv,
            generation=generation,
            created=str(metadata.get("creationTimestamp") or ""),
            deleting=bool(metadata.get("deletionTimestamp")),
            annotated=annotations is not None,
            key=key,
            digest=digest,
            error=error,
            synced_key=(annotations or {}).get(decision.ANNOTATION_KEY),
            synced_revision=(annotations or {}).get(decision.ANNOTATION_REVISION),
            synced_digest=digest if synced_digest == digest else synced_digest,  # one string, not two
            status=fingerprint,
            observed_generation=_number(value.get("observedGeneration")) if isinstance(value, dict) else None,
        )

    @property
    def revision(self) -> int | None:
        """The resourceVersion as a number (the API server's etcd revision), None if it is not one."""
        return _number(self.resource_version) if self.resource_version else None

    def side(self, key: keys.Key, prefix: str) -> decision.ObjectSide:
        """The object as `decision.decide` sees it for `key`; annotations for another key count as absent."""
        ours = self.synced_key == key.build(prefix)
        revision_text = (self.synced_revision or "") if ours else ""
        return decision.ObjectSide(
            name=self.name,
            digest=self.digest,
            revision=int(revision_text) if revision_text.isdigit() else None,
            synced_digest=self.synced_digest if ours else None,
            deleting=self.deleting,
            error=self.error,
        )

    def ref(self) -> dict[str, Any]:
        """Enough of a body to name the object in an Event (`kube.Api.warn`)."""
        return {
            "kind": self.kind.value,
            "metadata": {"name": self.name, "uid": self.uid, "resourceVersion": self.resource_version},
        }


_EMPTY = {kind: status_fingerprint(kind, {}) for kind in resources.RESOURCES}


class Index:
    """Objects of one namespace by kind and name, and the names naming each etcd key."""

    def __init__(self) -> None:
        self._objects: dict[keys.Kind, dict[str, Object]] = {}
        self._names: dict[keys.Key, tuple[str, ...]] = {}
        """The names of the objects naming each key: one in a fleet, more only for duplicates."""
        self._loaded: set[keys.Kind] = set()
        self._loading: defaultdict[keys.Kind, asyncio.Lock] = defaultdict(asyncio.Lock)

    def loaded(self, kind: keys.Kind) -> bool:
        return kind in self._loaded

    def lock(self, kind: keys.Kind) -> asyncio.Lock:
        """Held while `kind` is listed, so concurrent finds list it once."""
        return self._loading[kind]

    def load(self, kind: keys.Kind, bodies: list[dict[str, Any]], revision: int | None) -> None:
        """Merge a fresh list of `kind` taken at `revision`: what it lacks is gone, unless seen since."""
        listed = {body["metadata"]["name"] for body in bodies}
        for body in bodies:
            self.observe(kind, body)
        self.loaded_list(kind, listed, revision)

    def loaded_list(self, kind: keys.Kind, listed: set[str], revision: int | None) -> None:
        """A list of `kind` at `revision` named `listed` (each already observed): forget what it lacks."""
        for name, obj in list(self._objects.get(kind, {}).items()):
            seen = obj.revision
            if name not in listed and (revision is None or seen is None or seen <= revision):
                self._unlink(kind, name)
        self._loaded.add(kind)

    def observe(self, kind: keys.Kind, body: dict[str, Any], known: Known | None = None) -> Object | None:
        """An object as the API server returned or announced it (`known`: the spec we wrote it with);
        older versions are ignored. The record kept (None without a name)."""
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return None
        if (held := self.held(kind, body)) is not None:
            return held  # this very version is known (our write's result, then its watch event)
        old = self._objects.get(kind, {}).get(name)
        if old is not None:
            rv = str(body["metadata"].get("resourceVersion") or "")
            new_rv, old_rv = _number(rv), old.revision
            if new_rv is not None and old_rv is not None and new_rv < old_rv:
                return old
        obj = Object.of(kind, body, old, known)
        self._unlink(kind, name)
        self._store(obj)
        return obj

    def held(self, kind: keys.Kind, body: Mapping[str, Any]) -> Object | None:
        """The record of this very version of the object (same name and resourceVersion), if held."""
        metadata = body.get("metadata") or {}
        rv = str(metadata.get("resourceVersion") or "")
        old = self._objects.get(kind, {}).get(str(metadata.get("name") or ""))
        return old if old is not None and rv and rv == old.resource_version else None

    def get(self, kind: keys.Kind, name: str) -> Object | None:
        return self._objects.get(kind, {}).get(name)

    def forget(self, kind: keys.Kind, name: str) -> None:
        """The object is gone."""
        self._unlink(kind, name)

    def matching(self, key: keys.Key) -> list[Object]:
        """Every object whose spec names `key`."""
        objects = self._objects.get(key.kind, {})
        return [objects[name] for name in sorted(self._names.get(key, ())) if name in objects]

    def named_keys(self) -> set[keys.Key]:
        """The keys the objects name."""
        return set(self._names)

    def __len__(self) -> int:
        return sum(len(b) for b in self._objects.values())

    def _store(self, obj: Object) -> None:
        self._objects.setdefault(obj.kind, {})[obj.name] = obj
        if obj.key is not None:
            self._names[obj.key] = (*self._names.get(obj.key, ()), obj.name)

    def _unlink(self, kind: keys.Kind, name: str) -> None:
        obj = self._objects.get(kind, {}).pop(name, None)
        if obj is None or obj.key is None:
            return
        names = tuple(n for n in self._names.get(obj.key, ()) if n != name)
        if names:
            self._names[obj.key] = names
        else:
            self._names.pop(obj.key, None)
