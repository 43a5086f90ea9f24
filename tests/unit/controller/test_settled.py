"""`plan.settled`: the rollouts whose instances the controller stops reading and watching.

Settled must mean exactly "plan decides nothing whatever the instances say": a rollout wrongly
called settled would never be acted on, since its instances are no longer read.
"""

from __future__ import annotations

import itertools

import pytest

from discoverd.controller import plan
from discoverd.schema import documents
from discoverd.schema.rollouts import RolloutConfig, RolloutPhase, RolloutStatus
from unit.controller.test_plan import T0, at, report

CASES = list(itertools.product(RolloutPhase, (False, True), (False, True), (None, "r1"), (False, True)))


def case(
    phase: RolloutPhase, undo: bool, auto_revert: bool, token: str | None, same: bool
) -> tuple[RolloutConfig, RolloutStatus, dict[str, plan.Member]]:
    cfg = RolloutConfig.model_validate(
        {"name": "web", "to_version": "2.0", "min_healthy_seconds": 0, "undo": undo, "auto_revert": auto_revert}
        | ({"restart_token": token} if token else {})
    )
    status = RolloutStatus(
        phase=phase,
        to_version="2.0" if same else "1.5",
        from_versions={"i1": "1.0", "i2": "1.0"},
        updated=["i1"],
        total=2,
        started_at=T0,
        updated_at=T0,
        revisions={"i1": 0, "i2": 10},
        changed_at={"i1": T0},
        restart_token=token,
    )
    members = {
        "i1": plan.Member("i1", documents.Instance(name="web", service_version="2.0"), 50, (report(version="2.0"),)),
        "i2": plan.Member("i2", documents.Instance(name="web", service_version="1.0"), 10, (report(),)),
    }
    return cfg, status, members


@pytest.mark.parametrize(("phase", "undo", "auto_revert", "token", "same"), CASES)
def test_a_settled_rollout_is_one_plan_leaves_alone_whatever_its_instances_say(
    phase: RolloutPhase, undo: bool, auto_revert: bool, token: str | None, same: bool
) -> None:
    cfg, status, members = case(phase, undo, auto_revert, token, same)
    if plan.settled(cfg, status):
        for m in (members, {}, {"i1": members["i1"]}):
            assert plan.plan(cfg, status, 50, m, at(1000)) == plan.Decision()


def test_running_rollouts_and_pending_work_are_not_settled() -> None:
    def settled(phase: RolloutPhase, **kw: bool) -> bool:
        cfg, status, _ = case(phase, kw.get("undo", False), kw.get("auto_revert", True), None, kw.get("same", True))
        return plan.settled(cfg, status)

    assert not settled(RolloutPhase.PROGRESSING) and not settled(RolloutPhase.PAUSED)
    assert not settled(RolloutPhase.SUCCEEDED, same=False), "a new to_version starts a rollout"
    assert not settled(RolloutPhase.SUCCEEDED, undo=True), "an undo of a Succeeded rollout reverts"
    assert not settled(RolloutPhase.FAILED), "auto_revert: the revert is still to write"
    assert settled(RolloutPhase.FAILED, auto_revert=False) and settled(RolloutPhase.REVERTED)
    assert settled(RolloutPhase.SUCCEEDED)
    cfg, _, _ = case(RolloutPhase.PROGRESSING, False, True, None, True)
    assert not plan.settled(cfg, None), "no status yet: it starts"
