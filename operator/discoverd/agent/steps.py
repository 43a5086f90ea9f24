"""Run one script: argv, environment, working directory, log file, timeout, process group, nsenter.

Used by the supervisor for every step. Download, install and health checks
are bounded steps (`run_step`): an asyncio subprocess in its own session,
killed with its whole process group (grandchildren too) on timeout. The run
script is a service, not a child to reap: `spawn` starts it with
`subprocess.Popen` in its own session with output to a log file (never a pipe
to the agent), so it keeps running when the agent exits or is killed, and
asyncio's transports never kill it when they are closed. `stop_group` ends a
run process: stop signal to its group, grace, SIGKILL to the group.

A daemon that left the run script's process group (double fork and
`setsid`) is out of reach of group signals; the `Sweeper` finds what carries
a tag in its environment (see `observe.tagged`) and kills it: a run's tag
(`DISCOVERD_RUN_ID`, unique per start) once that run has stopped or exited,
and an instance's tag (`DISCOVERD_SERVER_ID` and `DISCOVERD_INSTANCE_DIR`)
before the first start after an agent restart, so nothing of an earlier run
survives it.

With host namespaces every argv is wrapped in `nsenter --target <pid> --mount
--uts --ipc --net --pid --`, so scripts see and change the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from discoverd import logs
from discoverd.agent import observe, plan
from discoverd.schema import documents

__all__ = [
    "Context",
    "StepResult",
    "Sweeper",
    "argv_for",
    "environment",
    "instance_tag",
    "kill_group",
    "run_step",
    "run_tag",
    "spawn",
    "stop_group",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """How this agent runs scripts."""

    server_id: str
    host_namespaces: bool = False
    host_pid: int = 1


@dataclass(frozen=True)
class StepResult:
    ok: bool
    code: int | None
    reason: str


def argv_for(script: documents.Script, ctx: Context, version_dir: Path, cwd: Path) -> list[str]:
    """The argv to exec in `cwd`. A relative command with a '/' (`./web`) is looked up in the version directory first.

    Entering a mount namespace resets the working directory to its root, so nsenter is told
    to change back to `cwd` (`--wd`); the state directory must have the same path on the host.
    """
    command = script.command
    if "/" in command and not os.path.isabs(command) and (version_dir / command).exists():
        command = str(version_dir / command)
    argv = [command, *script.argv]
    if ctx.host_namespaces:
        namespaces = ["--mount", "--uts", "--ipc", "--net", "--pid"]
        argv = ["nsenter", f"--target={ctx.host_pid}", *namespaces, f"--wd={cwd}", "--", *argv]
    return argv


def environment(
    target: plan.Target, ctx: Context, version_dir: Path, instance_dir: Path, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """The agent's environment plus the DISCOVERD_* variables and the script's `env`.

    The agent's own `DISCOVERD_*` settings (etcd endpoints, user, password...)
    are not passed on: a service never sees the agent's credentials.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISCOVERD_")}
    env.update(
        DISCOVERD_SERVICE=target.ref.service,
        DISCOVERD_VERSION=target.version,
        DISCOVERD_INSTANCE_ID=target.ref.instance,
        DISCOVERD_SERVER_ID=ctx.server_id,
        DISCOVERD_VERSION_DIR=str(version_dir),
        DISCOVERD_INSTANCE_DIR=str(instance_dir),
    )
    env.update(extra or {})
    return env


def _open_log(log_path: Path, argv: list[str], cwd: Path) -> BinaryIO:
    """Create `cwd`, open the step's log for appending and write a header naming what runs."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the caller closes it once the child has it
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log.write(f"--- {now} discoverd: running {argv!r} in {cwd}\n".encode())
    log.flush()
    return log


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal every process of the group; nothing if the group is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_step(
    name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, timeout: float | None
) -> StepResult:
    """Run a bounded script to its end; on timeout (or cancellation) kill its whole process group."""
    try:
        with _open_log(log_path, argv, cwd) as log:
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


def spawn(argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start a run script in its own session, output appended to `log_path`; OSError if it cannot start."""
    with _open_log(log_path, argv, cwd) as log:
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


async def stop_group(pid: int, start_time: int, stop_signal: str, stop_timeout: float) -> None:
    """Stop signal to the process group, wait up to `stop_timeout`, then SIGKILL the group."""
    if observe.alive(pid, start_time):
        kill_group(pid, signal.Signals[stop_signal])
        try:
            await asyncio.wait_for(observe.exited(pid), stop_timeout)
        except TimeoutError:
            kill_group(pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(observe.exited(pid), 10)
    kill_group(pid)  # anything the leader left behind in its group


def instance_tag(ctx: Context, instance_dir: Path) -> observe.Tag:
    """The environment entries every script of this instance carries (see `environment`)."""
    return frozenset(
        {b"DISCOVERD_SERVER_ID=" + os.fsencode(ctx.server_id), b"DISCOVERD_INSTANCE_DIR=" + os.fsencode(instance_dir)}
    )


def run_tag(ctx: Context, run_id: str) -> observe.Tag:
    """The environment entries of one run of a run script and of everything it started."""
    return frozenset({b"DISCOVERD_SERVER_ID=" + os.fsencode(ctx.server_id), b"DISCOVERD_RUN_ID=" + run_id.encode()})


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
