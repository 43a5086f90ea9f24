"""Shared pieces of the benchmark scripts: real servers, child processes, /proc figures, output.

Every bench script in this directory:

- starts what it measures as real processes on loopback (an etcd through
  `discoverd.embedded_etcd.EtcdServer`, the test control plane through
  `hack/control-plane.sh`, `discoverd` itself) and stops exactly those pids;
- is bounded in time (every wait has a deadline);
- prints one JSON line per figure on stdout (`emit`) and a short human
  summary on stderr (`summary`), so `> figures.jsonl` keeps only the figures.

Nothing here is imported by the tests, and nothing in bench/ is a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discoverd.embedded_etcd import EtcdServer
from discoverd.schema import keys

__all__ = [
    "DISCOVERD",
    "REPO",
    "Child",
    "ControlPlane",
    "Figure",
    "Sampler",
    "agent_argv",
    "control_plane",
    "cpu_seconds",
    "emit",
    "etcd_server",
    "machine",
    "percentile",
    "rss_mib",
    "scratch_dir",
    "spread",
    "summary",
    "tools_bin_dir",
    "wait_for",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
DISCOVERD = Path(sys.executable).with_name("discoverd")
_CONTROL_PLANE = REPO / "hack" / "control-plane.sh"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --- output ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    bench: str
    metric: str
    value: float | int | None
    unit: str
    baseline: float | int | None = None
    target: str | None = None
    note: str | None = None


_figures: list[Figure] = []


def emit(
    bench: str,
    metric: str,
    value: float | int | None,
    unit: str,
    baseline: float | int | None = None,
    *,
    target: str | None = None,
    note: str | None = None,
) -> Figure:
    """Print one figure as a JSON line on stdout (and remember it for `summary`)."""
    if isinstance(value, float):
        value = round(value, 3)
    if isinstance(baseline, float):
        baseline = round(baseline, 3)
    figure = Figure(bench, metric, value, unit, baseline, target, note)
    line: dict[str, Any] = {"bench": bench, "metric": metric, "value": value, "unit": unit, "baseline": baseline}
    if target is not None:
        line["target"] = target
    if note is not None:
        line["note"] = note
    print(json.dumps(line), flush=True)
    _figures.append(figure)
    return figure


def summary(title: str, extra: Sequence[str] = ()) -> None:
    """The figures emitted so far as a short table on stderr."""
    out = [f"\n== {title} ({machine()}) =="]
    for f in _figures:
        base = "" if f.baseline is None else f"  (baseline {f.baseline} {f.unit})"
        target = "" if f.target is None else f"  [target {f.target}]"
        out.append(f"  {f.metric:<34} {f.value!s:>10} {f.unit}{base}{target}")
    out.extend(f"  {line}" for line in extra)
    print("\n".join(out), file=sys.stderr, flush=True)


def machine() -> str:
    """Cores, memory and load average: where the figures came from."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics and /proc --------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rss_mib(pid: int) -> float:
    """Resident set size of `pid` in MiB (VmRSS)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


class Sampler:
    """Samples a process's RSS in a thread (peak and last); `with Sampler(pid) as s: ...`."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0.0
        self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = rss_mib(self.pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                return
            self.peak = max(self.peak, self.last)
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll `predicate` on the event loop until truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it is truthy; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- a simulated fleet -----------------------------------------------------------------------


def spread(
    prefix: str, service: str, instances: Sequence[str], servers: Sequence[str], version: str = "1.0"
) -> dict[str, Any]:
    """Instance documents on `version` and the server documents that list them, round-robin over `servers`."""
    docs: dict[str, Any] = {}
    listed: dict[str, list[dict[str, str]]] = {}
    for n, instance in enumerate(instances):
        docs[keys.instance_config(prefix, service, instance)] = {"name": service, "service_version": version}
        listed.setdefault(servers[n % len(servers)], []).append({"name": service, "id": instance})
    for server, refs in listed.items():
        docs[keys.server_config(prefix, server)] = {"service_instances": refs}
    return docs


def agent_argv(endpoint: str, prefix: str, server: str, state_dir: Path) -> list[str]:
    """A real agent for `server` that stops its instances when it exits, no metrics port, no cgroups."""
    return [
        *(str(DISCOVERD), "--etcd-endpoints", endpoint, "--prefix", prefix),
        *("agent", "--metrics-address", "", "--server-id", server),
        *("--state-dir", str(state_dir), "--stop-instances-on-exit", "--cgroups", "none"),
    ]


# --- processes -------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(keep: bool = False) -> Iterator[Path]:
    """A temporary directory for data and logs; kept (and its path logged) when `keep`."""
    path = Path(tempfile.mkdtemp(prefix="discoverd-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            subprocess.run(["rm", "-rf", str(path)], check=False)


@dataclass
class Child:
    """A child process we started, output to a log file, in its own session; stopped by its pid."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}: see {self.log_path}")
            return text in self.log_text()

        wait_until(seen, timeout, f"{text!r} in {self.log_path}", interval=0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """`sig` (after SIGCONT), SIGKILL after `timeout`; only this pid. Its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode


@contextlib.contextmanager
def etcd_server(directory: Path, extra_args: Sequence[str] = ()) -> Iterator[EtcdServer]:
    """A real single-member etcd on loopback (no fsync: the bench measures us, not the disk)."""
    server = EtcdServer(directory / "etcd", extra_args=["--unsafe-no-fsync=true", *extra_args])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tools_bin_dir() -> Path:
    """Where `make tools` puts kube-apiserver, kubectl and helm."""
    base = os.environ.get("DISCOVERD_TOOLS_DIR") or str(Path.home() / ".cache" / "discoverd" / "tools")
    return Path(base) / "bin"


@dataclass(frozen=True)
class ControlPlane:
    """The test control plane (`hack/control-plane.sh`): a real kube-apiserver and its own etcd."""

    dir: Path
    kubeconfig: Path
    server: str
    exports: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.exports}

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        kubectl = tools_bin_dir() / "kubectl"
        cmd = [str(kubectl), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env())
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def pid(self, name: str) -> int:
        """The pid of `kube-apiserver` or `etcd` as control-plane.sh recorded it."""
        return int((self.dir / f"{name}.pid").read_text().strip())


@contextlib.contextmanager
def control_plane(directory: Path, timeout: float = 180) -> Iterator[ControlPlane]:
    """`hack/control-plane.sh up --dir D`, and always `down --dir D` (it stops exactly its own pids)."""
    if not (tools_bin_dir() / "kube-apiserver").exists():
        raise RuntimeError(f"no kube-apiserver in {tools_bin_dir()}: run `make tools`")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["bash", str(_CONTROL_PLANE), "up", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"control-plane.sh up failed:\n{proc.stderr}")
        exports: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                name, _, value = line.removeprefix("export ").partition("=")
                exports[name.strip()] = value.strip()
        yield ControlPlane(directory, Path(exports["KUBECONFIG"]), exports["DISCOVERD_KUBE_SERVER"], exports)
    finally:
        subprocess.run(
            ["bash", str(_CONTROL_PLANE), "down", "--dir", str(directory)],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
