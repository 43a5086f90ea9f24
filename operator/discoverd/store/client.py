"""Connect to etcd (several endpoints, TLS, user and password) and translate its errors.

aetcd gives us the etcd v3 API over grpc.aio; it connects only to one plain
host and port, so `Client.connect` builds the channel itself: TLS credentials
when asked, every endpoint in one channel (gRPC fails over between them), and
keepalive pings so a dead or paused etcd is noticed. Every aetcd or gRPC
error leaving this package is a `StoreUnavailable` whose message says what to
fix (unreachable, unknown CA, missing client certificate, bad password).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable

__all__ = ["Client", "call", "connect", "describe_error", "translated"]

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


def _read(path: Any, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise StoreUnavailable(f"cannot read the etcd {what} {path}: {error.strerror}") from None


def _target(options: EtcdOptions) -> tuple[str, str | None]:
    """A gRPC target naming every endpoint, and the TLS name to check (the first host)."""
    if len(options.endpoints) == 1:
        e = options.endpoints[0]
        return f"{e.host}:{e.port}", None
    addresses: list[str] = []
    for e in options.endpoints:
        try:
            ip = ipaddress.ip_address(e.host)
            addresses.append(f"[{ip}]:{e.port}" if ip.version == 6 else f"{ip}:{e.port}")
        except ValueError:
            for info in socket.getaddrinfo(e.host, e.port, type=socket.SOCK_STREAM):
                host = str(info[4][0])
                addresses.append(f"[{host}]:{e.port}" if ":" in host else f"{host}:{e.port}")
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if scheme == "ipv4":
        addresses = [a for a in addresses if not a.startswith("[")]
    return f"{scheme}:{','.join(addresses)}", options.endpoints[0].host


class Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client, connected our way."""

    def __init__(self, options: EtcdOptions) -> None:
        first = options.endpoints[0]
        super().__init__(
            host=first.host,
            port=first.port,
            username=options.user,
            password=options.password,
            timeout=options.timeout,
            options=_CHANNEL_OPTIONS,
            connect_wait_timeout=max(3, int(options.timeout)),
        )
        self.etcd_options = options
        self._is_connecting: bool = False
        self.metadata: tuple[tuple[str, Any], ...] | None = None

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

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            target, tls_name = _target(self.etcd_options)
            options = dict(self._options)
            credentials = self._credentials()
            if credentials is not None and tls_name:
                options["grpc.ssl_target_name_override"] = tls_name
            if credentials is None:
                self.channel = rpc.insecure_channel(target, options=list(options.items()))
            else:
                self.channel = rpc.secure_channel(target, credentials, options=list(options.items()))
            self.metadata = None
            if self._username is not None and self._password is not None:
                await self._authenticate()
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self.watchstub = rpc.WatchStub(self.channel)
            self._watcher = None
            self._connected.set()
        except BaseException:
            if self.channel is not None:
                await self.channel.close()
            self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False

    async def _authenticate(self) -> None:
        self.auth_stub = rpc.AuthStub(self.channel)
        request = rpc.AuthenticateRequest(name=self._username, password=self._password)
        response = await self.auth_stub.Authenticate(request, timeout=self._timeout, wait_for_ready=False)
        self.metadata = (("token", response.token),)

    async def reauthenticate(self) -> None:
        """etcd's auth tokens expire (5 min by default); get a new one on the same channel."""
        if self._username is not None and self.channel is not None:
            await self._authenticate()


def describe_error(error: BaseException, options: EtcdOptions) -> str:
    """A one-line reason that says what to fix."""
    where = f"etcd at {options.describe()}"
    if isinstance(error, grpc.aio.AioRpcError):
        code, details = error.code(), (error.details() or "")
    elif isinstance(error, aetcd.exceptions.ClientError):
        cause = error.__cause__
        if isinstance(cause, grpc.aio.AioRpcError):
            return describe_error(cause, options)
        code, details = None, str(error)
    elif isinstance(error, TimeoutError | asyncio.TimeoutError):
        return f"{where} did not answer within {options.timeout:g} s"
    else:
        return f"{where}: {error}"
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return f"{where}: TLS handshake failed: the server's certificate is not signed by the CA given (--etcd-cacert)"
    if "ssl" in lowered or "handshake" in lowered or "tls" in lowered:
        if options.cert_file is None:
            return f"{where}: TLS handshake failed: the server may require a client certificate (--etcd-cert/--etcd-key): {details}"
        return f"{where}: TLS handshake failed: {details}"
    if "authentication failed" in lowered or "invalid user id or password" in lowered:
        return f"{where}: authentication failed: wrong user name or password (--etcd-user/--etcd-password)"
    if "user name is empty" in lowered or "user name not found" in lowered:
        return f"{where}: authentication is enabled: give --etcd-user and --etcd-password"
    if "permission denied" in lowered:
        return f"{where}: permission denied: the etcd user may not access this prefix"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        first = details.splitlines()[0] if details else "no answer"
        return f"{where} is unreachable: {first}"
    return f"{where}: {details or error}"


_RETRYABLE_AUTH = ("invalid auth token", "auth token is invalid")


@contextlib.asynccontextmanager
async def translated(client: Client) -> AsyncIterator[None]:
    """Turn aetcd and gRPC errors raised inside into StoreUnavailable with a clear reason."""
    try:
        yield
    except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, TimeoutError) as error:
        raise StoreUnavailable(describe_error(error, client.etcd_options)) from error


async def call(client: Client, operation: Callable[[], Awaitable[T]]) -> T:
    """Run one etcd request; renew an expired auth token once; translate errors."""
    async with translated(client):
        try:
            return await asyncio.wait_for(operation(), client.etcd_options.timeout * 2)
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as error:
            if not any(text in str(error).lower() for text in _RETRYABLE_AUTH):
                raise
            await client.reauthenticate()
            return await asyncio.wait_for(operation(), client.etcd_options.timeout * 2)


async def connect(options: EtcdOptions) -> Client:
    """A connected client; StoreUnavailable naming the cause when etcd cannot be used."""
    client = Client(options)
    async with translated(client):
        await asyncio.wait_for(client.connect(), options.timeout * 2)
        # A channel connects lazily: ask for something cheap so a bad address, CA or certificate
        # shows up here, within the timeout, rather than on the first real request.
        await asyncio.wait_for(
            client.kvstub.Range(
                rpc.RangeRequest(key=b"\0", limit=1, keys_only=True),
                timeout=options.timeout,
                metadata=client.metadata,
            ),
            options.timeout * 2,
        )
    return client
