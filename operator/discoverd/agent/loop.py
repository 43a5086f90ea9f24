"""The agent's main: watch etcd -> desired; observe -> plan -> execute; status -> etcd.

Three tasks share one event loop:

- the watch keeps every configuration entry under the prefix current: a full
  read at one revision, then a watch from the next; when etcd goes away it
  reconnects with back-off and reads everything again at one revision before
  watching from there (a stalled or compacted watch may have missed events);
- the reconcile pass resolves the desired state, asks `plan` what to do, and
  hands the actions to the `executor`; it runs whenever the configuration
  changes, an instance's task finishes or its process exits, and when a
  planned `Wait` is due;
- the status `Writer` holds the lease and writes what changed.

Nothing here waits on etcd to keep instances running: processes belong to
their supervisors, which need no etcd at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from discoverd import logs
from discoverd.agent import desired as desired_
from discoverd.agent import executor as executor_
from discoverd.agent import layout as layout_
from discoverd.agent import plan, status, steps
from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.documents import Entry, Store

__all__ = ["Agent", "Options"]

log = logging.getLogger(__name__)

_CONFIG_KINDS = (keys.Kind.SERVER, keys.Kind.VERSION, keys.Kind.INSTANCE)
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
    backoff_base: float = plan.BACKOFF_BASE


def _is_config(entry: Entry) -> bool:
    if entry.parsed is not None:
        return entry.parsed.kind in _CONFIG_KINDS
    return entry.error is not None and "/config/" in entry.key


class Agent:
    def __init__(
        self,
        etcd: EtcdOptions,
        options: Options,
        on_status: Callable[[plan.Ref, status.Summary], None] | None = None,
    ) -> None:
        self.etcd = etcd
        self.options = options
        self.on_status = on_status
        self.layout = layout_.Layout(options.state_dir)
        ctx = steps.Context(options.server_id, options.host_namespaces, options.host_pid)
        self._wake = asyncio.Event()
        self.executor = executor_.Executor(self.layout, ctx, self._wake.set)
        self.entries: dict[str, Entry] | None = None
        self.desired = desired_.Desired()
        self._summaries: dict[plan.Ref, status.Summary] = {}
        self.store: Store | None = None
        self.writer: status.Writer | None = None

    def _kv(self, **more: object) -> dict[str, object]:
        return logs.kv(server=self.options.server_id, **more)

    async def _connect(self) -> Store:
        delay = 0.5
        while True:
            try:
                return Store(await client.connect(self.etcd))
            except StoreUnavailable as error:
                log.warning("Failed to connect to etcd", extra=self._kv(reason=str(error), retry_in=f"{delay:g}s"))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # the watch

    def _set_entries(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        self.desired = desired_.resolve(entries, self.etcd.prefix, self.options.server_id, self.desired.refs)
        self._wake.set()

    async def _watch(self, store: Store) -> None:
        revision: int | None = None
        delay = 0.5
        while True:
            try:
                if revision is None:
                    snapshot = await store.snapshot()
                    revision = snapshot.revision
                    self._set_entries({k: e for k, e in snapshot.entries.items() if _is_config(e)})
                    log.info("Read configuration", extra=self._kv(revision=revision, keys=len(self.entries or {})))
                async for batch in watch.watch(store, revision + 1):
                    entries = dict(self.entries or {})
                    changed = False
                    for event in batch:
                        if isinstance(event, watch.Put):
                            if _is_config(event.entry):
                                entries[event.entry.key] = event.entry
                                changed = True
                        elif isinstance(event, watch.Delete):
                            changed = entries.pop(event.key, None) is not None or changed
                        revision = max(revision, event.revision)
                    if changed:
                        self._set_entries(entries)
                    delay = 0.5
            except Compacted as error:
                log.warning("Lost the watch to compaction; reading everything again", extra=self._kv(reason=str(error)))
                revision = None
            except StoreUnavailable as error:
                log.warning(
                    "Lost the etcd watch; reading everything again once etcd answers",
                    extra=self._kv(reason=str(error), revision=revision, retry_in=f"{delay:g}s"),
                )
                # A stalled or broken watch may have missed events silently: start again from a full
                # read at one revision (DESIGN section 3), not from the last revision seen.
                revision = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # reconcile

    async def _reconcile(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            wake_at = now + _IDLE_PASS
            if self.entries is not None:
                actions = plan.plan(self.desired.instances, self.executor.observed(), now, self.options.backoff_base)
                self.executor.execute(actions)
                for action in actions:
                    if isinstance(action, plan.Wait):
                        wake_at = min(wake_at, action.until)
                self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, wake_at - time.time()))

    def _report(self) -> None:
        observed = self.executor.observed()
        summaries: dict[plan.Ref, status.Summary] = {}
        for ref in set(self.desired.instances) | set(observed):
            o = observed.get(ref, plan.Observed(ref))
            summaries[ref] = status.summarize(self.desired.instances.get(ref), o, self.options.backoff_base)
        for ref, summary in summaries.items():
            old = self._summaries.get(ref)
            if old != summary:
                fields = self._kv(service=ref.service, instance=ref.instance, version=summary.version or "")
                if old is not None and old.phase != summary.phase:
                    log.info(f"Changed phase to {summary.phase}", extra={**fields})
                if self.on_status is not None:
                    self.on_status(ref, summary)
        self._summaries = summaries
        if self.writer is not None:
            self.writer.update(summaries, self.desired.server_error or "")

    # main

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; instances keep running afterwards unless told to stop them."""
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.executor.adopt_all()
        log.info(
            "Started agent", extra=self._kv(state_dir=str(self.layout.root), adopted=len(self.executor.supervisors))
        )
        tasks: list[asyncio.Task[None]] = []

        async def connected() -> None:
            self.store = await self._connect()
            self.writer = status.Writer(self.store, self.options.server_id, self.options.lease_ttl)
            tasks.append(asyncio.create_task(self.writer.run(), name="status writer"))
            await self._watch(self.store)

        tasks.append(asyncio.create_task(connected(), name="etcd watch"))
        tasks.append(asyncio.create_task(self._reconcile(), name="reconcile"))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()  # a crashed task is a bug: let it be seen
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.executor.shutdown(self.options.stop_instances_on_exit)
            if self.writer is not None:
                await self.writer.close()
            if self.store is not None:
                await self.store.close()
            log.info("Stopped agent", extra=self._kv(stopped_instances=self.options.stop_instances_on_exit))
