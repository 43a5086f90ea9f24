"""`controller.plan` as tables: (config, status, instances, reports, now) -> writes and the new status."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.controller import plan
from discoverd.schema import documents
from discoverd.schema.documents import Phase
from discoverd.schema.rollouts import RolloutConfig, RolloutPhase, RolloutStatus

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def config(**fields: Any) -> RolloutConfig:
    return RolloutConfig.model_validate({"name": "web", "to_version": "2.0", "min_healthy_seconds": 5, **fields})


def report(
    phase: Phase = Phase.RUNNING,
    version: str = "1.0",
    since: float = -100,
    online: bool = True,
    revision: int = 1,
    previous: str | None = None,
    server: str = "n1",
    restarts: int = 0,
) -> plan.Report:
    status = documents.InstanceStatus(
        phase=phase,
        version=version,
        previous_version=previous,
        restarts=restarts,
        since=at(since),
        updated_at=at(since),
    )
    return plan.Report(server, online, status, revision)


def offline(server: str = "n1") -> plan.Report:
    return plan.Report(server, False)


def member(i: str, version: str = "1.0", revision: int = 10, *reports: plan.Report) -> plan.Member:
    doc = documents.Instance(name="web", service_version=version)
    return plan.Member(i, doc, revision, reports or (report(version=version),))


def fleet(n: int) -> dict[str, plan.Member]:
    return {f"i{k}": member(f"i{k}") for k in range(1, n + 1)}


def written(d: plan.Decision) -> dict[str, str]:
    return {w.id: w.doc.service_version for w in d.writes}


def step(
    cfg: RolloutConfig,
    members: dict[str, plan.Member],
    now: float = 0,
    status: RolloutStatus | None = None,
    status_revision: int = 50,
) -> plan.Decision:
    return plan.plan(cfg, status, status_revision, members, at(now))


def after(d: plan.Decision, members: dict[str, plan.Member], revision: int = 50) -> dict[str, plan.Member]:
    """The instances as etcd has them once the decision is written at `revision`."""
    out = dict(members)
    for w in d.writes:
        out[w.id] = plan.Member(w.id, w.doc, revision, members[w.id].reports)
    return out


def test_start_records_every_instance_and_updates_the_first_batch() -> None:
    members = fleet(4)
    d = step(config(max_unavailable=2), members)
    assert d.status is not None
    assert d.status.phase is RolloutPhase.PROGRESSING and d.status.total == 4
    assert d.status.from_versions == {"i1": "1.0", "i2": "1.0", "i3": "1.0", "i4": "1.0"}
    assert written(d) == {"i1": "2.0", "i2": "2.0"}
    assert all(w.expect == 10 for w in d.writes)  # compare-and-swap on the revision read
    assert d.status.updated == ["i1", "i2"] and d.status.revisions["i1"] == 0  # 0: "this status's revision"


def test_upgrading_instances_use_the_budget_until_healthy() -> None:
    members = fleet(4)
    d = step(config(max_unavailable=2), members)
    members = after(d, members)
    # Written, not yet Running on 2.0: nothing more may start.
    again = step(config(max_unavailable=2), members, 1, d.status)
    assert written(again) == {}
    # Running on 2.0 for 3 s of the 5 needed: still upgrading; wake when the 5 s are up.
    for i in ("i1", "i2"):
        members[i] = plan.Member(i, members[i].doc, 50, (report(version="2.0", since=1, revision=60),))
    waiting = step(config(max_unavailable=2), members, 4, d.status)
    assert written(waiting) == {} and waiting.wake_at == at(6)
    # Healthy: the next two.
    d2 = step(config(max_unavailable=2), members, 6, d.status)
    assert written(d2) == {"i3": "2.0", "i4": "2.0"}
    assert d2.status is not None and d2.status.healthy == ["i1", "i2"]
    assert d2.status.revisions["i1"] == 50  # resolved from the status's own revision


@pytest.mark.parametrize(
    ("max_unavailable", "down", "expected"),
    [
        (2, [], {"i1", "i2"}),
        (2, ["i4"], {"i1", "i4"}),  # i4 already down: updating it costs nothing more, i1 uses the one left
        (2, ["i3", "i4"], {"i3", "i4"}),  # budget gone, but the down ones are free
        ("50%", [], {"i1", "i2"}),
        ("10%", [], {"i1"}),  # never below 1
    ],
)
def test_already_unavailable_instances_count_against_the_budget(
    max_unavailable: int | str, down: list[str], expected: set[str]
) -> None:
    members = fleet(4)
    for i in down:
        members[i] = member(i, "1.0", 10, report(phase=Phase.BACK_OFF))
    d = step(config(max_unavailable=max_unavailable), members)
    assert set(written(d)) == expected


def test_instances_of_an_offline_agent_are_counted_and_wait() -> None:
    members = fleet(4)
    members["i1"] = member("i1", "1.0", 10, offline())
    members["i2"] = member("i2", "1.0", 10, offline())
    d = step(config(max_unavailable=3), members)
    assert written(d) == {"i3": "2.0"}  # 2 offline + 1 upgrading = 3
    assert d.status is not None and "2 waiting for their server" in d.status.message
    assert written(step(config(max_unavailable=2), members)) == {}


def test_canary_then_pause_until_resumed() -> None:
    cfg = config(canary=1, pause_after_canary=True, max_unavailable=3)
    members = fleet(4)
    d = step(cfg, members)
    assert written(d) == {"i1": "2.0"}
    members = after(d, members)
    # Canary not yet healthy: nothing else, even with budget left.
    assert written(step(cfg, members, 1, d.status)) == {}
    members["i1"] = plan.Member("i1", members["i1"].doc, 50, (report(version="2.0", since=1, revision=60),))
    paused = step(cfg, members, 10, d.status)
    assert paused.status is not None and paused.status.phase is RolloutPhase.PAUSED and not paused.writes
    resumed = cfg.model_copy(update={"pause_after_canary": False})
    d3 = step(resumed, members, 11, paused.status, 70)
    assert written(d3) == {"i2": "2.0", "i3": "2.0", "i4": "2.0"}


def test_paused_config_starts_nothing_new() -> None:
    d = step(config(paused=True), fleet(3))
    assert d.status is not None and d.status.phase is RolloutPhase.PAUSED and not d.writes


def test_everything_healthy_is_success_and_then_nothing_more() -> None:
    members = {i: member(i, "2.0", 50, report(version="2.0", since=-10, revision=60)) for i in ("i1", "i2")}
    status = RolloutStatus(
        phase=RolloutPhase.PROGRESSING,
        to_version="2.0",
        from_versions={"i1": "1.0", "i2": "1.0"},
        updated=["i1", "i2"],
        total=2,
        started_at=T0,
        updated_at=T0,
        revisions={"i1": 50, "i2": 50},
        changed_at={"i1": T0, "i2": T0},
    )
    d = step(config(), members, 0, status)
    assert d.status is not None and d.status.phase is RolloutPhase.SUCCEEDED and not d.writes
    assert step(config(), members, 0, d.status) == plan.Decision()


def _progressing(updated: list[str], total: int = 3) -> RolloutStatus:
    return RolloutStatus(
        phase=RolloutPhase.PROGRESSING,
        to_version="2.0",
        from_versions={f"i{k}": "1.0" for k in range(1, total + 1)},
        updated=updated,
        total=total,
        started_at=T0,
        updated_at=T0,
        revisions={**{f"i{k}": 10 for k in range(1, total + 1)}, **dict.fromkeys(updated, 50)},
        changed_at=dict.fromkeys(updated, T0),
    )


@pytest.mark.parametrize(
    ("r", "now", "fails"),
    [
        (report(Phase.ROLLED_BACK, "1.0", previous="2.0", revision=60), 1, True),
        (report(Phase.FAILED, "1.0", revision=60), 1, True),
        (report(Phase.FAILED, "1.0", revision=40), 1, False),  # reported before our write: says nothing new
        (report(Phase.ROLLED_BACK, "1.0", previous="1.5", revision=60), 1, False),  # about another version
        (report(Phase.BACK_OFF, "2.0", revision=60), 599, False),
        (report(Phase.BACK_OFF, "2.0", revision=60), 600, True),  # progress deadline
    ],
)
def test_failure_of_an_updated_instance_fails_the_rollout(r: plan.Report, now: float, fails: bool) -> None:
    members = fleet(3)
    members["i1"] = member("i1", "2.0", 50, r)
    d = step(config(), members, now, _progressing(["i1"]))
    assert (d.status is not None and d.status.phase is RolloutPhase.FAILED) is fails
    assert not d.writes


def _crash_watched(before: int = 3) -> RolloutStatus:
    """i1 updated, restarted `before` times on the old version, not yet seen healthy."""
    return _progressing(["i1"]).model_copy(update={"restarts_from": {"i1": {"n1": before}}})


@pytest.mark.parametrize(
    ("r", "fields", "fails"),
    [
        (report(Phase.RUNNING, "2.0", restarts=3, revision=60), {}, False),
        (report(Phase.BACK_OFF, "2.0", restarts=3, revision=60), {}, False),  # 1st exit, waits for restart 1
        (report(Phase.RUNNING, "2.0", restarts=4, revision=60), {}, False),  # restarted once
        (report(Phase.BACK_OFF, "2.0", restarts=4, revision=60), {}, True),  # waits for restart 2: max 2
        (report(Phase.STARTING, "2.0", restarts=5, revision=60), {}, True),
        (report(Phase.BACK_OFF, "2.0", restarts=3, revision=60), {"max_restarts": 1}, True),
        (report(Phase.BACK_OFF, "2.0", restarts=4, revision=60), {"max_restarts": 3}, False),
        (report(Phase.BACK_OFF, "2.0", restarts=9, revision=40), {}, False),  # reported before our write
        (report(Phase.BACK_OFF, "1.0", restarts=9, revision=60), {}, False),  # the old version, while installing
        (report(Phase.BACK_OFF, "2.0", restarts=9, revision=60, server="n2"), {}, False),  # no count for n2
    ],
)
def test_an_updated_instance_crash_looping_before_it_is_healthy_fails_the_rollout_at_once(
    r: plan.Report, fields: dict[str, Any], fails: bool
) -> None:
    members = fleet(3)
    members["i1"] = member("i1", "2.0", 50, r)
    d = step(config(**fields), members, 30, _crash_watched())
    assert (d.status is not None and d.status.phase is RolloutPhase.FAILED) is fails
    if fails:
        assert d.status is not None and "restarted" in d.status.message and "max_restarts" in d.status.message


def test_restarts_after_the_instance_was_healthy_wait_for_the_deadline() -> None:
    """Seen healthy once: its count is forgotten, a later crash loop is the progress deadline's to judge."""
    members = fleet(3)
    members["i1"] = member("i1", "2.0", 50, report(Phase.RUNNING, "2.0", since=1, restarts=3, revision=60))
    d = step(config(), members, 10, _crash_watched())
    assert d.status is not None and d.status.healthy == ["i1"] and "i1" not in d.status.restarts_from
    members["i1"] = member("i1", "2.0", 50, report(Phase.BACK_OFF, "2.0", restarts=8, revision=70))
    later = step(config(), members, 20, d.status)
    assert later.status is None or later.status.phase is RolloutPhase.PROGRESSING
    assert later.wake_at == at(600)


def test_restarts_on_the_old_version_never_count() -> None:
    """The count is taken when the rollout writes, and followed while the old version still runs (installing)."""
    members = {"i1": member("i1", "1.0", 10, report(Phase.RUNNING, "1.0", restarts=7))}
    d = step(config(), members, 0)
    assert d.status is not None and d.status.restarts_from == {"i1": {"n1": 7}}
    members = after(d, members)
    members["i1"] = plan.Member("i1", members["i1"].doc, 50, (report(Phase.BACK_OFF, "1.0", restarts=7, revision=55),))
    d = step(config(), members, 1, d.status)  # the old version crashed while 2.0 installs
    members["i1"] = plan.Member("i1", members["i1"].doc, 50, (report(Phase.RUNNING, "1.0", restarts=8, revision=56),))
    d = step(config(), members, 2, d.status)
    assert d.status is not None and d.status.restarts_from == {"i1": {"n1": 8}}
    status = d.status
    for n, (phase, restarts, failed) in enumerate(
        [(Phase.RUNNING, 8, False), (Phase.BACK_OFF, 8, False), (Phase.RUNNING, 9, False), (Phase.BACK_OFF, 9, True)]
    ):
        members["i1"] = plan.Member(
            "i1", members["i1"].doc, 50, (report(phase, "2.0", since=3 + n, restarts=restarts, revision=60 + n),)
        )
        d = step(config(), members, 3 + n, status)
        status = d.status or status
        assert (status.phase is RolloutPhase.FAILED) is failed, (phase, restarts)
    reverted = step(config(), members, 8, status)
    assert written(reverted) == {"i1": "1.0"}
    assert reverted.status is not None and reverted.status.phase is RolloutPhase.REVERTED


def test_failed_with_auto_revert_sets_changed_instances_back_at_once() -> None:
    members = fleet(4)
    members["i1"] = member("i1", "2.0", 50, report(Phase.ROLLED_BACK, "1.0", previous="2.0", revision=60))
    members["i2"] = member("i2", "2.0", 50, report(version="2.0", revision=60))
    failed = _progressing(["i1", "i2"], 4).model_copy(update={"phase": RolloutPhase.FAILED, "message": "bad"})
    d = step(config(), members, 1, failed)
    assert written(d) == {"i1": "1.0", "i2": "1.0"}
    assert {w.expect for w in d.writes} == {50}
    assert d.status is not None and d.status.phase is RolloutPhase.REVERTED and d.status.reverted == ["i1", "i2"]
    assert step(config(auto_revert=False), members, 1, failed) == plan.Decision()


def test_undo_reverts_even_a_succeeded_rollout_but_never_twice() -> None:
    members = {i: member(i, "2.0", 50, report(version="2.0", revision=60)) for i in ("i1", "i2")}
    status = _progressing(["i1", "i2"], 2).model_copy(update={"phase": RolloutPhase.SUCCEEDED})
    d = step(config(undo=True), members, 1, status)
    assert written(d) == {"i1": "1.0", "i2": "1.0"}
    assert d.status is not None
    assert step(config(undo=True), after(d, members, 80), 2, d.status, 80) == plan.Decision()


def test_an_instance_changed_by_someone_else_is_skipped_never_written() -> None:
    members = fleet(3)
    members["i2"] = member("i2", "1.0", 33)  # edited by hand since the rollout read it at 10
    d = step(config(max_unavailable=3), members, 1, _progressing([]))
    assert written(d) == {"i1": "2.0", "i3": "2.0"}
    assert d.status is not None and d.status.skipped == ["i2"]
    # An updated instance someone set back by hand is not reverted either.
    members = after(d, members)
    members["i1"] = member("i1", "1.5", 77)
    failed = d.status.model_copy(update={"phase": RolloutPhase.FAILED})
    reverted = step(config(), members, 2, failed)
    assert written(reverted) == {"i3": "1.0"}
    assert reverted.status is not None and reverted.status.skipped == ["i2", "i1"]


def test_instances_on_no_server_are_updated_without_cost_or_health() -> None:
    members = fleet(2)
    members["i3"] = plan.Member("i3", documents.Instance(name="web", service_version="1.0"), 10, ())
    d = step(config(max_unavailable=1), members)
    assert written(d) == {"i1": "2.0", "i3": "2.0"}


def test_invalid_instance_documents_are_skipped_from_the_start() -> None:
    members = fleet(2)
    members["bad"] = plan.Member("bad", None, 12, ())
    d = step(config(max_unavailable=2), members)
    assert d.status is not None and d.status.skipped == ["bad"] and d.status.total == 2
    assert written(d) == {"i1": "2.0", "i2": "2.0"}


def test_a_new_target_version_starts_a_new_rollout() -> None:
    old = _progressing(["i1"]).model_copy(update={"to_version": "1.5"})
    d = step(config(), fleet(3), 1, old)
    assert d.status is not None and d.status.to_version == "2.0" and d.status.updated == ["i1"]


def test_nothing_changed_means_nothing_written() -> None:
    members = fleet(2)
    d = step(config(), members)
    members = after(d, members)
    d2 = step(config(), members, 1, d.status)
    assert d2.status is not None and not d2.writes  # resolves "0" revisions once
    assert step(config(), members, 2, d2.status, 51) == plan.Decision(wake_at=at(600))  # the progress deadline


_PHASES = st.sampled_from([Phase.RUNNING, Phase.RUNNING, Phase.STARTING, Phase.BACK_OFF, Phase.FAILED])


@given(
    phases=st.lists(st.tuples(_PHASES, st.booleans(), st.integers(0, 2)), min_size=1, max_size=12),
    max_unavailable=st.one_of(st.integers(1, 6), st.sampled_from(["10%", "25%", "50%", "100%"])),
    canary=st.integers(0, 4),
)
def test_a_first_step_never_takes_more_than_the_budget_and_never_touches_offline_servers(
    phases: list[tuple[Phase, bool, int]], max_unavailable: int | str, canary: int
) -> None:
    members = {}
    for n, (phase, online, servers) in enumerate(phases):
        i = f"i{n:02d}"
        reports = tuple(report(phase, online=online, server=f"n{k}") for k in range(servers))
        members[i] = plan.Member(i, documents.Instance(name="web", service_version="1.0"), 10, reports)
    cfg = config(max_unavailable=max_unavailable, canary=canary)
    d = step(cfg, members)
    chosen = {w.id for w in d.writes}

    def available(m: plan.Member) -> bool:
        return bool(m.reports) and all(
            r.online and r.status is not None and r.status.phase is Phase.RUNNING for r in m.reports
        )

    down_before = sum(1 for m in members.values() if m.reports and not available(m))
    taken = sum(1 for i in chosen if available(members[i]))
    allowed = (
        max_unavailable if isinstance(max_unavailable, int) else max(1, len(members) * int(max_unavailable[:-1]) // 100)
    )
    assert taken == 0 or down_before + taken <= allowed
    assert not any(not r.online for i in chosen for r in members[i].reports)
    if canary:
        assert len(chosen) <= canary
    assert all(w.expect == 10 and w.doc.service_version == "2.0" for w in d.writes)
