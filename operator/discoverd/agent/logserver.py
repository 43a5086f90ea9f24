"""The agent's log API: its instances' step logs over HTTPS, to holders of a grant in etcd (DESIGN section 3).

    GET /v1/logs/<service>/<instance>?step=run&tail=N&since=T&follow=1&resume=INO:OFF
    Authorization: Bearer <token>

TLS with the agent's own certificate (`certificate`), whose SHA-256 the
agent publishes in its status: readers pin it, so there is no CA. Every
request is checked in etcd: the grant key `grants/<this server>/<sha256 of
the token>` must exist, be held by a lease (grants are short-lived), and name
the service and the instance asked for; during a follow the key is read again
every `Limits.grant_recheck` seconds, and the stream ends when it is gone.
etcd's own permissions decide who may write that key (a `logs` role or admin,
store/auth.py), so etcd stays the only authority.

Answers: 200 with one JSON object per line (`logaccess.LogMessage`: lines,
then one `end`); 400 bad request, 401 no valid grant for the token, 403 a
grant for another instance, 404 no such instance on this server, 503 too
many readers or not connected to etcd yet, each with one `error` line.

Bounds: `Limits.max_connections` readers at once (more get 503), a deadline
per request without follow, a rate in bytes per second per reader, and caps
on the request's size and the time to send it. One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import pydantic

from discoverd import logs
from discoverd.agent import certificate, logread, model
from discoverd.errors import InvalidDocument, StoreUnavailable
from discoverd.schema import documents, keys, logaccess
from discoverd.store.typed import Store

__all__ = ["Instances", "Limits", "LogServer", "split_advertise"]

log = logging.getLogger(__name__)

_MAX_REQUEST_BYTES = 16 * 1024
_HEADER_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Limits:
    max_connections: int = 32
    """Readers served at once; one more gets 503."""
    bytes_per_second: int = 4 << 20
    """Per reader: a whole log at the default cap (10 MiB and 2 copies) takes about 10 s."""
    request_timeout: float = 60.0
    """Seconds a request without follow may take."""
    grant_recheck: float = 5.0
    """Seconds between two reads of the grant key during a follow."""
    poll: float = 0.025
    """Seconds between two looks at a followed log."""


class Instances(Protocol):
    """What the agent knows about its instances, asked by the log server."""

    def known(self, ref: model.Ref) -> bool:
        """Whether `ref` is this server's (listed, or removed with its files still kept)."""

    def live(self, ref: model.Ref) -> bool:
        """Whether `ref` is listed or its process still runs (a follow goes on while it is)."""


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Request:
    ref: model.Ref
    query: logaccess.LogQuery
    grant_key: str
    reader: str = ""


class LogServer:
    """Serves one agent's logs; `start` binds, `close` ends every stream (`end: shutdown`)."""

    def __init__(
        self,
        server_id: str,
        prefix: str,
        log_file: Callable[[model.Ref, str], Path],
        keep: int,
        store: Callable[[], Store | None],
        instances: Instances,
        limits: Limits | None = None,
    ) -> None:
        self.server_id = server_id
        self.prefix = prefix
        self.log_file = log_file
        self.keep = keep
        self.store = store
        self.instances = instances
        self.limits = limits or Limits()
        self.address = ""
        """`host:port` bound (after `start`)."""
        self.advertised = ""
        """`host:port` readers are told (in the agent status)."""
        self.cert_sha256 = ""
        self._server: asyncio.Server | None = None
        self._active = 0
        self._closing = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, advertise: str = "") -> None:
        """Bind `host:port` (port 0: any free one); readers are told `advertise` (HOST[:PORT]) or what was bound.

        A wildcard bind (0.0.0.0, ::) without `advertise` is published as this machine's hostname.
        """
        public_host, public_port = split_advertise(advertise) if advertise else ("", None)
        cert = certificate.make(self.server_id, [public_host or host])
        self.cert_sha256 = cert.sha256
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=cert.context, ssl_handshake_timeout=_HEADER_TIMEOUT
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.address = _join(bound_host, bound_port)
        if not public_host:
            public_host = socket.gethostname() if bound_host in ("0.0.0.0", "::") else bound_host
        self.advertised = _join(public_host, public_port or bound_port)
        log.info("Serving logs", extra=logs.kv(address=self.address, advertised=self.advertised))

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
            for task in pending:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # one connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._active += 1
        try:
            if self._active > self.limits.max_connections:
                await _answer(writer, 503, f"too many log readers at once (at most {self.limits.max_connections})")
                return
            try:
                raw = await asyncio.wait_for(_read_request(reader), _HEADER_TIMEOUT)
                request = await self._authorize(raw)
            except _Refused as refused:
                await _answer(writer, refused.status, refused.reason)
                return
            await self._stream(request, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one bad request must not go unnoticed, nor touch the agent
            log.exception("Failed to serve a log request")
        finally:
            self._active -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _grant(self, key: str) -> logaccess.LogGrant:
        """The grant at `key`; _Refused (401) when it is missing, not lease-bound, or invalid."""
        store = self.store()
        if store is None:
            raise _Refused(503, "the agent is not connected to etcd yet: try again")
        try:
            entry = await store.get(key)
        except StoreUnavailable as error:
            raise _Refused(503, f"the agent cannot check grants now: {error}") from None
        if entry is None:
            raise _Refused(401, f"no grant for this token on server {self.server_id} (expired, or never written)")
        if entry.lease == 0:
            raise _Refused(401, f"the grant {key} is not held by a lease: grants must be short-lived")
        try:
            return documents.parse(logaccess.LogGrant, key, entry.value)
        except InvalidDocument as error:
            raise _Refused(401, f"invalid grant: {error}") from None

    async def _authorize(self, raw: tuple[str, str, dict[str, str]]) -> _Request:
        method, target, headers = raw
        if method != "GET":
            raise _Refused(405, "only GET")
        ref, query = _parse_target(target)
        scheme, _, token = headers.get(logaccess.TOKEN_HEADER, "").partition(" ")
        digest = logaccess.token_sha256(token.strip()) if scheme.lower() == "bearer" else None
        if digest is None:
            raise _Refused(401, "no token: send Authorization: Bearer <token> with a grant in etcd")
        key = keys.log_grant(self.prefix, self.server_id, digest)
        grant = await self._grant(key)
        if (grant.service, grant.instance) != (ref.service, ref.instance):
            log.warning(
                "Refused a log request for another instance than its grant",
                extra=logs.kv(service=ref.service, instance=ref.instance, reader=grant.reader),
            )
            raise _Refused(403, f"the grant is for {grant.service}/{grant.instance}, not {ref.service}/{ref.instance}")
        if not self.instances.known(ref):
            raise _Refused(404, f"{ref.service}/{ref.instance} is not an instance of server {self.server_id}")
        return _Request(ref, query, key, grant.reader)

    async def _stream(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        ref, query = request.ref, request.query
        log.info(
            "Serving a log",
            extra=logs.kv(
                service=ref.service,
                instance=ref.instance,
                step=query.step.value,
                follow=query.follow,
                reader=request.reader,
            ),
        )
        began = time.monotonic()
        deadline = None if query.follow else began + self.limits.request_timeout
        next_grant_check = began + self.limits.grant_recheck

        async def check() -> logaccess.End | None:
            nonlocal next_grant_check
            if self._closing.is_set():
                return logaccess.End.SHUTDOWN
            if not self.instances.live(ref):
                return logaccess.End.REMOVED
            if time.monotonic() >= next_grant_check:
                next_grant_check = time.monotonic() + self.limits.grant_recheck
                try:
                    await self._grant(request.grant_key)
                except _Refused as refused:
                    if refused.status != 503:  # etcd away: go on, the next check decides
                        return logaccess.End.GRANT
            return None

        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode())
        rate = self.limits.bytes_per_second
        credit, last = float(rate), time.monotonic()  # a token bucket: a burst of one second's worth
        path = self.log_file(ref, query.step.value)
        pieces = logread.read(path, self.keep, query, check, poll=self.limits.poll)
        try:
            async for piece in pieces:
                if isinstance(piece, logaccess.End):
                    message: dict[str, object] = {"end": piece.value}
                else:
                    text = piece.line.decode("utf-8", "surrogateescape")
                    message = {"line": text, "at": piece.at, "pos": piece.pos}
                data = json.dumps(message).encode() + b"\n"
                writer.write(data)
                await writer.drain()
                if isinstance(piece, logaccess.End):
                    return
                if deadline is not None and time.monotonic() > deadline:
                    writer.write(json.dumps({"end": logaccess.End.DEADLINE.value}).encode() + b"\n")
                    await writer.drain()
                    return
                now = time.monotonic()
                credit = min(float(rate), credit + (now - last) * rate) - len(data)
                last = now
                if credit < 0:
                    await asyncio.sleep(-credit / rate)
        finally:
            await pieces.aclose()


def split_advertise(value: str) -> tuple[str, int | None]:
    """`HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` -> (host, port or None); ValueError if malformed."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not HOST[:PORT]")
        port = rest[1:] or None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) <= 65535)):
        raise ValueError(f"{value!r} is not HOST[:PORT]")
    return host, int(port) if port is not None else None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-case names) of one request; _Refused (400) if malformed."""

    async def line() -> bytes:
        try:
            return await reader.readuntil(b"\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            raise _Refused(400, "malformed or oversized request") from None

    total = 0
    first = await line()
    total += len(first)
    parts = first.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "malformed request line")
    headers: dict[str, str] = {}
    while True:
        data = await line()
        total += len(data)
        if total > _MAX_REQUEST_BYTES:
            raise _Refused(400, "request too large")
        text = data.decode("latin-1").strip()
        if not text:
            break
        name, sep, value = text.partition(":")
        if not sep:
            raise _Refused(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def _parse_target(target: str) -> tuple[model.Ref, logaccess.LogQuery]:
    split = urlsplit(target)
    segments = split.path.split("/")
    if len(segments) != 5 or segments[:3] != ["", "v1", "logs"]:
        raise _Refused(404, "not found: GET /v1/logs/<service>/<instance>")
    try:
        service, instance = unquote(segments[3], errors="strict"), unquote(segments[4], errors="strict")
    except UnicodeDecodeError:
        raise _Refused(400, "names must be UTF-8") from None
    for what, name in (("service", service), ("instance", instance)):
        reason = keys.segment_error(name)
        if reason is not None:
            raise _Refused(400, f"the {what} name {reason}")
    params = dict(parse_qsl(split.query, keep_blank_values=True))
    if "follow" in params:
        params["follow"] = "true" if params["follow"] in ("1", "true") else "false"
    try:
        query = logaccess.LogQuery.model_validate(params)
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise _Refused(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    return model.Ref(service, instance), query


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = json.dumps({"error": reason}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
