"""Status documents rebuilt from observation and written to etcd under the agent's lease.

Last stage of the agent's flow: after each pass `loop` calls `summarize` for
every instance (a pure function of the desired state and the instance's `model.InstanceRecord`) and hands the
results to the `Writer`. The writer holds one lease (kept alive every third
of its TTL), writes `status/agent` when it gets a lease, and writes an
instance's status only when its summary changed, so an idle agent sends
nothing but keep-alives. When the lease is lost (etcd was away longer than the
TTL) it takes a new one and writes everything again. A status key whose
instance is gone is deleted (before any put: see `_flush`); a put etcd refuses
(an instance whose key the controller has not granted yet) does not hold up
the others and is tried again with back-off. Beside the status, the writer
keeps one listing key per service with an instance here
(`services/<service>/servers/<id>`, `keys.listing`, not on the lease): the
index a rollout start reads instead of every server's keys. Messages are cut to
`documents.MAX_MESSAGE_BYTES` before they are written: the agent never writes a
status its readers refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from collections.abc import Mapping

from discoverd import __version__, logs, runtime
from discoverd.agent import model, states
from discoverd.errors import Conflict, PermissionDenied, StoreUnavailable
from discoverd.schema import documents, keys
from discoverd.schema.documents import Phase
from discoverd.store import leases
from discoverd.store.typed import Store, Write

__all__ = ["Summary", "Writer", "drain_phase", "summarize"]

log = logging.getLogger(__name__)


Summary = documents.InstanceState
"""An instance's status without its timestamps: what is compared to decide whether to write."""


def _with(base: Summary, **changes: object) -> Summary:
    return base.model_copy(update=changes)


def summarize(
    want: model.Target | model.Broken | None,
    s: model.InstanceRecord,
    backoff_base: float = model.BACKOFF_BASE,
    drained: bool = False,
) -> Summary:
    """The status of one instance, its message cut to the cap every reader checks.

    `drained`: the server is drained; an instance with nothing running is `Drained`.
    """
    summary = _summarize(want, s, backoff_base, drained)
    message = documents.clip(summary.message)
    return summary if message == summary.message else _with(summary, message=message)


def _summarize(
    want: model.Target | model.Broken | None, s: model.InstanceRecord, backoff_base: float, drained: bool
) -> Summary:
    """The status of one instance, from what is wanted and its state (the rules are `model`'s)."""
    p = s.process
    base = Summary(
        phase=Phase.PENDING,
        version=p.version if p else (s.current.version if s.current else None),
        previous_version=s.previous_version,
        pid=p.pid if p else None,
        restarts=s.restarts,
        last_exit_code=s.last_exit.code if s.last_exit else None,
        message=documents.clip(s.message),
        restart_token=p.restart_token if p else None,
    )
    unhealthy = isinstance(want, model.Target) and s.unhealthy(want)
    if s.step is model.Step.STOPPING and unhealthy and p is not None:
        return _with(base, phase=Phase.UNHEALTHY, message=f"{s.message}; stopping it")
    if s.step is not None:
        return _with(base, phase=Phase(s.step.value))
    if want is None:
        return _with(base, phase=Phase.STOPPING, message="removed from the server")
    if drained and p is None:
        return _with(base, phase=Phase.DRAINED, message="the server is drained: `discoverd undrain` starts it again")
    if isinstance(want, model.Broken):
        running = f"; still running version {p.version}, its last valid configuration" if p else ""
        return _with(base, phase=Phase.FAILED, message=want.message + running)
    reason = s.rejected.get(want.config_hash)
    if reason is not None:
        if p is not None and s.good is not None and p.config_hash == s.good.config_hash:
            message = f"rolled back from version {want.version} to {s.good.version}: {reason}"
            return _with(base, phase=Phase.ROLLED_BACK, previous_version=want.version, message=message)
        return _with(base, phase=Phase.FAILED, message=reason)
    if p is not None:
        if unhealthy:
            return _with(base, phase=Phase.UNHEALTHY)
        if s.in_probation(p.config_hash):
            return _with(base, phase=Phase.STARTING)
        return _with(base, phase=Phase.RUNNING)
    until = s.backoff_until(backoff_base)
    if until is not None and s.last_exit is not None:
        delay = until - s.last_exit.at
        return _with(base, phase=Phase.BACK_OFF, message=f"{s.message}; restarting in {delay:.1f} s")
    return base


def drain_phase(drained: bool, summaries: Mapping[model.Ref, Summary]) -> documents.DrainPhase | None:
    """The agent's drain phase: None when not drained, `Drained` once no instance is anything else."""
    if not drained:
        return None
    if all(s.phase is Phase.DRAINED for s in summaries.values()):
        return documents.DrainPhase.DRAINED
    return documents.DrainPhase.DRAINING


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Refused(Exception):
    """Status or listing keys etcd refused (not granted yet); every other key was written."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(", ".join(keys))


class Writer:
    """Writes status to etcd under one lease; retries while etcd is away."""

    def __init__(self, store: Store, server_id: str, ttl: int = 15) -> None:
        self.store = store
        self.server_id = server_id
        self.ttl = ttl
        self.started_at = _now()
        self.lease: int | None = None
        self.agent_message = ""
        self.drain: documents.DrainPhase | None = None
        self._written_drain: documents.DrainPhase | None = None
        self.api_address: str | None = None
        """Where this agent serves its logs, and its certificate's SHA-256: published in `status/agent`."""
        self.api_cert_sha256: str | None = None
        self._wanted: dict[model.Ref, Summary] = {}
        self._history: dict[model.Ref, list[documents.PhaseChange]] = {}
        """Per instance, its last phase changes (the last one is the current phase and its `since`)."""
        self._written: dict[model.Ref, Summary] = {}
        self._written_agent_message: str | None = None
        self._dirty = asyncio.Event()
        self._down_since: float | None = None
        self._refused: list[str] = []
        """Instance status keys etcd refused on the last try (logged when they change)."""
        self._listed: set[str] = set()
        """Services whose listing key this agent knows to exist (written, or found there)."""

    def update(
        self,
        summaries: Mapping[model.Ref, Summary],
        agent_message: str,
        drain: documents.DrainPhase | None = None,
    ) -> None:
        """The statuses to have in etcd now; written by `run` when they differ from what was written."""
        now = _now()
        for ref, summary in summaries.items():
            history = self._history.setdefault(ref, [])
            if not history or history[-1].phase != summary.phase:
                if history and not states.expected(history[-1].phase, summary.phase):
                    log.warning(
                        "Changed phase unexpectedly",
                        extra=logs.kv(
                            server=self.server_id,
                            service=ref.service,
                            instance=ref.instance,
                            old=history[-1].phase.value,
                            new=summary.phase.value,
                            reason=summary.message,
                        ),
                    )
                history.append(documents.PhaseChange(phase=summary.phase, at=now, version=summary.version))
                del history[: -documents.MAX_PHASE_HISTORY]
        for ref in set(self._history) - set(summaries):
            del self._history[ref]
        self._wanted = dict(summaries)
        self.agent_message = agent_message
        self.drain = drain
        if self._wanted != self._written or self._agent_changed():
            self._dirty.set()

    def _agent_changed(self) -> bool:
        return self.agent_message != self._written_agent_message or self.drain != self._written_drain

    async def _grant(self) -> None:
        self.lease = await leases.grant(self.store, self.ttl)
        self._written.clear()
        self._written_agent_message = None
        log.info("Granted lease", extra=logs.kv(server=self.server_id, lease=f"{self.lease:x}", ttl=self.ttl))

    async def _flush(self) -> None:
        assert self.lease is not None
        prefix = self.store.prefix
        services = {ref.service for ref in self._wanted}
        # A listing goes with the last status key of its service, just before it: the role may write
        # a listing while a status key of its service exists (store/auth.server_grants).
        for service in sorted(self._listed - services):
            try:
                await self.store.delete(keys.listing(prefix, service, self.server_id))
            except PermissionDenied:
                # No longer writable: a stale listing only costs a rollout start one server read.
                log.info("Left a listing", extra=logs.kv(server=self.server_id, service=service))
            self._listed.discard(service)
        # Deletes first: etcd refuses every put on a lease while a key attached to it is not writable
        # by this server's user, and the controller revokes a status key's write once the key is gone.
        for ref in list(set(self._written) - set(self._wanted)):
            await self.store.delete(keys.instance_status(prefix, self.server_id, ref.service, ref.instance))
            del self._written[ref]
        if self._agent_changed():
            now = _now()
            doc = documents.AgentStatus(
                hostname=documents.clip(socket.gethostname(), documents.MAX_HOSTNAME_BYTES),
                agent_version=__version__,
                started_at=self.started_at,
                heartbeat=now,
                lease_ttl=self.ttl,
                message=documents.clip(self.agent_message),
                drain=self.drain,
                api_address=self.api_address,
                api_cert_sha256=self.api_cert_sha256,
            )
            await self.store.put(keys.agent_status(prefix, self.server_id), doc, lease=self.lease)
            self._written_agent_message = self.agent_message
            self._written_drain = self.drain
        refused: list[str] = []
        for service in sorted(services - self._listed):
            key = keys.listing(prefix, service, self.server_id)
            try:
                # Created only when missing: an agent restart rewrites nothing, and nothing watching
                # `services/` sees an event for a listing that did not change.
                await self.store.apply([Write(key, documents.dumps(documents.Listing()), expect=0)])
            except Conflict:
                pass  # already there
            except PermissionDenied:
                refused.append(key)
                continue
            self._listed.add(service)
        for ref, summary in list(self._wanted.items()):
            if self._written.get(ref) == summary:
                continue
            history = self._history.get(ref) or [documents.PhaseChange(phase=summary.phase, at=_now())]
            status = documents.InstanceStatus(
                **summary.model_dump(), since=history[-1].at, updated_at=_now(), history=list(history)
            )
            key = keys.instance_status(prefix, self.server_id, ref.service, ref.instance)
            try:
                await self.store.put(key, status, lease=self.lease)
            except PermissionDenied:
                # A newly listed instance whose key the controller has not granted yet: write the
                # others, and this one again after a back-off (raised once the others are written).
                refused.append(key)
                continue
            self._written[ref] = summary
        if refused:
            raise _Refused(refused)

    async def run(self) -> None:
        """Hold the lease and keep etcd's status equal to the wanted one; never returns."""
        loop = asyncio.get_running_loop()
        keepalive_every = max(1.0, self.ttl / 3)
        next_keepalive = loop.time() + keepalive_every
        backoff = runtime.Backoff()
        while True:
            try:
                if self.lease is None:
                    await self._grant()
                    next_keepalive = loop.time() + keepalive_every
                elif self._down_since is not None or loop.time() >= next_keepalive:
                    # After an outage, learn first whether the lease outlived it.
                    await leases.keep_alive_once(self.store, self.lease)
                    next_keepalive = loop.time() + keepalive_every
                self._dirty.clear()
                try:
                    await self._flush()
                except StoreUnavailable as error:
                    if "lease not found" in str(error):
                        raise leases.LeaseExpired(str(error)) from error
                    raise
                if self._down_since is not None:
                    log.info("Reached etcd again", extra=logs.kv(after=f"{loop.time() - self._down_since:.1f}s"))
                    self._down_since = None
                backoff.reset()
                self._refused = []
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), max(0.0, next_keepalive - loop.time()))
            except leases.LeaseExpired:
                log.warning("Lost lease", extra=logs.kv(server=self.server_id, lease=f"{self.lease or 0:x}"))
                self.lease = None
            except _Refused as error:
                wait = backoff.next()
                if error.keys != self._refused:
                    log.info(
                        "Waiting for permission to write status",
                        extra=logs.kv(server=self.server_id, keys=",".join(error.keys), retry_in=f"{wait:.3f}s"),
                    )
                self._refused = error.keys
                await asyncio.sleep(wait)
            except StoreUnavailable as error:
                if self._down_since is None:
                    self._down_since = loop.time()
                    log.warning("Failed to write status", extra=logs.kv(reason=str(error)))
                await asyncio.sleep(backoff.next())

    async def close(self) -> None:
        """Revoke the lease: the status keys go at once and the server shows offline."""
        if self.lease is not None:
            try:
                await asyncio.wait_for(leases.revoke(self.store, self.lease), self.store.client.etcd_options.timeout)
            except (StoreUnavailable, TimeoutError) as error:
                log.info("Left the lease to expire", extra=logs.kv(ttl=self.ttl, reason=str(error)))
            self.lease = None
