"""Text logs stay one line per event whatever a value from etcd holds (no forged lines)."""

from __future__ import annotations

import logging

import pytest

from discoverd import logs


def _line(message: str, *args: object, **fields: object) -> str:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(logs.kv(**fields))
    return logs.TextFormatter().format(record)


@pytest.mark.parametrize("hostile", ["a\nb", "a\rE forged", "x\x1b[2Jy", "nel\x85x", "ls\u2028x", "del\x7f"])
def test_a_field_with_control_characters_is_quoted_and_escaped(hostile: str) -> None:
    line = _line("Rejected configuration", key=hostile)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert all(not (0x7F <= ord(c) <= 0x9F) and c not in "\u2028\u2029" for c in line)
    assert ' key="' in line


@pytest.mark.parametrize("hostile", ["a\nI forged line", "a\rb", "c\x85d"])
def test_a_message_with_a_formatted_value_stays_one_line(hostile: str) -> None:
    line = _line("Failed to mirror key: %s", hostile)
    assert "\n" not in line and "\r" not in line and "\x85" not in line
    assert line.endswith(hostile.encode("unicode_escape").decode("ascii"))


def test_a_plain_value_is_left_as_it_is() -> None:
    assert _line("Started instance", service="web", instance="i1").endswith("Started instance service=web instance=i1")


def test_a_traceback_cannot_forge_a_line_or_reach_the_terminal() -> None:
    """An exception's text may hold a value from etcd; its traceback lines are escaped and indented."""
    try:
        raise ValueError("bad value\n2026-01-01T00:00:00.00Z I Forged event\x1b]0;owned\x07")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "Failed an action", (), sys.exc_info())
    text = logs.TextFormatter().format(record)
    lines = text.split("\n")
    assert lines[0].endswith("E Failed an action") and all(line.startswith("  ") for line in lines[1:])
    assert "\x1b" not in text and "\x07" not in text and "Traceback" in text


@pytest.mark.parametrize("hostile", ["rlo\u202eevil", "isolate\u2066x"])
def test_bidirectional_controls_are_escaped(hostile: str) -> None:
    line = _line("Rejected %s", hostile, key=hostile)
    assert not any(c in line for c in "\u202e\u2066") and "\\u20" in line
