"""The store against a real etcd: seed JSON from another writer, CAS, snapshot, watch, compaction."""

from __future__ import annotations

import asyncio
import json

import pytest

from discoverd.config import EtcdOptions
from discoverd.embedded_etcd import EtcdServer
from discoverd.errors import Compacted, Conflict, StoreUnavailable
from discoverd.schema import documents, keys
from discoverd.store import client, leases, watch
from discoverd.store.typed import Store, Write
from support.etcd import RawEtcd

SEED_VERSION = {
    "name": "web",
    "download_script": {"command": "curl", "argv": ["-O", "http://x/web.tgz"], "timeout": 120},
    "install_script": {"command": "tar", "argv": ["xzf", "web.tgz"], "timeout": 60},
    "run_script": {"command": "./web", "argv": ["--port", "8080"], "timeout": 0},
}


async def test_seed_json_written_by_another_client_reads_as_models(store: Store, raw_etcd: RawEtcd) -> None:
    p = store.prefix
    raw_etcd.put(keys.version_config(p, "web", "1.0"), json.dumps(SEED_VERSION))
    raw_etcd.put(
        keys.instance_config(p, "web", "i1"),
        '{"name":"web","service_version":"1.0","run_script":{"command":"","argv":["-v"]}}',
    )
    raw_etcd.put(keys.server_config(p, "n1"), '{"service_instances":[{"name":"web","id":"i1"}]}')
    snapshot = await store.snapshot()
    docs = {e.parsed: e.document for e in snapshot.entries.values()}
    version = docs[keys.Key(keys.Kind.VERSION, service="web", version="1.0")]
    assert isinstance(version, documents.Version)
    assert version.run_script.argv == ["--port", "8080"]
    instance = docs[keys.Key(keys.Kind.INSTANCE, service="web", instance="i1")]
    assert isinstance(instance, documents.Instance) and instance.run_script.argv == ["-v"]
    server = docs[keys.Key(keys.Kind.SERVER, server="n1")]
    assert isinstance(server, documents.Server) and server.service_instances[0].id == "i1"


async def test_documents_written_by_the_store_are_read_by_a_plain_client(store: Store, raw_etcd: RawEtcd) -> None:
    key = keys.version_config(store.prefix, "web", "1.0")
    await store.put(key, documents.Version.model_validate(SEED_VERSION))
    assert json.loads(raw_etcd.get(key) or b"") == SEED_VERSION


async def test_a_bad_document_is_an_entry_with_an_error_not_an_exception(store: Store, raw_etcd: RawEtcd) -> None:
    bad = keys.server_config(store.prefix, "n1")
    good = keys.server_config(store.prefix, "n2")
    raw_etcd.put(bad, "{not json")
    raw_etcd.put(good, '{"service_instances":[]}')
    entries = (await store.snapshot()).entries
    assert entries[bad].error is not None and entries[bad].error.key == bad
    assert isinstance(entries[good].document, documents.Server)


async def test_create_only_write_conflicts_when_the_key_exists(store: Store) -> None:
    key = keys.server_config(store.prefix, "n1")
    doc = documents.Server(service_instances=[])
    await store.put(key, doc, expect=0)
    with pytest.raises(Conflict):
        await store.put(key, doc, expect=0)


async def test_compare_and_swap_on_mod_revision(store: Store, raw_etcd: RawEtcd) -> None:
    key = keys.server_config(store.prefix, "n1")
    revision = await store.put(key, documents.Server(service_instances=[]))
    raw_etcd.put(key, '{"service_instances":[{"name":"a","id":"b"}]}')
    with pytest.raises(Conflict):
        await store.put(key, documents.Server(service_instances=[]), expect=revision)
    assert b'"a"' in (raw_etcd.get(key) or b"")


async def test_a_transaction_is_all_or_nothing(store: Store, raw_etcd: RawEtcd) -> None:
    taken = keys.server_config(store.prefix, "taken")
    raw_etcd.put(taken, '{"service_instances":[]}')
    fresh = keys.server_config(store.prefix, "fresh")
    with pytest.raises(Conflict):
        await store.apply([Write(fresh, b'{"service_instances":[]}', 0), Write(taken, b"{}", 0)])
    assert raw_etcd.get(fresh) is None


async def test_snapshot_pages_through_many_keys_at_one_revision(store: Store) -> None:
    writes = [Write(keys.server_config(store.prefix, f"n{i:05}"), b'{"service_instances":[]}') for i in range(4500)]
    for start in range(0, len(writes), 100):  # etcd limits a transaction to 128 operations by default
        await store.apply(writes[start : start + 100])
    snapshot = await store.snapshot()
    assert len(snapshot.entries) == 4500
    assert max(e.mod_revision for e in snapshot.entries.values()) <= snapshot.revision


async def test_a_parallel_read_of_many_ranges_is_the_same_one_revision(store: Store) -> None:
    p = store.prefix
    servers = [f"n{i:02}" for i in range(40)]
    await store.apply(Write(keys.server_config(p, s), b'{"service_instances":[]}') for s in servers)
    ranges = [(h, keys.prefix_range_end(h)) for h in (keys.server_prefix(p, s).encode() for s in servers)]
    first = await store.read(ranges, parallel=8)
    # Written after: absent from a read pinned at `first`'s revision, read in parallel or not.
    await store.apply(Write(keys.agent_status(p, s), b"{}") for s in servers)
    again = await store.read(ranges, first.revision, parallel=8)
    assert sorted(again.entries) == sorted(first.entries) == sorted(keys.server_config(p, s) for s in servers)
    now = await store.read(ranges, parallel=8)
    one_by_one = await store.read(ranges)
    assert len(now.entries) == 80
    assert {k: (e.value, e.mod_revision) for k, e in now.entries.items()} == {
        k: (e.value, e.mod_revision) for k, e in one_by_one.entries.items()
    }


async def test_watch_resumes_from_a_revision(store: Store, raw_etcd: RawEtcd) -> None:
    first = raw_etcd.put(keys.server_config(store.prefix, "a"), '{"service_instances":[]}')
    raw_etcd.put(keys.server_config(store.prefix, "b"), '{"service_instances":[]}')
    raw_etcd.delete(keys.server_config(store.prefix, "a"))
    seen: list[watch.Event] = []

    async def collect() -> None:
        async for batch in watch.watch(store, first + 1):
            seen.extend(e for e in batch if not isinstance(e, watch.Progress))
            if len(seen) >= 2:
                return

    await asyncio.wait_for(collect(), 10)
    assert isinstance(seen[0], watch.Put) and seen[0].entry.key.endswith("/servers/b/config/details")
    assert isinstance(seen[1], watch.Delete) and seen[1].key.endswith("/servers/a/config/details")


async def test_watch_from_a_compacted_revision_is_reported(store: Store, raw_etcd: RawEtcd) -> None:
    first = raw_etcd.put(keys.server_config(store.prefix, "a"), '{"service_instances":[]}')
    last = raw_etcd.put(keys.server_config(store.prefix, "a"), '{"service_instances":[]}')
    await store.compact(last)

    async def first_batch() -> None:
        async for _ in watch.watch(store, first):
            return

    with pytest.raises(Compacted) as caught:
        await asyncio.wait_for(first_batch(), 10)
    assert caught.value.compact_revision >= last


async def test_watch_reports_progress_while_nothing_changes(store: Store) -> None:
    revision = await store.revision()

    async def first_batch() -> list[watch.Event]:
        async for batch in watch.watch(store, revision + 1, progress_every=0.2):
            return batch
        return []

    batch = await asyncio.wait_for(first_batch(), 10)
    assert isinstance(batch[0], watch.Progress) and batch[0].revision >= revision


async def test_a_paused_etcd_stalls_the_watch_which_is_reported(private_etcd: EtcdServer, prefix: str) -> None:
    store = Store(await client.connect(EtcdOptions(endpoints=private_etcd.endpoint, prefix=prefix)))
    try:
        revision = await store.revision()
        private_etcd.pause()

        async def drain() -> None:
            async for _ in watch.watch(store, revision + 1, progress_every=0.3, stall_after=1.5):
                pass

        with pytest.raises(StoreUnavailable, match="stalled"):
            await asyncio.wait_for(drain(), 20)
    finally:
        private_etcd.resume()
        await store.close()


async def test_lease_keys_vanish_when_the_lease_is_revoked(store: Store, raw_etcd: RawEtcd) -> None:
    lease = await leases.grant(store, 15)
    key = keys.agent_status(store.prefix, "n1")
    await store.apply([Write(key, b"{}", lease=lease)])
    assert await leases.keep_alive_once(store, lease) > 0
    await leases.revoke(store, lease)
    assert raw_etcd.get(key) is None
    with pytest.raises(leases.LeaseExpired):
        await leases.keep_alive_once(store, lease)


async def test_unreachable_etcd_is_a_clear_error_within_seconds() -> None:
    from discoverd.embedded_etcd import free_port

    with pytest.raises(StoreUnavailable, match=r"is unreachable"):
        await asyncio.wait_for(client.connect(EtcdOptions(endpoints=f"http://127.0.0.1:{free_port()}", timeout=1)), 5)
