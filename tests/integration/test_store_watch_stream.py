"""store.watch.Stream against a real etcd: several watchers on one gRPC stream, added and cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from discoverd.config import EtcdOptions
from discoverd.embedded_etcd import EtcdServer
from discoverd.errors import Compacted
from discoverd.schema import keys
from discoverd.store import client, watch
from discoverd.store.typed import Store
from support.etcd import RawEtcd


async def next_batch(responses: AsyncIterator[tuple[int, list[watch.Event]]]) -> tuple[int, list[watch.Event]]:
    while True:
        watch_id, events = await asyncio.wait_for(anext(responses), 10)
        if watch_id != watch.PROGRESS:
            return watch_id, events


def puts(events: list[watch.Event]) -> list[str]:
    return [e.entry.key for e in events if isinstance(e, watch.Put)]


async def test_watchers_on_one_stream_see_only_their_keys_and_a_cancelled_one_sees_nothing(
    store: Store, raw_etcd: RawEtcd
) -> None:
    p = store.prefix
    mine = keys.server_config(p, "n1")
    other = keys.server_config(p, "n2")
    versions = keys.versions_prefix(p, "web").encode()
    start = raw_etcd.put(f"{p}/unrelated", "x") + 1
    async with watch.Stream(store) as stream:
        server_id = stream.add(mine.encode(), b"", start)
        versions_id = stream.add(versions, keys.prefix_range_end(versions), start)
        responses = stream.responses()

        raw_etcd.put(other, '{"service_instances":[]}')  # nobody watches it
        raw_etcd.put(keys.version_config(p, "web", "1.0"), '{"name":"web"}')
        assert (await next_batch(responses))[0] == versions_id

        raw_etcd.put(mine, '{"service_instances":[]}')
        watch_id, events = await next_batch(responses)
        assert (watch_id, puts(events)) == (server_id, [mine])

        stream.cancel(versions_id)
        raw_etcd.put(keys.version_config(p, "web", "2.0"), '{"name":"web"}')
        raw_etcd.put(mine, '{"service_instances":[{"name":"web","id":"a"}]}')
        watch_id, events = await next_batch(responses)
        assert (watch_id, puts(events)) == (server_id, [mine])  # the 2.0 write never arrived
        assert stream.watch_ids == {server_id}


async def test_a_watcher_added_later_starts_at_its_own_revision(store: Store, raw_etcd: RawEtcd) -> None:
    p = store.prefix
    a, b = keys.server_config(p, "a"), keys.server_config(p, "b")
    first = raw_etcd.put(a, '{"service_instances":[]}')
    async with watch.Stream(store) as stream:
        stream.add(a.encode(), b"", first + 1)
        responses = stream.responses()
        written = raw_etcd.put(b, '{"service_instances":[]}')
        raw_etcd.put(b, '{"service_instances":[{"name":"x","id":"y"}]}')
        b_id = stream.add(b.encode(), b"", written + 1)  # read at `written`, watched from the next
        watch_id, events = await next_batch(responses)
        assert watch_id == b_id
        assert [e.revision for e in events] == [written + 1]


async def test_a_silent_stream_answers_progress_requests(store: Store, raw_etcd: RawEtcd) -> None:
    key = keys.server_config(store.prefix, "quiet")
    revision = raw_etcd.put(key, '{"service_instances":[]}')
    async with watch.Stream(store, progress_every=0.2, stall_after=5) as stream:
        stream.add(key.encode(), b"", revision + 1)
        watch_id, events = await asyncio.wait_for(anext(stream.responses()), 10)
    assert watch_id == watch.PROGRESS
    assert isinstance(events[0], watch.Progress) and events[0].revision >= revision


async def test_a_watcher_from_a_compacted_revision_raises_compacted(private_etcd: EtcdServer, prefix: str) -> None:
    raw_etcd = RawEtcd(private_etcd.endpoint)
    key = keys.server_config(prefix, "old")
    first = raw_etcd.put(key, '{"service_instances":[]}')
    latest = raw_etcd.put(key, '{"service_instances":[{"name":"a","id":"b"}]}')
    store = Store(await client.connect(EtcdOptions(endpoints=private_etcd.endpoint, prefix=prefix)))
    try:
        await store.compact(latest)
        async with watch.Stream(store) as stream:
            stream.add(key.encode(), b"", first)
            with pytest.raises(Compacted) as raised:
                await asyncio.wait_for(anext(stream.responses()), 10)
    finally:
        await store.close()
    assert raised.value.revision == first and raised.value.compact_revision >= latest
