"""The dashboard's HTTP server (aiohttp): the pages, one event stream per tab, the rollout buttons.

Whoever reaches the port acts with the caller's etcd credentials, so every
request passes `_guard` first:

- **Access token.** `discoverd dashboard` prints a URL carrying a random
  token (as Jupyter does); opening it sets an HttpOnly, SameSite=Strict cookie
  holding the token, and every request must carry that cookie. Another local
  user, or a page that resolves its own name to 127.0.0.1 (DNS rebinding),
  has no cookie for this origin.
- **Host.** The Host header must name the address served (any loopback name
  for a loopback address), which also stops DNS rebinding.
- **Writes** (POST only) also need the per-run CSRF token the page carries,
  a JSON body, and an Origin header naming this server; `--read-only`
  refuses them all. The buttons call `store.rollout_requests`, the code
  `discoverd rollout pause|resume|undo|start` runs.
- Every answer forbids framing and inline script (Content-Security-Policy),
  and sends no Referer.

Pages are one static document (static/index.html) whose script asks
`/api/events` for its view: server-sent events, one JSON view per change;
the instance page also asks `/api/logs` for each server's log tail (`logtail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from discoverd import logaccess
from discoverd.dashboard import feed as feed_
from discoverd.dashboard import logtail, views
from discoverd.errors import DiscoverdError, InvalidDocument, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import rollout_requests

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

_STATIC = importlib.resources.files("discoverd.dashboard") / "static"
_TYPES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_KEEPALIVE = 15.0
"""Seconds between comment lines on an idle event stream (proxies and browsers drop silent ones)."""
_START_FIELDS = frozenset(
    {
        "to_version",
        "canary",
        "pause_after_canary",
        "max_unavailable",
        "min_healthy_seconds",
        "progress_deadline_seconds",
        "auto_revert",
    }
)
_VIEW_NAMES = {"fleet": (), "service": ("service",), "rollout": ("service",), "instance": ("service", "instance")}
"""Each view the event stream serves, and the names it takes from the query."""
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _is_wildcard(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_unspecified
    return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Dashboard:
    """One `discoverd dashboard` run: its tokens, its feed, its aiohttp application."""

    def __init__(self, feed: feed_.Feed, *, host: str, read_only: bool, reader: str = "dashboard") -> None:
        self.feed = feed
        self.host = host
        self.read_only = read_only
        self.reader = reader
        """Who reads logs, as the log grants name it (the agent logs it)."""
        self._tails = 0
        self.token = secrets.token_urlsafe(32)
        self.csrf = secrets.token_urlsafe(32)
        self.port = 0
        self._index: tuple[int, views.Index] | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        html = (_STATIC / "index.html").read_text(encoding="utf-8")  # read once: a few KB, served from memory
        self._html = html.replace("{{csrf}}", self.csrf).replace("{{read_only}}", "1" if read_only else "")
        self._files = {name: (_STATIC / name).read_bytes() for name in _TYPES}

    @property
    def cookie(self) -> str:
        return f"discoverd-dashboard-{self.port}"  # cookies ignore ports: one name per dashboard

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if _is_wildcard(self.host):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/?token={self.token}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/services/{service}", self._page)
        app.router.add_get("/services/{service}/rollout", self._page)
        app.router.add_get("/instances/{service}/{instance}", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/logs", self._logs)
        app.router.add_post("/api/rollouts/{service}", self._start)
        app.router.add_post("/api/rollouts/{service}/{action}", self._change)
        app.on_shutdown.append(self._close_streams)
        return app

    # checks on every request

    def _host_allowed(self, host: str) -> bool:
        if _is_wildcard(self.host):
            return True  # any name may reach it; the access token still guards it
        names = _LOOPBACK_NAMES if _is_loopback(self.host) else (f"[{self.host}]" if ":" in self.host else self.host,)
        return host.lower() in {f"{name}:{self.port}" for name in names}

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._check(request, handler)
        except web.HTTPException as error:  # a handler's 400 or aiohttp's own 404 and 405: with our headers too
            response = _error(error.status, error.text or error.reason)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._host_allowed(request.host):
            return _error(421, "this dashboard does not serve that host name")
        given = request.query.get("token")
        if request.method == "GET" and given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "wrong token: open the URL `discoverd dashboard` printed")
            # The token leaves the address bar and the history; `//host` would leave this server.
            target = str(request.rel_url.with_query(None))
            response = web.Response(status=303, headers={"Location": "/" if target.startswith("//") else target})
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
            return response
        cookie = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(cookie.encode(), self.token.encode()):
            return _error(401, "no access token: open the URL `discoverd dashboard` printed")
        if request.method == "POST":
            if self.read_only:
                return _error(403, "this dashboard runs with --read-only")
            if request.headers.get("Origin", "") != f"http://{request.host}":
                return _error(403, "the request did not come from this dashboard's page")
            if not hmac.compare_digest(request.headers.get("X-Discoverd-CSRF", "").encode(), self.csrf.encode()):
                return _error(403, "the page's token is missing or stale: reload the page")
            if request.content_type != "application/json":
                return _error(415, "send JSON")
        return await handler(request)

    # pages and files

    async def _page(self, request: web.Request) -> web.StreamResponse:
        for name in request.match_info.values():
            if keys.segment_error(name) is not None:
                return _error(404, "not a valid name")
        return web.Response(text=self._html, content_type="text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _TYPES:
            return _error(404, "no such file")
        return web.Response(body=self._files[name], content_type=_TYPES[name])

    # the event stream

    def _view(self, request: web.Request) -> Callable[[views.Index], views.View]:
        kind, service, instance = (request.query.get(k, "") for k in ("view", "service", "instance"))
        if kind not in _VIEW_NAMES:
            raise web.HTTPBadRequest(text="view must be fleet, service, rollout or instance")
        for field in _VIEW_NAMES[kind]:
            reason = keys.segment_error(request.query.get(field, ""))
            if reason is not None:
                raise web.HTTPBadRequest(text=f"{field}: {reason}")
        match kind:
            case "fleet":
                return views.fleet
            case "service":
                return lambda index: views.service(index, service)
            case "rollout":
                return lambda index: views.rollout(index, service)
            case "instance":
                return lambda index: views.instance(index, service, instance)
        raise web.HTTPBadRequest(text="view must be fleet, service, rollout or instance")

    def index(self) -> views.Index:
        """The index of the feed's current entries, built once per change for every tab."""
        if self._index is None or self._index[0] != self.feed.generation:
            self._index = (self.feed.generation, views.Index(self.feed.entries))
        return self._index[1]

    async def _events(self, request: web.Request) -> web.StreamResponse:
        render = self._view(request)
        response = await self._stream(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        subscription = self.feed.subscribe()
        last = ""
        try:
            await response.write(b"retry: 1000\n\n")
            while True:
                if not await subscription.wait(_KEEPALIVE):
                    await response.write(b": keepalive\n\n")
                    continue
                if not self.feed.loaded.is_set() and not self.feed.error:
                    continue  # nothing read yet; an empty page with the reason is shown when the read fails
                view = render(self.index())
                view.update(revision=self.feed.revision, etcd_error=self.feed.error)
                data = json.dumps(view, separators=(",", ":"), ensure_ascii=True)
                if data != last:  # json.dumps escapes every newline: one `data:` line per view
                    await response.write(f"data: {data}\n\n".encode())
                    last = data
        except ConnectionResetError:
            pass  # the tab was closed
        finally:
            self.feed.unsubscribe(subscription)
            self._streams.discard(task)
        return response

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        """One instance's run log on one server, live (a read: allowed with --read-only too)."""
        names = {}
        for field in ("server", "service", "instance"):
            names[field] = request.query.get(field, "")
            reason = keys.segment_error(names[field])
            if reason is not None:
                return _error(400, f"{field}: {reason}")
        if self._tails >= logtail.MAX_OPEN:
            return _error(429, f"{logtail.MAX_OPEN} log tails are open already: close some tabs")
        response = await self._stream(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self._tails += 1
        try:
            await response.write(b"retry: 2000\n\n")
            target = logaccess.Target(**names)
            await logtail.follow(self.feed.store, target, self.reader, response.write, _KEEPALIVE)
        except ConnectionResetError:
            pass  # the tab was closed
        finally:
            self._tails -= 1
            self._streams.discard(task)
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        await response.prepare(request)
        return response

    async def _close_streams(self, app: web.Application) -> None:
        for task in list(self._streams):
            task.cancel()

    # the buttons

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    async def _act(self, action: Callable[[], Awaitable[str]]) -> web.Response:
        try:
            message = await action()
        except rollout_requests.Refused as error:
            return _error(409, str(error))
        except InvalidDocument as error:
            return _error(400, str(error))
        except StoreUnavailable as error:
            return _error(503, str(error))
        except DiscoverdError as error:
            return _error(409, str(error))
        log.info("Dashboard request done message=%s", message)
        return web.json_response({"message": message})

    def _service(self, request: web.Request) -> str:
        service = request.match_info["service"]
        reason = keys.segment_error(service)
        if reason is not None:
            raise web.HTTPBadRequest(text=f"{service!r} {reason}")
        return service

    async def _start(self, request: web.Request) -> web.StreamResponse:
        service = self._service(request)
        body = await self._body(request)
        unknown = sorted(set(body) - _START_FIELDS)
        if unknown:
            return _error(400, f"unknown fields: {', '.join(unknown)}")
        fields = {k: v for k, v in body.items() if v is not None and v != ""}
        value = fields.get("max_unavailable")
        if isinstance(value, str) and value.strip().isdigit():
            fields["max_unavailable"] = int(value)
        store = self.feed.store
        try:
            config = rollout_requests.config(store.prefix, service, fields)
        except InvalidDocument as error:
            return _error(400, str(error))
        return await self._act(lambda: rollout_requests.start(store, config))

    async def _change(self, request: web.Request) -> web.StreamResponse:
        service = self._service(request)
        action = request.match_info["action"]
        if action not in rollout_requests.CHANGES:
            return _error(404, f"no action {action!r}: pause, resume or undo")
        await self._body(request)
        return await self._act(lambda: rollout_requests.change(self.feed.store, service, action))
