"""Status documents are bounded (DESIGN section 2): every string capped, the whole document too.

Agents write status; any server may be compromised, so a reader refuses a status over its caps
(an invalid document naming the field), and a writer cuts its own text first (`documents.clip`,
`rollouts.fit`) so it never writes what its readers refuse.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys, rollouts, untrusted

NOW = "2026-01-01T00:00:00Z"
INSTANCE_KEY = keys.instance_status("/d", "n1", "web", "i1")
MESSAGE_CAP = 4096  # DESIGN section 2 (as literals, so that this file runs against code without the caps too)
STATUS_CAP = 64 * 1024
AGENT_KEY = keys.agent_status("/d", "n1")


def instance_status(**fields: object) -> bytes:
    return json.dumps({"phase": "Running", "version": "1.0", "since": NOW, "updated_at": NOW, **fields}).encode()


def agent_status(**fields: object) -> bytes:
    doc = {"hostname": "h", "agent_version": "1.0", "started_at": NOW, "heartbeat": NOW, **fields}
    return json.dumps(doc).encode()


def test_the_caps_are_the_documented_ones() -> None:
    assert (documents.MAX_MESSAGE_BYTES, documents.MAX_STATUS_BYTES) == (MESSAGE_CAP, STATUS_CAP)


def test_a_message_at_its_cap_is_read() -> None:
    raw = instance_status(message="é" * (MESSAGE_CAP // 2))
    doc = documents.parse(documents.InstanceStatus, INSTANCE_KEY, raw)
    assert len(doc.message.encode()) == MESSAGE_CAP


@pytest.mark.parametrize(
    ("raw", "key", "field"),
    [
        (instance_status(message="x" * (MESSAGE_CAP + 1)), INSTANCE_KEY, "message"),
        (instance_status(message="x" * (1024 * 1024 - 200)), INSTANCE_KEY, ""),
        (instance_status(version="a/b"), INSTANCE_KEY, "version"),
        (instance_status(previous_version="v" * 254), INSTANCE_KEY, "previous_version"),
        (
            instance_status(history=[{"phase": "Running", "at": NOW, "version": "\x1b[2J"}]),
            INSTANCE_KEY,
            "history.0.version",
        ),
        (instance_status(newer_field="x" * STATUS_CAP), INSTANCE_KEY, ""),
        (agent_status(message="x" * (MESSAGE_CAP + 1)), AGENT_KEY, "message"),
        (agent_status(hostname="h" * 254), AGENT_KEY, "hostname"),
        (agent_status(agent_version="1" * 129), AGENT_KEY, "agent_version"),
    ],
)
def test_a_status_over_its_caps_is_an_invalid_document_naming_the_field(raw: bytes, key: str, field: str) -> None:
    parsed = keys.parse("/d", key)
    assert parsed is not None
    with pytest.raises(InvalidDocument) as caught:
        documents.parse_at(parsed, key, raw)
    assert caught.value.key == key and caught.value.field == field


@given(st.text(), st.integers(min_value=0, max_value=MESSAGE_CAP))
def test_clip_fits_any_text_in_its_limit(text: str, limit: int) -> None:
    cut = documents.clip(text, limit)
    assert len(cut.encode()) <= limit
    if len(text.encode("utf-8", "backslashreplace")) <= limit:
        assert cut == text.encode("utf-8", "backslashreplace").decode()


def test_a_clipped_message_is_read_back() -> None:
    """The writer's side: what `clip` leaves passes the reader's cap."""
    message = documents.clip("\U0001f600" * 100_000)
    assert message.endswith("(400000 bytes, cut)")
    documents.parse(documents.InstanceStatus, INSTANCE_KEY, instance_status(message=message))


def _rollout(message: str, instances: int) -> rollouts.RolloutStatus:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ids = [f"instance-{n:05d}-" + "x" * 40 for n in range(instances)]
    return rollouts.RolloutStatus(
        phase=rollouts.RolloutPhase.FAILED,
        to_version="2.0",
        from_versions={i: "1.0" for i in ids},
        updated=ids,
        revisions=dict.fromkeys(ids, 12345678),
        message=message,
        started_at=now,
        updated_at=now,
    )


@pytest.mark.parametrize("instances", [3, 4000])
def test_a_rollout_status_is_written_within_every_readers_limit_with_from_versions_whole(instances: int) -> None:
    """The attack of issue 19: an agent's huge message copied into the rollout status made it
    unreadable, so the next step started afresh and lost every instance's previous version."""
    status = _rollout("instance web-1 on server evil is Failed: " + "\x1b" * (1024 * 1024), instances)
    data = rollouts.fit(status)
    assert data is not None and len(data) <= untrusted.MAX_VALUE_BYTES
    back = documents.parse(rollouts.RolloutStatus, "k", data)
    assert back.from_versions == status.from_versions and back.updated == status.updated
    assert back.message.startswith("instance web-1 on server evil is Failed: ")
    assert len(back.message.encode()) <= documents.MAX_MESSAGE_BYTES


def test_a_rollout_status_that_cannot_fit_is_not_written() -> None:
    assert rollouts.fit(_rollout("m", 3), limit=200) is None


def test_a_long_rollout_message_from_an_older_controller_is_read_cut() -> None:
    now = "2026-01-01T00:00:00Z"
    raw = json.dumps(
        {"phase": "Failed", "to_version": "2", "message": "y" * 500_000, "started_at": now, "updated_at": now}
    )
    doc = documents.parse(rollouts.RolloutStatus, "k", raw.encode())
    assert len(doc.message.encode()) <= documents.MAX_MESSAGE_BYTES
