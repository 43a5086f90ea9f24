"""`controller.world`: etcd entries joined into plan inputs (instances, the servers listing them, reports)."""

from __future__ import annotations

import json
from typing import Any

from discoverd.controller import world
from discoverd.schema import documents, keys
from discoverd.store import watch
from discoverd.store.typed import Snapshot, decode

P = "/discoverd"
NOW = "2026-01-01T00:00:00Z"


def entry(key: str, value: Any, revision: int = 5) -> Any:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return decode(P, key, raw, revision)


def loaded(*entries: Any) -> world.World:
    w = world.World()
    w.load(Snapshot(100, {e.key: e for e in entries}))
    return w


def status(phase: str = "Running", version: str = "1.0") -> dict[str, Any]:
    return {"phase": phase, "version": version, "since": NOW, "updated_at": NOW}


def test_members_join_documents_servers_agents_and_reports() -> None:
    w = loaded(
        entry(keys.instance_config(P, "web", "i1"), {"name": "web", "service_version": "1.0"}, 7),
        entry(keys.instance_config(P, "web", "i2"), {"name": "web", "service_version": 3}, 8),  # invalid
        entry(keys.instance_config(P, "db", "d1"), {"name": "db", "service_version": "1.0"}),
        entry(keys.server_config(P, "n1"), {"service_instances": [{"name": "web", "id": "i1"}]}),
        entry(
            keys.server_config(P, "n2"),
            {"service_instances": [{"name": "web", "id": "i1"}, {"name": "web", "id": "i2"}]},
        ),
        entry(keys.agent_status(P, "n1"), {"hostname": "h", "agent_version": "1", "started_at": NOW, "heartbeat": NOW}),
        entry(keys.instance_status(P, "n1", "web", "i1"), status(), 40),
    )
    members = w.members("web")
    assert set(members) == {"i1", "i2"}
    i1 = members["i1"]
    assert i1.revision == 7 and i1.doc is not None and i1.doc.service_version == "1.0"
    assert [(r.server, r.online, r.revision) for r in i1.reports] == [("n1", True, 40), ("n2", False, 0)]
    assert i1.reports[0].status is not None and i1.reports[0].status.phase is documents.Phase.RUNNING
    assert members["i2"].doc is None and members["i2"].revision == 8


def test_rollouts_carry_invalid_configs_and_statuses_by_service() -> None:
    good = {"name": "web", "to_version": "2.0"}
    w = loaded(
        entry(keys.rollout_config(P, "web"), good),
        entry(keys.rollout_status(P, "web"), b"not json", 12),
        entry(keys.rollout_config(P, "db"), {"name": "db", "to_version": "2.0", "canary": -1}),
    )
    found = {r.service: r for r in w.rollouts()}
    assert found["web"].config.document is not None and found["web"].status is None
    assert found["web"].status_revision == 12  # an unreadable status is replaced, still guarded by its revision
    assert found["db"].config.error is not None and found["db"].config.error.field == "canary"


def test_watch_events_and_our_own_writes_update_the_cache() -> None:
    key = keys.instance_config(P, "web", "i1")
    w = loaded(entry(key, {"name": "web", "service_version": "1.0"}, 7))
    w.wrote(P, [(key, b'{"name":"web","service_version":"2.0"}')], 9)
    assert w.members("web")["i1"].revision == 9
    w.apply([watch.Delete(key, 101)])
    assert w.members("web") == {} and w.revision == 101


def test_a_report_over_its_caps_is_skipped_and_logged_once(caplog: Any) -> None:
    huge = {**status("Failed", "2.0"), "message": "x" * (1024 * 1024 - 300)}
    agent = {"hostname": "h", "agent_version": "1", "started_at": NOW, "heartbeat": NOW}
    w = loaded(
        entry(keys.instance_config(P, "web", "i1"), {"name": "web", "service_version": "2.0"}, 7),
        entry(keys.server_config(P, "n1"), {"service_instances": [{"name": "web", "id": "i1"}]}),
        entry(keys.agent_status(P, "n1"), agent),
        entry(keys.instance_status(P, "n1", "web", "i1"), huge, 40),
    )
    with caplog.at_level("WARNING", logger="discoverd.controller.world"):
        for _ in range(3):
            (report,) = w.members("web")["i1"].reports
            assert (report.server, report.online, report.status) == ("n1", True, None)
    assert [r.getMessage() for r in caplog.records] == ["Ignored invalid agent status"]


def test_an_invalid_agent_status_leaves_its_server_offline() -> None:
    w = loaded(
        entry(keys.instance_config(P, "web", "i1"), {"name": "web", "service_version": "1.0"}, 7),
        entry(keys.server_config(P, "n1"), {"service_instances": [{"name": "web", "id": "i1"}]}),
        entry(
            keys.agent_status(P, "n1"),
            {"hostname": "h" * 300, "agent_version": "1", "started_at": NOW, "heartbeat": NOW},
        ),
        entry(keys.instance_status(P, "n1", "web", "i1"), status(), 40),
    )
    assert [r.online for r in w.members("web")["i1"].reports] == [False]
