"""Run scripts as processes: bounded steps, run scripts that outlive the agent, stopping, sweeping.

Download, install and health checks are bounded steps (`run_step`): an
asyncio subprocess in its own session, killed with its whole process group
(grandchildren too) on timeout. The run script is a service, not a child to
reap: `spawn` starts it with `subprocess.Popen` in its own session with output
to a log file (never a pipe to the agent), so it keeps running when the agent
exits or is killed, and asyncio's transports never kill it when they are
closed. `stop_group` ends a run process: stop signal to its group (or its
cgroup), grace, SIGKILL; it waits until the process group and the instance's
cgroup are empty, not only until the leader has exited (nsenter may exit
first, see `argv`).

A daemon that left the run script's process group (double fork and
`setsid`) is out of reach of group signals; the `Sweeper` finds what carries
a tag in its environment (see `observe.tagged`, `argv.instance_tag`) and kills
it: a run's tag (`DISCOVERD_RUN_ID`, unique per start) once that run has
stopped or exited, and an instance's tag (`DISCOVERD_SERVER_ID` and
`DISCOVERD_INSTANCE_DIR`) before the first start after an agent restart, so
nothing of an earlier run survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from discoverd import logs
from discoverd.agent import cgroups, observe, scriptlogs

__all__ = ["StepResult", "Sweeper", "clear_cgroup", "kill_group", "run_step", "spawn", "stop_group"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    ok: bool
    code: int | None
    reason: str


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal every process of the group; nothing if the group is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_step(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float | None,
    limit: scriptlogs.LogLimit | None = None,
) -> StepResult:
    """Run a bounded script to its end; on timeout (or cancellation) kill its whole process group."""
    limit = limit or scriptlogs.LogLimit()
    try:
        with scriptlogs.open_log(log_path, argv, cwd, limit) as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as error:
        return StepResult(False, None, f"{name} could not start {argv[0]!r}: {error.strerror or error}")
    try:
        async with scriptlogs.rotating(log_path, limit):
            code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        kill_group(proc.pid)
        await proc.wait()
        return StepResult(False, None, f"{name} timed out after {timeout:g} s")
    except asyncio.CancelledError:
        kill_group(proc.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    finally:
        kill_group(proc.pid)  # what it left behind in its group
    if code != 0:
        return StepResult(
            False, code, f"{name} exited with code {code}" if code > 0 else f"{name} was killed by signal {-code}"
        )
    return StepResult(True, 0, f"{name} succeeded")


def _check_command(argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
    """Behind the cgroup helper (`cgroups.JOIN_ARGV`), a missing command would only show as its exit
    code 127: raise FileNotFoundError for it now, as `Popen` would without the helper. (Behind
    nsenter the command is the host's to find.)
    """
    if argv[: len(cgroups.JOIN_ARGV)] != cgroups.JOIN_ARGV:
        return
    command = argv[argv.index("--") + 1]
    if command == "nsenter":
        return
    found = shutil.which(command, path=env.get("PATH", os.defpath)) if "/" not in command else None
    if found is None and not ("/" in command and os.access(cwd / command, os.X_OK)):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)


def spawn(
    argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, limit: scriptlogs.LogLimit | None = None
) -> subprocess.Popen[bytes]:
    """Start a run script in its own session, output appended to `log_path`; OSError if it cannot start."""
    _check_command(argv, env, cwd)
    with scriptlogs.open_log(log_path, argv, cwd, limit or scriptlogs.LogLimit()) as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _group_members(pgid: int) -> bool:
    """Whether a live (not zombie) process is in process group `pgid` (one pass over /proc)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _ended(pid: int | None, cgroup: cgroups.Cgroup | None) -> None:
    """Return once the leader (if any) has exited and its process group and the cgroup are empty."""
    if pid is not None:
        await observe.exited(pid)
        while await asyncio.to_thread(_group_members, pid):
            await asyncio.sleep(0.1)
    while cgroup is not None and cgroup.pids():
        await asyncio.sleep(0.1)


async def stop_group(
    pid: int, start_time: int, stop_signal: str, stop_timeout: float, cgroup: cgroups.Cgroup | None = None
) -> None:
    """Stop signal, up to `stop_timeout` for everything to end, then SIGKILL.

    The stop signal goes to every process of the instance's cgroup (as systemd's
    KillMode=control-group), or without one to the run's process group. The grace ends when
    the leader has exited and nothing is left in its group and cgroup: a leader that exits at
    once (nsenter entering a PID namespace) does not cut short the shutdown of what it started.
    """
    sig = signal.Signals[stop_signal]
    leader = observe.alive(pid, start_time)
    in_cgroup = cgroup is not None and bool(cgroup.pids())
    if leader or in_cgroup:
        if cgroup is not None and in_cgroup:
            cgroup.signal(sig)
        else:
            kill_group(pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_ended(pid if leader else None, cgroup), stop_timeout)
    kill_group(pid)  # anything the leader left behind in its group
    if leader:  # the caller reaps it next: that must not block
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(observe.exited(pid), 10)
    if cgroup is not None:
        await clear_cgroup(cgroup)


async def clear_cgroup(cgroup: cgroups.Cgroup | None) -> None:
    """SIGKILL everything in the instance's cgroup and wait until it is empty (at most 10 s)."""
    if cgroup is None or not cgroup.pids():
        return
    cgroup.kill()
    if not await cgroup.emptied(10):
        log.warning("Failed to empty a cgroup", extra=logs.kv(cgroup=cgroup.rel, pids=sorted(cgroup.pids())))


def _kill_exact(pid: int, start_time: int) -> None:
    """SIGKILL `pid` only if it is still the process with that start time (through a pidfd: no reused pid)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if observe.start_time(pid) == start_time:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


class Sweeper:
    """Kills processes carrying an instance's tag; concurrent requests share one pass over /proc."""

    def __init__(self) -> None:
        self._pending: dict[observe.Tag, list[asyncio.Future[int]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def sweep(self, tag: observe.Tag) -> int:
        """Kill every live process carrying `tag`; how many there were."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(tag, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="sweeper")
        return await future

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                found = await asyncio.to_thread(observe.tagged, list(batch))
            except asyncio.CancelledError:
                for futures in (*batch.values(), *self._pending.values()):
                    for future in futures:
                        future.cancel()
                raise
            except OSError as error:
                log.warning("Failed to look for leftover processes", extra=logs.kv(reason=str(error)))
                found = {}
            for tag, futures in batch.items():
                left = found.get(tag, [])
                for pid, started in left:
                    _kill_exact(pid, started)
                for future in futures:
                    if not future.done():
                        future.set_result(len(left))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
