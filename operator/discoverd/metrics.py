"""Prometheus metrics and the health endpoints of the agent, the operator and the controller: all in one place.

Every metric discoverd exports is defined here, in one class per component
(`AgentMetrics`, `ControllerMetrics`), because the names are an interface:
the Grafana dashboard (charts/discoverd/dashboards/) and the docs list them,
and one file is where someone checks what a name means. The code that
measures calls methods on these objects; it never creates a metric itself.

Each process (and each component of `discoverd up`) gets its own
`CollectorRegistry`, never prometheus_client's global one, so two components
in one process and the tests do not clash.

`serve` is a small HTTP server on the event loop (not prometheus_client's
thread) so `/readyz` asks the component's own state without locks:

- `/metrics`: the registry in the Prometheus text format;
- `/healthz`: 200 while the process answers at all;
- `/readyz`: 200 when `ready()` returns None, else 503 with its one-line reason.

The endpoints have no authentication, so they are bound to loopback by default
(the chart binds the pod's IP) and hold no client longer than they must: a
whole request, from the first byte to the last of the answer, gets
`REQUEST_DEADLINE` seconds (a client trickling its headers byte by byte is cut
off, not kept alive by each byte), its request line and headers at most
`MAX_REQUEST_BYTES`, and at most `MAX_CONNECTIONS` clients are served at once
(one more is closed at once, unanswered).

This module imports nothing of discoverd but `logs`: the agent, the operator and the
controller import it (import-linter checks both directions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from discoverd import logs

__all__ = [
    "AgentMetrics",
    "CollectorRegistry",
    "ControllerMetrics",
    "OperatorMetrics",
    "Server",
    "parse_address",
    "serve",
    "since",
]

log = logging.getLogger(__name__)

Ready = Callable[[], str | None]
"""None when ready, else why not (one line)."""

_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _count_by_phase(gauge: Gauge, known: Iterable[str], phases: Iterable[str]) -> None:
    """Set `gauge{phase}` to how often each phase occurs in `phases`; every known phase not seen is 0."""
    counts = dict.fromkeys(known, 0)
    for phase in phases:
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        gauge.labels(phase).set(n)


class AgentMetrics:
    """What one agent exports (docs/agent.md, "Metrics and health")."""

    def __init__(self, phases: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._phases = tuple(phases)
        self.instances = Gauge("discoverd_agent_instances", "Instances of this server by phase.", ["phase"], registry=r)
        for phase in self._phases:
            self.instances.labels(phase).set(0)
        self.restarts = Counter(
            "discoverd_agent_restarts", "Starts of a run script after it exited (same configuration).", registry=r
        )
        self.step_seconds = Histogram(
            "discoverd_agent_step_duration_seconds",
            "Duration of the download and install scripts, and of a start (sweep, cgroup, spawn).",
            ["step"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.upgrades = Counter(
            "discoverd_agent_upgrades", "Versions promoted over a different previous version.", registry=r
        )
        self.rollbacks = Counter(
            "discoverd_agent_rollbacks", "Versions rejected (the previous one is started again).", registry=r
        )
        self.etcd_reconnects = Counter(
            "discoverd_agent_etcd_reconnects", "Times the etcd watch was lost and read again.", registry=r
        )
        self.watch_lag = Gauge(
            "discoverd_agent_watch_lag_seconds",
            "Seconds since the watch last heard from etcd (an event or a progress notification); -1 before the first.",
            registry=r,
        )
        self.watch_lag.set(-1)
        self.reconcile_seconds = Histogram(
            "discoverd_agent_reconcile_duration_seconds",
            "Duration of one reconcile pass (plan, hand actions over, status).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        # Artifacts (docs/agent.md, "Artifacts").
        self.artifact_requests = Counter(
            "discoverd_agent_artifact_requests",
            "Artifacts asked of the cache, by result: hit, fetched, failed, mismatch (digest).",
            ["result"],
            registry=r,
        )
        self.artifact_fetched_bytes = Counter(
            "discoverd_agent_artifact_fetched_bytes", "Bytes of artifacts received over the network.", registry=r
        )
        self.artifact_downloading = Gauge(
            "discoverd_agent_artifact_downloading_bytes",
            "Downloads under way (with a known size): bytes expected and received so far (their ratio is the progress).",
            ["part"],
            registry=r,
        )
        self.artifact_cache_bytes = Gauge(
            "discoverd_agent_artifact_cache_bytes", "Bytes of the artifact cache after the last eviction.", registry=r
        )
        self.artifact_evictions = Counter(
            "discoverd_agent_artifact_evictions",
            "Blobs evicted from the artifact cache (least recently used).",
            registry=r,
        )

    def set_phases(self, phases: Iterable[str]) -> None:
        """The instance count per phase, from every instance's phase this pass (absent phases are 0)."""
        _count_by_phase(self.instances, self._phases, phases)


class ControllerMetrics:
    """What one rollout controller exports (docs/agent.md, "Metrics and health")."""

    def __init__(self, phases: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._phases = tuple(phases)
        self.rollouts = Gauge(
            "discoverd_controller_rollouts",
            "Rollouts by the phase of their status (as this copy's cache sees the prefix).",
            ["phase"],
            registry=r,
        )
        for phase in self._phases:
            self.rollouts.labels(phase).set(0)
        self.leader = Gauge("discoverd_controller_leader", "1 while this copy holds the leader key.", registry=r)
        self.steps = Counter("discoverd_controller_steps", "Rollout steps written to etcd.", registry=r)

    def set_phases(self, phases: Iterable[str]) -> None:
        """The rollout count per phase, from every rollout's phase (absent phases are 0)."""
        _count_by_phase(self.rollouts, self._phases, phases)


class OperatorMetrics:
    """What one operator exports (docs/kubernetes.md, "Metrics and health")."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.mirrored = Counter(
            "discoverd_operator_mirrored",
            "Changes mirrored, by action: create, patch, delete_object (etcd -> Kubernetes), "
            "write_key, delete_key (Kubernetes -> etcd).",
            ["action"],
            registry=r,
        )
        self.etcd_wins = Counter(
            "discoverd_operator_etcd_wins",
            "Conflicts etcd won: an object reset or deleted (EtcdWins events).",
            registry=r,
        )
        self.queue_depth = Gauge("discoverd_operator_queue_depth", "Keys waiting in the work queue.", registry=r)
        self.api_seconds = Histogram(
            "discoverd_operator_api_call_duration_seconds",
            "Kubernetes API call latency, by call.",
            ["call"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "discoverd_operator_reconcile_duration_seconds",
            "Duration of one key's reconcile (configuration and status).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.etcd_reconnects = Counter(
            "discoverd_operator_etcd_reconnects", "Times the etcd watch was lost and the prefix resynced.", registry=r
        )


REQUEST_DEADLINE = 5.0
"""Seconds one connection may take in all: reading the request, answering it, the client reading it."""
MAX_REQUEST_BYTES = 16 * 1024
"""Longest request line plus headers; a longer request is closed unanswered."""
MAX_CONNECTIONS = 32
"""Connections served at once; the kubelet's probes and a scraper need a few."""


def parse_address(address: str) -> tuple[str, int] | None:
    """`host:port` (`[::1]:port` for IPv6) -> (host, port); "" -> None (metrics disabled). ValueError if bad."""
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Server:
    """The HTTP endpoints of one component; `close()` stops it."""

    def __init__(
        self,
        registries: list[CollectorRegistry],
        ready: Ready,
        *,
        deadline: float = REQUEST_DEADLINE,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.registries = registries
        self.ready = ready
        self.deadline = deadline
        self.max_connections = max_connections
        self.connections = 0
        """Connections being served now."""
        self._server: asyncio.Server | None = None
        self.before_scrape: Callable[[], None] | None = None
        """Called before `/metrics` is rendered (to refresh gauges computed from the clock)."""

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
        bound = self._server.sockets[0].getsockname()
        log.info("Serving metrics and health", extra=logs.kv(address=f"{bound[0]}:{bound[1]}"))

    @property
    def port(self) -> int:
        """The port bound (useful after asking for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            if self.before_scrape is not None:
                self.before_scrape()
            return 200, CONTENT_TYPE_LATEST, b"".join(generate_latest(r) for r in self.registries)
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            try:
                reason = self.ready()
            except Exception as error:  # a bug in a readiness check: not ready, and say why
                reason = f"readiness check failed: {error!r}"
            if reason is None:
                return 200, "text/plain; charset=utf-8", b"ok\n"
            return 503, "text/plain; charset=utf-8", (reason.splitlines() or [""])[0].encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            writer.transport.abort()  # over the cap: closed at once, before reading anything
            return
        self.connections += 1
        try:
            async with asyncio.timeout(self.deadline):
                await self._serve(reader, writer)
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError):
            writer.transport.abort()  # too slow, too long, or gone: nothing more is sent
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request and answer it (the caller bounds the time; `limit` bounds each line)."""
        line = await reader.readline()
        size = len(line)
        while header := (await reader.readline()).strip():
            size += len(header)  # the headers: nothing in them matters here, but they are bounded
            if size > MAX_REQUEST_BYTES:
                raise ValueError("request headers too long")
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"only GET\n"
        else:
            status, ctype, body = self._answer(parts[1].split("?", 1)[0])
        reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
        head = (
            f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + (b"" if parts and parts[0] == "HEAD" else body))
        await writer.drain()


async def serve(address: str, registries: list[CollectorRegistry], ready: Ready) -> Server | None:
    """Start the endpoints on `address` (`host:port`; "" -> None, nothing served).

    An address that cannot be bound (in use) is logged as an error and nothing is served: the
    component itself goes on (a metrics port must not take an agent's instances down with it).
    """
    where = parse_address(address)
    if where is None:
        return None
    server = Server(registries, ready)
    try:
        await server.start(*where)
    except OSError as error:
        # Not fatal: an agent keeps its instances running (and an operator mirrors) without metrics.
        log.error("Failed to serve metrics and health", extra=logs.kv(address=address, reason=str(error)))
        return None
    return server


def since(monotonic: float | None) -> float:
    """Seconds since a `time.monotonic()` reading; -1 for None."""
    return -1.0 if monotonic is None else time.monotonic() - monotonic
