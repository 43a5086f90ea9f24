"""What runs: a process identity (pid + start time from /proc) and a way to learn when it exits.

A pid alone is not an identity: pids are reused. The kernel's start time of a
process (field 22 of `/proc/<pid>/stat`, clock ticks since boot) together
with the pid is. The supervisor records both when it starts a run script and
trusts a recorded pid after an agent restart only when both match. `exited`
waits for any process, child or not, through a pidfd (`os.pidfd_open`) on the
event loop, so adopted processes are supervised as well as our own children.

A daemon that a run script double-forks and moves into a session of its own
(`setsid`) leaves the script's process group, and with it the reach of
`kill_group`; it keeps the environment it inherited, though, and with it the
`DISCOVERD_*` variables naming its server and instance directory. `tagged`
finds such processes by those variables (one pass over /proc for many tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Collection

__all__ = ["Tag", "alive", "exited", "start_time", "tagged"]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    return data[data.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such live process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):  # fields[0] is field 3, the state
        return None
    return int(fields[19])  # field 22


def alive(pid: int, expected_start_time: int) -> bool:
    """Whether `pid` is still the very process that was recorded."""
    return pid > 0 and start_time(pid) == expected_start_time


Tag = frozenset[bytes]
"""Environment entries (`NAME=value`) a process must all carry to belong to an instance."""


def tagged(tags: Collection[Tag]) -> dict[Tag, list[tuple[int, int]]]:
    """Live processes (other than this one) whose environment holds every entry of a tag: tag -> [(pid, start time)].

    Blocking (reads /proc/<pid>/environ of every process we may read): run it in a thread.
    """
    found: dict[Tag, list[tuple[int, int]]] = {tag: [] for tag in tags}
    if not tags:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                data = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if b"DISCOVERD_" not in data:
            continue
        env = set(data.split(b"\0"))
        for tag in tags:
            if tag <= env:
                pid = int(entry.name)
                started = start_time(pid)
                if started is not None:
                    found[tag].append((pid, started))
    return found


async def exited(pid: int) -> None:
    """Return when process `pid` exits (at once if it is already gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
