"""Test cgroup roots: each test's agent places instances under a root of its own, removed at the end.

Eight developers' tests run on one machine at once: with the default root
(`/discoverd/<service>/<ID>`) two tests running instance `web/i1` would share
a cgroup, and stopping one would kill the other's. So every test agent gets
`--cgroup-root /discoverd-test-<random>`, and `remove_root` kills what is
left in it and removes its directories in every hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

from discoverd.agent import cgroups

__all__ = ["cgroup_dirs", "new_root", "remove_root", "writable"]


def writable() -> bool:
    """Whether this machine lets tests create cgroups (cgroupfs)."""
    return os.geteuid() == 0 and any(h.writable for h in cgroups.hierarchies())


def new_root() -> str:
    return f"/discoverd-test-{uuid.uuid4().hex[:12]}"


def cgroup_dirs(rel: str) -> list[Path]:
    """`rel` in every writable hierarchy (whether it exists or not)."""
    return [h.mount / rel.lstrip("/") for h in cgroups.hierarchies() if h.writable]


def _procs(dirs: list[Path]) -> set[int]:
    found: set[int] = set()
    for top in dirs:
        for path, _, _ in os.walk(top):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (Path(path) / "cgroup.procs").read_text().split())
    return found


def remove_root(root: str, timeout: float = 10.0) -> None:
    """Kill every process under `root` (in any hierarchy), then remove its cgroups, deepest first."""
    dirs = [d for d in cgroup_dirs(root) if d.is_dir()]
    deadline = time.monotonic() + timeout
    while (left := _procs(dirs)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for top in dirs:
        for path in sorted((Path(p) for p, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
