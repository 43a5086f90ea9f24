"""Decide what each instance needs next: `plan(desired, states, now) -> list[Action]`.

The middle of the agent's flow: `loop` gathers the desired state (from etcd,
via `desired`) and each instance's `model.InstanceRecord` (from the
`executor`), calls `plan`, and hands the actions to the `executor`. The only
module that decides. Pure: no I/O, no clock (`now` is passed in, wall-clock
seconds), no randomness (back-off jitter is drawn by the supervisor when a
run fails and read here from the state). It is level-based: called again with
the same inputs it returns the same actions, and an instance with a step
under way gets none. Imports only `model`, `schema` and the standard library
(an import-linter contract checks it).

Per instance the rules are, in order:

- removed earlier (its state is kept as a tombstone): `Forget` it, with its
  directory once `removed_grace` is over, at once (keeping the files) when it
  is desired again, so it starts afresh;
- not desired any more: `Remove` (stop it, delete the status key, keep the
  files for `removed_grace`);
- a download or install failed: `Reject` that configuration;
- a configuration that failed (install failed, or it exited or turned
  unhealthy before `min_healthy_seconds`) is rejected and not retried until
  its document changes (the rejections are saved, so an agent restart does
  not retry it either); the instance falls back to the last configuration that
  counted as started (`good`), which is a rollback;
- running something other than the target: `Install` the target while the old
  process keeps running, then `Stop` the old and `Start` the new;
- running the target, started with another restart token: `Stop` it and
  `Start` it again (same version, no install; a process started by an agent
  that did not record tokens counts as started with none, "");
- running the target: `Promote` it once it has been up `min_healthy_seconds`;
  `Stop` it (a failure, so back-off follows) when it is unhealthy;
- nothing running: `Install` if needed, wait out the back-off, `Start`.

A drained server (`drain` given) starts nothing: its running instances are
stopped one at a time, in the order of this function (by service, then
instance ID), each with its own stop signal and `stop_timeout` (cut short
at the drain's deadline), the next one once the last stop is over; past the
deadline every instance still running gets a `Stop` at once, with no grace
(SIGKILL). Removals and rejections go on as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from discoverd.agent import model

__all__ = [
    "Action",
    "Forget",
    "Install",
    "Promote",
    "Reject",
    "Remove",
    "Start",
    "Stop",
    "Wait",
    "effective_target",
    "plan",
    "plan_instance",
]


@dataclass(frozen=True)
class Install:
    """Download and install `target`'s version in its version directory (unless installed)."""

    ref: model.Ref
    target: model.Target


@dataclass(frozen=True)
class Start:
    ref: model.Ref
    target: model.Target


@dataclass(frozen=True)
class Stop:
    """Stop signal, `stop_timeout`, SIGKILL to the process group; `failure` means back-off follows."""

    ref: model.Ref
    reason: str
    failure: bool = False
    grace: float | None = None
    """At most this many seconds between the stop signal and SIGKILL (a drain's deadline); 0: SIGKILL at once."""


@dataclass(frozen=True)
class Promote:
    """The target has stayed up `min_healthy_seconds`: it becomes the rollback point."""

    ref: model.Ref
    target: model.Target


@dataclass(frozen=True)
class Reject:
    """Do not run this configuration again until its documents change."""

    ref: model.Ref
    config_hash: str
    version: str
    reason: str


@dataclass(frozen=True)
class Remove:
    """The instance left the server document: stop it, delete its status key, keep its files for now."""

    ref: model.Ref


@dataclass(frozen=True)
class Forget:
    """Drop a removed instance's saved state; with `delete_files` its directory (logs) too."""

    ref: model.Ref
    delete_files: bool


@dataclass(frozen=True)
class Wait:
    """Nothing to do before `until` (wall-clock seconds): the loop wakes up then."""

    ref: model.Ref
    until: float
    reason: str


Action = Install | Start | Stop | Promote | Reject | Remove | Forget | Wait


def effective_target(want: model.Target | model.Broken, s: model.InstanceRecord) -> model.Target | None:
    """What the instance should run: the wanted target, or the last good one when that is not possible.

    A broken document keeps whatever ran before (the last valid configuration),
    as Kubernetes keeps the old pods when an update does not validate.
    """
    target: model.Target | None
    target = (s.current or s.good) if isinstance(want, model.Broken) else want
    if target is not None and target.config_hash in s.rejected:
        target = s.good if s.good is not None and s.good.config_hash not in s.rejected else None
        if target is not None and isinstance(want, model.Target):  # the rollback point, restarted as asked
            target = dataclasses.replace(target, restart_token=want.restart_token)
    return target


def plan_instance(
    want: model.Target | model.Broken | None,
    s: model.InstanceRecord,
    now: float,
    backoff_base: float = model.BACKOFF_BASE,
    removed_grace: float = model.REMOVED_GRACE,
) -> list[Action]:
    """The next actions for one instance (see the module docstring for the rules)."""
    ref = s.ref
    if s.step is not None:
        return []
    if s.removed_at is not None:
        if want is not None:
            return [Forget(ref, delete_files=False)]
        due = s.removed_at + removed_grace
        return [Forget(ref, delete_files=True)] if now >= due else [Wait(ref, due, "keeping its files")]
    if want is None:
        return [Remove(ref)]
    f = s.install_failure
    if f is not None and f.config_hash not in s.rejected:
        return [Reject(ref, f.config_hash, f.version, f.reason)]
    target = effective_target(want, s)
    p = s.process
    if target is None:
        return [Stop(ref, "its configuration failed")] if p is not None else []
    installed = (target.version, target.install_hash) in s.installed
    if p is not None:
        if p.config_hash != target.config_hash:
            if not installed:
                return [Install(ref, target)]
            return [Stop(ref, f"replacing it with version {target.version}"), Start(ref, target)]
        if (p.restart_token or "") != target.restart_token:
            return [Stop(ref, f"restart requested (restart token {target.restart_token!r})"), Start(ref, target)]
        probation = s.in_probation(p.config_hash)
        if s.unhealthy(target):
            reason = f"health check failed {s.health_failures} times in a row"
            if probation and s.good is not None:
                why = f"version {target.version} turned unhealthy: {reason}"
                return [Reject(ref, target.config_hash, target.version, why)]
            return [Stop(ref, reason, failure=True)]
        if probation:
            due = p.started_at + target.min_healthy_seconds
            return [Promote(ref, target)] if now >= due else [Wait(ref, due, "counting as started")]
        return []
    e = s.last_exit
    early = e is not None and e.in_probation and e.config_hash == target.config_hash
    if e is not None and early and s.good is not None and s.in_probation(target.config_hash):
        return [Reject(ref, target.config_hash, target.version, f"version {target.version} {e.reason}")]
    if not installed:
        return [Install(ref, target)]
    until = s.backoff_until(backoff_base)
    if until is not None and e is not None and e.config_hash == target.config_hash and now < until:
        return [Wait(ref, until, "backing off")]
    return [Start(ref, target)]


def _plan_drained(
    want: model.Target | model.Broken, s: model.InstanceRecord, now: float, drain: model.Drain, turn: bool
) -> list[Action]:
    """A desired instance of a drained server: no start, no install; a stop when it is its turn."""
    ref = s.ref
    f = s.install_failure
    if f is not None and f.config_hash not in s.rejected:
        return [Reject(ref, f.config_hash, f.version, f.reason)]
    if s.process is None:
        return []
    if drain.deadline is None:
        return [Stop(ref, "the server is drained")] if turn else []
    if now >= drain.deadline:
        return [Stop(ref, "the server is drained and its drain deadline has passed", grace=0.0)]
    if not turn:
        return [Wait(ref, drain.deadline, "waiting for its turn to drain")]
    return [Stop(ref, "the server is drained", grace=drain.deadline - now)]


def plan(
    desired: Mapping[model.Ref, model.Target | model.Broken],
    states: Mapping[model.Ref, model.InstanceRecord],
    now: float,
    backoff_base: float = model.BACKOFF_BASE,
    removed_grace: float = model.REMOVED_GRACE,
    drain: model.Drain | None = None,
) -> list[Action]:
    """Actions for every instance desired or known, in a stable order; `drain`: the server is drained."""
    actions: list[Action] = []
    # A drained server stops one instance at a time: none while any stop is under way.
    turn = not any(s.step is model.Step.STOPPING for s in states.values())
    for ref in sorted(set(desired) | set(states)):
        s = states.get(ref)
        if s is None:
            s = model.InstanceRecord(ref=ref)
        want = desired.get(ref)
        if drain is not None and want is not None and s.removed_at is None and s.step is None:
            todo = _plan_drained(want, s, now, drain, turn)
            turn = turn and not any(isinstance(a, Stop) for a in todo)
            actions += todo
            continue
        actions += plan_instance(want, s, now, backoff_base, removed_grace)
    return actions
