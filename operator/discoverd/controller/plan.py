"""The rollout decision: (config, status, instances, agent reports, now) -> instance writes and the new status.

Pure: no I/O, no clock (`now` is passed in), so every rule below is tested as
a table (tests/unit/controller/test_plan.py). `loop` gathers the inputs from
etcd, writes the result in one transaction, and calls `plan` again whenever
something changes or `wake_at` comes. The steps, in the order they are tried:

    no status, or one for another to_version   start: record from_versions and revisions, go on
    Succeeded / Reverted                        done (an undo of a Succeeded rollout still reverts)
    undo requested                              revert every updated instance now -> Reverted
    Failed                                      auto_revert: revert now -> Reverted; else stay Failed
    an updated instance failed, crash-looped    -> Failed (reverted on the next step when auto_revert)
      or missed its progress deadline
    every instance updated and healthy          -> Succeeded
    paused                                      -> Paused, no writes
    canary not yet all updated                  update the next canary instances (within the budget)
    canary not yet healthy                      wait
    canary healthy and pause_after_canary       -> Paused ("resume" clears pause_after_canary)
    otherwise                                   update the next batch within the budget

Budget: at most max_unavailable instances of the service may be upgrading or
not healthy at once. Already unavailable ones count (agent offline: no
`status/agent`; instance not `Running`). An instance whose agent is offline is
not updated while it is (nobody would install it, and its deadline would
run); an online instance that is already unavailable costs nothing more to
update; an instance no server lists is updated without cost and needs no
health. Every write is guarded by the document's mod_revision: a document
at any revision but the one the rollout last read or wrote was changed by
someone else, is never written again, and is listed in `skipped`.

Crash loop: an updated instance that restarts on to_version before it was
ever healthy (Running on to_version for min_healthy_seconds) counts as failed
once its restarts there reach max_restarts, a `BackOff` counting as the
restart it waits for. The agent's own probation (the version's, often shorter)
does not catch a version that crashes after it; without this the rollout would
fail only at its progress deadline. Restarts on the old version do not count:
the status keeps each instance's restart count from before it ran to_version
(`restarts_from`, followed while the old version still runs), and forgets it
once the instance is healthy (later crashes fall to the progress deadline, as
before).

A restart (the config's `restart_token`, written by `discoverd restart`) is a
rollout that writes that token into each instance document and keeps its
version: the same steps, canary, budget and pause; an instance is healthy
when its servers report it `Running` with the new token for
`min_healthy_seconds`. Nothing can be reverted (the old token would only
restart it again): a failed restart stays `Failed`, and an undo ends it where
it is (`Reverted`, no writes).

Drained servers: an instance a drained server lists is held, not updated,
until the server is undrained (its instance is down, so it still counts
against the budget); an updated instance whose server is drained meanwhile
has no progress deadline while it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from discoverd.schema import documents
from discoverd.schema.documents import Phase
from discoverd.schema.rollouts import RolloutConfig, RolloutPhase, RolloutStatus, max_unavailable_count

__all__ = ["Decision", "Member", "Report", "Write", "plan", "settled"]


@dataclass(frozen=True)
class Report:
    """What one server says about one instance it lists."""

    server: str
    online: bool
    """The server's agent has a `status/agent` key (its lease is alive)."""
    status: documents.InstanceStatus | None = None
    revision: int = 0
    """mod_revision of the status key (0: none)."""
    drained: bool = False
    """The server document says `drained` (`discoverd drain`)."""


@dataclass(frozen=True)
class Member:
    """One instance of the service: its document (None: deleted or invalid) and the servers listing it."""

    id: str
    doc: documents.Instance | None
    revision: int
    reports: tuple[Report, ...] = ()


@dataclass(frozen=True)
class Write:
    """Set one instance document to `doc` if it is still at mod_revision `expect`."""

    id: str
    doc: documents.Instance
    expect: int


@dataclass(frozen=True)
class Decision:
    writes: tuple[Write, ...] = ()
    status: RolloutStatus | None = None
    """The status to write with the writes (None: it has not changed)."""
    wake_at: dt.datetime | None = None
    """When time alone changes the answer (a health period or a deadline ends)."""


@dataclass
class _Pass:
    """The facts one call of `plan` works from."""

    config: RolloutConfig
    status: RolloutStatus
    members: Mapping[str, Member]
    now: dt.datetime
    expected: dict[str, int] = field(default_factory=dict)
    wake: list[dt.datetime] = field(default_factory=list)

    def running_everywhere(self, m: Member) -> bool:
        return all(r.online and r.status is not None and r.status.phase is Phase.RUNNING for r in m.reports)

    def healthy(self, m: Member) -> bool:
        if not m.reports:
            return False
        for r in m.reports:
            s = r.status
            if not r.online or s is None or s.phase is not Phase.RUNNING or not self.arrived(s):
                return False
            ready_at = s.since + dt.timedelta(seconds=self.config.min_healthy_seconds)
            if ready_at > self.now:
                self.wake.append(ready_at)
                return False
        return True

    def arrived(self, s: documents.InstanceStatus) -> bool:
        """The report shows what the rollout set: `to_version`, or for a restart its new token."""
        if self.config.restart_token is not None:
            return s.restart_token == self.config.restart_token
        return s.version == self.config.to_version

    def failure(self, m: Member) -> str | None:
        """Why an updated instance counts as failed on to_version, if it does."""
        written = self.expected.get(m.id, 0)
        for r in m.reports:
            s = r.status
            if s is None or r.revision <= written:
                continue  # a report from before our write says nothing about the new version
            rolled_back = s.phase is Phase.ROLLED_BACK and s.previous_version == self.config.to_version
            if rolled_back or s.phase is Phase.FAILED:
                return f"instance {m.id} on server {r.server} is {s.phase.value}: {s.message}".rstrip(": ")
        crash_loop = self.crash_loop(m)
        if crash_loop is not None:
            return crash_loop
        changed = self.status.changed_at.get(m.id)
        if any(r.drained for r in m.reports):
            return None  # held: no deadline while its server is drained
        if changed is not None and m.reports and not self.healthy(m):
            deadline = changed + dt.timedelta(seconds=self.config.progress_deadline_seconds)
            if self.now >= deadline:
                return (
                    f"instance {m.id} was not healthy on {self.config.to_version} within "
                    f"{self.config.progress_deadline_seconds:g} s"
                )
            self.wake.append(deadline)
        return None

    def crash_loop(self, m: Member) -> str | None:
        """Why an updated instance, never yet healthy, counts as crash-looping on to_version, if it does.

        Its restarts on to_version are its restart count now less the count it had before it ran
        to_version (`restarts_from`), plus one while it waits in `BackOff` for its next restart.
        """
        before = self.status.restarts_from.get(m.id)
        if before is None:
            return None  # seen healthy once already (or updated by a controller before max_restarts)
        written = self.expected.get(m.id, 0)
        for r in m.reports:
            s = r.status
            if s is None or r.revision <= written or s.version != self.config.to_version or r.server not in before:
                continue
            count = max(0, s.restarts - before[r.server]) + (1 if s.phase is Phase.BACK_OFF else 0)
            if count >= self.config.max_restarts:
                return (
                    f"instance {m.id} on server {r.server} restarted {count} time(s) on {self.config.to_version} "
                    f"before it was healthy (max_restarts {self.config.max_restarts}): {s.message}"
                ).rstrip(": ")
        return None

    def restarts_from(self, live: Iterable[str], healthy: Iterable[str]) -> dict[str, dict[str, int]]:
        """`restarts_from` for the next status: dropped once healthy, followed while the old version runs."""
        done = set(healthy)
        result: dict[str, dict[str, int]] = {}
        for i in live:
            before = self.status.restarts_from.get(i)
            if before is None or i in done:
                continue
            before = dict(before)
            for r in self.members[i].reports:
                s = r.status
                if s is not None and (s.version != self.config.to_version or r.server not in before):
                    before[r.server] = s.restarts  # still the old version (restarting meanwhile), or a new server
            result[i] = before
        return result


def _baseline(m: Member) -> dict[str, int]:
    """Each server's restart count of `m` as the rollout updates it (no status yet: none so far)."""
    return {r.server: r.status.restarts if r.status is not None else 0 for r in m.reports}


def _start(config: RolloutConfig, members: Mapping[str, Member], now: dt.datetime) -> RolloutStatus:
    valid = {i: m for i, m in sorted(members.items()) if m.doc is not None}
    return RolloutStatus(
        phase=RolloutPhase.PROGRESSING,
        to_version=config.to_version,
        from_versions={i: m.doc.service_version for i, m in valid.items() if m.doc is not None},
        skipped=sorted(i for i, m in members.items() if m.doc is None),
        total=len(valid),
        message="started",
        started_at=now,
        updated_at=now,
        revisions={i: m.revision for i, m in valid.items()},
        restart_token=config.restart_token,
    )


def _with_version(doc: documents.Instance, version: str) -> documents.Instance:
    return doc.model_copy(update={"service_version": version})


def _updated(config: RolloutConfig, doc: documents.Instance) -> documents.Instance:
    """The document the rollout writes: the new version, or for a restart the new token and the same version."""
    if config.restart_token is not None:
        return doc.model_copy(update={"restart_token": config.restart_token})
    return _with_version(doc, config.to_version)


def _end_restart(p: _Pass, status: RolloutStatus, skipped: list[str]) -> Decision:
    """An undo of a restart: nothing to set back, it ends where it is."""
    if status.phase is RolloutPhase.REVERTED:
        return Decision()
    message = (
        f"undone by request: {len(status.updated)} instance(s) had been restarted; "
        "a restart cannot be taken back, the others are left as they are"
    )
    new = status.model_copy(
        update={"phase": RolloutPhase.REVERTED, "skipped": skipped, "message": message, "updated_at": p.now}
    )
    return Decision((), new)


def _revert(p: _Pass, status: RolloutStatus, reason: str, skipped: list[str]) -> Decision:
    writes: list[Write] = []
    revisions = dict(status.revisions)
    reverted = list(status.reverted)
    for i in status.updated:
        if i in skipped or i in reverted:
            continue
        m = p.members[i]
        assert m.doc is not None  # not skipped: its document is the one we wrote
        writes.append(Write(i, _with_version(m.doc, status.from_versions[i]), m.revision))
        revisions[i] = 0
        reverted.append(i)
    message = f"{reason}; set {len(writes)} instance(s) back to their previous version"
    new = status.model_copy(
        update={
            "phase": RolloutPhase.REVERTED,
            "skipped": skipped,
            "reverted": reverted,
            "revisions": revisions,
            "healthy": [],
            "message": message,
            "updated_at": p.now,
        }
    )
    return Decision(tuple(writes), new)


def _same(a: RolloutStatus, b: RolloutStatus) -> bool:
    return a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})


def _unavailable(p: _Pass, ids: Iterable[str], updated: set[str], healthy: set[str]) -> int:
    count = 0
    for i in ids:
        m = p.members[i]
        if not m.reports:
            continue
        if not p.running_everywhere(m) or (i in updated and i not in healthy):
            count += 1
    return count


def settled(config: RolloutConfig, status: RolloutStatus | None) -> bool:
    """True when `plan` decides nothing whatever the instances and reports say (the early returns below).

    A rollout that ended (`Succeeded` with no undo asked, `Reverted`, `Failed` with nothing to
    revert) needs none of its service's instances: the controller reads and watches those only for
    rollouts that are not settled (controller/scope.py). A new config (another `to_version` or
    restart token), an undo or a revert to do unsettles it.
    """
    if status is None or status.to_version != config.to_version or status.restart_token != config.restart_token:
        return False
    if status.phase is RolloutPhase.REVERTED:
        return True
    if status.phase is RolloutPhase.SUCCEEDED:
        return not config.undo
    if status.phase is RolloutPhase.FAILED:
        return not config.undo and (not config.auto_revert or config.restart_token is not None)
    return False


def plan(
    config: RolloutConfig,
    status: RolloutStatus | None,
    status_revision: int,
    members: Mapping[str, Member],
    now: dt.datetime,
) -> Decision:
    """The next step of the rollout `config` asks for; see the module docstring for the rules."""
    started = status is None or status.to_version != config.to_version or status.restart_token != config.restart_token
    if status is None or started:
        status = _start(config, members, now)
    p = _Pass(config, status, members, now)
    p.expected = {i: (r or status_revision) for i, r in status.revisions.items()}
    # Resolve "written with this status" (0) now: the status we write next has another revision.
    base = status.model_copy(update={"revisions": dict(p.expected)}) if not started else status

    skipped = list(base.skipped)
    for i in base.from_versions:
        m = members.get(i)
        if i not in skipped and (m is None or m.doc is None or m.revision != p.expected.get(i)):
            skipped.append(i)
    skip = set(skipped)
    updated = [i for i in base.updated if i not in skip]

    def finish(new: RolloutStatus, writes: tuple[Write, ...] = ()) -> Decision:
        changed = started or writes or not _same(new, status)
        return Decision(writes, new if changed else None, min(p.wake, default=None))

    phase = base.phase
    if phase is RolloutPhase.REVERTED or (phase is RolloutPhase.SUCCEEDED and not config.undo):
        return Decision()
    restart = config.restart_token is not None
    if config.undo:
        if restart:
            return _end_restart(p, base, skipped)
        return _revert(p, base, "undone by request", skipped)
    if phase is RolloutPhase.FAILED:
        if config.auto_revert and not restart:
            return _revert(p, base, base.message, skipped)
        return Decision()

    live = [i for i in updated if i not in base.reverted]
    for i in live:
        reason = p.failure(members[i])
        if reason is not None:
            failed = base.model_copy(
                update={"phase": RolloutPhase.FAILED, "skipped": skipped, "message": reason, "updated_at": now}
            )
            return Decision((), failed)

    healthy = [i for i in live if p.healthy(members[i])]
    todo = [i for i in base.from_versions if i not in skip and i not in updated]
    done = {*healthy, *(i for i in live if not members[i].reports)}
    progress = f"{len(updated)} of {base.total} updated, {len(healthy)} healthy"
    if skipped:
        progress += f", {len(skipped)} skipped"
    current = base.model_copy(
        update={
            "skipped": skipped,
            "healthy": healthy,
            "restarts_from": p.restarts_from(live, healthy),
            "updated_at": now,
        }
    )

    if not todo and all(i in done for i in live):
        return finish(current.model_copy(update={"phase": RolloutPhase.SUCCEEDED, "message": progress}))
    if config.paused:
        return finish(current.model_copy(update={"phase": RolloutPhase.PAUSED, "message": f"paused; {progress}"}))

    canary = min(config.canary, len(base.from_versions) - len(skip & set(base.from_versions)))
    limit = len(todo)
    if len(updated) < canary:
        limit = canary - len(updated)
    elif canary and not all(i in done for i in updated[:canary]):
        limit = 0
    elif canary and config.pause_after_canary:
        message = f"paused after the canary ({progress}); `discoverd rollout resume {config.name}` goes on"
        return finish(current.model_copy(update={"phase": RolloutPhase.PAUSED, "message": message}))

    # Budget: instances of the service (all of them, in the rollout or not) upgrading or not healthy.
    allowed = max_unavailable_count(config.max_unavailable, base.total)
    budget = allowed - _unavailable(p, members, set(live), set(healthy))
    chosen: list[str] = []
    waiting_offline = held_drained = 0
    for i in todo:
        if len(chosen) >= limit:
            break
        m = members[i]
        if any(r.drained for r in m.reports):
            held_drained += 1
            continue
        if any(not r.online for r in m.reports):
            waiting_offline += 1
            continue
        if m.reports and p.running_everywhere(m):
            if budget <= 0:
                continue
            budget -= 1
        chosen.append(i)

    writes: list[Write] = []
    revisions = dict(current.revisions)
    changed_at = dict(current.changed_at)
    restarts_from = dict(current.restarts_from)
    for i in chosen:
        m = members[i]
        assert m.doc is not None
        writes.append(Write(i, _updated(config, m.doc), m.revision))
        revisions[i] = 0
        changed_at[i] = now
        restarts_from[i] = _baseline(m)
    new_updated = [*updated, *chosen]
    message = f"{len(new_updated)} of {base.total} updated, {len(healthy)} healthy"
    if skipped:
        message += f", {len(skipped)} skipped"
    if waiting_offline:
        message += f"; {waiting_offline} waiting for their server to come online"
    if held_drained:
        message += f"; {held_drained} held while their server is drained (they count as unavailable)"
    new = current.model_copy(
        update={
            "phase": RolloutPhase.PROGRESSING,
            "updated": new_updated,
            "revisions": revisions,
            "changed_at": changed_at,
            "restarts_from": restarts_from,
            "message": message,
        }
    )
    return finish(new, tuple(writes))
