"""Which installs of a service are kept: a table over instance states (prune.keep), then a real layout (prune.prune)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discoverd.agent import layout, model, prune
from discoverd.agent.model import InstanceRecord, Process, Ref
from discoverd.schema import documents


def target(ref: Ref, version: str) -> model.Target:
    document = documents.Version.model_validate({"name": ref.service, "run_script": {"command": "./web"}})
    return model.Target(ref, version, document, document.run_script)


A, B, OTHER = Ref("web", "a"), Ref("web", "b"), Ref("db", "a")
# Installed 1.0 first, 5.0 last.
ON_DISK = {"1.0": 1.0, "2.0": 2.0, "3.0": 3.0, "4.0": 4.0, "5.0": 5.0}


def running(ref: Ref, version: str, previous: str | None = None) -> InstanceRecord:
    t = target(ref, version)
    p = Process(pid=42, start_time=1, config_hash=t.config_hash, version=version, started_at=0.0)
    return InstanceRecord(ref=ref, current=t, good=t, process=p, previous_version=previous)


@pytest.mark.parametrize(
    ("case", "states", "previous", "keep_versions", "kept"),
    [
        ("one instance upgraded to 5.0 from 4.0", [running(A, "5.0", "4.0")], "4.0", 0, {"4.0", "5.0"}),
        (
            "each instance keeps its own previous version",
            [running(A, "5.0", "4.0"), running(B, "3.0", "2.0")],
            "4.0",
            0,
            {"2.0", "3.0", "4.0", "5.0"},
        ),
        (
            "a removed instance keeps nothing",
            [running(A, "5.0"), running(B, "3.0", "2.0").removed(1.0)],
            None,
            0,
            {"5.0"},
        ),
        ("another service's instances do not count", [running(A, "5.0"), running(OTHER, "1.0")], None, 0, {"5.0"}),
        ("--keep-versions 2: the two newest others", [running(A, "3.0")], None, 2, {"3.0", "5.0", "4.0"}),
        ("--keep-versions beyond what is on disk", [running(A, "3.0")], None, 9, set(ON_DISK)),
        (
            "the rollback point differs from what runs",
            [running(A, "5.0").model_copy(update={"good": target(A, "2.0")})],
            None,
            0,
            {"2.0", "5.0"},
        ),
    ],
)
def test_keep(
    case: str, states: list[InstanceRecord], previous: str | None, keep_versions: int, kept: set[str]
) -> None:
    assert prune.keep("web", states, previous, ON_DISK, keep_versions) == kept


def test_prune_removes_only_what_is_not_kept_nor_being_installed(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path)
    lay.prepare()
    for version in ("1.0", "2.0", "3.0", "4.0"):
        lay.version_dir("web", version).mkdir(parents=True)
        lay.mark_installed(target(A, version))
    removed = prune.prune(lay, "web", [running(A, "4.0", "3.0")], "3.0", lambda v: v == "1.0")
    assert removed == ["2.0"]
    assert lay.service_versions("web") == ["1.0", "3.0", "4.0"]
