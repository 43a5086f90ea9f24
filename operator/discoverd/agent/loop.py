"""The agent's main: watch etcd -> desired; instance states -> plan -> execute; status -> etcd.

Three tasks share one event loop, each kept alive by `runtime.supervise` (a
crash is logged with its traceback and the task restarted with back-off):

- the watch (`scope.ScopedWatch`) keeps this server's configuration current
  and nothing else: its server document, the version documents of its
  services, its instance documents, read at one revision and watched from the
  next on one stream; after a lost, compacted or stalled watch it reads those
  keys again at one revision;
- the reconcile pass resolves the desired state, asks `plan` what to do, and
  hands the actions to the `executor`; it runs whenever the configuration
  changes, an instance's task finishes or its process exits, and when a
  planned `Wait` is due;
- the status `Writer` holds the lease and writes what changed.

Beside them, with `--api-address`, the log server (`logserver`) serves the
instances' logs over HTTPS, and the log index (`logindex`) notes every second
how far each log has grown, for timestamps.

Nothing here waits on etcd to keep instances running: processes belong to
their supervisors, which need no etcd at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from discoverd import logs, metrics, runtime
from discoverd.agent import (
    artifacts,
    cgroups,
    identity,
    invocation,
    logindex,
    logserver,
    model,
    plan,
    scope,
    scriptlogs,
    status,
)
from discoverd.agent import desired as desired_
from discoverd.agent import executor as executor_
from discoverd.agent import layout as layout_
from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable
from discoverd.schema.documents import Phase
from discoverd.store import connect
from discoverd.store.typed import Entry, Store

__all__ = ["Agent", "Options"]

log = logging.getLogger(__name__)

_IDLE_PASS = 60.0
"""Seconds between passes when nothing happens (a safety net: passes are event-driven)."""


@dataclass(frozen=True)
class Options:
    server_id: str
    state_dir: Path
    host_namespaces: bool = False
    host_pid: int = 1
    stop_instances_on_exit: bool = False
    lease_ttl: int = 15
    backoff_base: float = model.BACKOFF_BASE
    removed_grace: float = model.REMOVED_GRACE
    """Seconds a removed instance's directory (its logs) is kept."""
    placement: cgroups.Placement = cgroups.NONE
    script_logs: scriptlogs.LogLimit = field(default_factory=scriptlogs.LogLimit)
    metrics_address: str = ""
    """`host:port` of /metrics, /healthz and /readyz; "" serves none."""
    more_metrics: tuple[metrics.CollectorRegistry, ...] = ()
    """Registries served on the same endpoint (`discoverd up`: its controller's)."""
    artifacts: artifacts.Settings = field(default_factory=artifacts.Settings)
    """The artifact cache's size, the fetch's limits and timeouts (docs/agent.md, "Artifacts")."""
    keep_versions: int = 0
    """Installs kept per service beyond those in use and each instance's previous one (`prune`)."""
    api_address: str = ""
    """`host:port` of the log API (HTTPS); "" serves none."""
    api_advertise: str = ""
    """`host[:port]` published in the agent status for readers; "" publishes the bound address."""
    api_limits: logserver.Limits = field(default_factory=logserver.Limits)
    log_index_interval: float = 1.0
    """Seconds between two looks at every log's size (the timestamps' resolution)."""
    identity: identity.Source | None = None
    """Node identity: get this server's etcd credentials from the operator (and renew them) instead of
    using the ones in the etcd options."""


class Agent:
    def __init__(
        self,
        etcd: EtcdOptions,
        options: Options,
        on_status: Callable[[model.Ref, status.Summary], None] | None = None,
    ) -> None:
        self.etcd = etcd
        self.options = options
        self.on_status = on_status
        self.layout = layout_.Layout(options.state_dir)
        ctx = invocation.Context(
            options.server_id, options.host_namespaces, options.host_pid, options.placement, options.script_logs
        )
        self._wake = asyncio.Event()
        self.metrics = metrics.AgentMetrics(p.value for p in Phase)
        self.metrics_server: metrics.Server | None = None
        """The /metrics, /healthz and /readyz endpoint while it serves (None: not asked for, or the bind failed)."""
        self.executor = executor_.Executor(
            self.layout,
            ctx,
            self._wake.set,
            self.metrics,
            artifacts.Artifacts(options.state_dir, options.artifacts, self.metrics),
            options.keep_versions,
        )
        self.entries: dict[str, Entry] | None = None
        self.desired = desired_.Desired()
        self._summaries: dict[model.Ref, status.Summary] = {}
        self.store: Store | None = None
        self.writer: status.Writer | None = None
        self.watch: scope.ScopedWatch | None = None
        self._rejected: set[tuple[model.Ref | None, str]] = set()
        self.log_server: logserver.LogServer | None = None
        self.renewer = identity.Renewer(options.identity) if options.identity is not None else None

    def _kv(self, **more: object) -> dict[str, object]:
        return logs.kv(server=self.options.server_id, **more)

    async def _etcd_options(self) -> EtcdOptions:
        """The etcd options, with this server's own credentials when they come from the operator."""
        if self.renewer is None:
            return self.etcd
        credentials = self.renewer.current or await self.renewer.first()
        return self.etcd.model_copy(update={"user": credentials.user, "password": credentials.password})

    def _connect_failed(self, error: StoreUnavailable) -> None:
        if self.renewer is not None and "authentication failed" in str(error):
            self.renewer.current = None  # expired while etcd was away: ask the operator again

    # the watch

    def _set_entries(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        waiting = self.watch.waiting if self.watch is not None else frozenset()
        self.desired = desired_.resolve(
            entries, self.etcd.prefix, self.options.server_id, self.desired.refs, self.desired.drain, waiting
        )
        self._log_rejected()
        self._wake.set()

    def _log_rejected(self) -> None:
        """Log each invalid or missing document once (per instance and reason), not on every pass."""
        now: set[tuple[model.Ref | None, str]] = set()
        if self.desired.server_error is not None:
            now.add((None, self.desired.server_error))
        for ref, want in self.desired.instances.items():
            if isinstance(want, model.Broken):
                now.add((ref, want.message))
        for which, reason in now - self._rejected:
            where = {} if which is None else {"service": which.service, "instance": which.instance}
            log.warning("Rejected configuration", extra=self._kv(**where, reason=reason))
        self._rejected = now

    async def _etcd(self) -> None:
        """Connect once; then the status writer and the watch, each restarted if it crashes."""
        if self.store is None:
            self.store = await connect.retrying(
                self._etcd_options, context={"server": self.options.server_id}, on_failure=self._connect_failed
            )
            if self.renewer is not None:
                self.store.client.on_refused = self.renewer.refused
        if self.writer is None:
            self.writer = status.Writer(self.store, self.options.server_id, self.options.lease_ttl)
            if self.log_server is not None:
                self.writer.api_address = self.log_server.advertised
                self.writer.api_cert_sha256 = self.log_server.cert_sha256
        if self.watch is None:
            self.watch = scope.ScopedWatch(
                self.store, self.options.server_id, self._set_entries, on_lost=self.metrics.etcd_reconnects.inc
            )
        context = {"server": self.options.server_id}
        jobs = [
            runtime.supervise("status writer", self.writer.run, context=context),
            runtime.supervise("etcd watch", self.watch.run, context=context),
        ]
        if self.renewer is not None:
            jobs.append(runtime.supervise("node credentials", self._renew, context=context))
        await asyncio.gather(*jobs)

    async def _renew(self) -> None:
        """Swap in new credentials before the current ones expire: same client, watch, lease and instances."""
        assert self.renewer is not None and self.store is not None
        while True:
            credentials = await self.renewer.next()
            await self.store.client.use_credentials(credentials.user, credentials.password)

    # reconcile

    async def _reconcile(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            wake_at = now + _IDLE_PASS
            if self.entries is not None:
                began = time.monotonic()
                states = self.executor.states()
                actions = plan.plan(
                    self.desired.instances,
                    states,
                    now,
                    self.options.backoff_base,
                    self.options.removed_grace,
                    self.desired.drain,
                )
                self.executor.execute(actions)
                for action in actions:
                    if isinstance(action, plan.Wait):
                        wake_at = min(wake_at, action.until)
                self._report()
                self.metrics.reconcile_seconds.observe(time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, wake_at - time.time()))

    def _report(self) -> None:
        """Rebuild every instance's status from its state; hand what changed to the writer."""
        wanted = self.desired.instances
        drained = self.desired.drain is not None
        summaries: dict[model.Ref, status.Summary] = {}
        for ref, sup in self.executor.supervisors.items():
            state = sup.state
            if ref in wanted or state.removed_at is None:  # a removed one has no status key
                summaries[ref] = status.summarize(wanted.get(ref), state, self.options.backoff_base, drained)
        for ref in wanted.keys() - summaries.keys():
            blank = model.InstanceRecord(ref=ref)
            summaries[ref] = status.summarize(wanted[ref], blank, self.options.backoff_base, drained)
        for ref, summary in summaries.items():
            old = self._summaries.get(ref)
            if old != summary:
                fields = self._kv(service=ref.service, instance=ref.instance, version=summary.version or "")
                if old is not None and old.phase != summary.phase:
                    log.info(f"Changed phase to {summary.phase}", extra={**fields})
                if self.on_status is not None:
                    self.on_status(ref, summary)
        self._summaries = summaries
        self.metrics.set_phases(s.phase for s in summaries.values())
        if self.writer is not None:
            self.writer.update(summaries, self.desired.server_error or "", status.drain_phase(drained, summaries))

    # logs

    def known(self, ref: model.Ref) -> bool:
        """For the log server: `ref` is this server's, listed or with its files still kept."""
        return ref in self.desired.instances or ref in self.executor.supervisors

    def live(self, ref: model.Ref) -> bool:
        """For the log server: a follow of `ref` goes on (listed, running, or the configuration not read yet)."""
        if ref in self.desired.instances:
            return True
        sup = self.executor.supervisors.get(ref)
        if sup is None:
            return False
        return self.entries is None or sup.state.process is not None or sup.state.step is not None

    async def _serve_logs(self) -> None:
        where = metrics.parse_address(self.options.api_address)
        if where is None:
            return
        server = logserver.LogServer(
            self.options.server_id,
            self.etcd.prefix,
            self.layout.log_file,
            self.options.script_logs.keep,
            lambda: self.store,
            self,
            self.options.api_limits,
        )
        try:
            await server.start(*where, self.options.api_advertise)
        except OSError as error:
            # Not fatal: the instances run on; only their logs cannot be read from afar.
            log.error("Failed to serve logs", extra=self._kv(address=self.options.api_address, reason=str(error)))
            return
        self.log_server = server

    async def _index_logs(self) -> None:
        """Every `log_index_interval`, note how far each instance's logs have grown (`logindex`)."""
        sampler = logindex.Sampler(self.options.script_logs.keep)
        steps_ = ("download", "install", "run", "health")
        while True:
            refs = list(self.executor.supervisors)
            paths = [self.layout.log_file(ref, step) for ref in refs for step in steps_]
            await asyncio.to_thread(sampler.sample, paths)
            await asyncio.sleep(self.options.log_index_interval)

    # health

    def ready(self) -> str | None:
        """None when connected to etcd with a current watch; else why not (for /readyz)."""
        if self.store is None:
            return "not connected to etcd yet"
        if self.watch is None or not self.watch.current:
            return "no current etcd watch (etcd unreachable, or reading this server's keys again)"
        lag = metrics.since(self.watch.last_heard)
        if lag > self.watch.stall_after:
            return f"the etcd watch has been silent for {lag:.0f}s"
        return None

    def _refresh(self) -> None:
        self.metrics.watch_lag.set(metrics.since(self.watch.last_heard if self.watch is not None else None))

    # main

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; instances keep running afterwards unless told to stop them."""
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.executor.adopt_all()
        log.info(
            "Started agent", extra=self._kv(state_dir=str(self.layout.root), adopted=len(self.executor.supervisors))
        )
        context = {"server": self.options.server_id}
        registries = [self.metrics.registry, *self.options.more_metrics]
        server = self.metrics_server = await metrics.serve(self.options.metrics_address, registries, self.ready)
        if server is not None:
            server.before_scrape = self._refresh
        await self._serve_logs()
        running = [
            asyncio.create_task(runtime.supervise("etcd", self._etcd, context=context), name="etcd"),
            asyncio.create_task(runtime.supervise("reconcile", self._reconcile, context=context), name="reconcile"),
            asyncio.create_task(runtime.supervise("log index", self._index_logs, context=context), name="log index"),
        ]
        try:
            await stop.wait()
        finally:
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if server is not None:
                self.metrics_server = None
                await server.close()
            if self.log_server is not None:
                await self.log_server.close()
                self.log_server = None
            await self.executor.shutdown(self.options.stop_instances_on_exit)
            if self.writer is not None:
                await self.writer.close()
            if self.store is not None:
                await self.store.close()
            log.info("Stopped agent", extra=self._kv(stopped_instances=self.options.stop_instances_on_exit))
