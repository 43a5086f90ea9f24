"""Errors shared by every layer, each saying how to recover.

`InvalidDocument` is permanent (fix the data), `StoreUnavailable` is temporary
(retry after a delay), `Conflict` means a compare-and-swap lost, `Compacted`
means a watch must start again from a full read. No third-party imports here:
the agent has no Kopf, the operator translates these into Kopf's errors.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "Compacted",
    "Conflict",
    "DiscoverdError",
    "InvalidDocument",
    "PermissionDenied",
    "StoreUnavailable",
    "printable",
]


_INVISIBLE = frozenset("\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Line and paragraph separators and bidirectional controls: printed escaped."""


def printable(text: str) -> str:
    """`text` safe to print, log and store as UTF-8 JSON: escapes instead of raw bytes.

    Keys arrive decoded with surrogateescape, so a non-UTF-8 byte 0xff is the
    lone surrogate U+DCFF, which no UTF-8 stream can write; it is shown as
    `\\xff`. Other lone surrogates (JSON's `"\\ud800"`) are shown as `\\ud800`,
    control characters as `\\x0a` and the like, so a key cannot forge log lines
    or send escape sequences to a terminal; the Unicode line separators and the
    bidirectional overrides (which reorder what a terminal shows) as `\\u2028`.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif ch in _INVISIBLE:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


class DiscoverdError(Exception):
    """Base of every error discoverd raises on purpose."""


_MAX_SHOWN = 1024
"""Longest key, field or reason an error shows: a hostile value must not make a status document huge."""


def _shown(text: str) -> str:
    text = printable(text)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


class InvalidDocument(DiscoverdError):
    """A key or document that breaks the schema; permanent until the data changes.

    `field` and `reason` are the first problem; `problems` holds every
    problem as (field, reason), the first included, for callers that show
    them all (`lines()`). Every text is made `printable`, so the error can be
    logged and written to etcd whatever bytes the key or value held, and
    cut to 1024 characters.
    """

    def __init__(self, key: str, field: str, reason: str, more: Iterable[tuple[str, str]] = ()) -> None:
        self.key = _shown(key)
        self.field = _shown(field)
        self.reason = _shown(reason)
        self.problems: tuple[tuple[str, str], ...] = (
            (self.field, self.reason),
            *((_shown(f), _shown(r)) for f, r in more),
        )
        super().__init__(str(self))

    def _line(self, field: str, reason: str) -> str:
        where = f"{self.key}: field '{field}'" if field else self.key
        return f"{where}: {reason}"

    def lines(self) -> list[str]:
        """One line per problem, each naming the key and the field."""
        return [self._line(field, reason) for field, reason in self.problems]

    def __str__(self) -> str:
        more = len(self.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return self._line(self.field, self.reason) + suffix


class StoreUnavailable(DiscoverdError):
    """etcd cannot be reached or refused us; temporary, retry after `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class PermissionDenied(StoreUnavailable):
    """etcd refused the request: the user's roles do not allow it. Temporary where a controller is about to grant it
    (a server's newly assigned service); everywhere else the operator must fix the roles."""


class Conflict(DiscoverdError):
    """A compare-and-swap lost: the key's mod_revision is no longer the expected one."""

    def __init__(self, key: str, expected: int, reason: str = "") -> None:
        self.key = key
        self.expected = expected
        super().__init__(
            reason or f"{key}: changed in etcd since revision {expected}" if expected else f"{key}: exists"
        )


class Compacted(DiscoverdError):
    """A watch asked for a revision etcd has compacted away; re-list, then watch again."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(f"revision {revision} is compacted (oldest kept: {compact_revision})")
