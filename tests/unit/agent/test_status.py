"""status.summarize: the status document rebuilt from the desired state and the instance's state."""

from __future__ import annotations

import logging
import random
import typing
from pathlib import Path

import pytest

from discoverd.agent import invocation, layout, model, states, status, supervisor
from discoverd.agent.model import InstanceRecord
from discoverd.schema.documents import Phase
from discoverd.store.typed import Store

REF = model.Ref("web", "i1")
NOW = 1_000_000.0


def target(version: str, **doc: object) -> model.Target:
    from discoverd.schema import documents

    document = documents.Version.model_validate({"name": "web", "run_script": {"command": "./web"}, **doc})
    return model.Target(REF, version, document, document.run_script)


V1, V2 = target("1.0"), target("2.0")
CHECKED = target("1.0", health_check={"command": "true", "failure_threshold": 2})


def proc(t: model.Target) -> model.Process:
    return model.Process(42, 7, t.config_hash, t.version, NOW - 60)


def test_rolled_back_names_both_versions_and_the_reason() -> None:
    o = InstanceRecord(
        ref=REF, process=proc(V1), current=V1, good=V1, rejected={V2.config_hash: "it exited with code 2"}
    )
    s = status.summarize(V2, o)
    assert s.phase is Phase.ROLLED_BACK
    assert (s.version, s.previous_version, s.pid) == ("1.0", "2.0", 42)
    assert s.message == "rolled back from version 2.0 to 1.0: it exited with code 2"


def test_failed_install_with_nothing_to_go_back_to_is_failed() -> None:
    s = status.summarize(
        V1, InstanceRecord(ref=REF, rejected={V1.config_hash: "the install script timed out after 2 s"})
    )
    assert s.phase is Phase.FAILED and "timed out" in s.message


def test_starting_until_counted_then_running() -> None:
    assert status.summarize(V1, InstanceRecord(ref=REF, process=proc(V1), current=V1)).phase is Phase.STARTING
    assert status.summarize(V1, InstanceRecord(ref=REF, process=proc(V1), current=V1, good=V1)).phase is Phase.RUNNING


def test_unhealthy_shows_while_it_is_being_stopped() -> None:
    o = InstanceRecord(
        ref=REF, step=model.Step.STOPPING, process=proc(CHECKED), current=CHECKED, good=CHECKED, health_failures=2
    )
    assert status.summarize(CHECKED, o).phase is Phase.UNHEALTHY


def test_backoff_after_an_exit_and_broken_documents_fail() -> None:
    exit_ = model.Exit(V1.config_hash, "1.0", 3, NOW, False, "exited with code 3")
    s = status.summarize(V1, InstanceRecord(ref=REF, current=V1, last_exit=exit_, failures=2, message="x"))
    assert (s.phase, s.last_exit_code) == (Phase.BACK_OFF, 3)
    broken = status.summarize(model.Broken(REF, "key: field 'x': bad"), InstanceRecord(ref=REF))
    assert broken.phase is Phase.FAILED and broken.message == "key: field 'x': bad"


def test_every_phase_has_its_transitions() -> None:
    assert set(states.TRANSITIONS) == set(Phase)
    assert states.expected(Phase.RUNNING, Phase.BACK_OFF)
    assert not states.expected(Phase.PENDING, Phase.ROLLED_BACK)


def test_jitter_differs_between_instances_that_fail_together(tmp_path: Path) -> None:
    """Each supervisor draws its own jitter: instances that crash together do not restart in lockstep."""
    seeds = random.Random(1)
    jitters = []
    for i in range(5):
        ref = model.Ref("web", f"i{i}")
        sup = supervisor.Supervisor(
            ref,
            layout.Layout(tmp_path),
            invocation.Context("n1"),
            lambda: None,
            lambda s, v: None,  # type: ignore[arg-type,return-value]
            lambda r, p: None,
            random.Random(seeds.random()),
        )
        sup.state = InstanceRecord(ref=ref, process=model.Process(0, 0, V1.config_hash, "1.0", NOW))
        sup._exited(1, ours=False)
        jitters.append(sup.state.jitter)
        assert sup.state.failures == 1 and sup.state.process is None
    assert len(set(jitters)) == 5
    assert all(0 <= j < model.MAX_JITTER for j in jitters)


def test_the_writer_logs_an_unexpected_phase_change_and_records_it_anyway(caplog: pytest.LogCaptureFixture) -> None:
    from discoverd.schema import documents

    caplog.set_level(logging.WARNING, logger="discoverd.agent.status")
    writer = status.Writer(typing.cast(Store, None), "node-1")  # `update` only records; `run` writes
    pending = documents.InstanceState(phase=Phase.PENDING, version="1.0")
    writer.update({REF: pending}, "")
    writer.update({REF: pending.model_copy(update={"phase": Phase.DOWNLOADING})}, "")
    assert not [r for r in caplog.records if r.getMessage() == "Changed phase unexpectedly"]
    writer.update({REF: pending.model_copy(update={"phase": Phase.BACK_OFF, "message": "exited"})}, "")
    jumps = [r for r in caplog.records if r.getMessage() == "Changed phase unexpectedly"]
    assert len(jumps) == 1
    assert jumps[0].discoverd_fields == {  # type: ignore[attr-defined]
        "server": "node-1",
        "service": "web",
        "instance": "i1",
        "old": "Downloading",
        "new": "BackOff",
        "reason": "exited",
    }


def test_the_agent_cuts_its_messages_to_the_cap_readers_check() -> None:
    """An agent never writes a status its readers refuse (DESIGN section 2: message 4 KiB)."""
    from discoverd.schema import documents

    long = "the install script said: " + "\x1b[2J" * 100_000
    s = status.summarize(V1, InstanceRecord(ref=REF, rejected={V1.config_hash: long}))
    assert s.phase is Phase.FAILED and s.message.startswith("the install script said: ")
    when = "2026-01-01T00:00:00Z"
    written = documents.InstanceStatus.model_validate({**s.model_dump(), "since": when, "updated_at": when})
    documents.parse(documents.InstanceStatus, "k", documents.dumps(written))  # what every reader does
    backing_off = InstanceRecord(ref=REF, message=long, restarts=1)
    assert len(status.summarize(V1, backing_off).message.encode()) <= documents.MAX_MESSAGE_BYTES
