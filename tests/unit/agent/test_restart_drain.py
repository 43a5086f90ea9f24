"""Restart tokens and drained servers in the agent: plan tables, the status, the desired state, saved records.

Pure: no etcd, no processes, no clock (docs/operating.md, "Restart" and "Drain").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from discoverd.agent import desired, layout, model, plan, status
from discoverd.agent.model import Drain, InstanceRecord, Process, Ref, Step
from discoverd.agent.plan import Install, Reject, Remove, Start, Stop, Wait
from discoverd.schema import documents
from discoverd.schema.documents import DrainPhase, Phase
from discoverd.store.typed import Entry, decode

REF = Ref("web", "i1")
NOW = 1_000_000.0


def target(version: str = "1.0", token: str = "", ref: Ref = REF, run: str = "./web") -> model.Target:
    document = documents.Version.model_validate({"name": "web", "run_script": {"command": run}})
    return model.Target(ref, version, document, document.run_script, token)


V1, V2 = target("1.0"), target("2.0")
V1_A, V1_B = target("1.0", "a"), target("1.0", "b")


def installed(*targets: model.Target) -> frozenset[tuple[str, str]]:
    return frozenset((t.version, t.install_hash) for t in targets)


def running(t: model.Target, token: str | None = "", started_at: float = NOW - 60) -> Process:
    return Process(42, 7, t.config_hash, t.version, started_at, "run", token)


def S(ref: Ref = REF, **fields: Any) -> InstanceRecord:
    return InstanceRecord(ref=ref, **fields)


RESTARTS: list[tuple[str, model.Target, InstanceRecord, list[plan.Action]]] = [
    (
        "same token: nothing",
        V1_A,
        S(process=running(V1_A, "a"), current=V1_A, good=V1_A, installed=installed(V1)),
        [],
    ),
    (
        "new token: stop and start the same version, no install",
        V1_B,
        S(process=running(V1_A, "a"), current=V1_A, good=V1_A, installed=installed(V1)),
        [Stop(REF, "restart requested (restart token 'b')"), Start(REF, V1_B)],
    ),
    (
        "a token on a process that had none: restart",
        V1_A,
        S(process=running(V1, ""), current=V1, good=V1, installed=installed(V1)),
        [Stop(REF, "restart requested (restart token 'a')"), Start(REF, V1_A)],
    ),
    (
        "a process of an agent before restart tokens counts as started with none: adopted, not restarted",
        V1,
        S(process=running(V1, None), current=V1, good=V1, installed=installed(V1)),
        [],
    ),
    (
        "a new token in probation restarts too (a restart is no new configuration)",
        V1_B,
        S(process=running(V1_A, "a", NOW - 1), current=V1_A, installed=installed(V1)),
        [Stop(REF, "restart requested (restart token 'b')"), Start(REF, V1_B)],
    ),
    (
        "new version and new token: the upgrade, which starts with the new token",
        target("2.0", "b"),
        S(process=running(V1_A, "a"), current=V1_A, good=V1_A, installed=installed(V1, V2)),
        [Stop(REF, "replacing it with version 2.0"), Start(REF, target("2.0", "b"))],
    ),
    (
        "rejected version: the rollback point starts with the wanted token",
        target("2.0", "b"),
        S(current=V2, good=V1_A, installed=installed(V1, V2), rejected={V2.config_hash: "x"}),
        [Start(REF, V1_B)],
    ),
    (
        "nothing running: a start records the token",
        V1_B,
        S(current=V1_A, good=V1_A, installed=installed(V1)),
        [Start(REF, V1_B)],
    ),
]


@pytest.mark.parametrize(("want", "state", "expected"), [c[1:] for c in RESTARTS], ids=[c[0] for c in RESTARTS])
def test_restart_token(want: model.Target, state: InstanceRecord, expected: list[plan.Action]) -> None:
    assert plan.plan_instance(want, state, NOW) == expected


def test_the_token_is_no_part_of_the_configuration() -> None:
    assert V1_A.config_hash == V1_B.config_hash == V1.config_hash
    assert V1_A.install_hash == V1.install_hash


# drained servers

R1, R2, R3 = Ref("db", "d1"), Ref("web", "i1"), Ref("web", "i2")


def up(ref: Ref, **fields: Any) -> InstanceRecord:
    t = target(ref=ref)
    return S(ref, process=running(t), current=t, good=t, installed=installed(t), **fields)


def down(ref: Ref, **fields: Any) -> InstanceRecord:
    t = target(ref=ref)
    return S(ref, current=t, good=t, installed=installed(t), **fields)


WANT = {r: target(ref=r) for r in (R1, R2, R3)}
DRAIN = Drain()
LATE = Drain(deadline=NOW + 30)
PAST = Drain(deadline=NOW - 1)

DRAINS: list[tuple[str, Drain, dict[Ref, InstanceRecord], list[plan.Action]]] = [
    (
        "the first running instance is stopped, the others wait their turn",
        DRAIN,
        {R1: up(R1), R2: up(R2), R3: up(R3)},
        [Stop(R1, "the server is drained")],
    ),
    (
        "one stop at a time: none while a stop is under way",
        DRAIN,
        {R1: up(R1, step=Step.STOPPING), R2: up(R2), R3: up(R3)},
        [],
    ),
    (
        "the next one once the last stop is over",
        DRAIN,
        {R1: down(R1), R2: up(R2), R3: up(R3)},
        [Stop(R2, "the server is drained")],
    ),
    (
        "nothing runs: nothing to do, nothing is started or installed",
        DRAIN,
        {R1: down(R1), R2: down(R2), R3: S(R3)},
        [],
    ),
    (
        "with a deadline, the waiting ones wake up at the deadline",
        LATE,
        {R1: up(R1), R2: up(R2), R3: down(R3)},
        [Stop(R1, "the server is drained", grace=30.0), Wait(R2, NOW + 30, "waiting for its turn to drain")],
    ),
    (
        "past the deadline: every instance still running is killed at once",
        PAST,
        {R1: up(R1, step=Step.STOPPING), R2: up(R2), R3: up(R3)},
        [
            Stop(R2, "the server is drained and its drain deadline has passed", grace=0.0),
            Stop(R3, "the server is drained and its drain deadline has passed", grace=0.0),
        ],
    ),
    (
        "a failed install is still rejected",
        DRAIN,
        {
            R1: down(R1),
            R2: down(R2, install_failure=model.Failure(WANT[R2].config_hash, "1.0", "bad", NOW)),
            R3: down(R3),
        },
        [Reject(R2, WANT[R2].config_hash, "1.0", "bad")],
    ),
]


@pytest.mark.parametrize(("drain", "states", "expected"), [c[1:] for c in DRAINS], ids=[c[0] for c in DRAINS])
def test_drain(drain: Drain, states: dict[Ref, InstanceRecord], expected: list[plan.Action]) -> None:
    assert plan.plan(WANT, states, NOW, drain=drain) == expected


def test_a_removed_instance_is_removed_on_a_drained_server_too() -> None:
    gone = Ref("old", "x")
    states = {R1: down(R1), gone: up(gone)}
    assert plan.plan({R1: WANT[R1]}, states, NOW, drain=DRAIN) == [Remove(gone)]


def test_undrained_everything_starts_again() -> None:
    states = {R1: down(R1), R2: down(R2), R3: S(R3)}
    assert plan.plan(WANT, states, NOW) == [Start(R1, WANT[R1]), Start(R2, WANT[R2]), Install(R3, WANT[R3])]


def test_status_of_a_drained_server() -> None:
    stopped = status.summarize(WANT[R1], down(R1), drained=True)
    assert stopped.phase is Phase.DRAINED and "undrain" in stopped.message
    waiting = status.summarize(WANT[R2], up(R2), drained=True)
    assert waiting.phase is Phase.RUNNING
    assert status.drain_phase(False, {R1: stopped}) is None
    assert status.drain_phase(True, {R1: stopped, R2: waiting}) is DrainPhase.DRAINING
    assert status.drain_phase(True, {R1: stopped}) is DrainPhase.DRAINED
    assert status.drain_phase(True, {}) is DrainPhase.DRAINED


def test_status_reports_the_running_token() -> None:
    assert status.summarize(V1_A, S(process=running(V1_A, "a"), current=V1_A, good=V1_A)).restart_token == "a"
    assert status.summarize(V1_A, S(current=V1_A, good=V1_A)).restart_token is None


# desired state and records

P = "/d"


def entries(server: Any, instance: Any | None = None) -> dict[str, Entry]:
    docs = {f"{P}/servers/n1/config/details": server}
    if instance is not None:
        docs[f"{P}/services/web/instances/i1/config/details"] = instance
        docs[f"{P}/services/web/versions/1.0/config/details"] = {"name": "web", "run_script": {"command": "./web"}}
    return {k: decode(P, k, v if isinstance(v, bytes) else json.dumps(v).encode(), 1) for k, v in docs.items()}


LISTED = {"service_instances": [{"name": "web", "id": "i1"}]}


def test_desired_carries_the_token_and_the_drain() -> None:
    e = entries(
        {**LISTED, "drained": True, "drain_deadline": "2026-12-06T20:00:00Z"},
        {"name": "web", "service_version": "1.0", "restart_token": "t1"},
    )
    d = desired.resolve(e, P, "n1")
    t = d.instances[REF]
    assert isinstance(t, model.Target) and t.restart_token == "t1"
    assert d.drain == Drain(dt.datetime(2026, 12, 6, 20, tzinfo=dt.UTC).timestamp())
    assert desired.resolve(entries(LISTED), P, "n1").drain is None


def test_an_invalid_server_document_keeps_the_last_drain() -> None:
    bad = entries({**LISTED, "drained": "maybe"})
    assert desired.resolve(bad, P, "n1", (REF,), DRAIN).drain == DRAIN
    assert desired.resolve(bad, P, "n1", (REF,), None).drain is None
    assert "drained" in str(bad[f"{P}/servers/n1/config/details"].error)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("restart_token", "x" * (documents.MAX_RESTART_TOKEN + 1), "at most 256 characters"),
        ("restart_token", "a\0b", "NUL"),
        ("restart_token", 7, "valid string"),
    ],
)
def test_a_bad_token_names_the_field(field: str, value: object, reason: str) -> None:
    doc = {"name": "web", "service_version": "1.0", field: value}
    entry = decode(P, f"{P}/services/web/instances/i1/config/details", json.dumps(doc).encode(), 1)
    assert entry.error is not None and entry.error.field == field and reason in str(entry.error), entry.error


def test_a_drain_deadline_needs_a_time_zone() -> None:
    entry = entries({**LISTED, "drained": True, "drain_deadline": "2026-12-06T20:00:00"})
    error = entry[f"{P}/servers/n1/config/details"].error
    assert error is not None and error.field == "drain_deadline"


def test_a_record_without_tokens_reads_as_untracked_and_the_token_is_saved(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path)
    lay.prepare()
    state = S(process=running(V1_A, "a"), current=V1_A, good=V1_A)
    lay.save(state)
    saved = json.loads(lay.record_path(REF).read_text())
    assert saved["format"] == model.FORMAT == 2
    assert saved["state"]["process"]["restart_token"] == "a"
    assert saved["state"]["current"]["restart_token"] == "a"
    loaded = lay.load(REF)
    assert loaded is not None and loaded.process == state.process and loaded.good == V1_A
    # As an agent before restart tokens wrote it: no token anywhere.
    for part in (saved["state"]["process"], saved["state"]["current"], saved["state"]["good"]):
        del part["restart_token"]
    lay.record_path(REF).write_text(json.dumps(saved))
    old = lay.load(REF)
    assert old is not None and old.process is not None and old.process.restart_token is None
    assert old.good == V1 and dataclasses.replace(old.process, restart_token="a") == state.process
    assert plan.plan_instance(V1, old.model_copy(update={"installed": installed(V1)}), NOW) == []
