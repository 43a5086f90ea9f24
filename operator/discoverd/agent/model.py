"""What the agent knows about one instance: `InstanceRecord`, saved whole and restored whole.

The agent's one type module. `desired` builds `Target`s (or `Broken`), the
supervisor keeps one frozen `InstanceRecord` per instance and replaces it when
something happens (the event methods below: `started`, `exited`, `stopped`,
`promoted`, `install_failed`, `health_checked`, ...), `plan` reads the states
and decides, `status` summarises them, `layout` saves them to disk. The rules
that several of those need ("still in probation", "unhealthy", "when the
back-off is over") are defined here, once.

Pure: no I/O, no clock (`now` is passed in), no randomness (jitter is drawn by
the supervisor and passed in). Imports only `schema` and the standard library
(plus pydantic, which the schema is made of).

On disk a state is `Saved` (`{"format": 2, "state": {...}}`); `from_v1` reads
the records of agents before format 2 (`{"service", "instance", "process",
"current", "good", "restarts"}`), so an agent upgrade adopts what runs.
`Process.restart_token` was added within format 2 on purpose: agents before
it read such a record and ignore the field (a downgrade still adopts what
runs), and a record without it reads as `None`, "started by an agent that did
not know restart tokens", which `plan` counts as started without one (""), so
an agent upgrade restarts nothing unless a restart was asked for meanwhile.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from discoverd.schema import documents

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "BACKOFF_RESET_AFTER",
    "FORMAT",
    "MAX_JITTER",
    "REMOVED_GRACE",
    "Broken",
    "Drain",
    "Exit",
    "Failure",
    "InstanceRecord",
    "Process",
    "Ref",
    "Saved",
    "Step",
    "Target",
    "backoff_delay",
    "failures_after_exit",
    "from_v1",
]

BACKOFF_BASE = 1.0
"""Seconds before the first restart; doubles with every failure in a row."""
BACKOFF_CAP = 300.0
"""Restart delays never exceed five minutes."""
BACKOFF_RESET_AFTER = 600.0
"""A run that lasted ten minutes resets the back-off."""
MAX_JITTER = 0.25
"""Delays are shortened by up to 25 % at random, so instances that fail together drift apart."""
REMOVED_GRACE = 3600.0
"""Seconds a removed instance's directory (its logs) is kept before it is deleted."""
FORMAT: Literal[2] = 2
"""Format of the saved state (1: the hand-written records of earlier agents, read by `from_v1`)."""


@dataclass(frozen=True, order=True)
class Ref:
    """One instance: its service and its ID."""

    service: str
    instance: str

    def __str__(self) -> str:
        return f"{self.service}/{self.instance}"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


# Saved as stored in etcd (only the fields that were set), so a restored target hashes as before.
_VersionDoc = Annotated[documents.Version, PlainSerializer(documents.dump, return_type=dict[str, Any])]
_ScriptDoc = Annotated[documents.Script, PlainSerializer(documents.dump, return_type=dict[str, Any])]


@dataclass(frozen=True)
class Target:
    """A valid, fully resolved configuration of one instance: what it should run."""

    ref: Ref
    version: str
    document: _VersionDoc
    run: _ScriptDoc
    """The run script after the instance's override ("overwrite or improve")."""
    restart_token: str = ""
    """The instance document's `restart_token` ("" when absent). Not part of `config_hash`: a new token
    restarts the process, it is no new configuration (no install, no probation, never rejected)."""

    @functools.cached_property
    def install_hash(self) -> str:
        """Identifies the version document: an install marker with another hash is stale."""
        return _digest(self.version.encode(), documents.dumps(self.document))

    @functools.cached_property
    def config_hash(self) -> str:
        """Identifies everything the run depends on: a change means a restart (an upgrade)."""
        run = json.dumps(documents.dump(self.run), sort_keys=True).encode()
        return _digest(self.version.encode(), documents.dumps(self.document), run)

    @property
    def min_healthy_seconds(self) -> float:
        return self.document.min_healthy_seconds

    @property
    def health_threshold(self) -> int:
        check = self.document.health_check
        return 0 if check is None or check.empty else check.failure_threshold


@dataclass(frozen=True)
class Broken:
    """A desired instance whose documents are invalid: the message names the key and field."""

    ref: Ref
    message: str


@dataclass(frozen=True)
class Process:
    """A live run process: pid, its start time (clock ticks since boot), and what it runs."""

    pid: int
    start_time: int
    config_hash: str
    version: str
    started_at: float
    """Wall-clock seconds when it was started (saved, so it survives agent restarts)."""
    run_id: str = ""
    """`DISCOVERD_RUN_ID` in its environment (and its descendants'): finds what it leaves behind."""
    restart_token: str | None = None
    """The target's restart token when it was started; None: by an agent that did not record it (counts as "")."""


@dataclass(frozen=True)
class Drain:
    """The server document says `drained`: stop every instance, one at a time, start none."""

    deadline: float | None = None
    """Wall-clock seconds after which the instances still running are killed at once (no grace)."""


@dataclass(frozen=True)
class Exit:
    """How the last run ended."""

    config_hash: str
    version: str
    code: int | None
    """Exit code; negative for a signal; None when unknown (it ended while the agent was away)."""
    at: float
    in_probation: bool
    """It ended before it counted as started (before `min_healthy_seconds`)."""
    reason: str


@dataclass(frozen=True)
class Failure:
    """A step of a configuration that failed (download or install): `plan` rejects the configuration."""

    config_hash: str
    version: str
    reason: str
    at: float


class Step(enum.StrEnum):
    """The step under way for an instance; its values are the status phases shown meanwhile."""

    DOWNLOADING = documents.Phase.DOWNLOADING.value
    INSTALLING = documents.Phase.INSTALLING.value
    STARTING = documents.Phase.STARTING.value
    STOPPING = documents.Phase.STOPPING.value


def backoff_delay(failures: int, jitter: float, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait after `failures` failed runs in a row: base doubling to the cap, less jitter."""
    if failures <= 0:
        return 0.0
    delay = min(BACKOFF_CAP, base * 2.0 ** min(failures - 1, 32))
    return delay * (1.0 - min(max(jitter, 0.0), MAX_JITTER))


def failures_after_exit(failures: int, uptime: float) -> int:
    """Failures in a row after a run that lasted `uptime` seconds ended."""
    return 1 if uptime >= BACKOFF_RESET_AFTER else failures + 1


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited while the agent was not watching"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class InstanceRecord(BaseModel):
    """Everything the agent knows about one instance. Frozen: every event makes a new one."""

    model_config = ConfigDict(frozen=True)

    ref: Ref
    step: Step | None = None
    """The step under way (None: idle). Not carried over an agent restart: its task died with the agent."""
    process: Process | None = None
    """The live run process (pid 0 with a run ID: recorded just before the spawn)."""
    current: Target | None = None
    """The configuration of the live process, or of the last one started."""
    good: Target | None = None
    """The last configuration that counted as started: where a rollback goes back to."""
    previous_version: str | None = None
    """The version that ran before the current one (after an upgrade or a rollback)."""
    rejected: dict[str, str] = Field(default_factory=dict)
    """config hash -> why it failed; not run again until its documents change (survives restarts)."""
    install_failure: Failure | None = None
    """A download or install that failed and is not yet rejected by `plan`."""
    last_exit: Exit | None = None
    failures: int = 0
    """Failed runs in a row (the back-off exponent)."""
    jitter: float = 0.0
    """Drawn in [0, MAX_JITTER) by the supervisor at each failure."""
    restarts: int = 0
    health_failures: int = 0
    """Failed health checks in a row of the live process."""
    message: str = ""
    """The last thing that happened, for the status (a failed step, an exit)."""
    updated_at: float = 0.0
    """Wall-clock seconds of the last event."""
    removed_at: float | None = None
    """When it left the server document: it is stopped, its files are kept `REMOVED_GRACE` seconds."""
    installed: frozenset[tuple[str, str]] = Field(default=frozenset(), exclude=True)
    """(version, install hash) of the service's install markers, read from disk each pass; not saved."""

    # the rules, defined once

    def in_probation(self, config_hash: str) -> bool:
        """Whether a run of `config_hash` has yet to count as started (it is not the rollback point)."""
        return self.good is None or self.good.config_hash != config_hash

    def unhealthy(self, target: Target) -> bool:
        """Whether the live process failed its health check `failure_threshold` times in a row."""
        return 0 < target.health_threshold <= self.health_failures

    def backoff_until(self, backoff_base: float = BACKOFF_BASE) -> float | None:
        """When the restart after the last failed run is due (None: no back-off)."""
        if not self.failures or self.last_exit is None:
            return None
        return self.last_exit.at + backoff_delay(self.failures, self.jitter, backoff_base)

    # events: what happened, as a new state (the supervisor applies them, `plan` reacts)

    def _with(self, now: float, **changes: Any) -> InstanceRecord:
        return self.model_copy(update={**changes, "updated_at": now})

    def begun(self, step: Step | None, now: float) -> InstanceRecord:
        return self if step == self.step else self._with(now, step=step)

    def spawning(self, target: Target, pending: Process, now: float) -> InstanceRecord:
        """A start of `target` is about to happen: the run ID is recorded before the process exists."""
        restarted = self.last_exit is not None and self.last_exit.config_hash == target.config_hash
        return self._with(
            now,
            current=target,
            process=pending,
            health_failures=0,
            restarts=self.restarts + (1 if restarted else 0),
        )

    def started(self, process: Process, now: float) -> InstanceRecord:
        return self._with(now, process=process, message=f"started version {process.version}")

    def exited(self, code: int | None, now: float, jitter: float, reason: str | None = None) -> InstanceRecord:
        """The run process ended by itself (or could not start): back-off follows."""
        p = self.process
        assert p is not None
        probation = self.in_probation(p.config_hash)
        why = reason or _describe_exit(code)
        if probation and self.current is not None:
            why += f" before it stayed up {self.current.min_healthy_seconds:g} s"
        return self._with(
            now,
            process=None,
            failures=failures_after_exit(self.failures, now - p.started_at),
            jitter=jitter,
            last_exit=Exit(p.config_hash, p.version, code, now, probation, why),
            message=f"version {p.version} {why}",
        )

    def stopped(self, reason: str, now: float) -> InstanceRecord:
        """The run process was stopped on purpose (an upgrade, a removal): no back-off."""
        version = self.process.version if self.process else ""
        return self._with(now, process=None, last_exit=None, failures=0, message=f"stopped version {version}: {reason}")

    def promoted(self, target: Target, now: float) -> InstanceRecord:
        previous = self.good
        changed = previous is not None and previous.version != target.version
        rejected = {h: r for h, r in self.rejected.items() if h != target.config_hash}
        return self._with(
            now,
            good=target,
            previous_version=previous.version if changed and previous is not None else self.previous_version,
            rejected=rejected,
            message=f"version {target.version} is running",
        )

    def install_failed(self, target: Target, reason: str, now: float) -> InstanceRecord:
        return self._with(now, install_failure=Failure(target.config_hash, target.version, reason, now), message=reason)

    def progressed(self, message: str, now: float) -> InstanceRecord:
        """How far a step under way has come (`Downloading 42% ...`), for the status."""
        return self._with(now, message=message)

    def installed_version(self, target: Target, now: float) -> InstanceRecord:
        return self._with(now, message=f"installed version {target.version}")

    def rejecting(self, config_hash: str, reason: str, now: float) -> InstanceRecord:
        failure = self.install_failure
        if failure is not None and failure.config_hash == config_hash:
            failure = None
        return self._with(now, rejected={**self.rejected, config_hash: reason}, install_failure=failure, message=reason)

    def health_checked(self, ok: bool, reason: str, now: float) -> InstanceRecord:
        if ok:
            return self if self.health_failures == 0 else self._with(now, health_failures=0)
        failures = self.health_failures + 1
        return self._with(now, health_failures=failures, message=f"{reason} ({failures} in a row)")

    def removed(self, now: float) -> InstanceRecord:
        return self._with(now, process=None, step=None, removed_at=now, message="removed from the server")

    def restored(self) -> InstanceRecord:
        """As read back after an agent restart: no step is under way any more."""
        return self.model_copy(update={"step": None})


class Saved(BaseModel):
    """The record file: the whole state, with the format it is written in."""

    format: Literal[2] = FORMAT
    state: InstanceRecord


def _v1_target(ref: Ref, data: Any) -> Target | None:
    if not isinstance(data, dict):
        return None
    version = documents.Version.model_validate(data["document"])
    return Target(ref, str(data["version"]), version, documents.Script.model_validate(data["run"]))


def from_v1(ref: Ref, data: dict[str, Any]) -> InstanceRecord:
    """The state an agent before format 2 recorded (pid, start time, targets, restarts); ValueError/KeyError if bad."""
    p = data.get("process")
    process = (
        Process(
            int(p["pid"]),
            int(p["start_time"]),
            str(p["config_hash"]),
            str(p["version"]),
            float(p["started_at"]),
            str(p.get("run_id", "")),
        )
        if p
        else None
    )
    return InstanceRecord(
        ref=ref,
        process=process,
        current=_v1_target(ref, data.get("current")),
        good=_v1_target(ref, data.get("good")),
        restarts=int(data.get("restarts", 0)),
    )
