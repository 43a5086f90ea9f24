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
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from discoverd.errors import InvalidDocument
from discoverd.operator import decision
from discoverd.schema import keys

__all__ = ["Index"]


def _revision(body: dict[str, Any]) -> int | None:
    try:
        return int(body.get("metadata", {}).get("resourceVersion", ""))
    except ValueError:
        return None


class Index:
    """Objects of one namespace by kind and name, and the names naming each etcd key."""

    def __init__(self) -> None:
        self._bodies: dict[keys.Kind, dict[str, dict[str, Any]]] = {}
        self._key: dict[tuple[keys.Kind, str], keys.Key] = {}
        self._names: defaultdict[keys.Key, set[str]] = defaultdict(set)
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
        for name, body in list(self._bodies.get(kind, {}).items()):
            seen = _revision(body)
            if name not in listed and (revision is None or seen is None or seen <= revision):
                self._unlink(kind, name)
        self._loaded.add(kind)

    def observe(self, kind: keys.Kind, body: dict[str, Any]) -> None:
        """An object as the API server returned or announced it; older versions are ignored."""
        name = body.get("metadata", {}).get("name")
        if not name:
            return
        old = self._bodies.get(kind, {}).get(name)
        if old is not None:
            new_rv, old_rv = _revision(body), _revision(old)
            if new_rv is not None and old_rv is not None and new_rv < old_rv:
                return
        key = self._key.get((kind, name)) if old is not None and old.get("spec") == body.get("spec") else None
        self._unlink(kind, name)
        self._store(kind, body, key)

    def forget(self, kind: keys.Kind, name: str) -> None:
        """The object is gone."""
        self._unlink(kind, name)

    def matching(self, key: keys.Key) -> list[dict[str, Any]]:
        """Every object whose spec names `key`."""
        bodies = self._bodies.get(key.kind, {})
        return [bodies[name] for name in sorted(self._names.get(key, ())) if name in bodies]

    def named_keys(self) -> set[keys.Key]:
        """The keys the objects name."""
        return set(self._names)

    def __len__(self) -> int:
        return sum(len(b) for b in self._bodies.values())

    def _store(self, kind: keys.Kind, body: dict[str, Any], key: keys.Key | None = None) -> None:
        """Index `body` under `key` (worked out from its spec unless the spec is unchanged)."""
        name = body["metadata"]["name"]
        self._bodies.setdefault(kind, {})[name] = body
        if key is None:
            try:
                key = decision.key_of_spec(kind, body.get("spec") or {})
            except InvalidDocument:
                return
        self._key[(kind, name)] = key
        self._names[key].add(name)

    def _unlink(self, kind: keys.Kind, name: str) -> None:
        self._bodies.get(kind, {}).pop(name, None)
        key = self._key.pop((kind, name), None)
        if key is not None:
            names = self._names[key]
            names.discard(name)
            if not names:
                del self._names[key]
