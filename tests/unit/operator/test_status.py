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


def listing(view: status.View, *servers: str) -> None:
    """`servers` list web/i1 in their server documents."""
    for server in servers:
        doc = documents.Server(service_instances=[documents.InstanceRef(name="web", id="i1")])
        view.put(keys.Key(keys.Kind.SERVER, server=server), doc)


def test_instance_status_lists_each_server() -> None:
    view = status.View()
    listing(view, "node-1", "node-2")
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
    listing(view, "node-1")
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


def test_a_report_from_a_server_that_does_not_list_the_instance_is_ignored() -> None:
    """A server can write status keys for any instance; only the servers listing it are believed."""
    view = status.View()
    view.put(VERSION, documents.Version(name="web"))
    listing(view, "node-1")
    view.put(*report("node-1", documents.Phase.RUNNING, restarts=1))
    key, forged = report("node-9", documents.Phase.FAILED, restarts=50)
    view.put(key, forged.model_copy(update={"message": "pwned"}))
    view.put(keys.Key(keys.Kind.SERVER, server="node-9"), documents.Server(service_instances=[]))
    got = view.status_for(INSTANCE)
    assert (got["phase"], got["server"], got["restarts"], got["message"]) == ("Running", "node-1", 1, "")
    assert [s["server"] for s in got["servers"]] == ["node-1"]
    assert view.status_for(VERSION)["servers"] == ["node-1"]
    assert view.status_for(keys.Key(keys.Kind.SERVER, server="node-9"))["reported"] == 0
    # Once node-9 lists it, its report counts, and the server's change tells the instance's object.
    server_9 = keys.Key(keys.Kind.SERVER, server="node-9")
    listing(view, "node-9")
    assert INSTANCE in status.affected(view, server_9)
    assert view.status_for(INSTANCE)["server"] == "node-1,node-9"
    view.put(server_9, None)
    assert view.status_for(INSTANCE)["server"] == "node-1"


def test_text_copied_into_an_object_status_has_its_control_characters_escaped() -> None:
    """kubectl prints .status.message and .status.hostname in its columns: no terminal sequences."""
    view = status.View()
    listing(view, "node-1")
    key, doc = report("node-1", documents.Phase.FAILED)
    view.put(key, doc.model_copy(update={"message": "\x1b]0;owned\x07\x1b[2Jcleared\nforged line"}))
    agent_key = keys.Key(keys.Kind.AGENT_STATUS, server="node-1")
    agent = documents.AgentStatus(hostname="h\x1b[31m", agent_version="1\x9b2J", started_at=NOW, heartbeat=NOW)
    view.put(agent_key, agent)
    got = view.status_for(INSTANCE)
    assert got["message"] == "\\x1b]0;owned\\x07\\x1b[2Jcleared\\x0aforged line"
    assert got["servers"][0]["message"] == got["message"]
    server = view.status_for(SERVER)
    assert (server["hostname"], server["agentVersion"]) == ("h\\x1b[31m", "1\\x9b2J")
    rollout_key = keys.Key(keys.Kind.ROLLOUT_STATUS, service="web")
    rollout = rollouts.RolloutStatus(
        phase=rollouts.RolloutPhase.FAILED, to_version="2.0", message="x\x1b[8m", started_at=NOW, updated_at=NOW
    )
    view.put(rollout_key, rollout)
    assert view.status_for(keys.Key(keys.Kind.ROLLOUT, service="web"))["message"] == "x\\x1b[8m"
