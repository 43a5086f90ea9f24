"""Decide what each instance needs next: `plan(desired, observed, now) -> list[Action]`.

The middle of the agent's flow: `loop` gathers the desired state (from etcd,
via `desired`) and the observed state (from each `supervisor`), calls
`plan`, and hands the actions to `executor`. This module is pure: no I/O, no
clock (`now` is passed in, wall-clock seconds), no randomness (back-off
jitter is drawn by the supervisor when a run fails and observed here). It is
level-based: called again with the same inputs it returns the same actions,
and an instance that is busy (a step under way) gets none.

Per instance the rules are, in order:

- not desired any more: `Remove` (stop, forget, delete the status key);
- a configuration that failed (install failed, or it exited or turned
  unhealthy before `min_healthy_seconds`) is rejected and not retried until
  its document changes; the instance falls back to the last configuration that
  counted as started (`good`), which is a rollback;
- running something other than the target: `Install` the target while the old
  process keeps running, then `Stop` the old and `Start` the new;
- running the target: `Promote` it once it has been up `min_healthy_seconds`;
  `Stop` it (a failure, so back-off follows) when its health check failed
  `failure_threshold` times in a row;
- nothing running: `Install` if needed, wait out the back-off, `Start`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from discoverd.schema import documents

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "BACKOFF_RESET_AFTER",
    "MAX_JITTER",
    "Action",
    "Broken",
    "Exit",
    "Install",
    "Observed",
    "Process",
    "Promote",
    "Ref",
    "Reject",
    "Remove",
    "Start",
    "Stop",
    "Target",
    "Wait",
    "backoff_delay",
    "effective_target",
    "failures_after_exit",
    "plan",
    "plan_instance",
]

BACKOFF_BASE = 1.0
"""Seconds before the first restart; doubles with every failure in a row."""
BACKOFF_CAP = 300.0
"""Restart delays never exceed five minutes."""
BACKOFF_RESET_AFTER = 600.0
"""A run that lasted ten minutes resets the back-off."""
MAX_JITTER = 0.25
"""Delays are shortened by up to 25 % at random, so instances that fail together drift apart."""


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


@dataclass(frozen=True)
class Target:
    """A valid, fully resolved configuration of one instance: what it should run."""

    ref: Ref
    version: str
    document: documents.Version
    run: documents.Script
    """The run script after the instance's override ("overwrite or improve")."""

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
    """Wall-clock seconds when it was started (kept in the record, so it survives agent restarts)."""
    run_id: str = ""
    """`DISCOVERD_RUN_ID` in its environment (and its descendants'): finds what it leaves behind."""


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
class Observed:
    """What the supervisor of one instance knows right now."""

    ref: Ref
    busy: str | None = None
    """The step under way ('Downloading', 'Installing', 'Starting', 'Stopping'), or None."""
    process: Process | None = None
    current: Target | None = None
    """The configuration of the live process, or of the last one started."""
    good: Target | None = None
    """The last configuration that counted as started: where a rollback goes back to."""
    installed: frozenset[tuple[str, str]] = frozenset()
    """(version, install hash) of every install marker of this service."""
    rejected: Mapping[str, str] = field(default_factory=dict)
    """config hash -> why it failed; not retried until the documents change."""
    last_exit: Exit | None = None
    failures: int = 0
    """Failed runs in a row (the back-off exponent)."""
    jitter: float = 0.0
    """Drawn in [0, MAX_JITTER) by the supervisor at each failure."""
    restarts: int = 0
    health_failures: int = 0
    previous_version: str | None = None
    """The version that ran before the current one (after an upgrade or a rollback)."""
    message: str = ""
    """The last thing that happened, for the status (a failed step, an exit)."""


@dataclass(frozen=True)
class Install:
    """Download and install `target`'s version in its version directory (unless installed)."""

    ref: Ref
    target: Target


@dataclass(frozen=True)
class Start:
    ref: Ref
    target: Target


@dataclass(frozen=True)
class Stop:
    """Stop signal, `stop_timeout`, SIGKILL to the process group; `failure` means back-off follows."""

    ref: Ref
    reason: str
    failure: bool = False


@dataclass(frozen=True)
class Promote:
    """The target has stayed up `min_healthy_seconds`: it becomes the rollback point."""

    ref: Ref
    target: Target


@dataclass(frozen=True)
class Reject:
    """Do not run this configuration again until its documents change."""

    ref: Ref
    config_hash: str
    version: str
    reason: str


@dataclass(frozen=True)
class Remove:
    """The instance left the server document: stop it, forget it, delete its status key."""

    ref: Ref


@dataclass(frozen=True)
class Wait:
    """Nothing to do before `until` (wall-clock seconds): the loop wakes up then."""

    ref: Ref
    until: float
    reason: str


Action = Install | Start | Stop | Promote | Reject | Remove | Wait


def backoff_delay(failures: int, jitter: float, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait after `failures` failed runs in a row: base doubling to the cap, less jitter."""
    if failures <= 0:
        return 0.0
    delay = min(BACKOFF_CAP, base * 2.0 ** min(failures - 1, 32))
    return delay * (1.0 - min(max(jitter, 0.0), MAX_JITTER))


def failures_after_exit(failures: int, uptime: float) -> int:
    """Failures in a row after a run that lasted `uptime` seconds ended."""
    return 1 if uptime >= BACKOFF_RESET_AFTER else failures + 1


def effective_target(want: Target | Broken, o: Observed) -> Target | None:
    """What the instance should run: the wanted target, or the last good one when that is not possible.

    A broken document keeps whatever ran before (the last valid configuration),
    as Kubernetes keeps the old pods when an update does not validate.
    """
    target: Target | None
    target = (o.current or o.good) if isinstance(want, Broken) else want
    if target is not None and target.config_hash in o.rejected:
        target = o.good if o.good is not None and o.good.config_hash not in o.rejected else None
    return target


def plan_instance(
    want: Target | Broken | None, o: Observed, now: float, backoff_base: float = BACKOFF_BASE
) -> list[Action]:
    """The next actions for one instance (see the module docstring for the rules)."""
    ref = o.ref
    if o.busy is not None:
        return []
    if want is None:
        return [Remove(ref)]
    target = effective_target(want, o)
    p = o.process
    if target is None:
        return [Stop(ref, "its configuration failed")] if p is not None else []
    installed = (target.version, target.install_hash) in o.installed
    if p is not None:
        if p.config_hash != target.config_hash:
            if not installed:
                return [Install(ref, target)]
            return [Stop(ref, f"replacing it with version {target.version}"), Start(ref, target)]
        probation = o.good is None or o.good.config_hash != p.config_hash
        threshold = target.health_threshold
        if threshold and o.health_failures >= threshold:
            reason = f"health check failed {o.health_failures} times in a row"
            if probation and o.good is not None:
                return [
                    Reject(
                        ref, target.config_hash, target.version, f"version {target.version} turned unhealthy: {reason}"
                    )
                ]
            return [Stop(ref, reason, failure=True)]
        if probation:
            due = p.started_at + target.min_healthy_seconds
            return [Promote(ref, target)] if now >= due else [Wait(ref, due, "counting as started")]
        return []
    e = o.last_exit
    if (
        e is not None
        and e.in_probation
        and e.config_hash == target.config_hash
        and o.good is not None
        and o.good.config_hash != target.config_hash
    ):
        return [Reject(ref, target.config_hash, target.version, f"version {target.version} {e.reason}")]
    if not installed:
        return [Install(ref, target)]
    if o.failures and e is not None and e.config_hash == target.config_hash:
        due = e.at + backoff_delay(o.failures, o.jitter, backoff_base)
        if now < due:
            return [Wait(ref, due, "backing off")]
    return [Start(ref, target)]


def plan(
    desired: Mapping[Ref, Target | Broken],
    observed: Mapping[Ref, Observed],
    now: float,
    backoff_base: float = BACKOFF_BASE,
) -> list[Action]:
    """Actions for every instance desired or observed, in a stable order."""
    actions: list[Action] = []
    for ref in sorted(set(desired) | set(observed)):
        o = observed.get(ref, Observed(ref))
        actions += plan_instance(desired.get(ref), o, now, backoff_base)
    return actions
