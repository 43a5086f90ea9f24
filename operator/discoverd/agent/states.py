"""The instance phases and which changes between them are expected.

Phases are defined with the status documents (`documents.Phase`); this
module says how an instance moves between them, for the docs and for the
status writer, which logs an unexpected jump (`Changed phase unexpectedly`)
as it records the instance's phase history; it never refuses one. Imports
nothing but the schema.

    Pending -> Downloading -> Installing -> Starting -> Running
    Running -> Unhealthy -> Stopping -> BackOff -> Starting
    Starting -> BackOff (exited early, nothing to roll back to)
    Starting/Unhealthy/Installing -> RolledBack (the previous version runs again)
    any -> Failed (invalid documents, failed install with nothing to go back to)
    any -> Stopping (removal, upgrade, restart, drain)
    Stopping/Pending/BackOff/Downloading/Installing -> Drained (the server is drained)
    Drained -> Pending/Downloading/Installing/Starting/Running (undrained)
"""

from __future__ import annotations

from discoverd.schema.documents import Phase

__all__ = ["ACTIVE", "TRANSITIONS", "expected"]

P = Phase

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.DOWNLOADING, P.INSTALLING, P.STARTING, P.RUNNING, P.BACK_OFF, P.DRAINED}),
    P.DOWNLOADING: frozenset({P.INSTALLING, P.STARTING, P.RUNNING, P.ROLLED_BACK, P.PENDING, P.DRAINED}),
    P.INSTALLING: frozenset({P.STARTING, P.RUNNING, P.ROLLED_BACK, P.PENDING, P.DRAINED}),
    P.STARTING: frozenset({P.RUNNING, P.UNHEALTHY, P.BACK_OFF, P.ROLLED_BACK, P.DOWNLOADING, P.INSTALLING}),
    P.RUNNING: frozenset({P.UNHEALTHY, P.BACK_OFF, P.DOWNLOADING, P.INSTALLING, P.STARTING}),
    P.UNHEALTHY: frozenset({P.RUNNING, P.BACK_OFF, P.ROLLED_BACK, P.STARTING}),
    P.BACK_OFF: frozenset({P.STARTING, P.DOWNLOADING, P.INSTALLING, P.ROLLED_BACK, P.RUNNING, P.DRAINED}),
    P.FAILED: frozenset(set(Phase) - {P.FAILED}),
    P.ROLLED_BACK: frozenset({P.DOWNLOADING, P.INSTALLING, P.STARTING, P.UNHEALTHY, P.BACK_OFF, P.RUNNING}),
    P.STOPPING: frozenset(set(Phase) - {P.STOPPING}),
    P.DRAINED: frozenset({P.PENDING, P.DOWNLOADING, P.INSTALLING, P.STARTING, P.RUNNING}),
}
"""Phase -> the phases it is expected to move to (besides Failed and Stopping, always possible)."""

ACTIVE = frozenset({P.STARTING, P.RUNNING, P.UNHEALTHY, P.ROLLED_BACK})
"""Phases in which a run process exists."""


def expected(old: Phase, new: Phase) -> bool:
    """Whether `old -> new` is a normal move (unexpected ones are logged, never refused; a phase this
    table does not know yet moves anywhere)."""
    return old == new or new in (P.FAILED, P.STOPPING) or new in TRANSITIONS.get(old, frozenset(Phase))
