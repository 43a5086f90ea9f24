"""What the controller knows of etcd, turned into `plan`'s inputs.

`scope` keeps `World.entries` current from a read and the watch, holding only
what rollouts need: every rollout config and status, and for the services in
`covered` (those whose rollout is not settled) their instance documents, the
server documents listing them, those servers' agent status and reports.
`rollout` and `members` read one service's rollout and instances out of it,
joining each instance with the servers that list it, whether their agents are
online (and their servers drained), and what those agents report.

Agent reports are untrusted: a status document that does not validate (one
over its caps, say) is skipped as if absent, and logged once per key and
revision; an agent status that does not validate leaves its server offline;
a status key of an instance its server does not list is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from discoverd import logs
from discoverd.controller import plan
from discoverd.schema import documents, keys, rollouts
from discoverd.store import watch
from discoverd.store.typed import Entry, Snapshot, decode

__all__ = ["Rollout", "World"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One service's rollout: its config entry (maybe invalid) and its status, if any."""

    service: str
    config: Entry
    status: rollouts.RolloutStatus | None
    status_revision: int


class World:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.revision = 0
        self._refused: dict[str, int] = {}
        """Invalid agent reports already logged: key -> mod_revision."""
        self.covered: frozenset[str] | None = None
        """Services whose instances and reports `entries` holds (None: every service, all was loaded)."""

    def covers(self, service: str) -> bool:
        """Whether `members(service)` is complete (else its rollout waits until `scope` has read them)."""
        return self.covered is None or service in self.covered

    def unsettled(self) -> frozenset[str]:
        """Services with a valid rollout config that `plan` may still act on (`plan.settled`)."""
        return frozenset(
            r.service
            for r in self.rollouts()
            if isinstance(r.config.document, rollouts.RolloutConfig) and not plan.settled(r.config.document, r.status)
        )

    def load(self, snapshot: Snapshot) -> None:
        self.entries = dict(snapshot.entries)
        self.revision = snapshot.revision

    def apply(self, batch: Iterable[watch.Event]) -> None:
        for event in batch:
            if isinstance(event, watch.Put):
                self.entries[event.entry.key] = event.entry
            elif isinstance(event, watch.Delete):
                self.entries.pop(event.key, None)
                self._refused.pop(event.key, None)
            self.revision = max(self.revision, event.revision)

    def wrote(self, prefix: str, writes: Iterable[tuple[str, bytes]], revision: int) -> None:
        """Our own transaction succeeded at `revision`: know its values now, before the watch shows them.

        Safe against older events still on their way: every key written was guarded by the
        revision this cache held for it, so nothing older than `revision` is pending for it."""
        for key, value in writes:
            entry = decode(prefix, key, value, revision)
            p = entry.parsed
            if p is not None and p.kind is keys.Kind.INSTANCE and not self.covers(p.service):
                continue  # its rollout settled meanwhile: no longer held
            self.entries[key] = entry

    def rollout(self, service: str) -> Rollout | None:
        return next((r for r in self.rollouts() if r.service == service), None)

    def _of(self, kind: keys.Kind) -> Iterable[tuple[keys.Key, Entry]]:
        for entry in self.entries.values():
            if entry.parsed is not None and entry.parsed.kind is kind:
                yield entry.parsed, entry

    def rollouts(self) -> list[Rollout]:
        statuses = {k.service: e for k, e in self._of(keys.Kind.ROLLOUT_STATUS)}
        found = []
        for key, entry in sorted(self._of(keys.Kind.ROLLOUT), key=lambda item: item[0]):
            s = statuses.get(key.service)
            doc = s.document if s is not None and isinstance(s.document, rollouts.RolloutStatus) else None
            # An unreadable status is overwritten by a fresh start, guarded by its revision.
            found.append(Rollout(key.service, entry, doc, s.mod_revision if s is not None else 0))
        return found

    def _valid(self, entry: Entry) -> bool:
        """Whether an agent's report validated; an invalid one is logged once per revision."""
        if entry.error is None:
            return True
        if self._refused.get(entry.key) != entry.mod_revision:
            self._refused[entry.key] = entry.mod_revision
            log.warning(
                "Ignored invalid agent status",
                extra=logs.kv(key=entry.key, revision=entry.mod_revision, reason=str(entry.error)),
            )
        return False

    def members(self, service: str) -> dict[str, plan.Member]:
        """Every instance document of `service` (None for invalid ones), with what each server reports."""
        docs: dict[str, tuple[documents.Instance | None, int]] = {}
        for key, entry in self._of(keys.Kind.INSTANCE):
            if key.service == service:
                doc = entry.document if isinstance(entry.document, documents.Instance) else None
                docs[key.instance] = (doc, entry.mod_revision)
        online = {k.server for k, e in self._of(keys.Kind.AGENT_STATUS) if self._valid(e)}
        statuses: dict[tuple[str, str], Entry] = {
            (k.server, k.instance): e for k, e in self._of(keys.Kind.INSTANCE_STATUS) if k.service == service
        }
        listed: dict[str, list[str]] = {}
        drained: set[str] = set()
        for key, entry in self._of(keys.Kind.SERVER):
            if isinstance(entry.document, documents.Server):
                if entry.document.drained:
                    drained.add(key.server)
                for ref in entry.document.service_instances:
                    if ref.name == service:
                        listed.setdefault(ref.id, []).append(key.server)
        members = {}
        for instance, (doc, revision) in docs.items():
            reports = []
            for server in sorted(listed.get(instance, ())):
                s = statuses.get((server, instance))
                valid = s is not None and self._valid(s)
                status = (
                    s.document if s is not None and valid and isinstance(s.document, documents.InstanceStatus) else None
                )
                at = s.mod_revision if s is not None else 0
                reports.append(plan.Report(server, server in online, status, at, server in drained))
            members[instance] = plan.Member(instance, doc, revision, tuple(reports))
        return members
