"""What each dashboard page shows, as JSON-ready dicts: pure functions of the entries under the prefix.

`Index` sorts the entries once per change (every open page shares it);
`fleet`, `service`, `rollout` and `instance` each build one page's view. The
browser only lays these out (static/app.js); every string in them came from
etcd and is shown as text, never as markup.

Who counts as where (what `discoverd get` and the controller also say): a
server is online while its agent status key exists (it is held by the
agent's lease); an instance's phase on a server is that server's report, or
`Offline` (its agent is gone), `NoStatus` (no report yet) or `Unassigned`
(no server lists it). Status keys of instances a server does not list are
not shown (DESIGN 2).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from discoverd.schema import documents, keys, rollouts
from discoverd.store import rollout_requests
from discoverd.store.typed import Entry

__all__ = ["Index", "fleet", "instance", "rollout", "service"]

OFFLINE, NO_STATUS, UNASSIGNED = "Offline", "NoStatus", "Unassigned"

View = dict[str, Any]


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class _Service:
    versions: dict[str, Entry] = field(default_factory=dict)
    instances: dict[str, Entry] = field(default_factory=dict)
    rollout: Entry | None = None
    rollout_status: Entry | None = None


class Index:
    """The entries of one moment, sorted by what they hold."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self.servers: dict[str, Entry] = {}
        self.agents: dict[str, documents.AgentStatus] = {}
        self.reports: dict[tuple[str, str, str], Entry] = {}
        """(server, service, instance) -> that server's status entry of the instance."""
        self.services: dict[str, _Service] = {}
        self.problems: list[tuple[str, str]] = []
        for key in sorted(entries):
            entry = entries[key]
            if entry.error is not None:
                self.problems.append((entry.error.key, str(entry.error)))
            parsed = entry.parsed
            if parsed is None:
                continue
            match parsed.kind:
                case keys.Kind.SERVER:
                    self.servers[parsed.server] = entry
                case keys.Kind.AGENT_STATUS if isinstance(entry.document, documents.AgentStatus):
                    self.agents[parsed.server] = entry.document
                case keys.Kind.INSTANCE_STATUS:
                    self.reports[(parsed.server, parsed.service, parsed.instance)] = entry
                case keys.Kind.VERSION:
                    self._service(parsed.service).versions[parsed.version] = entry
                case keys.Kind.INSTANCE:
                    self._service(parsed.service).instances[parsed.instance] = entry
                case keys.Kind.ROLLOUT:
                    self._service(parsed.service).rollout = entry
                case keys.Kind.ROLLOUT_STATUS:
                    self._service(parsed.service).rollout_status = entry
        self.listed: dict[tuple[str, str], list[str]] = {}
        """(service, instance) -> the servers whose document lists it."""
        for server, entry in self.servers.items():
            if isinstance(entry.document, documents.Server):
                for ref in entry.document.service_instances:
                    self.listed.setdefault((ref.name, ref.id), []).append(server)
        for (_, service, _), _entry in self.reports.items():
            self._service(service)

    def _service(self, name: str) -> _Service:
        return self.services.setdefault(name, _Service())

    def status(self, server: str, service: str, instance: str) -> documents.InstanceStatus | None:
        entry = self.reports.get((server, service, instance))
        doc = entry.document if entry is not None else None
        return doc if isinstance(doc, documents.InstanceStatus) else None

    def placements(self, service: str, instance: str, desired: str | None) -> list[tuple[str, str, str | None]]:
        """(server, phase, version) for each server listing the instance; one `Unassigned` row if none does."""
        rows: list[tuple[str, str, str | None]] = []
        for server in sorted(self.listed.get((service, instance), ())):
            status = self.status(server, service, instance)
            if status is not None:
                rows.append((server, status.phase.value, status.version or desired))
            else:
                rows.append((server, NO_STATUS if server in self.agents else OFFLINE, desired))
        return rows or [("", UNASSIGNED, desired)]


def _desired(entry: Entry) -> str | None:
    return entry.document.service_version if isinstance(entry.document, documents.Instance) else None


def _error(entry: Entry | None) -> str:
    return str(entry.error) if entry is not None and entry.error is not None else ""


def fleet(index: Index) -> View:
    """Servers online or not, and each service's instances by version and phase."""
    servers = []
    for name in sorted(set(index.servers) | set(index.agents)):
        entry = index.servers.get(name)
        doc = entry.document if entry is not None and isinstance(entry.document, documents.Server) else None
        agent = index.agents.get(name)
        servers.append(
            {
                "id": name,
                "online": agent is not None,
                "hostname": agent.hostname if agent else None,
                "agent_version": agent.agent_version if agent else None,
                "heartbeat": _time(agent.heartbeat) if agent else None,
                "instances": len(doc.service_instances) if doc else 0,
                "drained": doc.drained if doc else False,
                "drain": agent.drain.value if agent and agent.drain else None,
                "error": _error(entry),
            }
        )
    services = []
    for name, s in sorted(index.services.items()):
        counts: Counter[tuple[str, str]] = Counter()
        for instance, entry in s.instances.items():
            for _, phase, version in index.placements(name, instance, _desired(entry)):
                counts[(version or "?", phase)] += 1
        by_version: dict[str, dict[str, int]] = {}
        for (version, phase), count in sorted(counts.items()):
            by_version.setdefault(version, {})[phase] = count
        services.append(
            {
                "name": name,
                "versions": sorted(s.versions),
                "instances": len(s.instances),
                "by_version": [{"version": v, "phases": p} for v, p in by_version.items()],
                "rollout": _rollout_summary(s),
            }
        )
    return {
        "view": "fleet",
        "servers": servers,
        "services": services,
        "problems": [{"key": k, "error": e} for k, e in index.problems],
    }


def _rollout_summary(s: _Service) -> View | None:
    status = s.rollout_status.document if s.rollout_status is not None else None
    if isinstance(status, rollouts.RolloutStatus):
        return {
            "phase": status.phase.value,
            "to_version": status.to_version,
            "restart": status.restart_token is not None,
            "updated": len(status.updated),
            "healthy": len(status.healthy),
            "total": status.total,
        }
    if s.rollout is not None and isinstance(s.rollout.document, rollouts.RolloutConfig):
        config = s.rollout.document
        restart = config.restart_token is not None
        return {"phase": "Requested", "to_version": config.to_version, "restart": restart, "updated": 0, "healthy": 0}
    return None


def service(index: Index, name: str) -> View:
    """One service: its versions, each instance on each server, its rollout."""
    s = index.services.get(name, _Service())
    used = Counter(_desired(e) for e in s.instances.values())
    instances = []
    for instance, entry in sorted(s.instances.items()):
        desired = _desired(entry)
        rows = []
        for server, phase, version in index.placements(name, instance, desired):
            status = index.status(server, name, instance) if server else None
            rows.append(
                {
                    "server": server,
                    "online": server in index.agents,
                    "phase": phase,
                    "version": version,
                    "previous_version": status.previous_version if status else None,
                    "restarts": status.restarts if status else None,
                    "since": _time(status.since) if status else None,
                    "message": status.message if status else "",
                }
            )
        instances.append({"id": instance, "desired_version": desired, "error": _error(entry), "servers": rows})
    return {
        "view": "service",
        "name": name,
        "exists": name in index.services,
        "versions": [
            {"version": v, "instances": used.get(v, 0), "error": _error(e)} for v, e in sorted(s.versions.items())
        ],
        "instances": instances,
        "rollout": _rollout_summary(s),
    }


def _batches(status: rollouts.RolloutStatus) -> list[View]:
    """The updated instances grouped by when the controller wrote them (one transaction: one batch)."""
    batches: list[View] = []
    for instance in status.updated:
        at = _time(status.changed_at.get(instance))
        if batches and batches[-1]["at"] == at:
            batches[-1]["instances"].append(instance)
        else:
            batches.append({"at": at, "instances": [instance]})
    return batches


def rollout(index: Index, name: str) -> View:
    """One service's rollout: config, progress, canary, batches, each instance; which buttons apply."""
    s = index.services.get(name, _Service())
    config = s.rollout.document if s.rollout is not None else None
    config = config if isinstance(config, rollouts.RolloutConfig) else None
    status = s.rollout_status.document if s.rollout_status is not None else None
    status = status if isinstance(status, rollouts.RolloutStatus) else None
    active = status is not None and status.phase in rollout_requests.ACTIVE
    reverted = status is not None and status.phase is rollouts.RolloutPhase.REVERTED
    under_way = config is not None and (status is None or active)
    paused = config is not None and (
        config.paused or (status is not None and status.phase is rollouts.RolloutPhase.PAUSED)
    )
    about = status if status is not None else config
    view: View = {
        "view": "rollout",
        "service": name,
        "restart": about is not None and about.restart_token is not None,  # `discoverd restart`: versions kept
        "versions": sorted(s.versions),
        "config": documents.dump(config) if config is not None else None,
        "config_error": _error(s.rollout),
        "status": None,
        "status_error": _error(s.rollout_status),
        "can": {
            "start": bool(s.versions) and bool(s.instances) and not active,
            "pause": under_way and not paused and not (config is not None and config.undo),
            "resume": under_way and paused,
            "undo": config is not None and not reverted and not config.undo,
        },
        "instances": [],
    }
    if status is None:
        return view
    canary = config.canary if config is not None else 0
    view["status"] = {
        "phase": status.phase.value,
        "to_version": status.to_version,
        "message": status.message,
        "started_at": _time(status.started_at),
        "updated_at": _time(status.updated_at),
        "total": status.total,
        "updated": len(status.updated),
        "healthy": len(status.healthy),
        "skipped": list(status.skipped),
        "reverted": list(status.reverted),
        "canary": list(status.updated[:canary]),
        "batches": _batches(status),
    }
    for instance in sorted(set(status.from_versions) | set(s.instances)):
        entry = s.instances.get(instance)
        desired = _desired(entry) if entry is not None else None
        if instance in status.skipped:
            state = "skipped"
        elif instance in status.reverted:
            state = "reverted"
        elif instance in status.healthy:
            state = "healthy"
        elif instance in status.updated:
            state = "updating"
        else:
            state = "waiting"
        view["instances"].append(
            {
                "id": instance,
                "from": status.from_versions.get(instance),
                "desired_version": desired,
                "state": state,
                "canary": instance in status.updated[:canary],
                "reports": [
                    {"server": server, "phase": phase, "version": version}
                    for server, phase, version in index.placements(name, instance, desired)
                ],
            }
        )
    return view


def instance(index: Index, service_name: str, instance_id: str) -> View:
    """One instance: its document, and what each server listing it reports, with the last phase changes."""
    s = index.services.get(service_name, _Service())
    entry = s.instances.get(instance_id)
    doc = entry.document if entry is not None and isinstance(entry.document, documents.Instance) else None
    servers = []
    for server in sorted(index.listed.get((service_name, instance_id), ())):
        status = index.status(server, service_name, instance_id)
        report = index.reports.get((server, service_name, instance_id))
        row: View = {"server": server, "online": server in index.agents, "error": _error(report), "status": None}
        if status is not None:
            row["status"] = {
                "phase": status.phase.value,
                "version": status.version,
                "previous_version": status.previous_version,
                "pid": status.pid,
                "restarts": status.restarts,
                "last_exit_code": status.last_exit_code,
                "message": status.message,
                "since": _time(status.since),
                "updated_at": _time(status.updated_at),
                "history": [
                    {"phase": c.phase.value, "at": _time(c.at), "version": c.version} for c in reversed(status.history)
                ],
            }
        servers.append(row)
    return {
        "view": "instance",
        "service": service_name,
        "id": instance_id,
        "exists": entry is not None,
        "error": _error(entry),
        "config": documents.dump(doc) if doc is not None else None,
        "servers": servers,
    }
