"""One instance's state machine: carries out its actions, watches its process, keeps its record.

`executor` gives each instance a `Supervisor`; `plan` reads its `observed()`
and decides. The supervisor acts and records what happened (an exit, a failed
step, a health check), never decides what comes next. It survives agent
restarts through its record: `adopt()` trusts a recorded pid only when the
process start time matches, then watches it through a pidfd like its own
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

from discoverd import logs
from discoverd.agent import layout as layout_
from discoverd.agent import observe, plan, steps

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited while the agent was not watching"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(
        self,
        ref: plan.Ref,
        layout: layout_.Layout,
        ctx: steps.Context,
        notify: Callable[[], None],
        install_lock: Callable[[str, str], asyncio.Lock],
        on_promote: Callable[[plan.Ref, str | None], None],
        rng: random.Random | None = None,
        sweeper: steps.Sweeper | None = None,
    ) -> None:
        self.ref = ref
        self.layout = layout
        self.ctx = ctx
        self.notify = notify
        self.install_lock = install_lock
        self.on_promote = on_promote
        self.rng = rng or random.Random()
        self.sweeper = sweeper or steps.Sweeper()
        self._swept = False
        """Swept by instance tag since the agent started: no unrecorded run of an earlier agent is left."""
        self._sweeps: set[asyncio.Task[None]] = set()
        self.busy: str | None = None
        self.process: plan.Process | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.current: plan.Target | None = None
        self.good: plan.Target | None = None
        self.rejected: dict[str, str] = {}
        self.last_exit: plan.Exit | None = None
        self.failures = 0
        self.jitter = 0.0
        self.restarts = 0
        self.health_failures = 0
        self.previous_version: str | None = None
        self.message = ""
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None

    def _kv(self, version: str | None = None, **more: object) -> dict[str, object]:
        v = version or (self.current.version if self.current else "")
        return logs.kv(service=self.ref.service, instance=self.ref.instance, version=v, **more)

    def observed(self) -> plan.Observed:
        return plan.Observed(
            ref=self.ref,
            busy=self.busy,
            process=self.process,
            current=self.current,
            good=self.good,
            installed=self.layout.installed(self.ref.service),
            rejected=dict(self.rejected),
            last_exit=self.last_exit,
            failures=self.failures,
            jitter=self.jitter,
            restarts=self.restarts,
            health_failures=self.health_failures,
            previous_version=self.previous_version,
            message=self.message,
        )

    def _save(self) -> None:
        self.layout.write_record(layout_.Record(self.ref, self.process, self.current, self.good, self.restarts))

    # adoption

    def adopt(self) -> bool:
        """Take over what the record says runs; False when there is no usable record."""
        record = self.layout.read_record(self.ref)
        if record is None:
            return False
        self.current, self.good, self.restarts = record.current, record.good, record.restarts
        p = record.process
        if p is None:
            return True
        if p.pid == 0 and p.run_id:
            p = self._find_run(p)
        if observe.alive(p.pid, p.start_time):
            self.process = p
            if p is not record.process:
                self._save()  # now with its pid and start time
            self._watch_process(p, None)
            self._start_health()
            log.info("Adopted instance", extra=self._kv(p.version, pid=p.pid))
        else:
            log.warning("Found instance gone", extra=self._kv(p.version, pid=p.pid))
            self.process = p
            self._exited(p, None, ours=False)
        return True

    def _find_run(self, p: plan.Process) -> plan.Process:
        """The run a record names by its run ID only (the agent died between spawning and recording it).

        Its leader is the process carrying the run ID that leads its own process group.
        """
        for pid, started in observe.tagged([steps.run_tag(self.ctx, p.run_id)]).popitem()[1]:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    log.info("Found unrecorded run", extra=self._kv(p.version, pid=pid, run_id=p.run_id))
                    return dataclasses.replace(p, pid=pid, start_time=started)
        return p

    # execution

    async def execute(self, actions: list[plan.Action]) -> None:
        """Carry out one instance's actions in order; every failure is recorded, none escapes."""
        for action in actions:
            try:
                match action:
                    case plan.Install(target=target):
                        await self._install(target)
                    case plan.Start(target=target):
                        if not self._swept:
                            await self._sweep()
                        self._start(target)
                    case plan.Stop(reason=reason, failure=failure):
                        await self._stop(reason, failure)
                    case plan.Promote(target=target):
                        self._promote(target)
                    case plan.Reject(config_hash=config_hash, version=version, reason=reason):
                        self.rejected[config_hash] = reason
                        self.message = reason
                        log.warning("Rejected version", extra=self._kv(version, reason=reason))
                    case plan.Remove():
                        await self._stop("removed from the server", False)
                        await asyncio.gather(*self._sweeps)  # before `close` would cancel them
                        self.layout.delete_record(self.ref)
                    case plan.Wait():
                        pass
            finally:
                self.busy = None
                self.notify()

    async def _install(self, target: plan.Target) -> None:
        service, version = self.ref.service, target.version
        doc = target.document
        vdir = self.layout.version_dir(service, version)
        idir = self.layout.instance_dir(self.ref)
        self.busy = "Downloading"
        self.notify()
        async with self.install_lock(service, version):
            if (version, target.install_hash) in self.layout.installed(service):
                return  # another instance of the service installed it meanwhile
            self.layout.unmark_installed(service, version)
            for name, script, busy in (
                ("download", doc.download_script, "Downloading"),
                ("install", doc.install_script, "Installing"),
            ):
                if script.empty:
                    continue
                self.busy = busy
                self.notify()
                log.info(f"Running {name} script", extra=self._kv(version))
                result = await steps.run_step(
                    f"the {name} script",
                    steps.argv_for(script, self.ctx, vdir, vdir),
                    steps.environment(target, self.ctx, vdir, idir, script.env),
                    vdir,
                    self.layout.log_path(self.ref, name),
                    script.timeout_seconds,
                )
                if not result.ok:
                    reason = f"{result.reason} (version {version}, log {self.layout.log_path(self.ref, name)})"
                    self.rejected[target.config_hash] = reason
                    self.message = reason
                    log.warning(f"Failed {name}", extra=self._kv(version, reason=result.reason))
                    return
            self.layout.mark_installed(target)
            self.message = f"installed version {version}"
            log.info("Installed version", extra=self._kv(version, hash=target.install_hash))

    async def _sweep(self) -> None:
        """Kill whatever carries this instance's tag: runs an earlier agent started, recorded or not."""
        killed = await self.sweeper.sweep(steps.instance_tag(self.ctx, self.layout.instance_dir(self.ref)))
        self._swept = True
        if killed:
            log.warning("Killed leftover processes", extra=self._kv(count=killed))

    def _sweep_run(self, p: plan.Process) -> None:
        """In the background, kill what run `p` left outside its process group (a daemon).

        Its tag is unique to that run, so this never touches the run started next and need not
        delay it (an upgrade's gap stays a stop and a start).
        """
        if not p.run_id:
            return

        async def sweep() -> None:
            killed = await self.sweeper.sweep(steps.run_tag(self.ctx, p.run_id))
            if killed:
                log.warning("Killed leftover processes", extra=self._kv(p.version, pid=p.pid, count=killed))

        task = asyncio.create_task(sweep(), name=f"sweep {self.ref}")
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    def _start(self, target: plan.Target) -> None:
        self.busy = "Starting"
        vdir = self.layout.version_dir(self.ref.service, target.version)
        idir = self.layout.instance_dir(self.ref)
        argv = steps.argv_for(target.run, self.ctx, vdir, idir)
        if self.last_exit is not None and self.last_exit.config_hash == target.config_hash:
            self.restarts += 1
        self.current = target
        self.health_failures = 0
        started_at = time.time()
        run_id = uuid.uuid4().hex
        # Recorded before it exists: an agent killed between the spawn and the record below leaves
        # this, through which the next agent finds the run and adopts it instead of starting another.
        pending = plan.Process(0, 0, target.config_hash, target.version, started_at, run_id)
        self.layout.write_record(layout_.Record(self.ref, pending, self.current, self.good, self.restarts))
        try:
            popen = steps.spawn(
                argv,
                {**steps.environment(target, self.ctx, vdir, idir, target.run.env), "DISCOVERD_RUN_ID": run_id},
                idir,
                self.layout.log_path(self.ref, "run"),
            )
        except OSError as error:
            reason = f"could not start {argv[0]!r}: {error.strerror or error}"
            p = plan.Process(0, 0, target.config_hash, target.version, started_at)
            self.process = p
            self._exited(p, None, reason)
            return
        start_time = observe.start_time(popen.pid) or 0
        p = plan.Process(popen.pid, start_time, target.config_hash, target.version, started_at, run_id)
        self.process, self.popen = p, popen
        self._save()
        self.message = f"started version {target.version}"
        log.info("Started instance", extra=self._kv(target.version, pid=p.pid, restarts=self.restarts))
        self._watch_process(p, popen)
        self._start_health()

    def _watch_process(self, p: plan.Process, popen: subprocess.Popen[bytes] | None) -> None:
        async def watch() -> None:
            await observe.exited(p.pid)
            code = popen.wait() if popen is not None else None
            if not self._stopping and self.process is p:
                self._exited(p, code)
                self.notify()

        self._watch = asyncio.create_task(watch(), name=f"watch {self.ref}")

    def _exited(self, p: plan.Process, code: int | None, reason: str | None = None, ours: bool = True) -> None:
        """Record that the run process ended by itself (or failed to start): back-off follows.

        `ours`: it ended just now under our watch, so its process group is still ours to clean up
        (a process found gone after an agent restart may have had its pid reused since).
        """
        now = time.time()
        probation = self.good is None or self.good.config_hash != p.config_hash
        why = reason or _describe_exit(code)
        if probation and self.current is not None:
            why += f" before it stayed up {self.current.min_healthy_seconds:g} s"
        self.failures = plan.failures_after_exit(self.failures, now - p.started_at)
        self.jitter = self.rng.uniform(0.0, plan.MAX_JITTER)
        self.last_exit = plan.Exit(p.config_hash, p.version, code, now, probation, why)
        self.process, self.popen = None, None
        self.message = f"version {p.version} {why}"
        self._cancel_health()
        if p.pid and ours:
            steps.kill_group(p.pid)
        self._sweep_run(p)
        self._save()
        log.warning("Exited instance", extra=self._kv(p.version, pid=p.pid, code=code, reason=why))

    async def _stop(self, reason: str, failure: bool) -> None:
        p = self.process
        if p is None:
            return
        self.busy = "Stopping"
        self.notify()
        target = self.current
        doc = target.document if target is not None and target.config_hash == p.config_hash else None
        log.info("Stopping instance", extra=self._kv(p.version, pid=p.pid, reason=reason))
        self._stopping = True
        self._cancel_health()
        try:
            await steps.stop_group(
                p.pid, p.start_time, doc.stop_signal if doc else "SIGTERM", doc.stop_timeout if doc else 10.0
            )
            code = self.popen.wait() if self.popen is not None else None
            if self._watch is not None:
                self._watch.cancel()
            self._sweep_run(p)
        finally:
            self._stopping = False
        if failure:
            self._exited(p, code, f"was stopped: {reason}")
        else:
            self.process, self.popen = None, None
            self.last_exit = None
            self.failures = 0
            self._save()
            self.message = f"stopped version {p.version}: {reason}"
        log.info("Stopped instance", extra=self._kv(p.version, pid=p.pid, code=code))

    def _promote(self, target: plan.Target) -> None:
        previous = self.good
        self.good = target
        if previous is not None and previous.version != target.version:
            self.previous_version = previous.version
        self.rejected.pop(target.config_hash, None)
        self._save()
        self.message = f"version {target.version} is running"
        log.info(
            "Counted instance as started",
            extra=self._kv(target.version, pid=self.process.pid if self.process else None),
        )
        self.on_promote(self.ref, previous.version if previous is not None else None)

    # health checks

    def _start_health(self) -> None:
        target, p = self.current, self.process
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
                result = await steps.run_step(
                    "the health check",
                    steps.argv_for(check, self.ctx, vdir, idir),
                    steps.environment(target, self.ctx, vdir, idir, check.env),
                    idir,
                    self.layout.log_path(self.ref, "health"),
                    check.timeout_seconds if check.timeout is not None else check.interval,
                )
                before = self.health_failures
                self.health_failures = 0 if result.ok else before + 1
                if not result.ok:
                    self.message = f"{result.reason} ({self.health_failures} in a row)"
                    log.warning("Failed health check", extra=self._kv(target.version, reason=result.reason))
                if self.health_failures != before:
                    self.notify()

        self._health = asyncio.create_task(probe(), name=f"health {self.ref}")

    def _cancel_health(self) -> None:
        if self._health is not None:
            self._health.cancel()
            self._health = None

    async def close(self, stop: bool) -> None:
        """On agent exit: stop watching (the process keeps running), or stop the process too."""
        self._cancel_health()
        if stop and self.process is not None:
            await self._stop("the agent is exiting with --stop-instances-on-exit", False)
        for task in (self._watch, *self._sweeps):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
