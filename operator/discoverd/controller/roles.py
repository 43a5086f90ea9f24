"""Server roles that follow assignment: the acting controller keeps each server's etcd role in step with its document.

As the kubelet's Node authorizer lets a node read only the Secrets of the pods
bound to it, a server's role (`store/auth.py` `server_grants`) reads only the
services and instances its server document lists and writes one status key per
listed instance. Assignments change, so the role has to follow:

- `diff(wanted, have)` is the decision, pure: what to grant (missing, or with
  another access) and what to revoke (held, no longer wanted), grants first so
  that nothing the agent still needs is ever missing in between.
- `Roles` is the controller's part. `load` and `observe` keep, from a read
  and watch of `servers/` of its own (`follow`, only while etcd auth is on:
  the rollouts need no fleet-wide view, see controller/scope.py), each
  server's listed instances and its status keys, and mark the servers whose server document or
  status keys changed; `step` brings the role of each marked server in step,
  and every `RESYNC` seconds reads from etcd which servers have a user and what
  their roles hold, then checks every one (what someone else changed is put
  right). Only roles of servers whose user exists are touched. `run` is its
  own task beside the rollouts, so a resync never delays a rollout step.

A removed instance loses its reads at once; the write on its status key goes
when the key is gone (its agent deleted it after stopping the instance, or the
agent's lease expired): etcd refuses every put on a lease, and its revocation,
while a key attached to it is not writable, so revoking first would stop the
agent's status altogether.

It needs etcd auth on (`auth.enabled`; off: it does nothing) and a controller
user with etcd's root role: etcd lets no other user read or change roles.
Without it, a warning says so once and nothing else changes (the rollouts go
on); `discoverd auth sync` does the same work once, from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from discoverd import logs, runtime
from discoverd.errors import PermissionDenied, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import auth, watch
from discoverd.store.typed import Entry, Store

__all__ = ["RESYNC", "Changes", "Roles", "diff", "sync_once"]

log = logging.getLogger(__name__)

RESYNC = 60.0
"""Seconds between full resyncs (users and roles read from etcd, every server checked)."""
_RETRY = runtime.RETRY_CAP
"""Seconds before trying again after etcd failed a step: the runtime kit's longest retry wait."""
_PARALLEL = 16
"""Roles read or changed at once during a resync."""

Range = tuple[bytes, bytes]


@dataclass(frozen=True)
class Changes:
    """What to do to one role: grant these (first), then revoke these ranges."""

    grant: tuple[auth.Grant, ...] = ()
    revoke: tuple[Range, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.grant or self.revoke)


def diff(wanted: Sequence[auth.Grant], have: Mapping[Range, auth.Access]) -> Changes:
    """The changes that make a role holding `have` hold exactly `wanted`.

    etcd keeps one permission per (key, range_end): granting a range again with another access
    replaces it, so a changed access is one grant, not a revoke and a grant.
    """
    by_range = {g.range(): g for g in wanted}
    # In `wanted`'s order (server_grants: reads before writes), so a new instance's documents become
    # readable before its status key writable.
    grant = tuple(g for r, g in by_range.items() if have.get(r) is not g.access)
    revoke = tuple(sorted(r for r in have if r not in by_range))
    return Changes(grant, revoke)


def _roles_need(key: bytes, value: bytes) -> bool:
    """Of `servers/`: server documents and instance status keys (not agent status)."""
    return key.endswith(b"/config/details") or b"/status/instances/" in key


def _server_of(parsed: keys.Key | None) -> str | None:
    if parsed is not None and parsed.kind in (keys.Kind.SERVER, keys.Kind.INSTANCE_STATUS):
        return parsed.server
    return None


class Roles:
    """Keeps server roles in step with server documents, from the controller's view of the prefix."""

    def __init__(self, store: Store, resync_every: float = RESYNC, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.prefix = store.prefix
        self.resync_every = resync_every
        self.clock = clock
        self.listed: dict[str, list[auth.Ref] | None] = {}
        """Server ID -> the instances its document lists (None: the document is invalid; absent: none)."""
        self.reported: dict[str, set[auth.Ref]] = {}
        """Server ID -> the instances it has status keys for."""
        self.roles: dict[str, auth.Permissions] = {}
        """Server ID (with a user) -> what its role holds, as last read or written."""
        self._unmanaged: set[str] = set()
        """Servers without a user at the last resync, or found without one since (not asked until the next)."""
        self._touched: set[str] = set()
        self._wake = asyncio.Event()
        self._next_resync = 0.0
        self.active = False
        """True while auth is on and this controller may change roles."""
        self._said: str | None = None
        self.changed = 0
        """Roles changed since the start (for logs, tests and the bench)."""

    # what the controller sees

    def load(self, entries: Iterable[Entry]) -> None:
        """The controller read the whole prefix (it just became the leader, or lost its watch): start over.

        The roles are read again too: while this copy was not acting, another may have changed them."""
        self.listed.clear()
        self.reported.clear()
        for entry in entries:
            self._note(entry.key, entry)
        self._touched = set(self.listed) | set(self.reported) | set(self.roles)
        self._next_resync = 0.0
        self._wake.set()

    def observe(self, batch: Iterable[watch.Event]) -> None:
        """A watch batch: note server documents and status keys that changed."""
        for event in batch:
            if isinstance(event, watch.Put):
                self._note(event.entry.key, event.entry)
            elif isinstance(event, watch.Delete):
                self._note(event.key, None)

    def _note(self, key: str, entry: Entry | None) -> None:
        parsed = entry.parsed if entry is not None else keys.parse(self.prefix, key)
        server = _server_of(parsed)
        if server is None or parsed is None:
            return
        self._touched.add(server)
        self._wake.set()
        if parsed.kind is keys.Kind.SERVER:
            # Its user may have been created since (`auth add-server` just before assigning it work):
            # ask again on a change of its document (rare), not of its status (frequent).
            self._unmanaged.discard(server)
            if entry is None:
                self.listed.pop(server, None)
            else:
                listed, _ = auth.assigned([(parsed, entry.document)])
                self.listed[server] = listed
        else:
            ref = (parsed.service, parsed.instance)
            if entry is None:
                self.reported.get(server, set()).discard(ref)
            else:
                self.reported.setdefault(server, set()).add(ref)

    def wanted(self, server: str) -> list[auth.Grant] | None:
        """The grants server `server`'s role should hold now; None: leave it as it is (invalid document)."""
        listed = self.listed.get(server, [])
        if listed is None:
            return None
        return auth.server_grants(self.prefix, server, listed, self.reported.get(server, ()))

    async def follow(self) -> None:
        """Feed `load` and `observe` from a read and a watch of `servers/` while etcd auth is on.

        With auth off nothing is read (it asks again every `resync_every` seconds): this is the
        controller's only fleet-wide watch, and it exists only when there are roles to keep.
        Server documents and instance status keys are decoded, nothing else under `servers/`.
        """
        while not await self._auth_on():
            await asyncio.sleep(self.resync_every)  # roles.run says once that auth is off
        feed = runtime.Resync("server roles")
        await feed.run(functools.partial(self._cycle, feed))

    async def _auth_on(self) -> bool:
        try:
            return await auth.enabled(self.store.client)
        except (StoreUnavailable, PermissionDenied):
            return False

    async def _cycle(self, feed: runtime.Resync) -> None:
        head = (keys.normalize_prefix(self.prefix) + "/servers/").encode()
        end = keys.prefix_range_end(head)
        async with watch.Stream(self.store, where=_roles_need) as stream:
            snapshot = await self.store.read([(head, end)], where=_roles_need)
            self.load(snapshot.entries.values())
            feed.synced()
            log.info(
                "Read servers for their roles", extra=logs.kv(revision=snapshot.revision, keys=len(snapshot.entries))
            )
            stream.add(head, end, snapshot.revision + 1)
            async for watch_id, events in stream.responses():
                feed.heard()
                if watch_id != watch.PROGRESS and events:
                    self.observe(events)

    # acting

    async def run(self) -> None:
        """`step` whenever a server changed and when a resync is due; until cancelled (the controller's task)."""
        while True:
            self._wake.clear()
            try:
                timeout = await self.step()
            except Exception:  # a bug here must not stop the rollouts beside it: log, and again later
                log.exception("Failed to update server roles")
                timeout = _RETRY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def step(self) -> float:
        """Resync when due, else bring the roles of changed servers in step; seconds until the next resync.

        Never raises for etcd's failures: they are logged, and the work is done again later."""
        now = self.clock()
        try:
            if now >= self._next_resync:
                await self.resync()
            elif self.active and self._touched:
                await self._apply(sorted(self._touched))
        except PermissionDenied as error:
            self.active = False
            self._next_resync = now + self.resync_every
            self._say(
                logging.WARNING,
                "Not keeping server roles in step with server documents: this controller's etcd user may not "
                "change roles (it needs etcd's root role); run `discoverd auth sync` after changing assignments",
                reason=str(error),
            )
        except StoreUnavailable as error:
            self._next_resync = min(self._next_resync, now + _RETRY) if self.active else now + _RETRY
            log.warning("Failed to update server roles; trying again", extra=logs.kv(reason=str(error)))
        return max(0.01, self._next_resync - self.clock())

    def _say(self, level: int, message: str, **fields: object) -> None:
        if self._said != message:
            self._said = message
            log.log(level, message, extra=logs.kv(prefix=self.prefix, **fields))

    async def resync(self) -> None:
        """Read which servers have a user and what their roles hold; bring every one in step."""
        self._next_resync = self.clock() + self.resync_every
        c = self.store.client
        if not await auth.enabled(c):
            self.active = False
            self._say(logging.INFO, "etcd auth is off: server roles are not kept")
            return
        ids = await auth.server_ids(c, self.prefix)
        semaphore = asyncio.Semaphore(_PARALLEL)

        async def read(server: str) -> tuple[str, auth.Permissions | None]:
            async with semaphore:
                return server, await auth.role_permissions(c, auth.server_role(self.prefix, server))

        found = await asyncio.gather(*(read(s) for s in ids))
        self.roles = {server: perms for server, perms in found if perms is not None}
        # Servers known now without a user (or its role) are left alone until the next resync; one
        # that appears later (a new server document) is asked about once (`_sync`).
        self._unmanaged = (set(self.listed) | set(self.reported) | self._touched) - set(self.roles)
        if not self.active:
            self._say(logging.INFO, "Keeping server roles in step with server documents", servers=len(self.roles))
        self.active = True
        self._touched.update(self.roles)
        await self._apply(sorted(self._touched))

    async def _apply(self, servers: Sequence[str]) -> None:
        semaphore = asyncio.Semaphore(_PARALLEL)

        async def one(server: str) -> None:
            async with semaphore:
                self._touched.discard(server)  # before: a change while it syncs marks it again
                try:
                    await self._sync(server)
                except BaseException:
                    self._touched.add(server)
                    raise

        results = await asyncio.gather(*(one(s) for s in servers), return_exceptions=True)
        failed = [e for e in results if e is not None]
        if failed:
            raise failed[0]

    async def _sync(self, server: str) -> None:
        c = self.store.client
        role = auth.server_role(self.prefix, server)
        if server not in self.roles:
            if server in self._unmanaged:
                return
            perms = await auth.role_permissions(c, role) if await auth.has_user(c, role) else None
            if perms is None:
                self._unmanaged.add(server)
                return
            self.roles[server] = perms
        wanted = self.wanted(server)
        if wanted is None:
            return
        have = self.roles[server]
        changes = diff(wanted, have)
        if not changes:
            return
        for g in changes.grant:
            await auth.grant(c, role, g)
            have[g.range()] = g.access
        for r in changes.revoke:
            await auth.revoke(c, role, *r)
            have.pop(r, None)
        self.changed += 1
        log.info(
            "Updated server role",
            extra=logs.kv(
                server=server,
                granted=", ".join(str(g) for g in changes.grant) or "-",
                revoked=", ".join(r[0].decode(errors="replace") for r in changes.revoke) or "-",
            ),
        )


async def sync_once(store: Store) -> int | None:
    """One full resync (`discoverd auth sync`): every server role in step with etcd now.

    The number of roles changed; None when etcd auth is off. etcd's errors are raised."""
    roles = Roles(store)
    snapshot = await store.snapshot(keys.servers_prefix(store.prefix))
    roles.load(snapshot.entries.values())
    await roles.resync()
    return roles.changed if roles.active else None
