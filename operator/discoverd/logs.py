"""Logs like Kubernetes components: one line per event, fixed message, key=value context.

    logger.info("Started instance", extra=logs.kv(service="web", instance="i1", version="2.0"))

prints `Started instance service=web instance=i1 version=2.0` (text) or one
JSON object per line (`--log-format json`). Text from etcd is escaped either
way: control characters, the Unicode line separators and the bidirectional
controls become `\\x1b`-style escapes in text logs (a value cannot forge a
line or send escape sequences to a terminal), and JSON escapes them itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

__all__ = ["configure", "kv"]

_FIELDS = "discoverd_fields"


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the key/value context of the event."""
    return {_FIELDS: fields}


def _is_control(c: str) -> bool:
    """C0, DEL, C1 (such as U+0085) and the Unicode line separators: they could forge a log line
    or rewrite a terminal, so a text log never prints them raw."""
    return ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in _INVISIBLE


_INVISIBLE = "\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
"""The Unicode line separators and the bidirectional controls (which reorder what a terminal shows)."""


def _escape_controls(text: str) -> str:
    """A message stays one line: control characters (from a value formatted into it) become escapes."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c for c in text)


def _format_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in ' "=' or _is_control(c) for c in text)) else text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        when = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        parts = [when, record.levelname[0], _escape_controls(record.getMessage())]
        parts += [f"{k}={_format_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            # A traceback is several lines, but its exception's text may come from etcd: each of its
            # lines escaped and indented, so none is taken for an event (events start with a time).
            trace = self.formatException(record.exc_info).split("\n")
            line += "".join(f"\n  {_escape_controls(part)}" for part in trace)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure(level: int = logging.INFO, json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "grpc", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
