"""etcd users and roles for discoverd: what each kind of client may read and write under the prefix.

- `<prefix>/admin`: read and write the whole prefix (the operator, the
  controller, people who apply configuration).
- `<prefix>/server/<ID>`: what one server's agent needs and nothing more:
  read its own server document (`servers/<ID>/config/`) and the services'
  documents (`services/`), read and write its own status
  (`servers/<ID>/status/`). It cannot change any configuration or another
  server's status.

Role and user names carry the prefix, so several prefixes can share one etcd.
Everything here is idempotent: granting again what a role has changes
nothing. It needs etcd's root user (or a user with the root role).
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from enum import Enum

import grpc
from aetcd import rpc

from discoverd.errors import DiscoverdError, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client as client_

__all__ = [
    "Access",
    "Grant",
    "UserExists",
    "add_user",
    "admin_grants",
    "admin_role",
    "enable",
    "enabled",
    "ensure_role",
    "issue_server_credentials",
    "rotate_password",
    "server_grants",
    "server_role",
]


class Access(Enum):
    READ = rpc.Permission.Type.READ
    WRITE = rpc.Permission.Type.WRITE
    READWRITE = rpc.Permission.Type.READWRITE


@dataclass(frozen=True)
class Grant:
    """`access` to every key under `under` (a prefix ending in `/`)."""

    under: str
    access: Access

    def permission(self) -> rpc.Permission:
        start = self.under.encode()
        return rpc.Permission(permType=self.access.value, key=start, range_end=keys.prefix_range_end(start))

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


def server_grants(prefix: str, server_id: str) -> list[Grant]:
    server = keys.server_config(prefix, server_id).rsplit("/", 2)[0]  # <prefix>/servers/<ID>
    return [
        Grant(f"{server}/config/", Access.READ),
        Grant(prefix + "/services/", Access.READ),
        Grant(f"{server}/status/", Access.READWRITE),
    ]


def _exists(error: BaseException) -> bool:
    cause = error.__cause__ if error.__cause__ is not None else error
    return isinstance(cause, grpc.aio.AioRpcError) and "already exists" in (cause.details() or "")


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
    for grant in grants:
        await client_.call(c, functools.partial(_grant, c, name, grant))


async def _grant(c: client_.Client, role: str, grant: Grant) -> object:
    request = rpc.AuthRoleGrantPermissionRequest(name=role, perm=grant.permission())
    return await c.auth_stub.RoleGrantPermission(request, timeout=c.request_timeout, metadata=c.metadata)


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
    await ensure_role(c, role, server_grants(prefix, server_id))
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
