"""model.InstanceRecord: its events as tables, saved and restored whole by layout, records of earlier agents migrated."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from discoverd.agent import invocation, layout, model, plan, supervisor
from discoverd.agent.model import Exit, InstanceRecord, Process, Ref
from discoverd.schema import documents

REF = Ref("web", "i1")
NOW = 1_000_000.0


def target(version: str, **doc: object) -> model.Target:
    document = documents.Version.model_validate(
        {"name": "web", "run_script": {"command": "./web", "env": {"TOKEN": "t"}}, "min_healthy_seconds": 5, **doc}
    )
    return model.Target(REF, version, document, document.run_script)


V1, V2 = target("1.0"), target("2.0", stop_timeout=3)


def running(t: model.Target, started_at: float = NOW - 60) -> Process:
    return Process(42, 7, t.config_hash, t.version, started_at, "run-1")


def full_state() -> InstanceRecord:
    return InstanceRecord(
        ref=REF,
        step=model.Step.STOPPING,
        process=running(V1),
        current=V1,
        good=V1,
        previous_version="0.9",
        rejected={V2.config_hash: "version 2.0 exited with code 2"},
        last_exit=Exit(V2.config_hash, "2.0", 2, NOW - 5, True, "exited with code 2"),
        failures=2,
        jitter=0.1,
        restarts=4,
        health_failures=1,
        message="rolled back",
        updated_at=NOW,
    )


def test_saved_and_restored_whole_except_the_step_under_way(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path / "state")
    lay.prepare()
    state = full_state()
    lay.save(state)
    restored = lay.load(REF)
    assert restored == state.model_copy(update={"step": None})
    assert restored is not None and restored.current is not None
    # Restored targets hash as before: the same configuration, so no restart and the rejection holds.
    assert restored.current.config_hash == V1.config_hash
    assert set(restored.rejected) == {V2.config_hash}
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(lay.record_path(REF).stat().st_mode) == 0o600
    assert json.loads(lay.record_path(REF).read_text())["format"] == model.FORMAT
    assert lay.recorded() == [REF]


def test_record_of_an_earlier_agent_is_migrated_out_of_the_instance_directory(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path)
    lay.prepare()
    t = {"version": "1.0", "document": documents.dump(V1.document), "run": documents.dump(V1.run)}
    process = {"pid": 42, "start_time": 7, "config_hash": V1.config_hash, "version": "1.0", "started_at": NOW}
    old = lay.instance_dir(REF) / ".discoverd" / "record.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"service": "web", "instance": "i1", "process": process, "current": t, "good": t}))
    assert lay.recorded() == [REF]
    state = lay.load(REF)
    assert state == InstanceRecord(ref=REF, process=Process(42, 7, V1.config_hash, "1.0", NOW), current=V1, good=V1)
    assert not old.exists()
    assert lay.load(REF) == state  # from its new place now
    assert stat.S_IMODE(lay.record_path(REF).stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["{", '{"format": 9, "state": {}}', '{"format": 2, "state": {"ref": 1}}'])
def test_unreadable_record_is_ignored(tmp_path: Path, content: str) -> None:
    lay = layout.Layout(tmp_path)
    lay.record_path(REF).parent.mkdir(parents=True)
    lay.record_path(REF).write_text(content)
    assert lay.load(REF) is None


def test_exit_before_counting_as_started_is_recorded_as_in_probation() -> None:
    s = InstanceRecord(ref=REF, process=running(V2, NOW - 1), current=V2, good=V1).exited(2, NOW, 0.1)
    assert s.process is None and s.failures == 1 and s.jitter == 0.1
    assert s.last_exit == Exit(V2.config_hash, "2.0", 2, NOW, True, "exited with code 2 before it stayed up 5 s")
    assert s.backoff_until(1.0) == pytest.approx(NOW + 0.9)


def test_exit_after_ten_minutes_up_resets_the_backoff() -> None:
    s = InstanceRecord(ref=REF, process=running(V1, NOW - 700), current=V1, good=V1, failures=6).exited(-9, NOW, 0.0)
    assert s.failures == 1 and s.last_exit is not None and not s.last_exit.in_probation
    assert s.message == "version 1.0 was killed by signal 9"


def test_promotion_makes_the_rollback_point_and_lifts_a_rejection() -> None:
    s = InstanceRecord(ref=REF, process=running(V2), current=V2, good=V1, rejected={V2.config_hash: "x"})
    assert s.in_probation(V2.config_hash)
    p = s.promoted(V2, NOW)
    assert (p.good, p.previous_version, p.rejected) == (V2, "1.0", {})
    assert not p.in_probation(V2.config_hash)


def test_restarts_count_only_starts_of_the_configuration_that_exited() -> None:
    exited = InstanceRecord(ref=REF, current=V1, last_exit=Exit(V1.config_hash, "1.0", 1, NOW, False, "x"))
    assert exited.spawning(V1, running(V1), NOW).restarts == 1
    assert exited.spawning(V2, running(V2), NOW).restarts == 0


def test_rejecting_an_install_failure_consumes_it() -> None:
    s = InstanceRecord(ref=REF).install_failed(V2, "the install script exited with code 5", NOW)
    assert s.install_failure is not None
    r = s.rejecting(V2.config_hash, s.install_failure.reason, NOW)
    assert r.install_failure is None and r.rejected == {V2.config_hash: "the install script exited with code 5"}


def test_health_checks_count_failures_in_a_row() -> None:
    checked = target("1.0", health_check={"command": "true", "failure_threshold": 2})
    s = InstanceRecord(ref=REF, process=running(checked), current=checked)
    assert s.health_checked(True, "ok", NOW) is s  # nothing changed, nothing to save
    s = s.health_checked(False, "exit 1", NOW).health_checked(False, "exit 1", NOW)
    assert s.unhealthy(checked) and s.message == "exit 1 (2 in a row)"
    assert not s.health_checked(True, "ok", NOW).unhealthy(checked)


def test_forgetting_a_removed_instance_deletes_its_record_and_directory(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path)
    lay.prepare()
    run_log = lay.log_path(REF, "run")
    assert stat.S_IMODE(run_log.stat().st_mode) == 0o600

    async def main() -> None:
        sup = supervisor.Supervisor(
            REF, lay, invocation.Context("n1"), lambda: None, lambda s, v: asyncio.Lock(), lambda r, p: None
        )
        sup.state = InstanceRecord(ref=REF, current=V1)
        await sup.execute([plan.Remove(REF)])  # nothing runs: nothing to stop
        assert lay.load(REF) is not None and sup.state.removed_at is not None
        assert run_log.exists()
        await sup.execute([plan.Forget(REF, delete_files=True)])

    asyncio.run(main())
    assert not lay.instance_dir(REF).exists() and not run_log.parent.exists()
    assert lay.load(REF) is None and lay.recorded() == [] and lay.instance_dirs() == []


def test_files_of_an_instance_an_earlier_agent_removed_are_kept_for_the_grace_period(tmp_path: Path) -> None:
    """Agents before format 2 deleted the record on removal and kept the directory forever."""
    lay = layout.Layout(tmp_path)
    lay.prepare()
    lay.log_path(REF, "run")
    assert lay.instance_dirs() == [REF] and lay.recorded() == []
    sup = supervisor.Supervisor(
        REF, lay, invocation.Context("n1"), lambda: None, lambda s, v: asyncio.Lock(), lambda r, p: None
    )
    assert sup.adopt()
    removed_at = sup.state.removed_at
    assert removed_at is not None and lay.load(REF) == sup.state
    assert plan.plan({}, {REF: sup.state}, removed_at + 1) == [
        plan.Wait(REF, removed_at + model.REMOVED_GRACE, "keeping its files")
    ]
    other = supervisor.Supervisor(
        Ref("web", "none"), lay, invocation.Context("n1"), lambda: None, lambda s, v: asyncio.Lock(), lambda r, p: None
    )
    assert not other.adopt()
