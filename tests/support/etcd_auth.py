"""An etcd with authentication on, and the `discoverd auth` credentials tests use against it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from discoverd.config import EtcdOptions
from discoverd.embedded_etcd import EtcdServer, find_binary
from discoverd.store import client
from discoverd.store.typed import Store
from support.cli import discoverd

__all__ = ["ROOT_PASSWORD", "add_server", "auth_etcd", "bootstrap", "env_of", "store_as"]

ROOT_PASSWORD = "s3cret"


@contextlib.contextmanager
def auth_etcd(data_dir: Path) -> Iterator[EtcdServer]:
    """A real etcd with a root user (`ROOT_PASSWORD`) and auth enabled; stopped on exit."""
    etcd = EtcdServer(data_dir).start()
    etcdctl = str(Path(find_binary()).with_name("etcdctl"))
    try:
        for args in (["user", "add", f"root:{ROOT_PASSWORD}"], ["auth", "enable"]):
            subprocess.run([etcdctl, f"--endpoints={etcd.endpoint}", *args], check=True, capture_output=True)
        yield etcd
    finally:
        etcd.stop()


def env_of(etcd: EtcdServer, prefix: str, user: str, password: str) -> dict[str, str]:
    return {
        "DISCOVERD_ETCD_ENDPOINTS": etcd.endpoint,
        "DISCOVERD_PREFIX": prefix,
        "DISCOVERD_ETCD_USER": user,
        "DISCOVERD_ETCD_PASSWORD": password,
        "DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true",  # a loopback etcd without TLS
    }


def bootstrap(etcd: EtcdServer, prefix: str) -> dict[str, str]:
    """Root's environment, after `discoverd auth bootstrap` created the admin role."""
    env = env_of(etcd, prefix, "root", ROOT_PASSWORD)
    result = discoverd("auth", "bootstrap", env=env)
    assert result.returncode == 0, result.stderr
    return env


def add_server(root: dict[str, str], server_id: str) -> dict[str, str]:
    """The credentials `auth add-server` prints, as the environment they are meant for."""
    result = discoverd("auth", "add-server", server_id, env=root)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"DISCOVERD_ETCD_USER", "DISCOVERD_ETCD_PASSWORD"}
    return {**root, **lines}


@contextlib.asynccontextmanager
async def store_as(env: dict[str, str]) -> AsyncIterator[Store]:
    """A Store connected with the credentials in `env`."""
    options = EtcdOptions(
        endpoints=env["DISCOVERD_ETCD_ENDPOINTS"],
        prefix=env["DISCOVERD_PREFIX"],
        user=env["DISCOVERD_ETCD_USER"],
        password=env["DISCOVERD_ETCD_PASSWORD"],
        allow_plaintext_password=True,
    )
    store = Store(await client.connect(options))
    try:
        yield store
    finally:
        await store.close()
