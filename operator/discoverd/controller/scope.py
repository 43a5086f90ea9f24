"""What the acting controller reads and watches: the rollouts, and the instances of those not settled.

A rollout needs (DESIGN section 2b):

- every rollout config and status, `services/<service>/rollout/...`;
- for a service whose rollout is not settled (`plan.settled`: it may start,
  go on, revert or be undone): its instance documents, the server documents
  that list them, those servers' `status/agent` keys and their reports of
  those instances.

Nothing else is held or decoded: with no rollout running, what the controller
keeps and what it decodes do not grow with the fleet. etcd reads and watches
by key prefix only, and a rollout key sits in the middle of
`services/<service>/`, so:

- **reading** (`read_all`, at one revision R): a skip scan of `services/`,
  asking etcd for the first key past a cursor (keys only, limit 1): it names
  the next service, whose `rollout/` range is read, and the cursor jumps past
  `services/<service>/`; two small requests per service, whatever the number
  of instances. For unsettled services, their `instances/` ranges, their
  listings (`services/<service>/servers/<server>`, `keys.listing`: each
  agent keeps one per service it has an instance of) and the keys of the
  servers these name, a range each, read in parallel: a rollout start reads
  what the service has, whatever the fleet's size. Listings are an index, the
  server documents stay the truth: when the documents read do not list every
  instance document (an agent that has not written its listing yet, an older
  agent, an instance no server lists), `servers/` is read whole with a
  filter (`wanted`): server documents that may list those services, then
  those servers' agent status and reports, are decoded; the rest of the
  range is skipped undecoded. That fallback grows with the fleet
  (bench/controller_scale.py); what is kept does not. A server that lists
  an instance another server also lists, but has written no listing, is not
  seen until its document changes (the `servers/` watch below).
- **watching** (one stream, from R+1): `services/`, always (only rollout
  keys and the instance documents of unsettled services are decoded: the
  others are configuration writes, not status traffic); `servers/` while any
  rollout is unsettled (the reports of listing servers; server documents
  decoded to see what they list; the rest dropped by key).

When a rollout becomes unsettled (a new config, an undo, a revert to do) or
a server document starts listing one of its instances, `_widen` reads what
that adds at the current revision R: the new service's instances, then the
servers its listings name and those already held, as above (or, failing
that, `servers/` again, a server document decoded only when its JSON names
an unsettled service (or holds an escape, which could hide one), its status
keys only after it); `servers/` is watched again from R+1 and the `services/`
watch ignores that service's instance events up to R, so nothing falls
between read and watch. When a rollout settles, what only it needed is
dropped, and with none left the `servers/` watcher is cancelled. A lost
watch reads it all again (`read_all`, the runtime kit's `Resync`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from discoverd import logs
from discoverd.controller import world
from discoverd.errors import InvalidDocument, printable
from discoverd.schema import documents, keys
from discoverd.store import watch
from discoverd.store.typed import Entry, Snapshot, Store

__all__ = ["Scope"]

log = logging.getLogger(__name__)

_PARALLEL = 16
"""Servers read at once when a rollout's listings name them (one small range each)."""


def _refs(entry: Entry | None, services: frozenset[str]) -> frozenset[tuple[str, str]]:
    """(service, instance) pairs a server document lists, of `services` only (none for an invalid one)."""
    if entry is None or not isinstance(entry.document, documents.Server):
        return frozenset()
    return frozenset((r.name, r.id) for r in entry.document.service_instances if r.name in services)


class Scope:
    """Keeps `world.entries` = what rollouts need (module docstring), on one watch stream."""

    def __init__(self, store: Store, world_: world.World) -> None:
        self.store = store
        self.world = world_
        root = keys.normalize_prefix(store.prefix) + "/"
        self._services = (root + "services/").encode()
        self._servers = (root + "servers/").encode()
        self._active: frozenset[bytes] = frozenset()
        """Unsettled services, as key bytes (`wanted` judges keys before they are decoded)."""
        self._listing: frozenset[bytes] = frozenset()
        """Servers whose documents list an instance of an unsettled service, as key bytes."""
        self._candidate = b""
        """While `servers/` is read: the last server whose document was wanted (its status keys follow)."""
        self._fresh: dict[str, int] = {}
        """Service -> the revision `_widen` read its instances at (older `services/` events are stale)."""
        self.watches: dict[bytes, int] = {}
        self.events = 0
        """Watch events decoded since the start (a debugging counter, logged with every read)."""
        self.reads = {"listed": 0, "all": 0}
        """How the servers of unsettled rollouts were found: from their listings, or by reading all of `servers/`."""

    # what is wanted, judged before decoding

    def wanted(self, key: bytes, value: bytes) -> bool:
        """Whether a put may matter to a rollout: it is decoded (read or watched) only then.

        While `servers/` is read (in key order: a server's document comes before its status keys),
        the status keys of a server are wanted only after its document was (`_candidate`).
        """
        if key.startswith(self._services):
            parts = key[len(self._services) :].split(b"/")
            if len(parts) < 2:
                return False
            return parts[1] == b"rollout" or (parts[1] == b"instances" and parts[0] in self._active)
        if not self._active or not key.startswith(self._servers):
            return False
        parts = key[len(self._servers) :].split(b"/")
        if len(parts) < 3:
            return False
        server = parts[0]
        if parts[1] == b"config":
            # A held server's document always (what it lists may change); another only if it may
            # list an unsettled service: its JSON then holds the name, quoted, unless escaped.
            if server in self._listing or b"\\" in value or any(b'"' + s + b'"' in value for s in self._active):
                self._candidate = server
                return True
            return False
        if server not in self._listing and server != self._candidate:
            return False
        return _report(parts, self._active)

    def _set(self, active: frozenset[str]) -> None:
        """`world` holds what the rollouts of `active` need: say so (and judge keys by it)."""
        self.world.covered = active
        self._active = frozenset(s.encode() for s in active)
        self._listing = _listing(self.world.entries, active)
        self._candidate = b""

    # reading

    async def read_all(self, stream: watch.Stream) -> None:
        """Read what rollouts need at one revision; watch from the next (replacing every watcher)."""
        for watch_id in self.watches.values():
            stream.cancel(watch_id)
        self.watches = {}
        found, revision, services = await self._rollouts()
        probe = world.World()
        probe.load(Snapshot(revision, found))
        active = probe.unsettled()
        # `world.covered` changes only once the world holds it all: a pass meanwhile skips new rollouts.
        self._active = frozenset(s.encode() for s in active)
        self._fresh = {}
        if active:
            found.update(await self._instances(active, revision))
            found.update(await self._servers_at(active, revision, found))
        self.world.load(Snapshot(revision, found))
        self._set(active)
        self.watches[self._services] = stream.add(self._services, keys.prefix_range_end(self._services), revision + 1)
        if active:
            self.watches[self._servers] = stream.add(self._servers, keys.prefix_range_end(self._servers), revision + 1)
        log.info(
            "Read rollouts",
            extra=logs.kv(
                revision=revision,
                services=services,
                rollouts=len(probe.rollouts()),
                unsettled=",".join(sorted(active)) or "-",
                keys=len(found),
                watches=len(self.watches),
            ),
        )

    async def _instances(self, services: Iterable[str], revision: int) -> Mapping[str, Entry]:
        heads = [keys.service_instances_prefix(self.store.prefix, s).encode() for s in sorted(services)]
        return (await self.store.read(((h, keys.prefix_range_end(h)) for h in heads), revision)).entries

    async def _servers_at(
        self, active: frozenset[str], revision: int, instances: Mapping[str, Entry], also: Iterable[str] = ()
    ) -> dict[str, Entry]:
        """What `active` needs of `servers/`, read at `revision` (`instances`: their instance documents).

        The servers named by the listings of `active` (and `also`: servers already held) are read
        one by one; when their documents list every instance in `instances`, that is all. An
        instance no server read lists (an agent that has not written its listing yet, an older
        agent, an instance listed nowhere) makes it read all of `servers/` (filtered), as before
        listings existed.
        """
        names = await self._listed(active, revision) | set(also)
        ranges = [
            (h, keys.prefix_range_end(h))
            for h in (keys.server_prefix(self.store.prefix, n).encode() for n in sorted(names))
        ]
        snapshot = await self.store.read(ranges, revision, where=self._wanted_of_server, parallel=_PARALLEL)
        needed = _needed(snapshot.entries, active)
        unlisted = _unlisted(instances, needed, active)
        if not unlisted:
            self.reads["listed"] += 1
            return needed
        self.reads["all"] += 1
        shown = sorted(unlisted)
        log.info(
            "Reading every server: instances no listing leads to",
            extra=logs.kv(
                revision=revision,
                count=len(shown),
                instances=",".join(f"{s}/{i}" for s, i in shown[:5]) + (",..." if len(shown) > 5 else ""),
            ),
        )
        self._listing, self._candidate = frozenset(), b""
        snapshot = await self.store.read(
            [(self._servers, keys.prefix_range_end(self._servers))], revision, where=self.wanted
        )
        return _needed(snapshot.entries, active)

    async def _listed(self, active: frozenset[str], revision: int) -> set[str]:
        """The servers whose listings say they list an instance of `active` (invalid names skipped)."""
        heads = [keys.listings_prefix(self.store.prefix, s).encode() for s in sorted(active)]
        snapshot = await self.store.read(((h, keys.prefix_range_end(h)) for h in heads), revision)
        names = set()
        for key in snapshot.entries:
            name = key.rsplit("/", 1)[1]
            reason = keys.segment_error(name)
            if reason is None:
                names.add(name)
            else:
                log.warning("Ignored a listing", extra=logs.kv(key=printable(key), reason=f"server name {reason}"))
        return names

    def _wanted_of_server(self, key: bytes, value: bytes) -> bool:
        """`wanted` for a range of one server's keys: its document and agent status, its reports of `active`.

        Judges each key alone (`Store.read` reads servers in parallel): whether the server lists
        what its reports are about is `_needed`'s business, after the document is decoded.
        """
        parts = key[len(self._servers) :].split(b"/")
        return len(parts) >= 3 and (parts[1] == b"config" or _report(parts, self._active))

    async def _widen(self, stream: watch.Stream, active: frozenset[str]) -> None:
        """More is needed (a rollout unsettled, a server listing one more instance): read just that.

        The instances of services new to the scope are read at the current revision R, then at R
        the servers their listings name and those already held (`_servers_at`, or all of
        `servers/`, filtered); `servers/` is watched again from R+1, and the `services/` watch,
        which goes on, has its events up to R for those instances ignored (`_fresh`).
        """
        w = self.world
        new = active - (w.covered or frozenset())
        self._active = frozenset(s.encode() for s in active)
        if self._servers in self.watches:
            stream.cancel(self.watches.pop(self._servers))
        held = {
            e.parsed.server for e in w.entries.values() if e.parsed is not None and e.parsed.kind is keys.Kind.SERVER
        }
        heads = [keys.service_instances_prefix(self.store.prefix, s).encode() for s in sorted(new)]
        snapshot = await self.store.read((h, keys.prefix_range_end(h)) for h in heads)
        for service in new:
            self._fresh[service] = snapshot.revision
        server_kinds = (keys.Kind.SERVER, keys.Kind.AGENT_STATUS, keys.Kind.INSTANCE_STATUS)
        kept = {
            k: e
            for k, e in w.entries.items()
            if e.parsed is not None
            and e.parsed.kind not in server_kinds
            and (e.parsed.kind is not keys.Kind.INSTANCE or e.parsed.service in active)
        }
        kept.update(_needed(snapshot.entries, active))
        w.entries = {**kept, **await self._servers_at(active, snapshot.revision, kept, held)}
        self._set(active)
        self.watches[self._servers] = stream.add(
            self._servers, keys.prefix_range_end(self._servers), snapshot.revision + 1
        )
        log.info(
            "Read unsettled rollouts",
            extra=logs.kv(
                revision=snapshot.revision,
                unsettled=",".join(sorted(active)),
                keys=len(w.entries),
                watches=len(self.watches),
            ),
        )

    def _stale(self, key: str, revision: int) -> bool:
        """An instance event the read in `_widen` already covers (the `services/` watch is behind it)."""
        if not self._fresh:
            return False
        try:
            parsed = keys.parse(self.store.prefix, key)
        except InvalidDocument:
            return False
        return (
            parsed is not None and parsed.kind is keys.Kind.INSTANCE and revision <= self._fresh.get(parsed.service, 0)
        )

    async def _rollouts(self) -> tuple[dict[str, Entry], int, int]:
        """Every rollout key, by a skip scan of `services/`; the revision read at; how many services."""
        end = keys.prefix_range_end(self._services)
        cursor = self._services
        revision = 0
        ranges: list[tuple[bytes, bytes]] = []
        while True:
            key, revision = await self.store.first_key(cursor, end, revision)
            if key is None:
                break
            name, slash, _ = key[len(self._services) :].partition(b"/")
            if not slash:
                cursor = key + b"\0"  # `services/<name>` itself: not a document
                continue
            head = self._services + name + b"/rollout/"
            ranges.append((head, keys.prefix_range_end(head)))
            cursor = keys.prefix_range_end(self._services + name + b"/")
        snapshot = await self.store.read(ranges, revision)
        return dict(snapshot.entries), snapshot.revision, len(ranges)

    # following the watch

    async def apply(self, stream: watch.Stream, events: list[watch.Event]) -> None:
        """Take a batch of events in; read again when the scope grew, drop what it no longer needs."""
        w = self.world
        active = w.covered or frozenset()
        grew = False
        for event in events:
            if isinstance(event, watch.Progress):
                continue
            self.events += 1
            w.revision = max(w.revision, event.revision)
            if self._stale(event.entry.key if isinstance(event, watch.Put) else event.key, event.revision):
                continue
            if isinstance(event, watch.Delete):
                gone = w.entries.pop(event.key, None)
                if gone is not None and gone.parsed is not None and gone.parsed.kind is keys.Kind.SERVER:
                    self._drop_server(gone.parsed.server)
                continue
            entry = event.entry
            parsed = entry.parsed
            if parsed is None:
                continue
            if parsed.kind is keys.Kind.SERVER:
                listed = _refs(entry, active)
                held = w.entries.get(entry.key)
                if listed:
                    grew = grew or held is None or not listed <= _refs(held, active)
                    w.entries[entry.key] = entry
                elif held is not None:
                    self._drop_server(parsed.server)
            elif _keeps(parsed, active, self._listing):
                w.entries[entry.key] = entry
        now = w.unsettled()
        if grew or now - active:
            await self._widen(stream, now)
        elif active - now:
            self._narrow(stream, now)

    def _drop_server(self, server: str) -> None:
        w = self.world
        for key in [k for k, e in w.entries.items() if e.parsed is not None and e.parsed.server == server]:
            del w.entries[key]
        self._listing = self._listing - {server.encode()}

    def _narrow(self, stream: watch.Stream, active: frozenset[str]) -> None:
        """Rollouts settled: drop what only they needed; with none left, stop watching `servers/`."""
        w = self.world
        keep = _needed(w.entries, active)
        dropped = len(w.entries) - len(keep)
        w.entries = keep
        self._set(active)
        self._fresh = {k: v for k, v in self._fresh.items() if k in active}
        if not active and self._servers in self.watches:
            stream.cancel(self.watches.pop(self._servers))
        log.info(
            "Dropped settled rollouts",
            extra=logs.kv(unsettled=",".join(sorted(active)) or "-", dropped=dropped, keys=len(w.entries)),
        )


def _keeps(parsed: keys.Key, active: frozenset[str], listing: frozenset[bytes]) -> bool:
    """Whether an entry other than a server document belongs in the world (`listing`: servers held)."""
    match parsed.kind:
        case keys.Kind.ROLLOUT | keys.Kind.ROLLOUT_STATUS:
            return True
        case keys.Kind.INSTANCE:
            return parsed.service in active
        case keys.Kind.AGENT_STATUS:
            return parsed.server.encode() in listing
        case keys.Kind.INSTANCE_STATUS:
            return parsed.service in active and parsed.server.encode() in listing
    return False


def _report(parts: list[bytes], active: frozenset[bytes]) -> bool:
    """Whether a server's key (`parts`: split after `servers/`, 3 or more) is its agent status or a report of `active`."""
    if parts[1] != b"status":
        return False
    return parts[2] == b"agent" or (parts[2] == b"instances" and len(parts) > 3 and parts[3] in active)


def _unlisted(
    instances: Mapping[str, Entry], servers: Mapping[str, Entry], active: frozenset[str]
) -> set[tuple[str, str]]:
    """(service, instance) of the instance documents in `instances` of `active` that no server document in `servers` lists."""
    listed: set[tuple[str, str]] = set()
    for e in servers.values():
        listed |= _refs(e, active)
    return {
        (e.parsed.service, e.parsed.instance)
        for e in instances.values()
        if e.parsed is not None and e.parsed.kind is keys.Kind.INSTANCE and e.parsed.service in active
    } - listed


def _listing(entries: Mapping[str, Entry], active: frozenset[str]) -> frozenset[bytes]:
    """Servers (key bytes) whose document in `entries` lists an instance of `active`."""
    return frozenset(
        e.parsed.server.encode()
        for e in entries.values()
        if e.parsed is not None and e.parsed.kind is keys.Kind.SERVER and _refs(e, active)
    )


def _needed(entries: Mapping[str, Entry], active: frozenset[str]) -> dict[str, Entry]:
    """Of `entries`, what the rollouts of `active` need (module docstring)."""
    listing = _listing(entries, active)
    kept: dict[str, Entry] = {}
    for key, e in entries.items():
        if e.parsed is None:
            continue
        if e.parsed.kind is keys.Kind.SERVER:
            if e.parsed.server.encode() in listing:
                kept[key] = e
        elif _keeps(e.parsed, active, listing):
            kept[key] = e
    return kept
