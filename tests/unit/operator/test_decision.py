"""The conflict rule and the normal forms of `operator.decision`, as a table of (object, etcd) -> decision."""

from __future__ import annotations

from typing import Any

import pytest

from discoverd.errors import InvalidDocument
from discoverd.operator import decision, objects
from discoverd.schema import documents, keys, untrusted

KEY = keys.Key(keys.Kind.VERSION, service="web", version="1.0")
KEY_STR = KEY.build("/p")
SPEC: dict[str, Any] = {"service": "web", "version": "1.0", "runScript": {"command": "./web", "argv": ["-p", "80"]}}
OTHER: dict[str, Any] = {"service": "web", "version": "1.0", "runScript": {"command": "./web", "argv": ["-p", "81"]}}
D = decision.digest(keys.Kind.VERSION, SPEC)
D2 = decision.digest(keys.Kind.VERSION, OTHER)


def etcd(revision: int, spec: dict[str, Any] = SPEC) -> decision.EtcdSide:
    return decision.EtcdSide(revision, spec, decision.digest(keys.Kind.VERSION, spec))


def obj(
    spec: dict[str, Any] = SPEC, revision: int | None = 5, synced: str | None = D, deleting: bool = False
) -> decision.ObjectSide:
    return decision.ObjectSide("web.1.0", decision.digest(keys.Kind.VERSION, spec), revision, synced, deleting)


CASES = [
    ("no object, etcd has it: create", None, etcd(5), decision.Create(SPEC, 5, D)),
    ("nothing on either side", None, None, decision.Skip("no object and no valid document")),
    ("in sync", obj(), etcd(5), decision.Skip()),
    ("etcd changed: update the object", obj(), etcd(7, OTHER), decision.Patch(OTHER, 7, D2)),
    ("etcd rewrote the same content: annotations only", obj(), etcd(7), decision.Patch(None, 7, D)),
    ("etcd deleted: delete the object", obj(), None, decision.DeleteObject()),
    ("user created, key absent: create-only write", obj(revision=None, synced=None), None, decision.WriteKey(0)),
    ("user created, same content in etcd: adopt", obj(revision=None, synced=None), etcd(9), decision.Patch(None, 9, D)),
    ("user changed, etcd unchanged: guarded write", obj(OTHER), etcd(5), decision.WriteKey(5)),
    ("user and etcd made the same change", obj(OTHER), etcd(8, OTHER), decision.Patch(None, 8, D2)),
    ("being deleted, in sync: guarded delete", obj(deleting=True), etcd(5), decision.DeleteKey(5)),
    ("being deleted, key gone: release", obj(deleting=True), None, decision.Release()),
    (
        "being deleted, never synced: release",
        obj(revision=None, synced=None, deleting=True),
        etcd(5),
        decision.Release(),
    ),
]


@pytest.mark.parametrize(("name", "o", "e", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(
    name: str, o: decision.ObjectSide | None, e: decision.EtcdSide | None, expected: decision.Decision
) -> None:
    assert decision.decide(o, e, KEY_STR) == expected


def test_user_change_after_etcd_change_resets_object_with_warning() -> None:
    chosen = decision.decide(obj(OTHER), etcd(8, {**SPEC, "stopTimeout": 3}), KEY_STR)
    assert isinstance(chosen, decision.Patch)
    assert chosen.spec == {**SPEC, "stopTimeout": 3} and chosen.revision == 8
    assert chosen.warning is not None and "etcd wins" in chosen.warning


def test_user_create_over_existing_different_key_resets_with_warning() -> None:
    chosen = decision.decide(obj(OTHER, revision=None, synced=None), etcd(4), KEY_STR)
    assert isinstance(chosen, decision.Patch) and chosen.spec == SPEC and chosen.warning


def test_user_change_of_key_deleted_in_etcd_deletes_object_with_warning() -> None:
    chosen = decision.decide(obj(OTHER), None, KEY_STR)
    assert isinstance(chosen, decision.DeleteObject) and chosen.warning


def test_delete_after_etcd_changed_keeps_key_with_warning() -> None:
    chosen = decision.decide(obj(deleting=True), etcd(9, OTHER), KEY_STR)
    assert isinstance(chosen, decision.Release) and chosen.warning and "kept" in chosen.warning


def test_invalid_etcd_document_leaves_the_object_alone_with_a_warning() -> None:
    bad = decision.EtcdSide(9, None, None, error="field 'run_script': bad")
    chosen = decision.decide(obj(), bad, KEY_STR)
    assert isinstance(chosen, decision.Skip) and chosen.warn and "field 'run_script'" in chosen.reason
    chosen = decision.decide(obj(OTHER), bad, KEY_STR)
    assert isinstance(chosen, decision.Skip) and chosen.warn
    assert decision.decide(None, bad, KEY_STR) == decision.Skip("no object and no valid document")


def test_text_kubernetes_cannot_store_is_an_invalid_spec() -> None:
    """A lone surrogate would come back from the API server as U+FFFD and then be written back to etcd."""
    with pytest.raises(InvalidDocument):
        decision.digest(keys.Kind.VERSION, {**SPEC, "runScript": {"command": "./web\ud800"}})
    side = decision.etcd_side(
        KEY,
        9,
        documents.Version.model_construct(name="web", run_script=documents.Script.model_construct(command="\ud800")),
        None,
    )
    assert side.spec is None and side.error is not None


def test_invalid_object_is_refused() -> None:
    o = decision.ObjectSide("x", None, None, None, error="bad")
    assert decision.decide(o, etcd(5), KEY_STR) == decision.Refuse("bad")


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
    assert decision.digest(keys.Kind.VERSION, same) == D


def test_digest_of_invalid_spec_raises() -> None:
    with pytest.raises(InvalidDocument):
        decision.digest(keys.Kind.VERSION, {"service": "a/b", "version": "1"})


def test_spec_of_etcd_document_round_trips_to_the_same_value() -> None:
    raw = b'{"name":"web","download":{"command":"sh","argv":["-c","x"],"timeout":5,"future":true},"run_script":{"command":"./web"},"later":1}'
    doc = documents.parse_at(KEY, KEY_STR, raw)
    spec = decision.spec_of(KEY, doc)
    assert spec == {
        "service": "web",
        "version": "1.0",
        "downloadScript": {"command": "sh", "argv": ["-c", "x"], "timeout": 5},
        "runScript": {"command": "./web"},
    }
    value = decision.value_of(keys.Kind.VERSION, spec, doc)
    back = documents.parse_at(KEY, KEY_STR, value)
    assert back.model_extra == {"later": 1}  # unknown top-level fields in etcd are kept
    assert decision.digest(keys.Kind.VERSION, decision.spec_of(KEY, back)) == decision.digest(keys.Kind.VERSION, spec)


def test_object_side_ignores_annotations_of_another_key() -> None:
    body = {
        "metadata": {
            "name": "web-1-0",
            "annotations": {
                decision.ANNOTATION_KEY: "/p/other",
                decision.ANNOTATION_REVISION: "3",
                decision.ANNOTATION_DIGEST: D,
            },
        },
        "spec": SPEC,
    }
    side = objects.Object.of(keys.Kind.VERSION, body).side(KEY, "/p")
    assert not side.synced and side.changed and side.digest == D


def test_object_side_reads_its_annotations() -> None:
    body = {
        "metadata": {
            "name": "web.1.0",
            "annotations": {
                decision.ANNOTATION_KEY: KEY_STR,
                decision.ANNOTATION_REVISION: "3",
                decision.ANNOTATION_DIGEST: D,
            },
        },
        "spec": SPEC,
    }
    side = objects.Object.of(keys.Kind.VERSION, body).side(KEY, "/p")
    assert side.synced and not side.changed and side.revision == 3


def test_spec_over_the_value_limit_is_invalid_naming_the_limit() -> None:
    """The API server stores up to 1.5 MiB; a spec between 1 and 1.5 MiB must not reach etcd, where every
    agent would refuse it."""
    env = {f"BIG{i}": "a" * 110 * 1024 for i in range(10)}  # each value under the kernel's 128 KiB
    big = {**SPEC, "runScript": {**SPEC["runScript"], "env": env}}
    with pytest.raises(InvalidDocument, match="over the limit of 1048576 bytes"):
        decision.digest(keys.Kind.VERSION, big)
    with pytest.raises(InvalidDocument, match="over the limit of 1048576 bytes"):
        decision.value_of(keys.Kind.VERSION, big, None)
    just_under = {**SPEC, "runScript": {**SPEC["runScript"], "env": dict(list(env.items())[:9])}}
    assert len(decision.value_of(keys.Kind.VERSION, just_under, None)) <= untrusted.MAX_VALUE_BYTES
    decision.digest(keys.Kind.VERSION, just_under)
