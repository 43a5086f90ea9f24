"""The controller's main: campaign; while leading, watch what rollouts need, plan each rollout, write each step.

`run` loops forever: campaign for the leader key (`leader`), then act until
the lease is lost or `stop` is set. Acting is a read at one revision and a
watch from the next of what rollouts need (`scope`: the rollout keys, and
the instances and reports of rollouts not settled), and after every change
(or when `plan` asked to be woken) one `plan` per service with a rollout
config (a new rollout waits until `scope` has read its instances). A step's
instance writes and its new status go to etcd in one transaction, each
instance guarded by its mod_revision and the status by its own: the step
happens whole or not at all, and once. A successful step goes into the cache
at once (`World.wrote`), so the next step (a revert after a failure) follows
without waiting for the watch; after a lost compare-and-swap, nothing until
the watch brings the newer values. Beside the passes, a task of its own keeps
the etcd roles of servers in step with their documents (`roles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable

from discoverd import logs, metrics, runtime
from discoverd.config import EtcdOptions
from discoverd.controller import leader, plan, roles, scope, world
from discoverd.errors import Compacted, Conflict, StoreUnavailable
from discoverd.schema import documents, keys, rollouts, untrusted
from discoverd.store import connect, leases, watch
from discoverd.store.typed import Store, Write

__all__ = ["Controller", "run"]

log = logging.getLogger(__name__)

_IDLE = 30.0
"""Seconds between passes when nothing changes (a safety net: passes are event-driven)."""
PENDING = "Pending"
"""The phase counted for a rollout config with no status yet."""
PHASES = (PENDING, *(p.value for p in rollouts.RolloutPhase))
_CHAINED = 8
"""Steps of one rollout written back to back in a pass (a failure and its revert are two)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Controller:
    """One copy of the controller. `steps` counts the steps it wrote (for logs and the bench)."""

    def __init__(
        self,
        store: Store,
        identity: str,
        ttl: int = 10,
        clock: Callable[[], dt.datetime] = _now,
        metrics_: metrics.ControllerMetrics | None = None,
    ) -> None:
        self.metrics = metrics_ or metrics.ControllerMetrics(PHASES)
        self.store = store
        self.identity = identity
        self.ttl = ttl
        self.clock = clock
        self.world = world.World()
        self.scope = scope.Scope(store, self.world)
        self.roles = roles.Roles(store)
        """Server roles kept in step with server documents while leading (`controller/roles.py`)."""
        self.steps = 0
        self._wake = asyncio.Event()
        self._invalid: dict[str, int] = {}
        self.leading = False
        self.resync = runtime.Resync("controller")
        """Readiness while leading: the cache follows etcd from a full read (the runtime kit's loop)."""
        self.etcd_error: str | None = None
        """Why etcd failed last (cleared by the next success): for /readyz."""

    # one pass

    async def _step(self, service: str) -> dt.datetime | None:
        """Plan and write the steps of one rollout until it waits; when to look again because of time."""
        for _ in range(_CHAINED):
            r = self.world.rollout(service)
            if r is None:
                return None
            config = r.config.document
            if not isinstance(config, rollouts.RolloutConfig):
                if self._invalid.get(r.config.key) != r.config.mod_revision:
                    self._invalid[r.config.key] = r.config.mod_revision
                    log.warning("Ignored invalid rollout config", extra=logs.kv(reason=str(r.config.error)))
                return None
            if not self.world.covers(service):
                return None  # settled, or its instances not read yet (`scope` wakes us when they are)
            decision = plan.plan(config, r.status, r.status_revision, self.world.members(service), self.clock())
            if decision.status is None and not decision.writes:
                return decision.wake_at
            prefix = self.store.prefix
            writes = [
                Write(keys.instance_config(prefix, service, w.id), documents.dumps(w.doc), w.expect)
                for w in decision.writes
            ]
            if decision.status is not None:
                status_key = keys.rollout_status(prefix, service)
                data = rollouts.fit(decision.status)
                if data is None:  # nothing is written rather than a status no reader accepts (it would erase
                    self._too_large(service, r)  # from_versions, the revert's target)
                    return None
                writes.append(Write(status_key, data, r.status_revision))
            try:
                revision = await self.store.apply(writes)
            except Conflict as error:
                # Our cache was behind: the watch brings the newer values, and with them another pass.
                log.info("Lost a compare-and-swap; planning again", extra=logs.kv(service=service, reason=str(error)))
                return None
            self.world.wrote(prefix, ((w.key, w.value or b"") for w in writes), revision)
            self.steps += 1
            self.metrics.steps.inc()
            self._log(service, r, decision, revision)
        return self.clock()  # more to do: come back at once

    def _too_large(self, service: str, r: world.Rollout) -> None:
        if self._invalid.get(f"{service}/too-large") != r.status_revision:
            self._invalid[f"{service}/too-large"] = r.status_revision
            log.error(
                "Refused to write a rollout status over the size every reader accepts; the rollout waits",
                extra=logs.kv(service=service, limit=untrusted.MAX_VALUE_BYTES),
            )

    def _log(self, service: str, r: world.Rollout, decision: plan.Decision, revision: int) -> None:
        status = decision.status
        if status is not None and (decision.writes or r.status is None or status.phase != r.status.phase):
            log.info(
                f"Wrote rollout step: {status.phase.value}",
                extra=logs.kv(
                    service=service,
                    to_version=status.to_version,
                    wrote=",".join(f"{w.id}={w.doc.service_version}" for w in decision.writes) or "-",
                    message=status.message,
                    revision=revision,
                ),
            )

    async def _pass(self) -> float:
        """Plan every rollout once; seconds until time alone needs another pass."""
        wake_at: dt.datetime | None = None
        for r in self.world.rollouts():
            when = await self._step(r.service)
            if when is not None:
                wake_at = when if wake_at is None else min(wake_at, when)
        self._count()
        if wake_at is None:
            return _IDLE
        return max(0.01, (wake_at - self.clock()).total_seconds())

    def _count(self) -> None:
        """Rollouts by phase, from this copy's cache ("Pending": a config without a status yet)."""
        self.metrics.set_phases(
            (r.status.phase.value if r.status is not None else PENDING) for r in self.world.rollouts()
        )

    def ready(self) -> str | None:
        """None when etcd answers and, while leading, the watch is current; else why not (for /readyz)."""
        failure = self.etcd_error or (self.resync.failure if self.leading else None)
        if failure is not None:
            return f"etcd unavailable: {failure}"
        if self.leading and not self.resync.current:
            return "leading without a current etcd watch (reading the prefix again)"
        return None

    # acting

    async def _follow(self, stream: watch.Stream) -> None:
        async for watch_id, events in stream.responses():
            self.resync.heard()
            if watch_id != watch.PROGRESS and events:  # events: what the scope's key filter let through
                await self.scope.apply(stream, events)
                self._wake.set()

    async def _act(self) -> None:
        async with watch.Stream(self.store, where=self.scope.wanted) as stream:
            await self.scope.read_all(stream)
            self.etcd_error = None
            self.resync.synced()
            await self._follow_and_pass(stream)

    async def _follow_and_pass(self, stream: watch.Stream) -> None:
        follower = asyncio.create_task(self._follow(stream), name="controller watch")
        # Server roles: their own read and watch of servers/ (only while etcd auth is on), their own task.
        feeder = asyncio.create_task(
            runtime.supervise("server roles watch", self.roles.follow), name="server roles watch"
        )
        keeper = asyncio.create_task(self.roles.run(), name="server roles")
        try:
            while True:
                if follower.done():
                    follower.result()  # raises why the watch ended
                    return
                self._wake.clear()
                timeout = await self._pass()
                waiter = asyncio.create_task(self._wake.wait())
                await asyncio.wait([waiter, follower], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            for task in (keeper, feeder):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            follower.cancel()
            stream.close()  # a read pending in gRPC ends now, not at the next progress notification
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, Compacted):
                await follower

    async def lead(self, lease: int) -> None:
        """Act while the lease holds; return when it is lost.

        Acting is a resync-then-watch loop (`runtime.Resync`): a lost or compacted watch reads
        everything again, after a back-off while etcd is unreachable.
        """
        holder = asyncio.create_task(leader.hold(self.store, lease, self.ttl), name="leader lease")
        actor = asyncio.create_task(self.resync.run(self._act), name="controller")
        self.leading = True
        self.metrics.leader.set(1)
        try:
            await asyncio.wait([actor, holder], return_when=asyncio.FIRST_COMPLETED)
            if actor.done():
                actor.result()  # only a bug ends the loop: raise it
        finally:
            self.leading = False
            self.resync.lose()
            self.metrics.leader.set(0)
            self.metrics.set_phases(())  # only the leader's cache is current
            for task in (actor, holder):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead, campaign again...; until `stop` is set (then give the lease back at once)."""
        stopper = asyncio.create_task(stop.wait())
        backoff = runtime.Backoff()
        try:
            while not stop.is_set():
                lease: int | None = None
                try:
                    campaigner = asyncio.create_task(leader.campaign(self.store, self.identity, self.ttl))
                    await asyncio.wait([campaigner, stopper], return_when=asyncio.FIRST_COMPLETED)
                    if not campaigner.done():
                        campaigner.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await campaigner
                        return
                    lease = campaigner.result()
                    self.etcd_error = None
                    backoff.reset()
                    leading = asyncio.create_task(self.lead(lease))
                    await asyncio.wait([leading, stopper], return_when=asyncio.FIRST_COMPLETED)
                    leading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await leading
                except StoreUnavailable as error:
                    self.etcd_error = str(error)
                    wait = backoff.next()
                    log.warning(
                        "etcd is unavailable; campaigning again",
                        extra=logs.kv(reason=str(error), retry_in=f"{wait:.3f}s"),
                    )
                    await asyncio.sleep(wait)
                finally:
                    if lease is not None:
                        with contextlib.suppress(StoreUnavailable):
                            await leases.revoke(self.store, lease)
        finally:
            stopper.cancel()


def identity() -> str:
    """Who leads, as the leader key shows it: host and pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


async def run(
    options: EtcdOptions,
    stop: asyncio.Event,
    ttl: int = 10,
    metrics_address: str = "",
    metrics_: metrics.ControllerMetrics | None = None,
) -> None:
    """Connect (retrying while etcd is away) and run one controller until `stop` is set.

    `metrics_address`: `host:port` of its /metrics, /healthz and /readyz ("" serves none);
    `metrics_`: the metrics to update, when another component serves them (the operator).
    """
    m = metrics_ or metrics.ControllerMetrics(PHASES)
    copy: list[Controller] = []

    def ready() -> str | None:
        return copy[0].ready() if copy else "not connected to etcd yet"

    server = await metrics.serve(metrics_address, [m.registry], ready)
    try:
        store = await connect.retrying(options)
        try:
            log.info("Started controller", extra=logs.kv(identity=identity(), prefix=options.prefix, ttl=ttl))
            copy.append(Controller(store, identity(), ttl, metrics_=m))
            await copy[0].run(stop)
        finally:
            await store.close()
            log.info("Stopped controller")
    finally:
        if server is not None:
            await server.close()
