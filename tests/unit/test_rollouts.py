"""Rollout documents (DESIGN 2b): keys, defaults, max_unavailable forms, untrusted input as InvalidDocument."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys, rollouts
from discoverd.store.typed import decode

P = "/discoverd"
CONFIG_KEY = "/discoverd/services/web/rollout/config/details"
STATUS_KEY = "/discoverd/services/web/rollout/status"


def test_rollout_keys_are_built_and_parsed_as_the_design_gives_them() -> None:
    assert keys.rollout_config(P, "web") == CONFIG_KEY
    assert keys.rollout_status(P, "web") == STATUS_KEY
    assert keys.controller_leader(P) == "/discoverd/controller/leader"
    assert keys.parse(P, CONFIG_KEY) == keys.Key(keys.Kind.ROLLOUT, service="web")
    assert keys.parse(P, STATUS_KEY) == keys.Key(keys.Kind.ROLLOUT_STATUS, service="web")
    assert keys.Key(keys.Kind.ROLLOUT, service="web").build(P) == CONFIG_KEY
    assert keys.Key(keys.Kind.ROLLOUT_STATUS, service="web").build(P) == STATUS_KEY
    assert keys.parse(P, "/discoverd/controller/leader") is None  # not a document


def test_a_bad_service_name_in_a_rollout_key_is_named() -> None:
    with pytest.raises(InvalidDocument) as error:
        keys.parse(P, "/discoverd/services/../rollout/status")
    assert error.value.field == "service"


def test_minimal_config_gets_the_documented_defaults() -> None:
    doc = documents.parse(rollouts.RolloutConfig, CONFIG_KEY, b'{"name": "web", "to_version": "2.0"}')
    assert (doc.canary, doc.pause_after_canary, doc.max_unavailable) == (0, False, 1)
    assert (doc.progress_deadline_seconds, doc.auto_revert, doc.paused, doc.undo) == (600, True, False, False)
    assert doc.max_restarts == 2
    assert documents.dump(doc) == {"name": "web", "to_version": "2.0"}  # only what the writer set


@pytest.mark.parametrize(("value", "stored"), [(1, 1), (7, 7), ("25%", "25%"), ("100%", "100%"), (" 5%", "5%")])
def test_max_unavailable_is_a_count_or_a_percentage(value: int | str, stored: int | str) -> None:
    doc = documents.validate(
        rollouts.RolloutConfig, CONFIG_KEY, {"name": "web", "to_version": "2", "max_unavailable": value}
    )
    assert doc.max_unavailable == stored


@pytest.mark.parametrize(("value", "total", "count"), [(2, 9, 2), ("25%", 9, 2), ("10%", 5, 1), ("100%", 50, 50)])
def test_percentages_round_down_but_never_to_zero(value: int | str, total: int, count: int) -> None:
    assert rollouts.max_unavailable_count(value, total) == count


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"max_unavailable": 0}, "max_unavailable", "at least 1"),
        ({"max_unavailable": "0%"}, "max_unavailable", "between 1% and 100%"),
        ({"max_unavailable": "150%"}, "max_unavailable", "between 1% and 100%"),
        ({"max_unavailable": "two"}, "max_unavailable", "percentage"),
        ({"max_unavailable": True}, "max_unavailable", ""),
        ({"max_unavailable": 1.5}, "max_unavailable", ""),
        ({"canary": -1}, "canary", "greater than or equal to 0"),
        ({"to_version": "a/b"}, "to_version", "'/'"),
        ({"to_version": ""}, "to_version", "empty"),
        ({"min_healthy_seconds": -1}, "min_healthy_seconds", ""),
        ({"progress_deadline_seconds": 0}, "progress_deadline_seconds", ""),
        ({"max_restarts": 0}, "max_restarts", ""),
        ({"max_restarts": 1.5}, "max_restarts", ""),
        ({"auto_revert": "maybe"}, "auto_revert", ""),
    ],
)
def test_invalid_config_names_key_and_field(patch: dict[str, object], field: str, reason: str) -> None:
    raw = json.dumps({"name": "web", "to_version": "2.0", **patch}).encode()
    with pytest.raises(InvalidDocument) as error:
        documents.parse(rollouts.RolloutConfig, CONFIG_KEY, raw)
    assert error.value.key == CONFIG_KEY
    assert error.value.field.startswith(field)
    assert reason in error.value.reason


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b'{"name": "web", "to_version": "2", "min_healthy_seconds": NaN}', b"\xff"]
)
def test_garbage_becomes_an_invalid_entry_not_an_exception(raw: bytes) -> None:
    entry = decode(P, CONFIG_KEY, raw, 5)
    assert entry.document is None and entry.error is not None and entry.error.key == CONFIG_KEY


def test_a_config_whose_name_is_another_service_is_refused() -> None:
    entry = decode(P, CONFIG_KEY, b'{"name": "db", "to_version": "2.0"}', 5)
    assert entry.error is not None and entry.error.field == "name"


def test_status_round_trips_with_unknown_fields_kept() -> None:
    raw = json.dumps(
        {
            "phase": "Progressing",
            "to_version": "2.0",
            "from_versions": {"i1": "1.0", "i2": "1.0"},
            "updated": ["i1"],
            "healthy": [],
            "skipped": [],
            "total": 2,
            "message": "",
            "started_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:01Z",
            "from_the_future": 1,
        }
    ).encode()
    entry = decode(P, STATUS_KEY, raw, 9)
    assert isinstance(entry.document, rollouts.RolloutStatus)
    assert entry.document.phase is rollouts.RolloutPhase.PROGRESSING
    again = documents.dump(entry.document)
    assert again["from_the_future"] == 1 and again["updated"] == ["i1"] and again["total"] == 2


def test_status_with_an_unknown_phase_is_invalid() -> None:
    raw = b'{"phase": "Exploding", "to_version": "2", "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}'
    entry = decode(P, STATUS_KEY, raw, 9)
    assert entry.error is not None and entry.error.field == "phase"


@given(
    st.dictionaries(
        st.text(max_size=20),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ),
        max_size=8,
    )
)
def test_any_json_object_decodes_to_a_document_or_an_invalid_entry(data: dict[str, object]) -> None:
    for key in (CONFIG_KEY, STATUS_KEY):
        entry = decode(P, key, json.dumps(data).encode(), 3)
        assert (entry.document is None) != (entry.error is None)
