"""`dashboard.views`: what each page shows, from entries as the store decodes them (no etcd, no browser)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discoverd.dashboard import views
from discoverd.store.typed import Entry, decode

P = "/p"
T = "2026-01-01T00:00:00+00:00"


def entries(docs: dict[str, Any]) -> dict[str, Entry]:
    """Key (under the prefix) -> document as JSON (bytes kept as they are), decoded as the store does."""
    out = {}
    for n, (key, doc) in enumerate(docs.items(), start=1):
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        out[f"{P}/{key}"] = decode(P, f"{P}/{key}", raw, n)
    return out


def status(phase: str, version: str | None = "1.0", **more: Any) -> dict[str, Any]:
    return {"phase": phase, "version": version, "since": T, "updated_at": T, **more}


AGENT = {"hostname": "h1", "agent_version": "0.1.0", "started_at": T, "heartbeat": T}


def world(**extra: Any) -> views.Index:
    """web: a and b on node-1 (online), c on node-2 (offline), d listed nowhere."""
    docs: dict[str, Any] = {
        "services/web/versions/1.0/config/details": {"name": "web"},
        "services/web/versions/2.0/config/details": {"name": "web"},
        **{f"services/web/instances/{i}/config/details": {"name": "web", "service_version": "1.0"} for i in "abcd"},
        "servers/node-1/config/details": {
            "service_instances": [{"name": "web", "id": "a"}, {"name": "web", "id": "b"}]
        },
        "servers/node-2/config/details": {"service_instances": [{"name": "web", "id": "c"}]},
        "servers/node-1/status/agent": AGENT,
        "servers/node-1/status/instances/web/a": status("Running"),
        # node-1 does not list c: this report is stale and not shown
        "servers/node-1/status/instances/web/c": status("Failed"),
        **extra,
    }
    return views.Index(entries(docs))


def test_fleet_counts_each_instance_by_version_and_phase_with_offline_and_unassigned() -> None:
    view = views.fleet(world())
    assert [(s["id"], s["online"], s["instances"]) for s in view["servers"]] == [
        ("node-1", True, 2),
        ("node-2", False, 1),
    ]
    (web,) = view["services"]
    assert web["versions"] == ["1.0", "2.0"] and web["instances"] == 4
    assert web["by_version"] == [
        {"version": "1.0", "phases": {"NoStatus": 1, "Offline": 1, "Running": 1, "Unassigned": 1}}
    ]
    assert view["problems"] == []


def test_an_invalid_document_is_named_and_the_rest_is_still_shown() -> None:
    view = views.fleet(world(**{"services/web/instances/e/config/details": b'{"name": "web", "service_version": 5'}))
    (problem,) = view["problems"]
    assert problem["key"] == f"{P}/services/web/instances/e/config/details"
    assert problem["key"] in problem["error"]
    assert view["services"][0]["instances"] == 5


def test_the_service_page_shows_each_instance_on_each_server() -> None:
    view = views.service(world(), "web")
    rows = {i["id"]: [(s["server"], s["phase"]) for s in i["servers"]] for i in view["instances"]}
    assert rows == {
        "a": [("node-1", "Running")],
        "b": [("node-1", "NoStatus")],
        "c": [("node-2", "Offline")],
        "d": [("", "Unassigned")],
    }
    assert [(v["version"], v["instances"]) for v in view["versions"]] == [("1.0", 4), ("2.0", 0)]
    assert views.service(world(), "nothing")["exists"] is False


def rollout_docs(phase: str | None, **config: Any) -> dict[str, Any]:
    docs: dict[str, Any] = {
        "services/web/rollout/config/details": {"name": "web", "to_version": "2.0", "canary": 1, **config}
    }
    if phase is not None:
        docs["services/web/rollout/status"] = {
            "phase": phase,
            "to_version": "2.0",
            "from_versions": {i: "1.0" for i in "abcd"},
            "updated": ["a", "b", "c"],
            "healthy": ["a"],
            "total": 4,
            "started_at": T,
            "updated_at": T,
            "changed_at": {"a": T, "b": "2026-01-01T00:00:10+00:00", "c": "2026-01-01T00:00:10+00:00"},
        }
    return docs


def test_the_rollout_page_groups_batches_by_write_and_names_the_canary() -> None:
    view = views.rollout(world(**rollout_docs("Progressing")), "web")
    status = view["status"]
    assert status["canary"] == ["a"]
    assert [b["instances"] for b in status["batches"]] == [["a"], ["b", "c"]]
    assert (status["updated"], status["healthy"], status["total"]) == (3, 1, 4)
    states = {i["id"]: i["state"] for i in view["instances"]}
    assert states == {"a": "healthy", "b": "updating", "c": "updating", "d": "waiting"}


@pytest.mark.parametrize(
    ("phase", "config", "can"),
    [
        (None, None, {"start": True, "pause": False, "resume": False, "undo": False}),
        (None, {}, {"start": True, "pause": True, "resume": False, "undo": True}),  # asked, not yet begun
        ("Progressing", {}, {"start": False, "pause": True, "resume": False, "undo": True}),
        ("Progressing", {"paused": True}, {"start": False, "pause": False, "resume": True, "undo": True}),
        ("Paused", {"pause_after_canary": True}, {"start": False, "pause": False, "resume": True, "undo": True}),
        ("Progressing", {"undo": True}, {"start": False, "pause": False, "resume": False, "undo": False}),
        ("Succeeded", {}, {"start": True, "pause": False, "resume": False, "undo": True}),
        ("Reverted", {}, {"start": True, "pause": False, "resume": False, "undo": False}),
    ],
)
def test_the_buttons_offered_follow_the_rollout(
    phase: str | None, config: dict[str, Any] | None, can: dict[str, bool]
) -> None:
    docs = rollout_docs(phase, **(config or {})) if config is not None else {}
    assert views.rollout(world(**docs), "web")["can"] == can


def test_the_instance_page_lists_the_last_phase_changes_newest_first() -> None:
    history = [
        {"phase": "Starting", "at": T, "version": "1.0"},
        {"phase": "Running", "at": "2026-01-01T00:00:05+00:00", "version": "1.0"},
    ]
    view = views.instance(
        world(**{"servers/node-1/status/instances/web/a": status("Running", history=history)}), "web", "a"
    )
    (on,) = view["servers"]
    assert on["server"] == "node-1" and on["online"] is True
    assert [h["phase"] for h in on["status"]["history"]] == ["Running", "Starting"]
    assert view["config"]["service_version"] == "1.0"


def test_a_drained_server_shows_what_its_agent_reports_of_the_drain() -> None:
    index = world(
        **{
            "servers/node-2/config/details": {"service_instances": [], "drained": True},
            "servers/node-1/status/agent": {**AGENT, "drain": "Drained"},
            "servers/node-1/config/details": {"service_instances": [], "drained": True},
        }
    )
    servers = {s["id"]: (s["drained"], s["drain"]) for s in views.fleet(index)["servers"]}
    assert servers == {"node-1": (True, "Drained"), "node-2": (True, None)}  # node-2's agent is offline


def test_a_restart_is_shown_as_a_restart_not_a_version_change() -> None:
    docs = rollout_docs("Progressing", restart_token="2026-12-06T20:00:00Z", auto_revert=False)
    docs["services/web/rollout/status"]["restart_token"] = "2026-12-06T20:00:00Z"
    index = world(**docs)
    assert views.rollout(index, "web")["restart"] is True
    assert views.fleet(index)["services"][0]["rollout"]["restart"] is True
    assert views.rollout(world(**rollout_docs("Progressing")), "web")["restart"] is False
