"""The rollout documents of DESIGN section 2b: what a person asks for, and where the controller is.

    <prefix>/services/<service>/rollout/config/details   RolloutConfig  (written by people and the CLI)
    <prefix>/services/<service>/rollout/status           RolloutStatus  (written by the acting controller)

Like every document they are untrusted input: `documents.parse` turns bytes
into one of these or an `InvalidDocument` naming the key and the field.
Unknown fields are kept. Fields beyond the design's list are ours and
documented in docs/rollouts.md: the config's `undo` (the CLI's `rollout undo`
sets it) and `max_restarts`, and the status's `revisions`, `changed_at` and
`restarts_from` (what the controller needs to continue after a change of
leader); `restart_token` in both makes the rollout a restart
(docs/operating.md, "Restart").
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt

from discoverd.schema import documents, untrusted
from discoverd.schema.documents import NotBool, Segment

__all__ = [
    "TERMINAL",
    "MaxUnavailable",
    "RolloutBody",
    "RolloutConfig",
    "RolloutPhase",
    "RolloutStatus",
    "fit",
    "max_unavailable_count",
    "parse_max_unavailable",
]

_PERCENT = re.compile(r"^(\d{1,3})%$")


def parse_max_unavailable(value: int | str) -> int | str:
    """An int >= 1 or "N%" with 1 <= N <= 100; ValueError saying which form is wanted."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be at least 1, not {value}")
        return value
    match = _PERCENT.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is neither a whole number nor a percentage such as 25%")
    percent = int(match.group(1))
    if not 1 <= percent <= 100:
        raise ValueError(f"{value!r} must be between 1% and 100%")
    return f"{percent}%"


_MAX_UNAVAILABLE_RULE = {
    # The CRD's check of the same rule (its IntOrString cannot carry a minimum or a pattern): kubectl refuses a
    # bad value at once instead of the mirror later. The forms `parse_max_unavailable` writes, so every value
    # the mirror copies from etcd passes.
    "rule": "type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')",
    "message": "must be a whole number of at least 1, or a percentage from 1% to 100% such as 25%",
}

MaxUnavailable = Annotated[
    StrictInt | str,
    AfterValidator(parse_max_unavailable),
    Field(json_schema_extra={"x-kubernetes-validations": [_MAX_UNAVAILABLE_RULE]}),
]
"""How many instances may be upgrading or unhealthy at once: a count, or a percentage of the total."""


def max_unavailable_count(value: int | str, total: int) -> int:
    """The count `value` allows out of `total` instances: percentages round down, but never below 1."""
    if isinstance(value, int):
        return value
    return max(1, math.floor(total * int(value.rstrip("%")) / 100))


_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False), NotBool]


class RolloutBody(documents.Document):
    """What a rollout asks for (everything but the service's name); the `ServiceRollout` spec adds `service`."""

    to_version: Segment
    canary: Annotated[StrictInt, Field(ge=0)] = 0
    pause_after_canary: bool = False
    max_unavailable: MaxUnavailable = 1
    min_healthy_seconds: _Seconds = 10.0
    progress_deadline_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False), NotBool] = 600.0
    max_restarts: Annotated[StrictInt, Field(ge=1, le=documents.MAX_RESTARTS)] = 2
    """Ours: an updated instance restarted this often on `to_version` before it was ever healthy fails the
    rollout (a crash loop), without waiting for the progress deadline; a `BackOff` counts as its restart."""
    auto_revert: bool = True
    paused: bool = False
    undo: bool = False
    """Ours: set by `discoverd rollout undo`; every changed instance goes back to its previous version now."""
    restart_token: documents.RestartToken | None = None
    """Ours: a restart (`discoverd restart`): each instance gets this `restart_token` and keeps its version."""


class RolloutConfig(RolloutBody):
    """`<prefix>/services/<service>/rollout/config/details`; `name` is the service."""

    name: Segment


class RolloutPhase(enum.StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REVERTED = "Reverted"


TERMINAL = frozenset({RolloutPhase.SUCCEEDED, RolloutPhase.REVERTED})
"""Phases after which the controller writes nothing more for this rollout.

`Failed` is terminal only without `auto_revert`: with it, the next step reverts."""


class RolloutStatus(documents.Document):
    """`<prefix>/services/<service>/rollout/status`, written whole by the acting controller."""

    keep_defaults = True

    phase: RolloutPhase
    to_version: Segment
    from_versions: dict[Segment, Segment] = Field(default_factory=dict)
    """Every instance of the service when the rollout started, and the version it ran then."""
    updated: list[Segment] = Field(default_factory=list)
    """Instances the rollout set to `to_version` (in the order it did)."""
    healthy: list[Segment] = Field(default_factory=list)
    skipped: list[Segment] = Field(default_factory=list)
    """Instances someone else changed meanwhile: never written again by this rollout."""
    total: Annotated[int, Field(ge=0), NotBool] = 0
    message: Annotated[str, AfterValidator(documents.clip)] = ""
    """Cut to `documents.MAX_MESSAGE_BYTES` when read (and by `fit` when written): the controller copies an
    agent's message into it, and a status written by an older controller may hold a longer one."""
    started_at: dt.datetime
    updated_at: dt.datetime
    revisions: dict[Segment, Annotated[int, Field(ge=0), NotBool]] = Field(default_factory=dict)
    """Ours: the mod_revision each instance document had when the controller last read or wrote it;
    0 means "written in the same transaction as this status" (its own mod_revision). A document at
    any other revision was changed by someone else."""
    changed_at: dict[Segment, dt.datetime] = Field(default_factory=dict)
    """Ours: when each updated instance was written (its progress deadline runs from there)."""
    reverted: list[Segment] = Field(default_factory=list)
    """Ours: instances set back to their `from_versions` entry by a revert or an undo."""
    restarts_from: dict[Segment, dict[Segment, Annotated[int, Field(ge=0), NotBool]]] = Field(default_factory=dict)
    """Ours: per updated instance not yet seen healthy, per server, its restart count before it ran
    `to_version` (restarts on the old version do not count toward `max_restarts`); dropped once healthy."""
    restart_token: documents.RestartToken | None = None
    """Ours: the restart this status is about (the config's `restart_token` when it started)."""


def fit(status: RolloutStatus, limit: int = untrusted.MAX_VALUE_BYTES) -> bytes | None:
    """The stored bytes of `status`, its message cut to its cap and, if it must, further, so that they
    fit in `limit` (what every reader accepts); None if even an empty message does not fit.

    Only the message is ever cut: `from_versions`, `updated` and `revisions` stay whole, so a revert
    always finds every instance's previous version (a status no reader accepts would be taken for no
    status, and the next start would record the new versions as the "previous" ones)."""
    message = documents.clip(status.message)
    while True:
        data = documents.dumps(status.model_copy(update={"message": message}))
        if len(data) <= limit:
            return data
        if not message:
            return None
        over = len(data) - limit
        message = documents.clip(message, max(0, len(message.encode()) - over - 64))
