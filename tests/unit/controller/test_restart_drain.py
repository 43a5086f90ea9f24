"""`controller.plan` for restarts (a rollout with a `restart_token`) and drained servers, as tables."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from discoverd.controller import plan, world
from discoverd.schema import documents, keys
from discoverd.schema.documents import Phase
from discoverd.schema.rollouts import RolloutConfig, RolloutPhase, RolloutStatus
from discoverd.store.typed import Snapshot, decode

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TOKEN = "2026-01-01T00:00:00.000000Z"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def restart(**fields: Any) -> RolloutConfig:
    body = {"name": "web", "to_version": "1.0", "restart_token": TOKEN, "min_healthy_seconds": 5, "auto_revert": False}
    return RolloutConfig.model_validate({**body, **fields})


def upgrade(**fields: Any) -> RolloutConfig:
    return RolloutConfig.model_validate({"name": "web", "to_version": "2.0", "min_healthy_seconds": 5, **fields})


def report(
    version: str = "1.0",
    token: str | None = None,
    since: float = -100,
    phase: Phase = Phase.RUNNING,
    revision: int = 1,
    drained: bool = False,
) -> plan.Report:
    status = documents.InstanceStatus(
        phase=phase, version=version, restart_token=token, since=at(since), updated_at=at(since)
    )
    return plan.Report("n1", True, status, revision, drained)


def member(i: str, version: str = "1.0", *reports: plan.Report, revision: int = 10) -> plan.Member:
    doc = documents.Instance(name="web", service_version=version)
    return plan.Member(i, doc, revision, reports or (report(version),))


def step(
    cfg: RolloutConfig, members: dict[str, plan.Member], now: float = 0, status: RolloutStatus | None = None
) -> plan.Decision:
    return plan.plan(cfg, status, 50, members, at(now))


def after(d: plan.Decision, members: dict[str, plan.Member], *reports: plan.Report) -> dict[str, plan.Member]:
    out = dict(members)
    for w in d.writes:
        out[w.id] = plan.Member(w.id, w.doc, 50, reports or members[w.id].reports)
    return out


def test_a_restart_writes_the_token_keeps_each_version_and_respects_the_budget() -> None:
    members = {"i1": member("i1", "1.0"), "i2": member("i2", "0.9"), "i3": member("i3", "1.0")}
    d = step(restart(max_unavailable=2), members)
    assert d.status is not None and d.status.restart_token == TOKEN and d.status.phase is RolloutPhase.PROGRESSING
    assert {w.id: (w.doc.service_version, w.doc.restart_token) for w in d.writes} == {
        "i1": ("1.0", TOKEN),
        "i2": ("0.9", TOKEN),
    }
    # Still reporting the old token: not restarted yet, so no further batch.
    members = after(d, members)
    assert step(restart(max_unavailable=2), members, 1, d.status).writes == ()


def test_a_restarted_instance_is_healthy_on_its_new_token_after_min_healthy_seconds() -> None:
    members = {"i1": member("i1"), "i2": member("i2")}
    d = step(restart(), members)
    assert [w.id for w in d.writes] == ["i1"]
    members = after(d, members, report(token=TOKEN, since=1, revision=60))
    waiting = step(restart(), members, 3, d.status)
    assert waiting.writes == () and waiting.wake_at == at(6)
    d2 = step(restart(), members, 6, d.status)
    assert [w.id for w in d2.writes] == ["i2"] and d2.status is not None and d2.status.healthy == ["i1"]
    members = after(d2, members, report(token=TOKEN, since=7, revision=61))
    done = step(restart(), members, 12, d2.status)
    assert done.status is not None and done.status.phase is RolloutPhase.SUCCEEDED


def test_an_old_status_on_the_same_version_is_not_taken_for_the_restart() -> None:
    members = {"i1": member("i1")}
    d = step(restart(), members)
    members = after(d, members, report(token="older", since=-100, revision=60))
    again = step(restart(), members, 100, d.status)
    assert again.status is None or again.status.healthy == []


def test_a_new_token_starts_a_new_restart_even_to_the_same_version() -> None:
    members = {"i1": member("i1")}
    d = step(restart(), members)
    assert d.status is not None
    d2 = step(restart(restart_token="second"), after(d, members), 1, d.status)
    assert d2.status is not None and d2.status.restart_token == "second" and d2.status.updated == ["i1"]
    assert [w.doc.restart_token for w in d2.writes] == ["second"]


def test_a_failed_restart_is_not_reverted_and_an_undo_writes_nothing() -> None:
    members = {"i1": member("i1"), "i2": member("i2")}
    d = step(restart(auto_revert=True), members)
    members = after(d, members, report(token=TOKEN, phase=Phase.FAILED, revision=60))
    failed = step(restart(auto_revert=True), members, 1, d.status)
    assert failed.status is not None and failed.status.phase is RolloutPhase.FAILED
    assert step(restart(auto_revert=True), members, 2, failed.status) == plan.Decision()
    undone = step(restart(undo=True), members, 2, d.status)
    assert undone.writes == () and undone.status is not None and undone.status.phase is RolloutPhase.REVERTED
    assert "cannot be taken back" in undone.status.message


def test_an_upgrade_keeps_the_token_the_document_has() -> None:
    doc = documents.Instance(name="web", service_version="1.0", restart_token="t")
    d = step(upgrade(), {"i1": plan.Member("i1", doc, 10, (report(),))})
    assert [(w.doc.service_version, w.doc.restart_token) for w in d.writes] == [("2.0", "t")]


# drained servers


def test_instances_on_drained_servers_are_held_and_counted_unavailable() -> None:
    drained = report(phase=Phase.DRAINED, drained=True)
    members = {"i1": member("i1", "1.0", drained), "i2": member("i2"), "i3": member("i3")}
    d = step(upgrade(max_unavailable=2), members)
    # i1 is down on a drained server: held, and it uses one of the two places.
    assert [w.id for w in d.writes] == ["i2"]
    assert d.status is not None and "1 held while their server is drained" in d.status.message
    members = after(d, members, report("2.0", since=1, revision=60))
    d2 = step(upgrade(max_unavailable=2), members, 10, d.status)
    assert [w.id for w in d2.writes] == ["i3"]
    members = after(d2, members, report("2.0", since=11, revision=61))
    waiting = step(upgrade(max_unavailable=2), members, 1000, d2.status)
    assert waiting.status is not None and waiting.status.phase is RolloutPhase.PROGRESSING
    assert waiting.writes == () and "held while their server is drained" in waiting.status.message
    # Undrained: i1 is updated and the rollout ends.
    members["i1"] = member("i1")
    d3 = step(upgrade(max_unavailable=2), members, 1001, waiting.status)
    assert [w.id for w in d3.writes] == ["i1"]


def test_an_updated_instance_on_a_server_drained_meanwhile_has_no_deadline() -> None:
    members = {"i1": member("i1")}
    d = step(upgrade(progress_deadline_seconds=60), members)
    members = after(d, members, report(phase=Phase.DRAINED, revision=60, drained=True))
    later = step(upgrade(progress_deadline_seconds=60), members, 600, d.status)
    assert later.status is None or later.status.phase is RolloutPhase.PROGRESSING
    members = after(d, members, report(phase=Phase.BACK_OFF, revision=61))
    failed = step(upgrade(progress_deadline_seconds=60), members, 600, d.status)
    assert failed.status is not None and failed.status.phase is RolloutPhase.FAILED


def test_world_marks_the_reports_of_drained_servers() -> None:
    p = "/d"
    docs = {
        keys.instance_config(p, "web", "i1"): {"name": "web", "service_version": "1.0"},
        keys.server_config(p, "n1"): {"service_instances": [{"name": "web", "id": "i1"}], "drained": True},
        keys.server_config(p, "n2"): {"service_instances": [{"name": "web", "id": "i1"}]},
    }
    w = world.World()
    w.load(Snapshot(9, {k: decode(p, k, json.dumps(v).encode(), 5) for k, v in docs.items()}))
    assert [(r.server, r.drained) for r in w.members("web")["i1"].reports] == [("n1", True), ("n2", False)]
