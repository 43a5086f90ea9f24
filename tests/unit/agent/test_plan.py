"""plan(desired, states, now) -> actions, as tables over `model.InstanceRecord`: no etcd, no processes, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from discoverd.agent import model, plan
from discoverd.agent.model import Exit, Failure, InstanceRecord, Process, Ref, Step
from discoverd.agent.plan import Forget, Install, Promote, Reject, Remove, Start, Stop, Wait
from discoverd.schema import documents

REF = Ref("web", "i1")
NOW = 1_000_000.0


def target(version: str = "1.0", run: str = "./web", **doc: object) -> model.Target:
    document = documents.Version.model_validate(
        {"name": "web", "run_script": {"command": run}, "min_healthy_seconds": 5, **doc}
    )
    return model.Target(REF, version, document, document.run_script)


V1 = target("1.0")
V2 = target("2.0")
V2_FIXED = target("2.0", run="./web-fixed")
CHECKED = target("1.0", health_check={"command": "true", "failure_threshold": 3})


def S(**fields: Any) -> InstanceRecord:
    """The state of the instance under test."""
    return InstanceRecord(ref=REF, **fields)


def installed(*targets: model.Target) -> frozenset[tuple[str, str]]:
    return frozenset((t.version, t.install_hash) for t in targets)


def running(t: model.Target, started_at: float = NOW - 60) -> Process:
    return Process(pid=42, start_time=7, config_hash=t.config_hash, version=t.version, started_at=started_at)


def exited(t: model.Target, at: float = NOW - 0.1, probation: bool = False) -> Exit:
    return Exit(t.config_hash, t.version, 1, at, probation, "exited with code 1")


CASES: list[tuple[str, model.Target | model.Broken | None, InstanceRecord, list[plan.Action]]] = [
    ("new instance: install first", V1, S(), [Install(REF, V1)]),
    ("installed: start", V1, S(installed=installed(V1)), [Start(REF, V1)]),
    ("busy: nothing", V1, S(step=Step.INSTALLING), []),
    (
        "running and counted as started: nothing",
        V1,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1)),
        [],
    ),
    (
        "up long enough: promote",
        V1,
        S(process=running(V1, NOW - 5), current=V1, installed=installed(V1)),
        [Promote(REF, V1)],
    ),
    (
        "not up long enough: wait",
        V1,
        S(process=running(V1, NOW - 1), current=V1, installed=installed(V1)),
        [Wait(REF, NOW + 4, "counting as started")],
    ),
    (
        "upgrade: install the new version while the old runs",
        V2,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1)),
        [Install(REF, V2)],
    ),
    (
        "upgrade installed: stop the old, start the new",
        V2,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1, V2)),
        [Stop(REF, "replacing it with version 2.0"), Start(REF, V2)],
    ),
    (
        "new version exited before min_healthy_seconds: reject it",
        V2,
        S(current=V2, good=V1, installed=installed(V1, V2), last_exit=exited(V2, probation=True), failures=1),
        [Reject(REF, V2.config_hash, "2.0", "version 2.0 exited with code 1")],
    ),
    (
        "rejected: roll back to the good version",
        V2,
        S(current=V2, good=V1, installed=installed(V1, V2), rejected={V2.config_hash: "x"}, failures=1),
        [Start(REF, V1)],
    ),
    (
        "rolled back and running: the rejected version is not retried",
        V2,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1, V2), rejected={V2.config_hash: "x"}),
        [],
    ),
    (
        "a fixed document of the rejected version is tried",
        V2_FIXED,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1, V2), rejected={V2.config_hash: "x"}),
        [Install(REF, V2_FIXED)],
    ),
    (
        "install failed with nothing to go back to: nothing",
        V1,
        S(rejected={V1.config_hash: "timed out"}),
        [],
    ),
    (
        "first version crashed: back off",
        V1,
        S(current=V1, installed=installed(V1), last_exit=exited(V1, NOW - 0.5, True), failures=2),
        [Wait(REF, NOW - 0.5 + 2.0, "backing off")],
    ),
    (
        "back-off over: start again",
        V1,
        S(current=V1, installed=installed(V1), last_exit=exited(V1, NOW - 3, True), failures=2),
        [Start(REF, V1)],
    ),
    (
        "back-off of an old configuration does not delay a new one",
        V2,
        S(current=V1, installed=installed(V1, V2), last_exit=exited(V1, NOW - 0.1), failures=5),
        [Start(REF, V2)],
    ),
    (
        "unhealthy after counting as started: stop, back-off follows",
        CHECKED,
        S(
            process=running(CHECKED),
            current=CHECKED,
            good=CHECKED,
            installed=installed(CHECKED),
            health_failures=3,
        ),
        [Stop(REF, "health check failed 3 times in a row", failure=True)],
    ),
    (
        "unhealthy before counting as started: reject (then roll back)",
        CHECKED,
        S(
            process=running(CHECKED, NOW - 1),
            current=CHECKED,
            good=V2,
            installed=installed(CHECKED, V2),
            health_failures=3,
        ),
        [Reject(REF, CHECKED.config_hash, "1.0", "version 1.0 turned unhealthy: health check failed 3 times in a row")],
    ),
    (
        "broken document keeps the running configuration",
        model.Broken(REF, "bad"),
        S(process=running(V1), current=V1, good=V1, installed=installed(V1)),
        [],
    ),
    (
        "broken document restarts the last valid configuration after a crash",
        model.Broken(REF, "bad"),
        S(current=V1, good=V1, installed=installed(V1), last_exit=exited(V1, NOW - 10), failures=1),
        [Start(REF, V1)],
    ),
    ("broken document, nothing ran: nothing", model.Broken(REF, "bad"), S(), []),
    ("removed: remove", None, S(process=running(V1), current=V1), [Remove(REF)]),
    (
        "install failed: reject that configuration",
        V2,
        S(process=running(V1), current=V1, good=V1, install_failure=Failure(V2.config_hash, "2.0", "exit 5", NOW)),
        [Reject(REF, V2.config_hash, "2.0", "exit 5")],
    ),
    (
        "install failed and rejected: the old version keeps running, nothing to do",
        V2,
        S(process=running(V1), current=V1, good=V1, installed=installed(V1, V2), rejected={V2.config_hash: "x"}),
        [],
    ),
    (
        "removed a moment ago: its files are kept until the grace period is over",
        None,
        S(current=V1, removed_at=NOW - 10),
        [Wait(REF, NOW - 10 + model.REMOVED_GRACE, "keeping its files")],
    ),
    (
        "removed and the grace period is over: forget it with its files",
        None,
        S(current=V1, removed_at=NOW - model.REMOVED_GRACE),
        [Forget(REF, delete_files=True)],
    ),
    (
        "removed, then desired again: forget the old state, keep the files, start afresh next",
        V1,
        S(current=V1, good=V1, rejected={V2.config_hash: "x"}, removed_at=NOW - 10),
        [Forget(REF, delete_files=False)],
    ),
    ("stopping: nothing", None, S(step=Step.STOPPING, process=running(V1)), []),
]


@pytest.mark.parametrize(("want", "state", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_instance(
    want: model.Target | model.Broken | None, state: InstanceRecord, expected: list[plan.Action]
) -> None:
    assert plan.plan_instance(want, state, NOW) == expected


def test_plan_is_per_instance_and_removes_what_is_not_desired() -> None:
    other = Ref("web", "i2")
    actions = plan.plan({REF: V1}, {other: InstanceRecord(ref=other)}, NOW)
    assert actions == [Install(REF, V1), Remove(other)]


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (0, 0.0, 0.0),
        (1, 0.0, 1.0),
        (2, 0.0, 2.0),
        (4, 0.0, 8.0),
        (9, 0.0, 256.0),
        (10, 0.0, 300.0),
        (50, 0.0, 300.0),
        (1, 0.25, 0.75),
        (10, 0.2, 240.0),
        (3, 0.9, 3.0),
    ],
)
def test_backoff_doubles_to_five_minutes_less_jitter(failures: int, jitter: float, expected: float) -> None:
    assert model.backoff_delay(failures, jitter) == pytest.approx(expected)


def test_backoff_resets_after_ten_minutes_up() -> None:
    assert model.failures_after_exit(7, 599) == 8
    assert model.failures_after_exit(7, 600) == 1


def test_config_hash_changes_with_the_run_script_and_install_hash_only_with_the_version() -> None:
    assert V1.config_hash != V2.config_hash  # same document, other version: another configuration
    changed_run = model.Target(REF, "1.0", V1.document, documents.Script(command="./other"))
    assert changed_run.install_hash == V1.install_hash
    assert changed_run.config_hash != V1.config_hash
