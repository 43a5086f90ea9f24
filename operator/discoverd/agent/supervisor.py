"""One instance's actor: carries out its actions, watches its process, keeps its state saved.

`executor` gives each instance a `Supervisor`; `plan` reads its `state` and
decides. The supervisor acts and reports what happened (a step failed, the
process exited, a health check failed) as events applied to its
`model.InstanceRecord` (the rules of what an event means are there), saved
whole after every event; it never decides what comes next. It survives agent
restarts through that saved state: `adopt()` trusts a recorded pid only when
the process start time matches, then watches it through a pidfd like its own
children, so an instance is never started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from discoverd import logs
from discoverd.agent import artifacts as artifacts_
from discoverd.agent import invocation, model, observe, plan, processes, scriptlogs
from discoverd.agent import layout as layout_
from discoverd.metrics import AgentMetrics

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

_STEP: dict[type[plan.Action], model.Step] = {
    plan.Install: model.Step.DOWNLOADING,
    plan.Start: model.Step.STARTING,
    plan.Stop: model.Step.STOPPING,
    plan.Remove: model.Step.STOPPING,
}
"""The step an instance is in as soon as it is handed these actions (Promote, Reject, Forget: instant)."""


class Supervisor:
    def __init__(
        self,
        ref: model.Ref,
        layout: layout_.Layout,
        ctx: invocation.Context,
        notify: Callable[[], None],
        install_lock: Callable[[str, str], asyncio.Lock],
        on_promote: Callable[[model.Ref, str | None], None],
        rng: random.Random | None = None,
        sweeper: processes.Sweeper | None = None,
        metrics: AgentMetrics | None = None,
        artifacts: artifacts_.Artifacts | None = None,
    ) -> None:
        self.metrics = metrics
        self.artifacts = artifacts
        self.ref = ref
        self.layout = layout
        self.ctx = ctx
        self.notify = notify
        self.install_lock = install_lock
        self.on_promote = on_promote
        self.rng = rng or random.Random()
        self.sweeper = sweeper or processes.Sweeper()
        self.state = model.InstanceRecord(ref=ref)
        """Everything known about the instance; replaced (never changed) by each event, and saved."""
        self.popen: subprocess.Popen[bytes] | None = None
        self._swept = False
        """Swept by instance tag since the agent started: no unrecorded run of an earlier agent is left."""
        self._sweeps: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None

    def _kv(self, version: str | None = None, **more: object) -> dict[str, object]:
        current = self.state.current
        v = version or (current.version if current else "")
        return logs.kv(service=self.ref.service, instance=self.ref.instance, version=v, **more)

    def snapshot(self, installed: frozenset[tuple[str, str]]) -> model.InstanceRecord:
        """The state for `plan`, with the service's install markers as read from disk this pass."""
        return self.state.model_copy(update={"installed": installed})

    def _apply(self, state: model.InstanceRecord) -> None:
        """Take the state an event produced, and save it whole (before anything else can happen)."""
        if state is not self.state:
            self.state = state
            self.layout.save(state)

    def _step(self, step: model.Step | None) -> None:
        """The step under way: shown in the status, not saved (a step does not survive the agent)."""
        self.state = self.state.begun(step, time.time())

    def begin(self, actions: list[plan.Action]) -> None:
        """Mark the instance busy at once, before its task runs, so the next pass plans nothing for it."""
        self._step(_STEP.get(type(actions[0])))

    # adoption

    def adopt(self) -> bool:
        """Take over the saved state and what it says runs; False when there is neither a record nor files."""
        state = self.layout.load(self.ref)
        if state is None:
            if not self.layout.has_files(self.ref):
                return False
            # Files without a record: left by an agent before format 2, which deleted the record on
            # removal and kept the directory forever. Kept for the grace period from now, like a removal.
            self._apply(model.InstanceRecord(ref=self.ref).removed(time.time()))
            log.info("Found files of a removed instance", extra=self._kv())
            return True
        self.state = state
        p = state.process
        if p is None:
            return True
        if p.pid == 0 and p.run_id:
            p = self._find_run(p)
        if observe.alive(p.pid, p.start_time):
            if p != state.process:
                self._apply(state.model_copy(update={"process": p}))  # now with its pid and start time
            self._watch_process(p, None)
            self._start_health()
            log.info("Adopted instance", extra=self._kv(p.version, pid=p.pid))
        else:
            log.warning("Found instance gone", extra=self._kv(p.version, pid=p.pid))
            self.state = state.model_copy(update={"process": p})
            self._exited(None, ours=False)
        return True

    def _find_run(self, p: model.Process) -> model.Process:
        """The run a record names by its run ID only (the agent died between spawning and recording it).

        Its leader is the process carrying the run ID that leads its own process group.
        """
        for pid, started in observe.tagged([invocation.run_tag(self.ctx, p.run_id)]).popitem()[1]:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    log.info("Found unrecorded run", extra=self._kv(p.version, pid=pid, run_id=p.run_id))
                    return dataclasses.replace(p, pid=pid, start_time=started)
        return p

    # execution

    async def execute(self, actions: list[plan.Action]) -> None:
        """Carry out one instance's actions in order; what happens is reported as events on the state."""
        for action in actions:
            try:
                match action:
                    case plan.Install(target=target):
                        await self._install(target)
                    case plan.Start(target=target):
                        began = time.monotonic()
                        if not self._swept:
                            await self._sweep()
                        await processes.clear_cgroup(self.ctx.placement.cgroup(self.ref))  # cgroups: leftovers
                        self._start(target)
                        if self.metrics is not None:
                            self.metrics.step_seconds.labels("start").observe(time.monotonic() - began)
                    case plan.Stop(reason=reason, failure=failure, grace=grace):
                        await self._stop(reason, failure, grace)
                    case plan.Promote(target=target):
                        self._promote(target)
                    case plan.Reject(config_hash=config_hash, version=version, reason=reason):
                        self._apply(self.state.rejecting(config_hash, reason, time.time()))
                        if self.metrics is not None:
                            self.metrics.rollbacks.inc()
                        log.warning("Rejected version", extra=self._kv(version, reason=reason))
                    case plan.Remove():
                        await self._stop("removed from the server", False)
                        await asyncio.gather(*self._sweeps)  # before `close` would cancel them
                        if (cgroup := self.ctx.placement.cgroup(self.ref)) is not None:  # cgroups
                            cgroup.remove()
                        self._apply(self.state.removed(time.time()))
                    case plan.Forget(delete_files=delete_files):
                        self.layout.delete_record(self.ref)
                        if delete_files:
                            self.layout.remove_instance_dir(self.ref)
                            log.info("Deleted instance files", extra=self._kv())
                    case plan.Wait():
                        pass
            finally:
                self._step(None)
                self.notify()

    async def _install(self, target: model.Target) -> None:
        service, version = self.ref.service, target.version
        doc = target.document
        vdir = self.layout.version_dir(service, version)
        idir = self.layout.instance_dir(self.ref)
        idir.mkdir(parents=True, exist_ok=True)  # DISCOVERD_INSTANCE_DIR exists for every script
        self._step(model.Step.DOWNLOADING)
        self.notify()
        async with self.install_lock(service, version):
            if (version, target.install_hash) in self.layout.installed(service):
                return  # another instance of the service installed it meanwhile
            self.layout.unmark_installed(service, version)
            if doc.artifacts and not await self._fetch_artifacts(target, vdir):
                return
            for name, script, step in (
                ("download", doc.download_script, model.Step.DOWNLOADING),
                ("install", doc.install_script, model.Step.INSTALLING),
            ):
                if script.empty:
                    continue
                self._step(step)
                self.notify()
                log.info(f"Running {name} script", extra=self._kv(version))
                began = time.monotonic()
                result = await processes.run_step(
                    f"the {name} script",
                    invocation.argv_for(script, self.ctx, vdir, vdir),
                    invocation.environment(target, self.ctx, vdir, idir, script.env),
                    vdir,
                    self.layout.log_path(self.ref, name),
                    script.timeout_seconds,
                    self.ctx.logs,
                )
                if self.metrics is not None:
                    self.metrics.step_seconds.labels(name).observe(time.monotonic() - began)
                if not result.ok:
                    reason = f"{result.reason} (version {version}, log {self.layout.log_path(self.ref, name)})"
                    self._apply(self.state.install_failed(target, reason, time.time()))
                    log.warning(f"Failed {name}", extra=self._kv(version, reason=result.reason))
                    return
            self.layout.mark_installed(target)
            self._apply(self.state.installed_version(target, time.time()))
            log.info("Installed version", extra=self._kv(version, hash=target.install_hash))

    async def _fetch_artifacts(self, target: model.Target, vdir: Path) -> bool:
        """Fetch (or find cached) and place the version's artifacts; False (install failed) if any fails."""
        artifacts = target.document.artifacts or []
        if self.artifacts is None:
            self.artifacts = artifacts_.Artifacts(self.layout.root, metrics=self.metrics)
        seen: dict[str, tuple[int, int | None]] = {}

        def progress(url: str, received: int, expected: int | None) -> None:
            seen[url] = (received, expected)
            got = sum(r for r, _ in seen.values())
            sizes = [e for _, e in seen.values()]
            if all(e is not None for e in sizes) and (total := sum(e or 0 for e in sizes)):
                message = f"Downloading {100 * got // total}% ({got / 2**20:.1f} of {total / 2**20:.1f} MiB)"
            else:
                message = f"Downloading {got / 2**20:.1f} MiB"
            self.state = self.state.progressed(message, time.time())
            self.notify()

        log.info("Fetching artifacts", extra=self._kv(target.version, count=len(artifacts)))
        began = time.monotonic()
        try:
            await self.artifacts.install(artifacts, self.ref.service, target.version, vdir, progress)
        except artifacts_.FetchError as error:
            self._apply(self.state.install_failed(target, f"{error} (version {target.version})", time.time()))
            log.warning("Failed artifacts", extra=self._kv(target.version, reason=str(error)))
            return False
        if self.metrics is not None:
            self.metrics.step_seconds.labels("artifacts").observe(time.monotonic() - began)
        self.state = self.state.progressed(
            f"placed {len(artifacts)} artifacts of version {target.version}", time.time()
        )
        return True

    async def _sweep(self) -> None:
        """Kill whatever carries this instance's tag: runs an earlier agent started, recorded or not."""
        killed = await self.sweeper.sweep(invocation.instance_tag(self.ctx, self.layout.instance_dir(self.ref)))
        self._swept = True
        if killed:
            log.warning("Killed leftover processes", extra=self._kv(count=killed))

    def _sweep_run(self, p: model.Process) -> None:
        """In the background, kill what run `p` left outside its process group (a daemon).

        Its tag is unique to that run, so this never touches the run started next and need not
        delay it (an upgrade's gap stays a stop and a start).
        """
        if not p.run_id:
            return

        async def sweep() -> None:
            killed = await self.sweeper.sweep(invocation.run_tag(self.ctx, p.run_id))
            if killed:
                log.warning("Killed leftover processes", extra=self._kv(p.version, pid=p.pid, count=killed))

        task = asyncio.create_task(sweep(), name=f"sweep {self.ref}")
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    def _start(self, target: model.Target) -> None:
        self._step(model.Step.STARTING)
        vdir = self.layout.version_dir(self.ref.service, target.version)
        idir = self.layout.instance_dir(self.ref)
        argv = invocation.argv_for(target.run, self.ctx, vdir, idir, ref=self.ref, resources=target.document.resources)
        started_at = time.time()
        run_id = uuid.uuid4().hex
        # Recorded before it exists: an agent killed between the spawn and the record below leaves
        # this, through which the next agent finds the run and adopts it instead of starting another.
        pending = model.Process(0, 0, target.config_hash, target.version, started_at, run_id, target.restart_token)
        restarts = self.state.restarts
        self._apply(self.state.spawning(target, pending, started_at))
        if self.metrics is not None and self.state.restarts > restarts:
            self.metrics.restarts.inc()
        try:
            self.ctx.placement.prepare(self.ref, target.document.resources)  # cgroups
            popen = processes.spawn(
                argv,
                {**invocation.environment(target, self.ctx, vdir, idir, target.run.env), "DISCOVERD_RUN_ID": run_id},
                idir,
                self.layout.log_path(self.ref, "run"),
                self.ctx.logs,
            )
        except OSError as error:
            reason = f"could not start {error.filename or argv[0]!r}: {error.strerror or error}"
            self.state = self.state.model_copy(update={"process": dataclasses.replace(pending, run_id="")})
            self._exited(None, reason)
            return
        start_time = observe.start_time(popen.pid) or 0
        p = dataclasses.replace(pending, pid=popen.pid, start_time=start_time)
        self.popen = popen
        self._apply(self.state.started(p, time.time()))
        log.info("Started instance", extra=self._kv(target.version, pid=p.pid, restarts=self.state.restarts))
        self._watch_process(p, popen)
        self._start_health()

    def _watch_process(self, p: model.Process, popen: subprocess.Popen[bytes] | None) -> None:
        async def watch() -> None:
            async with scriptlogs.rotating(self.layout.log_path(self.ref, "run"), self.ctx.logs):
                await observe.exited(p.pid)
            code = popen.wait() if popen is not None else None
            if not self._stopping and self.state.process == p:
                self._exited(code)
                self.notify()

        self._watch = asyncio.create_task(watch(), name=f"watch {self.ref}")

    def _exited(self, code: int | None, reason: str | None = None, ours: bool = True) -> None:
        """Report that the run process ended by itself (or failed to start).

        `ours`: it ended just now under our watch, so its process group is still ours to clean up
        (a process found gone after an agent restart may have had its pid reused since).
        """
        p = self.state.process
        assert p is not None
        self._apply(self.state.exited(code, time.time(), self.rng.uniform(0.0, model.MAX_JITTER), reason))
        self.popen = None
        self._cancel_health()
        if p.pid and ours:
            processes.kill_group(p.pid)
        if (cgroup := self.ctx.placement.cgroup(self.ref)) is not None:  # cgroups: what the run left behind
            cgroup.kill()
        self._sweep_run(p)
        why = self.state.last_exit.reason if self.state.last_exit else ""
        log.warning("Exited instance", extra=self._kv(p.version, pid=p.pid, code=code, reason=why))

    async def _stop(self, reason: str, failure: bool, grace: float | None = None) -> None:
        p = self.state.process
        if p is None:
            return
        self._step(model.Step.STOPPING)
        self.notify()
        target = self.state.current
        doc = target.document if target is not None and target.config_hash == p.config_hash else None
        timeout = doc.stop_timeout if doc else 10.0
        if grace is not None:
            timeout = max(0.0, min(timeout, grace))
        log.info("Stopping instance", extra=self._kv(p.version, pid=p.pid, reason=reason))
        self._stopping = True
        self._cancel_health()
        try:
            await processes.stop_group(
                p.pid,
                p.start_time,
                "SIGKILL" if grace is not None and grace <= 0 else doc.stop_signal if doc else "SIGTERM",
                timeout,
                self.ctx.placement.cgroup(self.ref),
            )
            code = self.popen.wait() if self.popen is not None else None
            if self._watch is not None:
                self._watch.cancel()
            self._sweep_run(p)
        finally:
            self._stopping = False
        if failure:
            self._exited(code, f"was stopped: {reason}")
        else:
            self.popen = None
            self._apply(self.state.stopped(reason, time.time()))
        log.info("Stopped instance", extra=self._kv(p.version, pid=p.pid, code=code))

    def _promote(self, target: model.Target) -> None:
        previous = self.state.good
        self._apply(self.state.promoted(target, time.time()))
        if self.metrics is not None and previous is not None and previous.version != target.version:
            self.metrics.upgrades.inc()
        p = self.state.process
        log.info("Counted instance as started", extra=self._kv(target.version, pid=p.pid if p else None))
        self.on_promote(self.ref, previous.version if previous is not None else None)

    # health checks

    def _start_health(self) -> None:
        target, p = self.state.current, self.state.process
        if target is None or p is None or target.config_hash != p.config_hash:
            return
        check = target.document.health_check
        if check is None or check.empty:
            return
        vdir = self.layout.version_dir(self.ref.service, target.version)
        idir = self.layout.instance_dir(self.ref)

        async def probe() -> None:
            while True:
                await asyncio.sleep(check.interval)
                result = await processes.run_step(
                    "the health check",
                    invocation.argv_for(check, self.ctx, vdir, idir),
                    invocation.environment(target, self.ctx, vdir, idir, check.env),
                    idir,
                    self.layout.log_path(self.ref, "health"),
                    check.timeout_seconds if check.timeout is not None else check.interval,
                    self.ctx.logs,
                )
                before = self.state
                self._apply(self.state.health_checked(result.ok, result.reason, time.time()))
                if not result.ok:
                    log.warning("Failed health check", extra=self._kv(target.version, reason=result.reason))
                if self.state is not before:
                    self.notify()

        self._health = asyncio.create_task(probe(), name=f"health {self.ref}")

    def _cancel_health(self) -> None:
        if self._health is not None:
            self._health.cancel()
            self._health = None

    async def close(self, stop: bool) -> None:
        """On agent exit: stop watching (the process keeps running), or stop the process too."""
        self._cancel_health()
        if stop and self.state.process is not None:
            await self._stop("the agent is exiting with --stop-instances-on-exit", False)
        for task in (self._watch, *self._sweeps):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
