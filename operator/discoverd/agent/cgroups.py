"""Instance cgroups: each instance in a cgroup of its own, outside the agent's (DESIGN section 3).

An instance's processes live in `<root>/discoverd/<service>/<ID>` of every
cgroup hierarchy mounted on the host (cgroup v1: each one, named ones such as
`name=systemd` included; v2: the unified one; a hybrid host has both), not in
the agent's cgroup. So they outlive the agent, its container and its pod (a
container runtime stops a container by its cgroup), and stopping an instance
reaches everything it started, daemons that double-forked and cleared their
environment included.

One small interface, `Placement`, with three ways (`--cgroups`):

- `cgroupfs` (`CgroupFs`): the agent creates the directories, writes the
  limits of the version's `resources`, and the run script joins its cgroup
  *before it execs*: its argv starts with `/bin/sh -c JOIN_THEN_EXEC
  discoverd-cgexec <cgroup.procs files> --`, a constant program that writes
  its own pid into each file, then execs the rest (nsenter, then the script),
  which keeps its pid and start time. Configuration only ever reaches it as
  arguments, never as program text. Not `preexec_fn`: the agent has threads,
  and code between fork and exec in a threaded process can deadlock. Not a
  write of the child's pid by the agent after `Popen` returns: the script
  would run its first instructions (and fork) in the agent's cgroup. Not a
  Python helper (`python -m ...`): 40 ms of CPU per start against 1 ms.
- `systemd` (`Systemd`): the host's systemd creates a transient scope
  (`systemd-run --scope`, inside nsenter when the agent uses the host's
  namespaces) in `discoverd.slice/discoverd-<service>.slice`, with the limits
  as unit properties. The usual way on systemd hosts, where systemd owns the
  cgroup tree. Not exercised by the tests: the test machines have no systemd.
- `none` (`Placement`): the run script stays in the agent's cgroup.

Stopping goes through a `Cgroup` (the instance's directory in every
hierarchy): its processes (`pids`), a signal to each (through a pidfd, after
checking the process is still in the cgroup, so a reused pid is never hit),
`kill` (cgroup v2's `cgroup.kill` where there is one, SIGKILL to each process
otherwise) and `emptied` to wait until nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from discoverd import logs
from discoverd.agent import model
from discoverd.schema import documents

__all__ = [
    "JOIN_ARGV",
    "JOIN_THEN_EXEC",
    "MODES",
    "NONE",
    "Cgroup",
    "CgroupFs",
    "Hierarchy",
    "Placement",
    "Systemd",
    "choose",
    "hierarchies",
]

log = logging.getLogger(__name__)

MODES = ("auto", "cgroupfs", "systemd", "none")
JOIN_THEN_EXEC = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || { echo "discoverd: could not join the cgroup $1" >&2; exit 125; }; '
    'shift; done; shift; exec "$@"'
)
"""`sh -c` program run as `sh -c JOIN_THEN_EXEC discoverd-cgexec PROCS... -- ARGV...`: join, then exec ARGV.

Exit code 125 (and a line on stderr, the run log) when a cgroup cannot be joined; a shell's 126/127
when ARGV cannot be executed. A constant: configuration reaches it only as positional arguments.
"""
JOIN_ARGV = ["/bin/sh", "-c", JOIN_THEN_EXEC, "discoverd-cgexec"]
CPU_PERIOD_US = 100_000
"""The CFS period the CPU quota is a share of (the kernel's default, 100 ms)."""


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy."""

    mount: Path
    version: int
    """1 or 2."""
    name: str
    """v1: its controllers as mounted (`cpu,cpuacct`, `name=systemd`); v2: `unified`."""
    writable: bool


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (`\\040` is a space)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def hierarchies(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Hierarchy]:
    """Every cgroup hierarchy mounted here at its root, once each (the first mount of it)."""
    found: dict[str, Hierarchy] = {}
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            # Its root: `/`, or `/..`... seen from a cgroup namespace (a container's) when the host's
            # whole hierarchy is mounted. A bind mount of a part of a hierarchy is not where instances go.
            if len(fields) < 6 or len(tail) < 3 or not (fields[3] == "/" or fields[3].startswith("/..")):
                continue
            fstype, options = tail[0], set(tail[2].split(",")) | set(fields[5].split(","))
            mount = Path(_unescape(fields[4]))
            writable = "ro" not in options and os.access(mount, os.W_OK)
            if fstype == "cgroup2":
                found.setdefault("unified", Hierarchy(mount, 2, "unified", writable))
            elif fstype == "cgroup":
                ctrls = [o for o in tail[2].split(",") if o in _V1_CONTROLLERS or o.startswith("name=")]
                if ctrls:
                    name = ",".join(sorted(ctrls))
                    found.setdefault(name, Hierarchy(mount, 1, name, writable))
    return list(found.values())


_V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _in_cgroup(pid: int, rel: str) -> bool:
    """Whether process `pid` is (still) in the cgroup `rel` of some hierarchy, or below it (`/proc/<pid>/cgroup`).

    Seen from a cgroup namespace (an agent in a container) the path is relative to the namespace's
    root, `/../../discoverd/...`: its end is compared.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        path = line.split(":", 2)[-1]
        if path.endswith(rel) or rel + "/" in path:
            return True
    return False


@dataclass(frozen=True)
class Cgroup:
    """One instance's cgroup: the same relative path `rel` in each hierarchy, sub-cgroups included."""

    rel: str
    dirs: tuple[Path, ...]
    owned: bool = True
    """Created by the agent (cgroupfs), so `remove` removes it; systemd removes its own units."""

    def _walk(self) -> Iterator[Path]:
        for top in self.dirs:
            if not top.is_dir():
                continue
            for path, _, _ in os.walk(top):
                yield Path(path)

    def pids(self) -> set[int]:
        """The live processes in it (zombies are no longer listed in `cgroup.procs`)."""
        found: set[int] = set()
        for path in self._walk():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def signal(self, sig: signal.Signals) -> int:
        """Send `sig` to each of its processes; how many there were."""
        count = 0
        for pid in self.pids():
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if _in_cgroup(pid, self.rel):  # still the process that was listed, pidfd held
                    signal.pidfd_send_signal(fd, sig)
                    count += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        return count

    def kill(self) -> None:
        """SIGKILL everything in it: `cgroup.kill` (cgroup v2, Linux 5.14) where there is one, and each process."""
        for top in self.dirs:
            with contextlib.suppress(OSError):
                _write(top / "cgroup.kill", "1")
        self.signal(signal.SIGKILL)

    async def emptied(self, timeout: float) -> bool:
        """Wait until no process is left in it (True), at most `timeout` seconds (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pids():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def remove(self) -> None:
        """Remove its directories (and the service's, once empty); what still holds processes stays."""
        if not self.owned:
            return
        for top in self.dirs:
            for path in sorted(self._walk_one(top), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.parent.rmdir()  # discoverd/<service>, when it was the last instance

    @staticmethod
    def _walk_one(top: Path) -> list[Path]:
        if not top.is_dir():
            return []
        return [Path(path) for path, _, _ in os.walk(top)]


class Placement:
    """Where an instance's run script runs; this base class is `--cgroups none`: in the agent's own cgroup."""

    name = "none"

    def cgroup(self, ref: model.Ref) -> Cgroup | None:
        """The instance's cgroup, to stop and clean it; None without cgroups."""
        return None

    def prepare(self, ref: model.Ref, resources: documents.Resources | None) -> None:
        """Before a start: create the instance's cgroup and set its limits (OSError when it cannot)."""

    def wrap_inner(self, ref: model.Ref, resources: documents.Resources | None, argv: list[str]) -> list[str]:
        """The argv that runs `argv` in the cgroup, as run in the host's namespaces (inside nsenter)."""
        return argv

    def wrap_outer(self, ref: model.Ref, argv: list[str]) -> list[str]:
        """The argv that runs `argv` (nsenter included) in the cgroup, as run by the agent."""
        return argv

    def describe(self) -> str:
        return self.name


NONE = Placement()


def _segments(root: str, ref: model.Ref) -> list[str]:
    return [s for s in root.split("/") if s] + ["discoverd", ref.service, ref.instance]


class CgroupFs(Placement):
    """Cgroups created by the agent in every writable hierarchy under `/<root>/discoverd/<service>/<ID>`."""

    name = "cgroupfs"

    def __init__(self, root: str, found: list[Hierarchy]) -> None:
        self.root = "/" + "/".join(s for s in root.split("/") if s)
        self.hierarchies = [h for h in found if h.writable]

    def describe(self) -> str:
        return f"cgroupfs root={self.root} hierarchies={','.join(h.name for h in self.hierarchies)}"

    def _rel(self, ref: model.Ref) -> str:
        return "/" + "/".join(_segments(self.root, ref))

    def cgroup(self, ref: model.Ref) -> Cgroup:
        rel = self._rel(ref)
        return Cgroup(rel, tuple(h.mount / rel.lstrip("/") for h in self.hierarchies))

    def prepare(self, ref: model.Ref, resources: documents.Resources | None) -> None:
        for h in self.hierarchies:
            path = h.mount
            for segment in _segments(self.root, ref):
                parent, path = path, path / segment
                with contextlib.suppress(FileExistsError):
                    path.mkdir()
                if not path.is_dir():  # a name such as `cgroup.procs` is a control file, not a cgroup
                    raise OSError(errno.ENOTDIR, f"{path} is not a cgroup directory")
                _init_child(h, parent, path)  # also when it exists: an agent may have died in between
            _limit(h, path, resources)

    def wrap_outer(self, ref: model.Ref, argv: list[str]) -> list[str]:
        procs = [str(d / "cgroup.procs") for d in self.cgroup(ref).dirs]
        return [*JOIN_ARGV, *procs, "--", *argv]

    def probe(self) -> str | None:
        """Why a process started by this agent cannot join a cgroup here, or None when it can.

        Tried for real, as a run script would (`discoverd/.probe/<agent pid>`, removed after): a
        writable cgroupfs is not enough (from a Kubernetes pod on the test machines the write to
        `cgroup.procs` fails with EIO).
        """
        ref = model.Ref(".probe", str(os.getpid()))
        try:
            self.prepare(ref, None)
            proc = subprocess.run(
                self.wrap_outer(ref, ["true"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                start_new_session=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
        finally:
            self.cgroup(ref).remove()
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else f"exit code {proc.returncode}"
        return None


def _init_child(h: Hierarchy, parent: Path, path: Path) -> None:
    """Make a new cgroup usable: cpuset (v1) starts with no CPU and no memory node; v2 enables controllers."""
    if h.version == 1 and (path / "cpuset.cpus").exists():
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (path / name).read_text().strip():
                _write(path / name, (parent / name).read_text().strip())
    if h.version == 2:
        with contextlib.suppress(OSError):
            available = set((parent / "cgroup.controllers").read_text().split())
            wanted = available & {"cpu", "memory", "pids"}
            if wanted:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))


def _limit(h: Hierarchy, path: Path, resources: documents.Resources | None) -> None:
    """Write the limits (or lift them: the cgroup outlives a version that had some) where the controller is."""
    r = resources or documents.Resources()
    memory = None if r.memory_mb is None else r.memory_mb * 2**20
    quota = None if r.cpu_millis is None else r.cpu_millis * CPU_PERIOD_US // 1000
    if h.version == 1:
        settings = {
            "memory.limit_in_bytes": "-1" if memory is None else str(memory),
            "cpu.cfs_period_us": str(CPU_PERIOD_US),
            "cpu.cfs_quota_us": "-1" if quota is None else str(quota),
            "pids.max": "max" if r.pids_max is None else str(r.pids_max),
        }
    else:
        settings = {
            "memory.max": "max" if memory is None else str(memory),
            "cpu.max": f"{'max' if quota is None else quota} {CPU_PERIOD_US}",
            "pids.max": "max" if r.pids_max is None else str(r.pids_max),
        }
    for name, value in settings.items():
        if (path / name).exists():
            _write(path / name, value)


def _unit_name(text: str) -> str:
    """`systemd-escape`: a name fit for a unit name, `-` (a slice's level separator) included."""
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if char.isascii() and (char.isalnum() or char in ":_" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


class Systemd(Placement):
    """A transient scope per run, created by the host's systemd: `discoverd.slice/discoverd-<svc>.slice/...`.

    Each instance gets a slice of its own (`discoverd-<svc>-<ID>.slice`) holding one scope per run
    (`run-<random>.scope`, so a new run never waits for the last scope to be collected); the instance's
    `Cgroup` is that slice in every hierarchy systemd manages.
    """

    name = "systemd"

    def __init__(self, found: list[Hierarchy]) -> None:
        self.hierarchies = [h for h in found if h.version == 2 or h.name == "name=systemd" or h.name in _SYSTEMD_V1]

    def _slices(self, ref: model.Ref) -> tuple[str, str]:
        service = f"discoverd-{_unit_name(ref.service)}.slice"
        instance = f"discoverd-{_unit_name(ref.service)}-{_unit_name(ref.instance)}.slice"
        return service, instance

    def cgroup(self, ref: model.Ref) -> Cgroup:
        service, instance = self._slices(ref)
        rel = f"/discoverd.slice/{service}/{instance}"
        return Cgroup(rel, tuple(h.mount / rel.lstrip("/") for h in self.hierarchies), owned=False)

    def wrap_inner(self, ref: model.Ref, resources: documents.Resources | None, argv: list[str]) -> list[str]:
        _, instance = self._slices(ref)
        props: list[str] = []
        r = resources or documents.Resources()
        if r.memory_mb is not None:
            props.append(f"--property=MemoryMax={r.memory_mb * 2**20}")
        if r.cpu_millis is not None:
            props.append(f"--property=CPUQuota={r.cpu_millis / 10:g}%")
        if r.pids_max is not None:
            props.append(f"--property=TasksMax={r.pids_max}")
        unit = f"run-{uuid.uuid4().hex[:16]}.scope"
        return [
            "systemd-run",
            "--scope",
            "--quiet",
            "--collect",
            f"--unit={unit}",
            f"--slice={instance}",
            *props,
            "--",
            *argv,
        ]


_SYSTEMD_V1 = frozenset({"cpu,cpuacct", "memory", "pids", "blkio", "devices"})


def _systemd_runs(host_pid: int | None) -> bool:
    """Whether the host's pid 1 is systemd (sd_booted(): `/run/systemd/system` is a directory)."""
    root = Path("/") if host_pid is None else Path(f"/proc/{host_pid}/root")
    return (root / "run/systemd/system").is_dir()


def choose(mode: str, root: str, host_pid: int | None) -> Placement:
    """The placement `--cgroups mode` means on this host (`host_pid`: the host's namespaces are those of that pid).

    `auto`: systemd when the host runs it, else cgroupfs when a hierarchy is writable, else none
    (with a log line). Raises ValueError when an explicit mode cannot work here.
    """
    found = hierarchies()
    chosen: Placement = NONE
    if mode == "systemd" or (mode == "auto" and _systemd_runs(host_pid)):
        chosen = Systemd(found)
    elif mode != "none" and (fs := CgroupFs(root, found)).hierarchies:
        reason = fs.probe()
        if reason is None:
            chosen = fs
        elif mode == "cgroupfs":
            raise ValueError(f"a process cannot join a cgroup here: {reason}")
        else:
            log.warning("Placed instances in the agent's own cgroup", extra=logs.kv(reason=reason))
            return NONE
    if chosen is not NONE or mode == "none":
        log.info("Chose where instances run", extra=logs.kv(cgroups=chosen.describe()))
        return chosen
    if mode == "cgroupfs":
        raise ValueError("no writable cgroup hierarchy is mounted (under /sys/fs/cgroup)")
    log.warning(
        "Placed instances in the agent's own cgroup",
        extra=logs.kv(reason="no writable cgroup hierarchy is mounted (under /sys/fs/cgroup)"),
    )
    return NONE
