"""The operator's index of objects by etcd key (`operator.objects`), and objects created as Kopf leaves them."""

from __future__ import annotations

import json
from typing import Any

import kopf

from discoverd.operator import objects, startup
from discoverd.schema import keys

KIND = keys.Kind.INSTANCE
WEB_I1 = keys.Key(KIND, service="web", instance="i1")


def body(name: str, rv: int, service: str = "web", instance: str = "i1", **meta: Any) -> dict[str, Any]:
    return {
        "kind": "ServiceInstance",
        "metadata": {"name": name, "resourceVersion": str(rv), **meta},
        "spec": {"service": service, "id": instance, "serviceVersion": "1.0"},
    }


def names(index: objects.Index, key: keys.Key) -> list[str]:
    return [o.name for o in index.matching(key)]


def test_objects_are_found_by_the_key_their_spec_names() -> None:
    index = objects.Index()
    index.load(KIND, [body("web.i1", 5), body("custom", 6), body("web.i2", 7, instance="i2")], 7)
    assert names(index, WEB_I1) == ["custom", "web.i1"]
    assert index.named_keys() == {WEB_I1, keys.Key(KIND, service="web", instance="i2")}


def test_an_older_body_never_replaces_a_newer_one() -> None:
    index = objects.Index()
    index.load(KIND, [], 1)
    index.observe(KIND, body("web.i1", 9))
    index.observe(KIND, body("web.i1", 8, instance="i9"))
    assert names(index, WEB_I1) == ["web.i1"]


def test_a_changed_spec_moves_the_object_to_its_new_key() -> None:
    index = objects.Index()
    index.load(KIND, [body("x", 1)], 1)
    index.observe(KIND, body("x", 2, instance="i2"))
    assert index.matching(WEB_I1) == []
    assert names(index, keys.Key(KIND, service="web", instance="i2")) == ["x"]


def test_a_list_drops_what_it_lacks_but_keeps_what_was_seen_after_it() -> None:
    index = objects.Index()
    index.observe(KIND, body("gone", 3))
    index.observe(KIND, body("web.i1", 12))
    index.load(KIND, [], 10)
    assert names(index, WEB_I1) == ["web.i1"]
    assert index.named_keys() == {WEB_I1}


def test_forgotten_objects_are_not_found() -> None:
    index = objects.Index()
    index.load(KIND, [body("web.i1", 1)], 1)
    index.forget(KIND, "web.i1")
    assert index.matching(WEB_I1) == []
    assert len(index) == 0


def test_invalid_specs_are_indexed_under_no_key() -> None:
    index = objects.Index()
    index.load(KIND, [body("bad", 1, service="a/b")], 1)
    assert len(index) == 1
    assert index.named_keys() == set()


def _kopf_cause(raw: dict[str, Any], *, initial: bool) -> Any:
    """What Kopf decides for an object its watch delivers, computed the way Kopf's processing does
    (kopf/_core/reactor/processing.py) with our settings. Kopf's internals, on purpose: this test must
    fail when Kopf changes the format or the meaning of what `startup.as_handled` writes."""
    from kopf._cogs.structs import diffs, finalizers
    from kopf._core.intents import causes

    settings = kopf.OperatorSettings()
    startup.configure(settings=settings)
    stored = kopf.Body(raw)  # type: ignore[arg-type]
    old = settings.persistence.diffbase_storage.fetch(body=stored)
    new = settings.persistence.diffbase_storage.build(body=stored)
    old = settings.persistence.progress_storage.clear(essence=old) if old is not None else None
    new = settings.persistence.progress_storage.clear(essence=new)
    assert finalizers.is_deletion_blocked(body=stored, finalizer=settings.persistence.finalizer)
    return causes.detect_changing_cause(
        finalizer=settings.persistence.finalizer,
        raw_event={"type": "ADDED", "object": raw},  # type: ignore[typeddict-item]
        body=stored,
        old=old,
        new=new,
        diff=diffs.diff(old, new),
        initial=initial,
        resource=None,
        logger=None,
        patch=kopf.Patch(),
        memo=None,
        indices=None,
    ).reason


def test_created_objects_look_handled_to_kopf() -> None:
    from kopf._core.intents import causes

    created = startup.as_handled(body("web.i1", 1, annotations={"discoverd.io/key": "/p/k"}))
    # as the API server returns it: more metadata, same spec
    stored = {**created, "metadata": {**created["metadata"], "uid": "u", "generation": 1}}
    assert _kopf_cause(stored, initial=False) is causes.Reason.NOOP  # no create handler, no patch
    assert _kopf_cause(stored, initial=True) is causes.Reason.RESUME  # at start-up, as for any handled object
    changed = {**stored, "spec": {**stored["spec"], "serviceVersion": "2.0"}}
    assert _kopf_cause(changed, initial=False) is causes.Reason.UPDATE  # a user's change is still seen


def test_labels_and_annotations_changed_by_a_user_call_no_handler() -> None:
    """Kopf's diff base is the spec alone: a label or annotation change is no cause (and no write)."""
    from kopf._core.intents import causes

    created = startup.as_handled(body("web.i1", 1))
    stored = {**created, "metadata": {**created["metadata"], "uid": "u", "generation": 1}}
    labelled = {
        **stored,
        "metadata": {
            **stored["metadata"],
            "labels": {"team": "shop"},
            "annotations": {**stored["metadata"]["annotations"], "note": "x"},
        },
    }
    assert _kopf_cause(labelled, initial=False) is causes.Reason.NOOP


def test_objects_handled_by_an_older_operator_call_no_handler_after_an_upgrade() -> None:
    """Objects carrying Kopf's full copy of the spec (`last-handled-configuration`) are compared by it."""
    from kopf._core.intents import causes

    old = body("web.i1", 1, uid="u", generation=1, finalizers=[startup.FINALIZER])
    essence = {"spec": old["spec"], "metadata": {"annotations": {"discoverd.io/key": "/p/k"}}}
    old["metadata"]["annotations"] = {
        startup.LEGACY_DIFFBASE: json.dumps(essence) + "\n",
        "discoverd.io/kopf-managed": "yes",
    }
    assert _kopf_cause(old, initial=False) is causes.Reason.NOOP
    changed = {**old, "spec": {**old["spec"], "serviceVersion": "2.0"}}
    assert _kopf_cause(changed, initial=False) is causes.Reason.UPDATE
    patch = kopf.Patch()
    startup.DIFFBASE.store(
        body=kopf.Body(changed), patch=patch, essence=startup.DIFFBASE.build(body=kopf.Body(changed))
    )  # type: ignore[arg-type]
    assert patch["metadata"]["annotations"][startup.LEGACY_DIFFBASE] is None  # the old copy goes once handled


def test_created_objects_carry_a_hash_of_the_spec_not_a_copy() -> None:
    annotations = startup.as_handled(body("web.i1", 1))["metadata"]["annotations"]
    assert startup.LEGACY_DIFFBASE not in annotations
    assert annotations == {
        "discoverd.io/handled-spec": startup.spec_hash(body("web.i1", 1)["spec"]),
        "discoverd.io/kopf-managed": "yes",
    }
    assert len(annotations["discoverd.io/handled-spec"]) == 24


def test_a_new_generation_is_digested_again_and_a_known_version_is_kept() -> None:
    index = objects.Index()
    first = index.observe(KIND, body("x", 1, generation=1))
    assert first is not None and first.key == WEB_I1 and first.digest
    assert index.observe(KIND, body("x", 1, generation=1)) is first  # the watch echo of our own write
    moved = index.observe(KIND, body("x", 2, instance="i2", generation=2))
    assert moved is not None and moved.key == keys.Key(KIND, service="web", instance="i2")
    assert moved.digest != first.digest and index.matching(WEB_I1) == []
    status_only = index.observe(KIND, {**body("x", 3, instance="i2", generation=2), "status": {"restarts": 4}})
    assert status_only is not None and status_only.digest == moved.digest and status_only.status != moved.status


def test_a_spec_over_the_size_limit_is_indexed_under_its_key_with_the_reason() -> None:
    """It names a key (so the handler finds it and refuses it, naming the limit) but has no digest."""
    index = objects.Index()
    big = body("web.i1", 1)
    big["spec"]["runScript"] = {"command": "./web", "env": {f"BIG{i}": "a" * 110 * 1024 for i in range(10)}}
    obj = index.observe(KIND, big)
    assert obj is not None and obj.key == WEB_I1 and obj.digest is None
    assert obj.error is not None and "over the limit of 1048576 bytes" in obj.error
    assert names(index, WEB_I1) == ["web.i1"]
