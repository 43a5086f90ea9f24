"""Full reads page by size: values near etcd's 1.5 MiB limit never exceed the gRPC message limit (64 MiB)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from discoverd import embedded_etcd
from discoverd.config import EtcdOptions
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.typed import Store
from support.etcd import RawEtcd

BIG = 1024 * 1024 - 512  # near 1 MiB: etcd takes requests up to 1.5 MiB
COUNT = 72  # 72 MiB in all: more than one gRPC message (64 MiB) can carry


@pytest.fixture
def big_etcd(tmp_path: Path) -> embedded_etcd.EtcdServer:
    return embedded_etcd.EtcdServer(tmp_path / "etcd", extra_args=["--quota-backend-bytes=1073741824"])


@pytest.fixture
async def big_store(big_etcd: embedded_etcd.EtcdServer) -> AsyncIterator[Store]:
    big_etcd.start()
    try:
        s = Store(await client.connect(EtcdOptions(endpoints=big_etcd.endpoint, prefix="/big")))
        try:
            yield s
        finally:
            await s.close()
    finally:
        big_etcd.stop()


def value(i: int) -> bytes:
    return f'{{"name":"web","padding":"{i:04d}'.encode() + b"x" * (BIG - 40) + b'"}'


async def test_a_full_read_of_values_near_1_mib_returns_every_key_intact(
    big_store: Store, big_etcd: embedded_etcd.EtcdServer
) -> None:
    raw = RawEtcd(big_etcd.endpoint)
    for i in range(COUNT):
        raw.put(keys.version_config("/big", "web", f"v{i:03d}"), value(i))
    raw.put(keys.server_config("/big", "n1"), '{"service_instances":[]}')

    snapshot = await big_store.snapshot()

    assert len(snapshot.entries) == COUNT + 1
    for i in range(COUNT):
        entry = snapshot.entries[keys.version_config("/big", "web", f"v{i:03d}")]
        assert entry.value == value(i)
    # the same through a read of several ranges at one revision, as the agent reads its keys
    versions = keys.versions_prefix("/big", "web").encode()
    both = await big_store.read(
        [(keys.server_config("/big", "n1").encode(), b""), (versions, keys.prefix_range_end(versions))],
        snapshot.revision,
    )
    assert both.revision == snapshot.revision
    assert len(both.entries) == COUNT + 1


async def test_many_small_values_are_read_in_few_large_pages(store: Store, raw_etcd: RawEtcd) -> None:
    for i in range(300):
        raw_etcd.put(keys.server_config(store.prefix, f"n{i:03d}"), '{"service_instances":[]}')
    snapshot = await store.snapshot()
    assert sorted(snapshot.entries) == sorted(keys.server_config(store.prefix, f"n{i:03d}") for i in range(300))


async def test_a_watch_catching_up_on_values_near_1_mib_gets_them_all(
    big_store: Store, big_etcd: embedded_etcd.EtcdServer
) -> None:
    raw = RawEtcd(big_etcd.endpoint)
    first = raw.put(keys.server_config("/big", "n1"), '{"service_instances":[]}')
    for i in range(COUNT):
        raw.put(keys.version_config("/big", "web", f"v{i:03d}"), value(i))
    versions = keys.versions_prefix("/big", "web").encode()
    seen: dict[str, bytes] = {}
    async with watch.Stream(big_store) as stream:
        # etcd sends a lagging watcher many revisions per response: 72 MiB in one would break the
        # stream; it splits them into fragments, which come back together here
        stream.add(versions, keys.prefix_range_end(versions), first)
        responses = stream.responses()
        while len(seen) < COUNT:
            _, events = await asyncio.wait_for(anext(responses), 30)
            seen.update((e.entry.key, e.entry.value) for e in events if isinstance(e, watch.Put))
    assert all(seen[keys.version_config("/big", "web", f"v{i:03d}")] == value(i) for i in range(COUNT))
