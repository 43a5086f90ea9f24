"""The conflict rule and the normal forms of `operator.mirror`, as a table of (object, etcd) -> decision."""

from __future__ import annotations

from typing import Any

import pytest

from discoverd.errors import InvalidDocument
from discoverd.operator import mirror
from discoverd.schema import documents, keys

KEY = keys.Key(keys.Kind.VERSION, service="web", version="1.0")
KEY_STR = KEY.build("/p")
SPEC: dict[str, Any] = {"service": "web", "version": "1.0", "runScript": {"command": "./web", "argv": ["-p", "80"]}}
OTHER: dict[str, Any] = {"service": "web", "version": "1.0", "runScript": {"command": "./web", "argv": ["-p", "81"]}}
D = mirror.digest("ServiceVersion", SPEC)
D2 = mirror.digest("ServiceVersion", OTHER)


def etcd(revision: int, spec: dict[str, Any] = SPEC) -> mirror.EtcdSide:
    return mirror.EtcdSide(revision, spec, mirror.digest("ServiceVersion", spec))


def obj(
    spec: dict[str, Any] = SPEC, revision: int | None = 5, synced: str | None = D, deleting: bool = False
) -> mirror.ObjectSide:
    return mirror.ObjectSide("web.1.0", mirror.digest("ServiceVersion", spec), revision, synced, deleting, spec=spec)


CASES = [
    ("no object, etcd has it: create", None, etcd(5), mirror.Create(SPEC, 5, D)),
    ("nothing on either side", None, None, mirror.Skip("no object and no valid document")),
    ("in sync", obj(), etcd(5), mirror.Skip()),
    ("etcd changed: update the object", obj(), etcd(7, OTHER), mirror.Patch(OTHER, 7, D2)),
    ("etcd rewrote the same content: annotations only", obj(), etcd(7), mirror.Patch(None, 7, D)),
    ("etcd deleted: delete the object", obj(), None, mirror.DeleteObject()),
    ("user created, key absent: create-only write", obj(revision=None, synced=None), None, mirror.WriteKey(0)),
    ("user created, same content in etcd: adopt", obj(revision=None, synced=None), etcd(9), mirror.Patch(None, 9, D)),
    ("user changed, etcd unchanged: guarded write", obj(OTHER), etcd(5), mirror.WriteKey(5)),
    ("user and etcd made the same change", obj(OTHER), etcd(8, OTHER), mirror.Patch(None, 8, D2)),
    ("being deleted, in sync: guarded delete", obj(deleting=True), etcd(5), mirror.DeleteKey(5)),
    ("being deleted, key gone: release", obj(deleting=True), None, mirror.Release()),
    ("being deleted, never synced: release", obj(revision=None, synced=None, deleting=True), etcd(5), mirror.Release()),
]


@pytest.mark.parametrize(("name", "o", "e", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, o: mirror.ObjectSide | None, e: mirror.EtcdSide | None, expected: mirror.Decision) -> None:
    assert mirror.decide(o, e, KEY_STR) == expected


def test_user_change_after_etcd_change_resets_object_with_warning() -> None:
    decision = mirror.decide(obj(OTHER), etcd(8, {**SPEC, "stopTimeout": 3}), KEY_STR)
    assert isinstance(decision, mirror.Patch)
    assert decision.spec == {**SPEC, "stopTimeout": 3} and decision.revision == 8
    assert decision.warning is not None and "etcd wins" in decision.warning


def test_user_create_over_existing_different_key_resets_with_warning() -> None:
    decision = mirror.decide(obj(OTHER, revision=None, synced=None), etcd(4), KEY_STR)
    assert isinstance(decision, mirror.Patch) and decision.spec == SPEC and decision.warning


def test_user_change_of_key_deleted_in_etcd_deletes_object_with_warning() -> None:
    decision = mirror.decide(obj(OTHER), None, KEY_STR)
    assert isinstance(decision, mirror.DeleteObject) and decision.warning


def test_delete_after_etcd_changed_keeps_key_with_warning() -> None:
    decision = mirror.decide(obj(deleting=True), etcd(9, OTHER), KEY_STR)
    assert isinstance(decision, mirror.Release) and decision.warning and "kept" in decision.warning


def test_invalid_etcd_document_leaves_the_object_alone() -> None:
    bad = mirror.EtcdSide(9, None, None, error="bad json")
    assert isinstance(mirror.decide(obj(), bad, KEY_STR), mirror.Skip)
    assert isinstance(mirror.decide(None, bad, KEY_STR), mirror.Skip)


def test_invalid_object_is_refused() -> None:
    o = mirror.ObjectSide("x", None, None, None, error="bad")
    assert mirror.decide(o, etcd(5), KEY_STR) == mirror.Refuse("bad")


@pytest.mark.parametrize(
    "same",
    [
        {**SPEC, "runScript": {**SPEC["runScript"], "env": None}},
        {**SPEC, "minHealthySeconds": 5},  # the default, spelled out
        {**SPEC, "downloadScript": {"command": "", "argv": []}},
        {**SPEC, "runScript": {**SPEC["runScript"], "unknown": 1}},  # pruned by the API server
    ],
)
def test_digest_ignores_what_means_the_same(same: dict[str, Any]) -> None:
    assert mirror.digest("ServiceVersion", same) == D


def test_digest_of_invalid_spec_raises() -> None:
    with pytest.raises(InvalidDocument):
        mirror.digest("ServiceVersion", {"service": "a/b", "version": "1"})


def test_spec_of_etcd_document_round_trips_to_the_same_value() -> None:
    raw = b'{"name":"web","download":{"command":"sh","argv":["-c","x"],"timeout":5,"future":true},"run_script":{"command":"./web"},"later":1}'
    doc = documents.parse_at(KEY, KEY_STR, raw)
    spec = mirror.spec_of(KEY, doc)
    assert spec == {
        "service": "web",
        "version": "1.0",
        "downloadScript": {"command": "sh", "argv": ["-c", "x"], "timeout": 5},
        "runScript": {"command": "./web"},
    }
    value = mirror.value_of("ServiceVersion", spec, doc)
    back = documents.parse_at(KEY, KEY_STR, value)
    assert back.model_extra == {"later": 1}  # unknown top-level fields in etcd are kept
    assert mirror.digest("ServiceVersion", mirror.spec_of(KEY, back)) == mirror.digest("ServiceVersion", spec)


def test_object_side_ignores_annotations_of_another_key() -> None:
    body = {
        "metadata": {
            "name": "web-1-0",
            "annotations": {
                mirror.ANNOTATION_KEY: "/p/other",
                mirror.ANNOTATION_REVISION: "3",
                mirror.ANNOTATION_DIGEST: D,
            },
        },
        "spec": SPEC,
    }
    side = mirror.object_side("ServiceVersion", body, KEY, "/p")
    assert not side.synced and side.changed and side.digest == D


def test_object_side_reads_its_annotations() -> None:
    body = {
        "metadata": {
            "name": "web.1.0",
            "annotations": {
                mirror.ANNOTATION_KEY: KEY_STR,
                mirror.ANNOTATION_REVISION: "3",
                mirror.ANNOTATION_DIGEST: D,
            },
        },
        "spec": SPEC,
    }
    side = mirror.object_side("ServiceVersion", body, KEY, "/p")
    assert side.synced and not side.changed and side.revision == 3
