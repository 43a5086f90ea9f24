"""Errors shared by every layer, each saying how to recover.

`InvalidDocument` is permanent (fix the data), `StoreUnavailable` is temporary
(retry after a delay), `Conflict` means a compare-and-swap lost, `Compacted`
means a watch must start again from a full read. No third-party imports here:
the agent has no Kopf, the operator translates these into Kopf's errors.
"""

from __future__ import annotations

__all__ = ["Compacted", "Conflict", "DiscoverdError", "InvalidDocument", "StoreUnavailable"]


class DiscoverdError(Exception):
    """Base of every error discoverd raises on purpose."""


class InvalidDocument(DiscoverdError):
    """A key or document that breaks the schema; permanent until the data changes."""

    def __init__(self, key: str, field: str, reason: str) -> None:
        self.key = key
        self.field = field
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.key}: field {self.field!r}" if self.field else self.key
        return f"{where}: {self.reason}"


class StoreUnavailable(DiscoverdError):
    """etcd cannot be reached or refused us; temporary, retry after `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


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
