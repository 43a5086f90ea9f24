"""Carry out the plan: each instance's actions in its own task, so none waits for another.

`loop` calls `states()` and, after every `plan`, `execute(actions)`. Actions
are grouped by instance and handed to that instance's `Supervisor` in a task
of its own; an instance with a task under way has a `step` and gets no new
actions until it is done. The executor acts, never decides: it also owns what
is shared between instances (one install at a time per version, pruning old
installs) and the shutdown of every task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Callable

from discoverd import logs
from discoverd.agent import artifacts as artifacts_
from discoverd.agent import invocation, model, plan, processes, prune, supervisor
from discoverd.agent import layout as layout_
from discoverd.metrics import AgentMetrics

__all__ = ["Executor"]

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self,
        layout: layout_.Layout,
        ctx: invocation.Context,
        notify: Callable[[], None],
        metrics: AgentMetrics | None = None,
        artifacts: artifacts_.Artifacts | None = None,
        keep_versions: int = 0,
    ) -> None:
        self.metrics = metrics
        self.artifacts = artifacts
        self.keep_versions = keep_versions
        self.layout = layout
        self.ctx = ctx
        self.notify = notify
        self.supervisors: dict[model.Ref, supervisor.Supervisor] = {}
        self.tasks: dict[model.Ref, asyncio.Task[None]] = {}
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._rng = random.Random()
        self._sweeper = processes.Sweeper()

    def _supervisor(self, ref: model.Ref) -> supervisor.Supervisor:
        sup = self.supervisors.get(ref)
        if sup is None:
            sup = supervisor.Supervisor(
                ref,
                self.layout,
                self.ctx,
                self.notify,
                self._lock,
                self._prune,
                random.Random(self._rng.random()),
                self._sweeper,
                self.metrics,
                self.artifacts,
            )
            self.supervisors[ref] = sup
        return sup

    def _lock(self, service: str, version: str) -> asyncio.Lock:
        return self._locks[(service, version)]

    def adopt_all(self) -> None:
        """Supervise again every instance with a record or a directory on disk (after an agent restart)."""
        self.layout.prepare()
        for ref in sorted({*self.layout.recorded(), *self.layout.instance_dirs()}):
            sup = self._supervisor(ref)
            if not sup.adopt():
                del self.supervisors[ref]

    def states(self) -> dict[model.Ref, model.InstanceRecord]:
        """Every known instance's state, with its service's install markers (read once per service)."""
        installed: dict[str, frozenset[tuple[str, str]]] = {}
        states = {}
        for ref, sup in self.supervisors.items():
            if ref.service not in installed:
                installed[ref.service] = self.layout.installed(ref.service)
            states[ref] = sup.snapshot(installed[ref.service])
        return states

    def execute(self, actions: list[plan.Action]) -> None:
        """Start a task per instance for its actions (Wait actions are the loop's business)."""
        by_ref: dict[model.Ref, list[plan.Action]] = defaultdict(list)
        for action in actions:
            if not isinstance(action, plan.Wait):
                by_ref[action.ref].append(action)
        for ref, todo in by_ref.items():
            if ref in self.tasks:
                continue  # plan gives no actions to a busy instance; this is only a guard
            sup = self._supervisor(ref)
            sup.begin(todo)
            task = asyncio.create_task(self._run(sup, todo), name=f"instance {ref}")
            self.tasks[ref] = task

    async def _run(self, sup: supervisor.Supervisor, todo: list[plan.Action]) -> None:
        try:
            await sup.execute(todo)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Failed an action", extra=logs.kv(service=sup.ref.service, instance=sup.ref.instance))
        finally:
            self.tasks.pop(sup.ref, None)
            kv = logs.kv(service=sup.ref.service, instance=sup.ref.instance)
            if any(isinstance(a, plan.Remove) for a in todo) and sup.state.removed_at is not None:
                await sup.close(stop=False)  # its state stays, as a tombstone, until `plan` forgets it
                log.info("Removed instance", extra=kv)
            if any(isinstance(a, plan.Forget) for a in todo):
                await sup.close(stop=False)
                self.supervisors.pop(sup.ref, None)
                log.info("Forgot instance", extra=kv)
            self.notify()

    def _prune(self, ref: model.Ref, previous: str | None) -> None:
        """After `ref` counted as started: remove the service's installs no instance needs (`prune`)."""
        removed = prune.prune(
            self.layout,
            ref.service,
            (sup.state for sup in self.supervisors.values()),
            previous,
            lambda version: self._locks[(ref.service, version)].locked(),
            self.keep_versions,
        )
        for version in removed:
            if self.artifacts is not None:
                self.artifacts.unpin(ref.service, version)

    async def shutdown(self, stop_instances: bool) -> None:
        """Cancel every step under way (killing its process group); stop the run processes if asked."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(sup.close(stop_instances) for sup in self.supervisors.values()))
        await self._sweeper.close()
        if self.artifacts is not None:
            await self.artifacts.close()
