"""What a script is started as: its argv (nsenter, cgroup), its environment and its tags.

With host namespaces every argv is wrapped in `nsenter --target <pid> --mount
--uts --ipc --net [--pid] --`, so scripts see and change the host. `--pid`
only when the agent does not share the target's PID namespace already (as it
does with `hostPID`): entering one makes nsenter fork and wait for the script,
and a stop signal would end nsenter at once while the script still runs its
own shutdown. Without `--pid` nsenter execs the script, which keeps nsenter's
pid. A run script's argv also places it in its instance's cgroup
(`cgroups.Placement`, in `Context.placement`), joined before it execs.

Every script carries tags in its environment (`instance_tag`, `run_tag`), by
which `processes.Sweeper` finds what left its process group.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from discoverd.agent import cgroups, model, observe, scriptlogs
from discoverd.schema import documents

__all__ = ["Context", "argv_for", "environment", "instance_tag", "run_tag"]


@dataclass(frozen=True)
class Context:
    """How this agent runs scripts."""

    server_id: str
    host_namespaces: bool = False
    host_pid: int = 1
    placement: cgroups.Placement = field(default=cgroups.NONE)
    logs: scriptlogs.LogLimit = field(default_factory=scriptlogs.LogLimit)


@functools.cache
def _shares_pid_namespace(pid: int) -> bool:
    """Whether this process is in the PID namespace of `pid` already (a pod with `hostPID`, or the host)."""
    try:
        mine, theirs = os.stat("/proc/self/ns/pid"), os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def argv_for(
    script: documents.Script,
    ctx: Context,
    version_dir: Path,
    cwd: Path,
    *,
    ref: model.Ref | None = None,
    resources: documents.Resources | None = None,
) -> list[str]:
    """The argv to exec in `cwd`. A relative command with a '/' (`./web`) is looked up in the version directory first.

    Entering a mount namespace resets the working directory to its root, so nsenter is told
    to change back to `cwd` (`--wd`); the state directory must have the same path on the host.
    With `ref` (a run script) the argv also places the process in the instance's cgroup.
    """
    command = script.command
    if "/" in command and not os.path.isabs(command) and (version_dir / command).exists():
        command = str(version_dir / command)
    argv = [command, *script.argv]
    if ref is not None:
        argv = ctx.placement.wrap_inner(ref, resources, argv)
    if ctx.host_namespaces:
        namespaces = ["--mount", "--uts", "--ipc", "--net"]
        if not _shares_pid_namespace(ctx.host_pid):
            namespaces.append("--pid")
        argv = ["nsenter", f"--target={ctx.host_pid}", *namespaces, f"--wd={cwd}", "--", *argv]
    if ref is not None:
        argv = ctx.placement.wrap_outer(ref, argv)
    return argv


def environment(
    target: model.Target, ctx: Context, version_dir: Path, instance_dir: Path, extra: Mapping[str, str] | None
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


def instance_tag(ctx: Context, instance_dir: Path) -> observe.Tag:
    """The environment entries every script of this instance carries (see `environment`)."""
    return frozenset(
        {b"DISCOVERD_SERVER_ID=" + os.fsencode(ctx.server_id), b"DISCOVERD_INSTANCE_DIR=" + os.fsencode(instance_dir)}
    )


def run_tag(ctx: Context, run_id: str) -> observe.Tag:
    """The environment entries of one run of a run script and of everything it started."""
    return frozenset({b"DISCOVERD_SERVER_ID=" + os.fsencode(ctx.server_id), b"DISCOVERD_RUN_ID=" + run_id.encode()})
