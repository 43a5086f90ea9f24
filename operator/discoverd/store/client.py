"""Connect to etcd (several members, TLS, user and password), fail over between members, translate errors.

One gRPC channel per endpoint, so each member's TLS certificate is checked
against that member's own name (one channel over every address would check
them all against a single name). One channel is active; its stubs are the
client's `kvstub`, `leasestub`, `watchstub`... When a request finds the
active member unreachable, without a leader, or not answering in time,
`call` moves to the next member that answers (probing each in turn) and
tries the request once more there. `connect` does the same when the active
channel is already known to be broken, so a watch started after an outage
starts on a member that answers. Every request carries etcd's `hasleader`
metadata: a member cut off from the quorum answers "no leader" at once (and
cancels its watches) instead of timing out or serving a silent stream.

Keepalive pings notice a dead or paused etcd even with no request in flight.
Every aetcd or gRPC error leaving this package is a `StoreUnavailable` whose
message says what to fix (unreachable, unknown CA, missing client
certificate, bad password, no quorum), or `TxnTooLarge`.

What we take from aetcd: only `aetcd.rpc`, the etcd v3 protobuf messages and
gRPC stubs it generates and re-exports (not documented as its API, hence
kept to this package). Its `Client` connects to one plain host and port, with
no TLS, and hides the stubs we need for transactions with guards, leases and
watch streams we write to ourselves; so we build channels and stubs here. The
stub attribute names match aetcd's `Client` so both read alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd.exceptions
import grpc
from aetcd import rpc

from discoverd.config import Endpoint, EtcdOptions
from discoverd.errors import DiscoverdError, PermissionDenied, StoreUnavailable

__all__ = ["Client", "TxnTooLarge", "call", "connect", "describe_error", "translated"]

T = TypeVar("T")

# etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time); 10 s + 5 s timeout
# notices a dead or SIGSTOPped etcd in about 15 s even with no request in flight.
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2_000,
}

# etcd's rpctypes.MetadataRequireLeaderKey / MetadataHasLeader.
_REQUIRE_LEADER = ("hasleader", "true")

_BROKEN = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class TxnTooLarge(DiscoverdError):
    """etcd refused a transaction with more operations than its --max-txn-ops allows."""


def _read(path: Any, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise StoreUnavailable(f"cannot read the etcd {what} {path}: {error.strerror}") from None


def _target(endpoint: Endpoint) -> str:
    """A gRPC target for one member; its host is also the name its TLS certificate must carry."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


@dataclass
class _Member:
    endpoint: Endpoint
    channel: grpc.aio.Channel


class Client:
    """A connection to an etcd cluster: the active member's stubs, and failover to the others."""

    def __init__(self, options: EtcdOptions) -> None:
        self.etcd_options = options
        self.request_timeout = options.timeout
        self._timeout = options.timeout  # the name aetcd's Client uses; read by older callers
        self._username = options.user
        self._password = options.password
        self._members: dict[int, _Member] = {}
        self._active = 0
        self.generation = 0
        """Counts member switches: a caller that saw a failure fails over only if nobody did since."""
        self._lock = asyncio.Lock()
        self._connected = False
        self.metadata: tuple[tuple[str, str], ...] = (_REQUIRE_LEADER,)
        self.on_refused: Callable[[], None] | None = None
        """Called when etcd refuses the password while logging in again (node identity asks for a new one)."""
        self._stubs(None)

    def _stubs(self, channel: grpc.aio.Channel | None) -> None:
        self.channel = channel
        self.kvstub: Any = rpc.KVStub(channel) if channel else None
        self.leasestub: Any = rpc.LeaseStub(channel) if channel else None
        self.watchstub: Any = rpc.WatchStub(channel) if channel else None
        self.clusterstub: Any = rpc.ClusterStub(channel) if channel else None
        self.maintenancestub: Any = rpc.MaintenanceStub(channel) if channel else None
        self.auth_stub: Any = rpc.AuthStub(channel) if channel else None

    @property
    def endpoint(self) -> Endpoint:
        """The member requests go to now."""
        return self.etcd_options.endpoints[self._active]

    def _credentials(self) -> grpc.ChannelCredentials | None:
        o = self.etcd_options
        if not o.tls:
            return None
        if (o.cert_file is None) != (o.key_file is None):
            raise StoreUnavailable("a client certificate needs both --etcd-cert and --etcd-key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(o.ca_file, "CA file") if o.ca_file else None,
            private_key=_read(o.key_file, "client key") if o.key_file else None,
            certificate_chain=_read(o.cert_file, "client certificate") if o.cert_file else None,
        )

    def _channel(self, index: int) -> grpc.aio.Channel:
        member = self._members.get(index)
        if member is None:
            endpoint = self.etcd_options.endpoints[index]
            options = list(_CHANNEL_OPTIONS.items())
            credentials = self._credentials()
            if credentials is None:
                channel = grpc.aio.insecure_channel(_target(endpoint), options=options)
            else:
                channel = grpc.aio.secure_channel(_target(endpoint), credentials, options=options)
            member = self._members[index] = _Member(endpoint, channel)
        return member.channel

    async def _use(self, index: int) -> None:
        """Make member `index` the active one once it answered (and authenticated us)."""
        channel = self._channel(index)
        metadata: tuple[tuple[str, str], ...] = (_REQUIRE_LEADER,)
        timeout = self.request_timeout
        if self._username is not None and self._password is not None:
            request = rpc.AuthenticateRequest(name=self._username, password=self._password)
            response = await asyncio.wait_for(
                rpc.AuthStub(channel).Authenticate(request, timeout=timeout, metadata=metadata), timeout * 2
            )
            metadata = (*metadata, ("token", response.token))
        # A channel connects lazily: ask for something cheap so a bad address, CA or certificate
        # shows up here, within the timeout, rather than on the first real request. Status needs no
        # permission on any key (an agent's etcd user may read only its own keys), and with
        # `hasleader` a member cut off from the quorum refuses it.
        probe = rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=timeout, metadata=metadata)
        await asyncio.wait_for(probe, timeout * 2)
        self._active = index
        self.metadata = metadata
        self._stubs(channel)
        self.generation += 1

    async def _select(self, first: int) -> None:
        """Use the first member that answers, trying each once from `first` on; StoreUnavailable if none."""
        count = len(self.etcd_options.endpoints)
        failures: list[str] = []
        for step in range(count):
            index = (first + step) % count
            try:
                await self._use(index)
                return
            except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, TimeoutError) as error:
                endpoint = self.etcd_options.endpoints[index] if count > 1 else None
                if count == 1 or not _fail_over_on(error):  # it answered, and refused: so would the others
                    raise StoreUnavailable(describe_error(error, self.etcd_options, endpoint)) from error
                failures.append(describe_error(error, self.etcd_options, endpoint))
        raise StoreUnavailable("no etcd member answered: " + "; ".join(failures))

    async def connect(self) -> None:
        """Connect to the first member that answers; if the active member's channel broke, to the next."""
        if self._connected and self.channel is not None and self.channel.get_state() not in _BROKEN:
            return
        await self.fail_over(self.generation)

    async def fail_over(self, seen_generation: int) -> None:
        """Move to the next member that answers, unless someone did since the caller's failure."""
        async with self._lock:
            if self._connected and self.generation != seen_generation:
                return
            first = (self._active + 1) % len(self.etcd_options.endpoints) if self._connected else 0
            await self._select(first)
            self._connected = True

    @property
    def can_fail_over(self) -> bool:
        return len(self.etcd_options.endpoints) > 1

    async def reauthenticate(self) -> None:
        """etcd's auth tokens expire (5 min by default); get a new one from the active member."""
        if self._username is not None and self._password is not None and self.channel is not None:
            request = rpc.AuthenticateRequest(name=self._username, password=self._password)
            try:
                response = await self.auth_stub.Authenticate(
                    request, timeout=self.request_timeout, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as error:
                if self.on_refused is not None and "authentication failed" in (error.details() or "").lower():
                    self.on_refused()
                raise
            self.metadata = (_REQUIRE_LEADER, ("token", response.token))

    async def use_credentials(self, user: str, password: str) -> None:
        """Log in as `user` with `password` from now on, on the same channels: watches, leases and
        requests in flight carry on (node identity hands the agent a new password before the old one
        expires). StoreUnavailable if the active member refuses them."""
        self._username, self._password = user, password
        self.etcd_options = self.etcd_options.model_copy(update={"user": user, "password": password})
        async with translated(self):
            await self.reauthenticate()

    async def close(self) -> None:
        members, self._members = list(self._members.values()), {}
        self._connected = False
        self._stubs(None)
        for member in members:
            await member.channel.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _details(error: BaseException) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), (error.details() or "")
    if isinstance(error, aetcd.exceptions.ClientError) and isinstance(error.__cause__, grpc.aio.AioRpcError):
        return _details(error.__cause__)
    return None, str(error)


def describe_error(error: BaseException, options: EtcdOptions, endpoint: Endpoint | None = None) -> str:
    """A one-line reason that says what to fix."""
    where = f"etcd at {endpoint or options.describe()}"
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return f"{where} did not answer within {options.timeout:g} s"
    if not isinstance(error, grpc.aio.AioRpcError | aetcd.exceptions.ClientError):
        return f"{where}: {error}"
    code, details = _details(error)
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return f"{where}: TLS handshake failed: the server's certificate is not signed by the CA given (--etcd-cacert)"
    if "hostname verification" in lowered:
        return f"{where}: TLS handshake failed: the server's certificate is not issued for the name in --etcd-endpoints"
    if "ssl" in lowered or "handshake" in lowered or "tls" in lowered:
        if options.cert_file is None:
            return f"{where}: TLS handshake failed: the server may require a client certificate (--etcd-cert/--etcd-key): {details}"
        return f"{where}: TLS handshake failed: {details}"
    if "authentication failed" in lowered or "invalid user id or password" in lowered:
        return f"{where}: authentication failed: wrong user name or password (--etcd-user/--etcd-password)"
    if "user name is empty" in lowered or "user name not found" in lowered:
        return f"{where}: authentication is enabled: give --etcd-user and --etcd-password"
    if "permission denied" in lowered:
        user = f"etcd user {options.user!r}" if options.user else "this etcd user"
        return (
            f"{where}: permission denied: {user} has no role allowing this request under {options.prefix} "
            "(see `discoverd auth`)"
        )
    if "no leader" in lowered:
        return f"{where} has no leader: the etcd cluster lost its quorum or is electing a leader"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{where} did not answer within {options.timeout:g} s"
    if code == grpc.StatusCode.UNAVAILABLE:
        first = details.splitlines()[0] if details else "no answer"
        return f"{where} is unreachable: {first}"
    return f"{where}: {details or error}"


# "revision of auth store is old": any change to etcd's users or roles (a password rotated by node
# identity, a role kept in step) makes every token issued before it stale; log in again and retry.
_RETRYABLE_AUTH = ("invalid auth token", "auth token is invalid", "revision of auth store is old")
_OLD_AUTH_REVISION = "auth: revision in header is old"
"""A write checked against roles that changed before it was applied (the controller keeps server roles
in step, so this happens in normal operation): etcd's own client retries it at once, and so do we."""
_OLD_AUTH_RETRIES = 3
_TOO_MANY_OPS = "too many operations in txn request"


def _fail_over_on(error: BaseException) -> bool:
    """Whether another member may do better: this one is gone, without a leader, or too slow."""
    if isinstance(error, TimeoutError):
        return True
    code, _ = _details(error)
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _denied(error: BaseException) -> bool:
    code, details = _details(error)
    return code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details.lower()


@contextlib.asynccontextmanager
async def translated(client: Client) -> AsyncIterator[None]:
    """Turn aetcd and gRPC errors raised inside into StoreUnavailable (or TxnTooLarge) with a clear reason."""
    try:
        yield
    except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, TimeoutError) as error:
        if _TOO_MANY_OPS in _details(error)[1].lower():
            raise TxnTooLarge(
                f"etcd at {client.etcd_options.describe()} refused the transaction: it has more operations "
                "than etcd's --max-txn-ops allows (128 unless set)"
            ) from error
        reason = describe_error(error, client.etcd_options, client.endpoint)
        if _denied(error):
            raise PermissionDenied(reason) from error
        raise StoreUnavailable(reason) from error


async def call(client: Client, operation: Callable[[], Awaitable[T]]) -> T:
    """Run one etcd request on the active member; renew an expired auth token once; retry a request etcd
    checked against roles that changed before it applied it (up to 3 times); fail over to another member
    once when this one is unreachable, has no leader or does not answer in time; translate errors.

    `operation` must read the client's stubs when called (a lambda), so that a retry after a failover goes
    to the new member. A retried write is safe: guarded transactions fail their guard if the first attempt
    did land, and unguarded puts write the same value again.
    """
    async with translated(client):
        await client.connect()
        renewed = moved = False
        stale = 0
        while True:
            generation = client.generation
            try:
                return await asyncio.wait_for(operation(), client.request_timeout * 2)
            except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, TimeoutError) as error:
                if stale < _OLD_AUTH_RETRIES and _OLD_AUTH_REVISION in _details(error)[1].lower():
                    stale += 1
                    continue
                if not renewed and any(text in _details(error)[1].lower() for text in _RETRYABLE_AUTH):
                    renewed = True
                    await client.reauthenticate()
                    continue
                if not moved and client.can_fail_over and _fail_over_on(error):
                    moved = True
                    await client.fail_over(generation)
                    continue
                raise


async def connect(options: EtcdOptions) -> Client:
    """A client connected to the first member that answers; StoreUnavailable naming the cause otherwise."""
    client = Client(options)
    try:
        await asyncio.wait_for(client.connect(), options.timeout * 2 * (1 + len(options.endpoints)))
    except TimeoutError:
        await client.close()
        raise StoreUnavailable(f"etcd at {options.describe()} did not answer within {options.timeout:g} s") from None
    except BaseException:
        await client.close()
        raise
    return client
