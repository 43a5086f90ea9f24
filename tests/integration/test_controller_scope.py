"""The rollout controller holds and decodes only what rollouts need (issue 22): a real etcd, the real Controller.

A fleet of other servers and services surrounds one service, `web`, on three servers. With no
rollout running, the controller holds only rollout keys and decodes none of the fleet's traffic;
while `web` rolls out it holds `web`'s instances, the three servers listing them and their
reports, nothing of the rest; once the rollout succeeded, only rollout keys again. The rollout
itself behaves as before: agents are simulated by writing their reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from discoverd.controller import loop
from discoverd.schema import keys
from discoverd.store.typed import Store, Write
from support.etcd import RawEtcd

NOW = "2026-01-01T00:00:00+00:00"
WEB = {"w1": ["web-1"], "w2": ["web-2"], "w3": ["web-3"]}


def running(version: str, restarts: int = 0) -> dict[str, Any]:
    return {"phase": "Running", "version": version, "restarts": restarts, "since": NOW, "updated_at": NOW}


def agent(server: str) -> dict[str, Any]:
    return {"hostname": server, "agent_version": "0", "started_at": NOW, "heartbeat": NOW}


async def put(store: Store, docs: dict[str, Any]) -> None:
    items = list(docs.items())
    for i in range(0, len(items), 100):
        await store.apply(Write(k, json.dumps(v).encode()) for k, v in items[i : i + 100])


def fleet(p: str, servers: int) -> dict[str, Any]:
    docs: dict[str, Any] = {}
    for n in range(servers):
        s = f"other-{n}"
        ids = [f"o{n}-{k}" for k in range(3)]
        docs[keys.server_config(p, s)] = {"service_instances": [{"name": "other", "id": i} for i in ids]}
        docs[keys.agent_status(p, s)] = agent(s)
        for i in ids:
            docs[keys.instance_config(p, "other", i)] = {"name": "other", "service_version": "1.0"}
            docs[keys.instance_status(p, s, "other", i)] = running("1.0")
    docs[keys.version_config(p, "other", "1.0")] = {"name": "other", "run_script": {"command": "true"}}
    for s, ids in WEB.items():
        docs[keys.server_config(p, s)] = {"service_instances": [{"name": "web", "id": i} for i in ids]}
        docs[keys.agent_status(p, s)] = agent(s)
        for i in ids:
            docs[keys.instance_config(p, "web", i)] = {"name": "web", "service_version": "1.0"}
            docs[keys.instance_status(p, s, "web", i)] = running("1.0")
    # an ended rollout of `other`: held as a rollout key, its instances are not needed
    docs[keys.rollout_config(p, "other")] = {"name": "other", "to_version": "1.0"}
    docs[keys.rollout_status(p, "other")] = {
        "phase": "Succeeded",
        "to_version": "1.0",
        "started_at": NOW,
        "updated_at": NOW,
    }
    return docs


@contextlib.asynccontextmanager
async def acting(store: Store) -> AsyncIterator[loop.Controller]:
    c = loop.Controller(store, "test", ttl=5)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        await until(lambda: c.leading and c.resync.current, "the controller to lead with a current watch")
        yield c
    finally:
        stop.set()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(task, 20)
        assert asyncio.get_running_loop().time() - started < 3, "the controller stops at once"


async def until(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def kinds(c: loop.Controller) -> dict[keys.Kind, set[str]]:
    """What the controller holds: kind -> the server or service/instance each key is about."""
    out: dict[keys.Kind, set[str]] = {}
    for e in c.world.entries.values():
        assert e.parsed is not None
        k = e.parsed
        out.setdefault(k.kind, set()).add(k.server or k.service if k.kind is not keys.Kind.INSTANCE else k.instance)
    return out


async def test_the_controller_holds_only_what_rollouts_need_before_during_and_after_one(
    store: Store, raw_etcd: RawEtcd
) -> None:
    p = store.prefix
    await put(store, fleet(p, 40))
    async with acting(store) as c:
        assert kinds(c) == {keys.Kind.ROLLOUT: {"other"}, keys.Kind.ROLLOUT_STATUS: {"other"}}
        assert list(c.scope.watches) == [f"{p}/services/".encode()], "no watch on servers/ while nothing rolls out"

        # the fleet's traffic: reports, an instance document, a version: nothing of it is decoded
        await put(
            store, {keys.instance_status(p, f"other-{n}", "other", f"o{n}-0"): running("1.0", 1) for n in range(40)}
        )
        await put(store, {keys.instance_config(p, "other", "o1-1"): {"name": "other", "service_version": "1.1"}})
        marker = keys.rollout_config(p, "marker")
        await put(store, {marker: {"name": "marker", "to_version": "1.0", "canary": -1}})  # invalid: no status written
        await until(lambda: marker in c.world.entries, "the marker rollout key")
        assert c.scope.events == 1, "only the rollout key was decoded"

        # a rollout of web: its instances, the servers listing them and their reports, nothing else
        await put(
            store, {keys.rollout_config(p, "web"): {"name": "web", "to_version": "2.0", "min_healthy_seconds": 0}}
        )

        def updated() -> list[str]:
            docs = {i: raw_etcd.get(keys.instance_config(p, "web", i)) for ids in WEB.values() for i in ids}
            return [i for i, raw in docs.items() if raw is not None and json.loads(raw)["service_version"] == "2.0"]

        await until(lambda: updated(), "the first step of the rollout")
        held = kinds(c)
        assert held[keys.Kind.INSTANCE] == {"web-1", "web-2", "web-3"}
        assert held[keys.Kind.SERVER] == held[keys.Kind.AGENT_STATUS] == set(WEB)
        assert held[keys.Kind.INSTANCE_STATUS] == set(WEB)
        assert held[keys.Kind.ROLLOUT] == {"other", "web", "marker"}

        # simulated agents report each updated instance Running on 2.0 until the rollout succeeds
        def phase() -> str | None:
            raw = raw_etcd.get(keys.rollout_status(p, "web"))
            return json.loads(raw)["phase"] if raw else None

        reported: set[str] = set()
        deadline = asyncio.get_running_loop().time() + 30
        while phase() != "Succeeded":
            assert asyncio.get_running_loop().time() < deadline, f"the rollout did not succeed: {phase()}"
            for i in set(updated()) - reported:
                server = next(s for s, ids in WEB.items() if i in ids)
                await put(store, {keys.instance_status(p, server, "web", i): running("2.0")})
                reported.add(i)
            await asyncio.sleep(0.05)

        await until(lambda: keys.Kind.INSTANCE not in kinds(c), "the settled rollout's keys to be dropped")
        assert set(kinds(c)) == {keys.Kind.ROLLOUT, keys.Kind.ROLLOUT_STATUS}
        assert list(c.scope.watches) == [f"{p}/services/".encode()], "the servers/ watch ends with the rollout"


async def test_a_server_that_starts_listing_an_instance_mid_rollout_is_counted(store: Store) -> None:
    p = store.prefix
    await put(store, fleet(p, 5))
    paused = {"name": "web", "to_version": "2.0", "min_healthy_seconds": 0, "paused": True}
    await put(store, {keys.rollout_config(p, "web"): paused})
    # JSON may spell the service's name with an escape: the read must still see that w5 lists web-2
    escaped = b'{"service_instances": [{"name": "w\\u0065b", "id": "web-2"}]}'
    await store.apply([Write(keys.server_config(p, "w5"), escaped)])
    async with acting(store) as c:
        await until(lambda: c.world.covers("web") and c.world.members("web"), "web's instances")
        assert [r.server for r in c.world.members("web")["web-1"].reports] == ["w1"]
        assert [r.server for r in c.world.members("web")["web-2"].reports] == ["w2", "w5"]
        # w4 (no agent: offline) now lists web-1 too: the rollout must see it, or it would update web-1 unguarded
        await put(store, {keys.server_config(p, "w4"): {"service_instances": [{"name": "web", "id": "web-1"}]}})
        await until(lambda: len(c.world.members("web")["web-1"].reports) == 2, "w4's listing")
        assert [(r.server, r.online) for r in c.world.members("web")["web-1"].reports] == [("w1", True), ("w4", False)]


async def test_a_rollout_start_reads_the_servers_its_listings_name_and_all_servers_only_when_one_is_missing(
    store: Store,
) -> None:
    p = store.prefix
    docs = fleet(p, 20)
    # The listings agents keep (status.Writer), and a stale one: other-0 lists no web instance.
    listings = {keys.listing(p, "web", s): {} for s in [*WEB, "other-0"]}
    await put(store, {**docs, **listings})
    paused = {"name": "web", "to_version": "2.0", "min_healthy_seconds": 0, "paused": True}
    await put(store, {keys.rollout_config(p, "web"): paused})
    async with acting(store) as c:
        await until(lambda: c.world.covers("web") and c.world.members("web"), "web's instances")
        assert c.scope.reads == {"listed": 1, "all": 0}, "the listings named every server: servers/ was not read"
        assert kinds(c)[keys.Kind.SERVER] == set(WEB), "a stale listing's server is read, and dropped"
        assert {i: [r.server for r in m.reports] for i, m in c.world.members("web").items()} == {
            "web-1": ["w1"],
            "web-2": ["w2"],
            "web-3": ["w3"],
        }
        # A new server lists web-1 before its agent wrote a listing: seen from the watch, read with the rest.
        await put(store, {keys.server_config(p, "w4"): {"service_instances": [{"name": "web", "id": "web-1"}]}})
        await until(lambda: c.scope.reads["listed"] == 2, "the servers of web read again")
        assert c.scope.reads["all"] == 0
        assert [r.server for r in c.world.members("web")["web-1"].reports] == ["w1", "w4"]
    # A listing missing (an agent that has not written it): the next start reads all of servers/.
    await store.delete(keys.listing(p, "web", "w2"))
    await put(store, {keys.server_config(p, "w4"): {"service_instances": []}})
    async with acting(store) as c:
        await until(lambda: c.world.covers("web") and c.world.members("web"), "web's instances")
        assert c.scope.reads == {"listed": 0, "all": 1}
        assert [r.server for r in c.world.members("web")["web-2"].reports] == ["w2"]
        assert kinds(c)[keys.Kind.SERVER] == set(WEB)
