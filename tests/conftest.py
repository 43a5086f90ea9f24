"""Fixtures shared by every test: a real etcd on a free loopback port, a prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from discoverd import embedded_etcd
from discoverd.config import EtcdOptions
from discoverd.store import client, typed
from support.etcd import RawEtcd

# Timing is not what property tests check; a busy 2-core CI machine must not fail them.
settings.register_profile("discoverd", deadline=None, max_examples=100)
settings.load_profile("discoverd")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded_etcd.EtcdServer]:
    """One etcd for the session; tests keep apart by prefix."""
    etcd = embedded_etcd.EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[embedded_etcd.EtcdServer]:
    """An etcd for this test alone, for tests that stop, pause or compact it."""
    etcd = embedded_etcd.EtcdServer(tmp_path / "etcd-data").start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def etcd_options(etcd_server: embedded_etcd.EtcdServer, prefix: str) -> EtcdOptions:
    return EtcdOptions(endpoints=etcd_server.endpoint, prefix=prefix)


@pytest.fixture
def raw_etcd(etcd_server: embedded_etcd.EtcdServer) -> RawEtcd:
    return RawEtcd(etcd_server.endpoint)


@pytest.fixture
async def store(etcd_options: EtcdOptions) -> AsyncIterator[typed.Store]:
    s = typed.Store(await client.connect(etcd_options))
    try:
        yield s
    finally:
        await s.close()
