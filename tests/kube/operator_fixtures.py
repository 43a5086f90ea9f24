"""Fixtures for the operator's tests: the CRDs installed, and `discoverd operator` as a real process.

Import the fixtures into a test module (`from kube.operator_fixtures import *`
is avoided; name them). The operator mirrors the test's own etcd prefix (on
the session etcd of tests/conftest.py) into the test's own namespace, and is
stopped by its pid (SIGTERM, then SIGKILL) even when the test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from discoverd.config import EtcdOptions
from discoverd.schema import documents
from discoverd.store import client, leases, typed
from kube.controlplane import REPO, ControlPlane
from support.http import free_port
from support.wait import wait_until

__all__ = ["Operator", "crds", "kubectl_json", "operator", "put_with_lease"]

DISCOVERD = Path(sys.executable).with_name("discoverd")


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    """The CRDs from crds/, applied and Established."""
    control_plane.kubectl_run("apply", "-f", str(REPO / "crds"))
    names = [
        "servers.discoverd.io",
        "serviceversions.discoverd.io",
        "serviceinstances.discoverd.io",
        "servicerollouts.discoverd.io",
    ]
    control_plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    return names


@dataclass
class Operator:
    """A running `discoverd operator`; `stop()` / `start()` / `pause()` / `resume()` by pid."""

    cp: ControlPlane
    etcd_options: EtcdOptions
    namespace: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)
    metrics_port: int = field(default_factory=free_port)
    """Its /metrics, /healthz and /readyz: a port of its own (tests run operators side by side)."""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        argv = [
            str(DISCOVERD),
            "--etcd-endpoints",
            self.etcd_options.describe(),
            "--prefix",
            self.etcd_options.prefix,
            "operator",
            "--namespace",
            self.namespace,
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
        ]
        resyncs = self.resyncs()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.cp.env(), start_new_session=True
        )
        log.close()
        # This run's first resync (the log is appended to across restarts).
        wait_until(lambda: self.resyncs() > resyncs, timeout=60, what="the operator's resync")

    def resyncs(self) -> int:
        return self.log_text().count("Resynced etcd and Kubernetes")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def operator(
    control_plane: ControlPlane, crds: list[str], etcd_options: EtcdOptions, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    """`discoverd operator` for this test's prefix and namespace, started."""
    op = Operator(control_plane, etcd_options, namespace, tmp_path / "operator.log")
    try:
        op.start()
        yield op
    finally:
        op.stop()
        sys.stderr.write(f"\n--- operator log ({namespace}) ---\n{op.log_text()[-6000:]}\n")


def kubectl_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl_run(*args, "-o", "json").stdout)


def put_with_lease(options: EtcdOptions, items: dict[str, documents.Document], ttl: int = 60) -> Callable[[], None]:
    """Write status documents attached to a new lease, as an agent does; returns a function revoking it."""

    async def put() -> int:
        store = typed.Store(await client.connect(options))
        try:
            lease = await leases.grant(store, ttl)
            await store.apply([typed.Write(k, documents.dumps(d), lease=lease) for k, d in items.items()])
            return lease
        finally:
            await store.close()

    lease_id = asyncio.run(put())

    def revoke() -> None:
        async def go() -> None:
            store = typed.Store(await client.connect(options))
            try:
                await leases.revoke(store, lease_id)
            finally:
                await store.close()

        asyncio.run(go())

    return revoke
