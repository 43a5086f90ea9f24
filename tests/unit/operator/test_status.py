"""Object status rebuilt from agent status documents."""

from __future__ import annotations

import datetime as dt

from discoverd.operator import status
from discoverd.schema import documents, keys, rollouts

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
INSTANCE = keys.Key(keys.Kind.INSTANCE, service="web", instance="i1")
SERVER = keys.Key(keys.Kind.SERVER, server="node-1")
VERSION = keys.Key(keys.Kind.VERSION, service="web", version="1.0")


def report(
    server: str, phase: documents.Phase, version: str = "1.0", restarts: int = 0
) -> tuple[keys.Key, documents.InstanceStatus]:
    key = keys.Key(keys.Kind.INSTANCE_STATUS, server=server, service="web", instance="i1")
    doc = documents.InstanceStatus(phase=phase, version=version, pid=42, restarts=restarts, since=NOW, updated_at=NOW)
    return key, doc


def test_instance_status_lists_each_server() -> None:
    view = status.View()
    view.put(*report("node-1", documents.Phase.RUNNING, restarts=1))
    view.put(*report("node-2", documents.Phase.STARTING, restarts=2))
    got = view.status_for(INSTANCE)
    assert got["phase"] == "Starting" and got["server"] == "node-1,node-2" and got["restarts"] == 3
    assert [s["server"] for s in got["servers"]] == ["node-1", "node-2"] and got["servers"][0]["pid"] == 42


def test_server_is_online_while_its_agent_key_exists() -> None:
    view = status.View()
    view.put(SERVER, documents.Server(service_instances=[documents.InstanceRef(name="web", id="i1")]))
    assert view.status_for(SERVER)["phase"] == "Offline"
    agent_key = keys.Key(keys.Kind.AGENT_STATUS, server="node-1")
    view.put(agent_key, documents.AgentStatus(hostname="h", agent_version="1", started_at=NOW, heartbeat=NOW))
    view.put(*report("node-1", documents.Phase.RUNNING))
    got = view.status_for(SERVER)
    assert got["online"] and got["phase"] == "Online" and got["instances"] == 1 and got["running"] == 1
    view.put(agent_key, None)
    assert view.status_for(SERVER)["phase"] == "Offline"


def test_version_counts_instances_running_it() -> None:
    view = status.View()
    view.put(VERSION, documents.Version(name="web"))
    view.put(*report("node-1", documents.Phase.RUNNING))
    assert view.status_for(VERSION) == {"observedGeneration": None, "instances": 1, "running": 1, "servers": ["node-1"]}
    assert VERSION in status.affected(view, report("node-1", documents.Phase.RUNNING)[0])


def test_missing_status_equals_empty_status() -> None:
    assert status.normalized(keys.Kind.INSTANCE, None) == status.View().status_for(INSTANCE)


def test_a_rollout_status_feeds_its_service_rollout_object() -> None:
    view = status.View()
    rollout = keys.Key(keys.Kind.ROLLOUT, service="web")
    status_key = keys.Key(keys.Kind.ROLLOUT_STATUS, service="web")
    assert status.affected(view, status_key) == {rollout}
    assert status.affected(view, rollout) == {rollout}
    assert status.affected(view, keys.Key(keys.Kind.AGENT_STATUS, server="n")) == {
        SERVER.__class__(keys.Kind.SERVER, server="n")
    }
    assert view.status_for(rollout)["phase"] is None
    doc = rollouts.RolloutStatus(
        phase=rollouts.RolloutPhase.PAUSED,
        to_version="2.0",
        updated=["i1", "i2"],
        healthy=["i1"],
        skipped=["i3"],
        total=4,
        message="paused",
        started_at=NOW,
        updated_at=NOW,
    )
    view.put(status_key, doc)
    got = view.status_for(rollout)
    assert got == {
        "observedGeneration": None,
        "phase": "Paused",
        "toVersion": "2.0",
        "updated": 2,
        "healthy": 1,
        "total": 4,
        "skipped": ["i3"],
        "message": "paused",
    }
