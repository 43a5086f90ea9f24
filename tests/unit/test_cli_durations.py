"""`discoverd drain --deadline DURATION`: the durations it takes and the ones it refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from discoverd.cli import drain, restart


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800), ("500ms", 0.5), (" 3m ", 180)],
)
def test_durations(text: str, seconds: float) -> None:
    assert drain.parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "soon", "10x", "-5m", "1h 30m", "0s", "400d", "m10"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|more than 0"):
        drain.parse_duration(text)


def test_restart_tokens_are_the_time_of_the_request() -> None:
    at = dt.datetime(2026, 12, 6, 20, 1, 2, 123456, tzinfo=dt.UTC)
    assert restart.new_token(at) == "2026-12-06T20:01:02.123456Z"
    assert restart.new_token() != restart.new_token(at)
