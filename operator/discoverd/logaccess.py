"""Reading instance logs from the agents (DESIGN section 3): grants in etcd, pinned HTTPS, follow.

The reader's side of `agent/logserver.py`, for `discoverd logs` and the
dashboard:

    async with logaccess.Session(store) as session:
        for target in await logaccess.targets(store, "web"):
            async for line in session.lines(target, LogQuery(follow=True)):
                ...

- `targets` reads the server documents: which servers list an instance.
- `Session` holds one lease of its own (`ttl` seconds, kept alive while it
  is open, revoked when it closes) and writes under it one grant per
  instance read, `grants/<server>/<sha256(token)>`, naming the service and
  the instance; the random token stays in this process. A reader whose
  process dies leaves grants that expire with the lease.
- `fetch` makes one request: it connects with TLS, checks that the agent's
  certificate is exactly the one its status publishes (SHA-256 of the DER)
  before it sends the token, and yields the agent's messages.
- `Session.lines` is one instance's lines: it follows across agent restarts
  (a lost connection, or `end: shutdown`, makes it read the agent status
  again for the new address and certificate and continue from the last
  line's position), renews a grant the agent says is gone, and ends when the
  agent says the instance was removed, or when its server no longer lists it.
- `merged` interleaves several instances' lines as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pydantic

from discoverd import logs, runtime
from discoverd.errors import DiscoverdError, StoreUnavailable
from discoverd.schema import documents, keys, logaccess
from discoverd.store import leases
from discoverd.store.typed import Store, Write

__all__ = [
    "CertificateMismatch",
    "Line",
    "LogAccessError",
    "Notice",
    "Refused",
    "Session",
    "Target",
    "Unreachable",
    "endpoint",
    "fetch",
    "merged",
    "targets",
]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5.0
_READ_LIMIT = 1 << 20
"""Longest message line accepted from an agent (a log line is at most MAX_LINE_BYTES, escaped)."""
_RETRY_FIRST = 0.1
"""Seconds before following a log again after its agent went away (doubling, `runtime.Backoff`)."""
_RETRY_MAX = 2.0

Notice = Callable[["Target", str], None]
"""Told (target, reason) when a follow lost its agent and is trying again."""


class LogAccessError(DiscoverdError):
    """Logs could not be read; the message says why and from where."""


class Unreachable(LogAccessError):
    """The agent could not be reached (offline, serving no logs, connection lost): worth trying again."""


class CertificateMismatch(Unreachable):
    """The agent's certificate is not the one its status publishes: nothing was sent to it."""


class Refused(LogAccessError):
    """The agent refused the request (HTTP status `status`)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, order=True)
class Target:
    """One instance on one server."""

    server: str
    service: str
    instance: str


@dataclass(frozen=True)
class Line:
    target: Target
    step: logaccess.Step
    text: str
    """Without its newline; bytes that were not UTF-8 as lone surrogates (encode with surrogateescape)."""
    at: float | None
    """When the agent first saw the line (Unix seconds), if known."""


async def targets(store: Store, service: str, instance: str | None = None) -> list[Target]:
    """Every (server, instance) where a server document lists `service` (and `instance`), sorted.

    Only the server documents are decoded: `servers/` also holds each server's agent status and a
    status report per instance (ten or more keys a server in a fleet), passed over undecoded.
    """
    head = keys.servers_prefix(store.prefix).encode()
    tail = keys.server_config(store.prefix, "s")[len(keys.server_prefix(store.prefix, "s")) :].encode()

    def document(key: bytes, _value: bytes) -> bool:  # servers/<server>/config/..., nothing else
        name, _, rest = key[len(head) :].partition(b"/")
        return rest == tail and bool(name)

    snapshot = await store.read([(head, keys.prefix_range_end(head))], where=document)
    found: set[Target] = set()
    for entry in snapshot.entries.values():
        if entry.parsed is None or entry.parsed.kind is not keys.Kind.SERVER:
            continue
        if not isinstance(entry.document, documents.Server):
            log.warning("Skipped an invalid server document", extra=logs.kv(key=entry.key))
            continue
        for ref in entry.document.service_instances:
            if ref.name == service and (instance is None or ref.id == instance):
                found.add(Target(entry.parsed.server, ref.name, ref.id))
    return sorted(found)


async def _listed(store: Store, target: Target) -> bool:
    entry = await store.get(keys.server_config(store.prefix, target.server))
    if entry is None or not isinstance(entry.document, documents.Server):
        return False
    return any(r.name == target.service and r.id == target.instance for r in entry.document.service_instances)


async def endpoint(store: Store, server: str) -> tuple[str, str]:
    """(address, certificate SHA-256) the agent of `server` publishes; Unreachable when it publishes none."""
    key = keys.agent_status(store.prefix, server)
    entry = await store.get(key)
    if entry is None:
        raise Unreachable(f"server {server} is offline: its agent has no status in etcd")
    if not isinstance(entry.document, documents.AgentStatus):
        raise Unreachable(f"server {server}: {entry.error or 'not an agent status'}")
    status = entry.document
    if not status.api_address or not status.api_cert_sha256:
        raise Unreachable(f"the agent of server {server} serves no logs (started with --api-address '', or older)")
    return status.api_address, status.api_cert_sha256


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise Unreachable(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _client_context() -> ssl.SSLContext:
    """TLS without a CA: the certificate is checked by its digest instead (`fetch`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch(
    address: str, cert_sha256: str, token: str, target: Target, query: logaccess.LogQuery
) -> AsyncIterator[logaccess.LogMessage]:
    """One request to an agent: its messages, up to and including the `end` (if the agent sends one).

    CertificateMismatch before anything is sent when the agent's certificate is not the pinned
    one; Refused when the agent answers with an error; Unreachable when it cannot be reached or
    the connection breaks.
    """
    host, port = _split(address)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=_client_context(), limit=_READ_LIMIT), _CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError, ssl.SSLError) as error:
        raise Unreachable(f"server {target.server}: cannot reach its agent at {address}: {error}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        seen = hashlib.sha256(der).hexdigest() if der else ""
        if seen != cert_sha256:
            raise CertificateMismatch(
                f"server {target.server}: the agent at {address} presented a certificate (SHA-256 {seen[:16]}...) "
                f"other than the one its status publishes ({cert_sha256[:16]}...); nothing was sent"
            )
        params = "&".join(f"{k}={v}" for k, v in query.params().items())
        request = (
            f"GET {logaccess.path(target.service, target.instance)}?{params} HTTP/1.1\r\n"
            f"Host: {address}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status = await _head(reader, target, address)
        while True:
            raw = await reader.readline()
            if not raw:
                if status != 200:
                    raise Refused(status, f"server {target.server}: the agent answered HTTP {status}")
                return
            message = _message(raw, target)
            if status != 200:
                raise Refused(status, f"server {target.server}: {message.error or f'HTTP {status}'}")
            yield message
            if message.end is not None:
                return
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as error:
        raise Unreachable(f"server {target.server}: lost the connection to its agent at {address}: {error}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _head(reader: asyncio.StreamReader, target: Target, address: str) -> int:
    """The response's status; its headers are read and ignored."""
    first = await asyncio.wait_for(reader.readline(), _CONNECT_TIMEOUT * 2)
    parts = first.decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Unreachable(f"server {target.server}: {address} did not answer as a discoverd agent")
    while (await asyncio.wait_for(reader.readline(), _CONNECT_TIMEOUT * 2)).strip():
        pass
    return int(parts[1])


def _message(raw: bytes, target: Target) -> logaccess.LogMessage:
    try:
        return logaccess.LogMessage.model_validate(json.loads(raw))
    except (ValueError, pydantic.ValidationError) as error:
        raise Unreachable(f"server {target.server}: the agent sent a malformed message: {error}") from None


class Session:
    """One reader's lease and grants; `lines` reads an instance's log through them."""

    def __init__(self, store: Store, *, ttl: int = 30, reader: str = "", on_retry: Notice | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.reader = reader
        self.on_retry = on_retry
        """Told (once per outage) when a follow lost its agent and is trying again."""
        self._lease: int | None = None
        self._tokens: dict[Target, str] = {}
        self._keepalive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Session:
        self._lease = await leases.grant(self.store, self.ttl)
        self._keepalive = asyncio.create_task(self._keep(), name="log grants lease")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._lease is not None:
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                await asyncio.wait_for(leases.revoke(self.store, self._lease), 5.0)
            self._lease = None

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ttl / 3))
            if self._lease is None:
                continue
            try:
                await leases.keep_alive_once(self.store, self._lease)
            except leases.LeaseExpired:
                self._lease = await leases.grant(self.store, self.ttl)
                self._tokens.clear()  # the grants went with the lease: `grant` writes them again
            except StoreUnavailable as error:
                log.warning("Failed to keep the log grants alive", extra=logs.kv(reason=str(error)))

    async def grant(self, target: Target, *, renew: bool = False) -> str:
        """The token of a grant for `target` under this session's lease (written once, or again with `renew`)."""
        token = self._tokens.get(target)
        if token is not None and not renew:
            return token
        if self._lease is None:
            self._lease = await leases.grant(self.store, self.ttl)
        token = logaccess.new_token()
        digest = logaccess.token_sha256(token)
        assert digest is not None
        grant = logaccess.LogGrant(service=target.service, instance=target.instance, reader=self.reader)
        key = keys.log_grant(self.store.prefix, target.server, digest)
        try:
            await self.store.apply([Write(key, documents.dumps(grant), lease=self._lease)])
        except StoreUnavailable as error:
            if "lease not found" in str(error):
                self._lease = await leases.grant(self.store, self.ttl)
                await self.store.apply([Write(key, documents.dumps(grant), lease=self._lease)])
            else:
                raise
        self._tokens[target] = token
        return token

    async def lines(self, target: Target, query: logaccess.LogQuery) -> AsyncIterator[Line]:
        """`target`'s lines as `query` asks; with `follow`, until the instance is removed."""
        resume: str | None = None
        backoff = runtime.Backoff(_RETRY_FIRST, _RETRY_MAX)
        renewed = False
        told = False
        while True:
            asked = query if resume is None else query.model_copy(update={"resume": resume, "tail": None})
            try:
                address, digest = await endpoint(self.store, target.server)
                token = await self.grant(target, renew=renewed)
                renewed = False
                async for message in fetch(address, digest, token, target, asked):
                    if message.line is not None:
                        resume = message.pos or resume
                        backoff.reset()
                        told = False
                        yield Line(target, query.step, message.line, message.at)
                        continue
                    match message.end:
                        case logaccess.End.DONE | logaccess.End.REMOVED:
                            return
                        case logaccess.End.DEADLINE:
                            raise LogAccessError(
                                f"server {target.server}: the agent's deadline for one request passed before "
                                "the whole log was sent (ask for less with --tail or --since)"
                            )
                        case logaccess.End.GRANT:
                            renewed = True
                        case logaccess.End.SHUTDOWN | None:
                            pass
                if not query.follow:
                    raise Unreachable(f"server {target.server}: the agent stopped before the whole log was sent")
            except Unreachable as error:
                if not query.follow:
                    raise
                if not await _listed(self.store, target):
                    return
                if not told and self.on_retry is not None:
                    self.on_retry(target, str(error))
                    told = True
            except Refused as error:
                if not query.follow or error.status != 401:
                    raise
                renewed = True  # the grant may have gone with a lease etcd lost: write a new one
                if not await _listed(self.store, target):
                    return
                if not told and self.on_retry is not None:
                    self.on_retry(target, str(error))
                    told = True
            await asyncio.sleep(backoff.next())


async def merged(session: Session, found: list[Target], query: logaccess.LogQuery) -> AsyncIterator[Line | Exception]:
    """Every target's lines as they come; a target that fails yields its error (the others go on)."""
    queue: asyncio.Queue[Line | Exception | None] = asyncio.Queue(maxsize=1024)

    async def pump(target: Target) -> None:
        try:
            async for line in session.lines(target, query):
                await queue.put(line)
        except LogAccessError as error:
            await queue.put(error)
        except StoreUnavailable as error:
            await queue.put(error)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(t), name=f"logs {t}") for t in found]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
