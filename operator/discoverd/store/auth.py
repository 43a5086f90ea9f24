"""etcd users and roles for discoverd: what each kind of client may read and write under the prefix.

- `<prefix>/admin`: read and write the whole prefix (the operator, the
  controller, people who apply configuration).
- `<prefix>/server/<ID>`: what one server's agent needs and nothing more,
  following its assignment (as the kubelet's Node authorizer follows the pods
  bound to a node): read its own server document (`servers/<ID>/config/`);
  read the version documents of the services it lists
  (`services/<svc>/versions/`) and the instance documents it lists (one key
  each); write its agent status key, one status key per listed instance and
  one listing key per service it lists (`services/<svc>/servers/<ID>`: single
  keys, so a server cannot fill etcd with keys). It cannot change any
  configuration, another server's status, nor read what it does not run.
  `server_grants` is the one place this is spelled out; `discoverd auth
  add-server` and the controller (`controller/roles.py`, which keeps each
  role in step with its server document) both use it.
- `<prefix>/logs`: read instance logs from the agents (DESIGN section 3):
  read the server documents and agent statuses (`servers/`, to find where
  an instance runs and how to reach its agent) and write the lease-bound
  grants the agents check (`grants/`). Nothing else: no configuration.

Role and user names carry the prefix, so several prefixes can share one etcd.
Everything here is idempotent: granting again what a role has changes
nothing. It needs etcd's root user (or a user with the root role): etcd lets
no other user read or change roles.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import grpc
from aetcd import rpc

from discoverd.errors import DiscoverdError, StoreUnavailable
from discoverd.schema import documents, keys
from discoverd.store import client as client_
from discoverd.store.typed import Store

__all__ = [
    "Access",
    "Grant",
    "Permissions",
    "UserExists",
    "add_user",
    "admin_grants",
    "admin_role",
    "assigned",
    "current_server_grants",
    "enable",
    "enabled",
    "ensure_role",
    "grant",
    "has_user",
    "issue_server_credentials",
    "logs_grants",
    "logs_role",
    "revoke",
    "role_permissions",
    "rotate_password",
    "server_grants",
    "server_ids",
    "server_role",
]


class Access(Enum):
    READ = rpc.Permission.Type.READ
    WRITE = rpc.Permission.Type.WRITE
    READWRITE = rpc.Permission.Type.READWRITE


Ref = tuple[str, str]
"""(service, instance ID)."""
Permissions = dict[tuple[bytes, bytes], Access]
"""A role's permissions as etcd keeps them: (key, range_end) -> access; range_end b"" is the key alone."""


@dataclass(frozen=True)
class Grant:
    """`access` to every key under `under` (a prefix ending in `/`), or to the key `under` alone if `exact`."""

    under: str
    access: Access
    exact: bool = False

    def range(self) -> tuple[bytes, bytes]:
        """etcd's (key, range_end) of this grant."""
        start = self.under.encode()
        return start, b"" if self.exact else keys.prefix_range_end(start)

    def permission(self) -> rpc.Permission:
        start, end = self.range()
        return rpc.Permission(permType=self.access.value, key=start, range_end=end)

    def __str__(self) -> str:
        return f"{self.access.name.lower()} {self.under}"


class UserExists(DiscoverdError):
    pass


def admin_role(prefix: str) -> str:
    return f"{prefix}/admin"


def server_role(prefix: str, server_id: str) -> str:
    return f"{prefix}/server/{server_id}"


def admin_grants(prefix: str) -> list[Grant]:
    return [Grant(prefix + "/", Access.READWRITE)]


def server_grants(prefix: str, server_id: str, listed: Iterable[Ref] = (), reported: Iterable[Ref] = ()) -> list[Grant]:
    """What server `server_id`'s role holds when its document lists `listed` and it has status keys for `reported`.

    Reads are exactly what its agent reads (DESIGN section 3, `agent/scope.py`): its server
    document, the version documents of the services it lists, the instance documents it lists;
    and the log grants readers write for it (`grants/<ID>/`, checked by its log API).
    Writes are single keys: its agent status, one status key per listed instance and one listing
    key per service of those (`keys.listing`, read too: the agent creates it only when missing, a
    compare that needs read). A status key that still exists (`reported`) stays writable until it
    is gone, whether listed or not, and so does its service's listing: the agent deletes them after
    it stopped the instance, and etcd refuses every put on a lease (and the lease's revocation)
    while any key attached to it is not writable by the user.
    """
    listed = sorted(set(listed))
    grants = [
        Grant(keys.server_config(prefix, server_id).rsplit("/", 1)[0] + "/", Access.READ),
        Grant(keys.agent_status(prefix, server_id), Access.WRITE, exact=True),
        Grant(keys.log_grants_prefix(prefix, server_id), Access.READ),
    ]
    grants += [Grant(keys.versions_prefix(prefix, s), Access.READ) for s in sorted({s for s, _ in listed})]
    grants += [Grant(keys.instance_config(prefix, s, i), Access.READ, exact=True) for s, i in listed]
    writable = sorted(set(listed) | set(reported))
    grants += [Grant(keys.instance_status(prefix, server_id, s, i), Access.WRITE, exact=True) for s, i in writable]
    grants += [
        Grant(keys.listing(prefix, s, server_id), Access.READWRITE, exact=True)
        for s in sorted({s for s, _ in writable})
    ]
    return grants


def _says(error: BaseException, text: str) -> bool:
    """Whether etcd's own answer (the gRPC error under our StoreUnavailable) contains `text`."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return isinstance(cause, grpc.aio.AioRpcError) and text in (cause.details() or "")


def logs_role(prefix: str) -> str:
    return f"{prefix}/logs"


def logs_grants(prefix: str) -> list[Grant]:
    """A log reader's: find instances and their agents, and write grants (only the `logs` role and admin may)."""
    return [Grant(keys.servers_prefix(prefix), Access.READ), Grant(prefix + "/grants/", Access.READWRITE)]


def _exists(error: BaseException) -> bool:
    return _says(error, "already exists")


async def enabled(c: client_.Client) -> bool:
    """Whether etcd checks users and permissions at all."""
    response = await client_.call(
        c, lambda: c.auth_stub.AuthStatus(rpc.AuthStatusRequest(), timeout=c.request_timeout, metadata=c.metadata)
    )
    return bool(response.enabled)


async def ensure_role(c: client_.Client, name: str, grants: list[Grant]) -> None:
    """Create role `name` if missing and grant it `grants`."""
    try:
        await client_.call(
            c,
            lambda: c.auth_stub.RoleAdd(
                rpc.AuthRoleAddRequest(name=name), timeout=c.request_timeout, metadata=c.metadata
            ),
        )
    except StoreUnavailable as error:
        if not _exists(error):
            raise
    for g in grants:
        await grant(c, name, g)


async def _grant(c: client_.Client, role: str, grant: Grant) -> object:
    request = rpc.AuthRoleGrantPermissionRequest(name=role, perm=grant.permission())
    return await c.auth_stub.RoleGrantPermission(request, timeout=c.request_timeout, metadata=c.metadata)


async def grant(c: client_.Client, role: str, grant: Grant) -> None:
    """Give `role` the permission `grant` (replacing the access of a permission on the same range)."""
    await client_.call(c, functools.partial(_grant, c, role, grant))


async def revoke(c: client_.Client, role: str, key: bytes, range_end: bytes) -> None:
    """Take the permission on exactly (key, range_end) from `role` (absent: already done)."""
    request = rpc.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=range_end)
    try:
        await client_.call(
            c, lambda: c.auth_stub.RoleRevokePermission(request, timeout=c.request_timeout, metadata=c.metadata)
        )
    except StoreUnavailable as error:
        if not _says(error, "permission is not granted"):
            raise


async def role_permissions(c: client_.Client, role: str) -> Permissions | None:
    """The permissions `role` holds; None when there is no such role."""
    request = rpc.AuthRoleGetRequest(role=role)
    try:
        response = await client_.call(
            c, lambda: c.auth_stub.RoleGet(request, timeout=c.request_timeout, metadata=c.metadata)
        )
    except StoreUnavailable as error:
        if _says(error, "role name not found"):
            return None
        raise
    return {(bytes(p.key), bytes(p.range_end)): Access(p.permType) for p in response.perm}


async def has_user(c: client_.Client, name: str) -> bool:
    """Whether etcd has a user called `name`."""
    request = rpc.AuthUserGetRequest(name=name)
    try:
        await client_.call(c, lambda: c.auth_stub.UserGet(request, timeout=c.request_timeout, metadata=c.metadata))
    except StoreUnavailable as error:
        if _says(error, "user name not found"):
            return False
        raise
    return True


async def server_ids(c: client_.Client, prefix: str) -> list[str]:
    """The server IDs that have a user under `prefix` (`<prefix>/server/<ID>`), sorted."""
    response = await client_.call(
        c, lambda: c.auth_stub.UserList(rpc.AuthUserListRequest(), timeout=c.request_timeout, metadata=c.metadata)
    )
    head = server_role(prefix, "")
    found = (str(u)[len(head) :] for u in response.users if str(u).startswith(head))
    return sorted(i for i in found if keys.segment_error(i) is None)


def assigned(entries: Iterable[tuple[keys.Key, documents.Document | None]]) -> tuple[list[Ref] | None, list[Ref]]:
    """One server's (listed, reported) from its parsed keys and documents.

    listed: the instances its server document lists, None when the document is invalid (keep
    what the role has, as its agent keeps the last valid list); [] when there is none.
    reported: the instances it has status keys for.
    """
    listed: list[Ref] | None = []
    reported: list[Ref] = []
    for key, doc in entries:
        if key.kind is keys.Kind.SERVER:
            listed = [(r.name, r.id) for r in doc.service_instances] if isinstance(doc, documents.Server) else None
        elif key.kind is keys.Kind.INSTANCE_STATUS:
            reported.append((key.service, key.instance))
    return listed, reported


async def current_server_grants(store: Store, server_id: str) -> list[Grant]:
    """`server_grants` for what etcd holds now: server `server_id`'s document and its status keys."""
    prefix = store.prefix
    server_key = keys.server_config(prefix, server_id)
    snapshot = await store.read(
        [
            (server_key.encode(), b""),
            (
                keys.instance_status_prefix(prefix, server_id).encode(),
                keys.prefix_range_end(keys.instance_status_prefix(prefix, server_id).encode()),
            ),
        ]
    )
    parsed = ((e.parsed, e.document) for e in snapshot.entries.values() if e.parsed is not None)
    listed, reported = assigned(parsed)
    return server_grants(prefix, server_id, listed or (), reported)


async def add_user(c: client_.Client, name: str, role: str) -> str:
    """Create user `name` with a new random password and `role`; the password. UserExists if taken."""
    password = secrets.token_urlsafe(24)
    request = rpc.AuthUserAddRequest(name=name, password=password)
    try:
        await client_.call(c, lambda: c.auth_stub.UserAdd(request, timeout=c.request_timeout, metadata=c.metadata))
    except StoreUnavailable as error:
        if _exists(error):
            raise UserExists(f"etcd user {name!r} already exists") from None
        raise
    grant = rpc.AuthUserGrantRoleRequest(user=name, role=role)
    await client_.call(c, lambda: c.auth_stub.UserGrantRole(grant, timeout=c.request_timeout, metadata=c.metadata))
    return password


async def rotate_password(c: client_.Client, name: str) -> str:
    """Give user `name` a new random password; the password. The old one stops working at once."""
    password = secrets.token_urlsafe(24)
    request = rpc.AuthUserChangePasswordRequest(name=name, password=password)
    await client_.call(
        c, lambda: c.auth_stub.UserChangePassword(request, timeout=c.request_timeout, metadata=c.metadata)
    )
    return password


async def issue_server_credentials(c: client_.Client, prefix: str, server_id: str) -> tuple[str, str]:
    """Server `server_id`'s etcd user and a fresh password: what `discoverd auth add-server` creates
    (its role, grants and user), or, when the user exists, the same user with a new password.

    Node identity (operator/identity.py) calls it each time an agent proves who it is, so every
    issue rotates the password and whatever copy an earlier holder kept stops working.
    """
    role = server_role(prefix, server_id)
    # The grants of its server document as it is now (the controller keeps them in step from here on).
    await ensure_role(c, role, await current_server_grants(Store(c), server_id))
    try:
        return role, await add_user(c, role, role)
    except UserExists:
        return role, await rotate_password(c, role)


async def enable(c: client_.Client, root_password: str) -> bool:
    """Add etcd's root user with `root_password` and turn authentication on, unless it is on already
    (then nothing changes); whether it did. `c` needs no credentials while authentication is off."""
    if await enabled(c):
        return False
    add = rpc.AuthUserAddRequest(name="root", password=root_password)
    try:
        await client_.call(c, lambda: c.auth_stub.UserAdd(add, timeout=c.request_timeout, metadata=c.metadata))
    except StoreUnavailable as error:
        if not _exists(error):
            raise
        change = rpc.AuthUserChangePasswordRequest(name="root", password=root_password)
        await client_.call(
            c, lambda: c.auth_stub.UserChangePassword(change, timeout=c.request_timeout, metadata=c.metadata)
        )
    grant = rpc.AuthUserGrantRoleRequest(user="root", role="root")
    await client_.call(c, lambda: c.auth_stub.UserGrantRole(grant, timeout=c.request_timeout, metadata=c.metadata))
    on = rpc.AuthEnableRequest()
    await client_.call(c, lambda: c.auth_stub.AuthEnable(on, timeout=c.request_timeout, metadata=c.metadata))
    return True
