"""Status of each custom resource, rebuilt from the agent status keys in etcd; pure, no I/O.

`View` holds the latest valid document of every key under the prefix (fed by
the etcd watch). `status_for(key)` summarises the status keys that concern
one configuration key: a ServiceInstance gets one entry per server that lists
it and reports it, a Server is online while its lease-held `status/agent` key
exists, a ServiceVersion counts the instances whose current version it is.
Rebuilt whole each time, never patched from the last status.

Agent reports are untrusted: an invalid one (over its caps, say) never
reaches the view (`etcd_to_k8s` logs it and puts None), a status key of an
instance its server does not list is ignored, and every text copied into an
object's status (which `kubectl get` prints in its columns) has its control
characters escaped and is cut to `documents.MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from discoverd.errors import printable
from discoverd.schema import documents, keys, resource_status, resources, rollouts

__all__ = ["View", "affected", "normalized"]

_ORDER = list(documents.Phase)
_UNREAD = {keys.Kind.INSTANCE, keys.Kind.VERSION}
"""Configuration documents no status is built from (instances are the bulk of a fleet): not kept."""


def normalized(kind: keys.Kind, status: dict[str, Any] | None) -> dict[str, Any]:
    """A status as a complete dict (defaults filled in, unknown fields dropped), for comparing."""
    model = resources.resource(kind).status
    known = {k: v for k, v in (status or {}).items() if k in model.model_fields or _is_alias(model, k)}
    try:
        return model.model_validate(known).model_dump(mode="json", by_alias=True)
    except ValueError:
        return {}


def _is_alias(model: type[BaseModel], name: str) -> bool:
    return any(f.alias == name for f in model.model_fields.values())


def _shown(text: str) -> str:
    """Text from etcd as an object's status may hold it: control characters escaped, within the cap."""
    return documents.clip(printable(text))


def _text(value: Any) -> str | None:
    return None if value is None else str(value.isoformat() if hasattr(value, "isoformat") else value)


class View:
    """Every valid document under the prefix, by parsed key; instance reports also by instance,
    server and service, so one status is rebuilt without scanning every document."""

    def __init__(self) -> None:
        self.documents: dict[keys.Key, documents.Document] = {}
        self._by: dict[tuple[str, ...], dict[keys.Key, documents.InstanceStatus]] = {}
        self._versions: dict[str, set[keys.Key]] = {}
        self._listed: dict[tuple[str, str], set[str]] = {}
        """(service, instance) -> the servers whose document lists it."""

    def put(self, key: keys.Key, doc: documents.Document | None) -> None:
        old = self.documents.pop(key, None)
        if isinstance(old, documents.Server):
            for ref in old.service_instances:
                servers = self._listed.get((ref.name, ref.id))
                if servers is not None:
                    servers.discard(key.server)
                    if not servers:
                        del self._listed[(ref.name, ref.id)]
        if isinstance(doc, documents.Server):
            for ref in doc.service_instances:
                self._listed.setdefault((ref.name, ref.id), set()).add(key.server)
        if isinstance(old, documents.InstanceStatus):
            for group in self._groups(key):
                self._by[group].pop(key, None)
                if not self._by[group]:
                    del self._by[group]
        if key.kind is keys.Kind.VERSION:
            self._versions.setdefault(key.service, set()).discard(key)
        if doc is None:
            return
        if key.kind not in _UNREAD:
            self.documents[key] = doc
        if isinstance(doc, documents.InstanceStatus):
            for group in self._groups(key):
                self._by.setdefault(group, {})[key] = doc
        if key.kind is keys.Kind.VERSION:
            self._versions.setdefault(key.service, set()).add(key)

    @staticmethod
    def _groups(key: keys.Key) -> list[tuple[str, ...]]:
        return [("instance", key.service, key.instance), ("server", key.server), ("service", key.service)]

    def listed(self, service: str, instance: str) -> set[str]:
        """The servers whose document lists the instance."""
        return self._listed.get((service, instance), set())

    def _reports(self, *group: str) -> list[tuple[keys.Key, documents.InstanceStatus]]:
        """The instance reports of one group from servers that list the instance, sorted by key: server,
        service, instance."""
        return sorted(
            (k, d)
            for k, d in self._by.get(group, {}).items()
            if k.server in self._listed.get((k.service, k.instance), ())
        )

    def status_for(self, key: keys.Key) -> dict[str, Any]:
        match key.kind:
            case keys.Kind.INSTANCE:
                model: resource_status.Status = self._instance(key)
            case keys.Kind.SERVER:
                model = self._server(key)
            case keys.Kind.ROLLOUT:
                model = self._rollout(key)
            case _:
                model = self._version(key)
        return model.model_dump(mode="json", by_alias=True)

    def _rollout(self, key: keys.Key) -> resource_status.ServiceRolloutStatus:
        doc = self.documents.get(keys.Key(keys.Kind.ROLLOUT_STATUS, service=key.service))
        if not isinstance(doc, rollouts.RolloutStatus):
            return resource_status.ServiceRolloutStatus()
        return resource_status.ServiceRolloutStatus(
            phase=doc.phase.value,
            to_version=doc.to_version,
            updated=len(doc.updated),
            healthy=len(doc.healthy),
            total=doc.total,
            skipped=list(doc.skipped),
            message=_shown(doc.message),
        )

    def _instance(self, key: keys.Key) -> resource_status.ServiceInstanceStatus:
        servers = [
            resource_status.InstanceOnServer.of(k.server, d.model_copy(update={"message": _shown(d.message)}))
            for k, d in self._reports("instance", key.service, key.instance)
        ]
        if not servers:
            return resource_status.ServiceInstanceStatus()
        phases = {s.phase for s in servers}
        versions = {s.version for s in servers if s.version}
        return resource_status.ServiceInstanceStatus(
            phase=min(phases, key=_ORDER.index).value,
            version=", ".join(sorted(versions)) or None,
            server=",".join(s.server for s in servers),
            restarts=sum(s.restarts for s in servers),
            message=documents.clip("; ".join(f"{s.server}: {s.message}" for s in servers if s.message))
            if len(servers) > 1
            else servers[0].message,
            servers=servers,
        )

    def _server(self, key: keys.Key) -> resource_status.ServerStatus:
        agent = self.documents.get(keys.Key(keys.Kind.AGENT_STATUS, server=key.server))
        config = self.documents.get(key)
        reports = [d for _, d in self._reports("server", key.server)]
        out = resource_status.ServerStatus(
            instances=len(config.service_instances) if isinstance(config, documents.Server) else 0,
            reported=len(reports),
            running=sum(1 for d in reports if d.phase is documents.Phase.RUNNING),
        )
        if isinstance(agent, documents.AgentStatus):
            out.online, out.phase = True, "Online" if agent.drain is None else f"Online,{agent.drain.value}"
            out.hostname, out.agent_version, out.started_at = (
                _shown(agent.hostname),
                _shown(agent.agent_version),
                _text(agent.started_at),
            )
        return out

    def _version(self, key: keys.Key) -> resource_status.ServiceVersionStatus:
        reports = [(k, d) for k, d in self._reports("service", key.service) if d.version == key.version]
        return resource_status.ServiceVersionStatus(
            instances=len(reports),
            running=sum(1 for _, d in reports if d.phase is documents.Phase.RUNNING),
            servers=sorted({k.server for k, _ in reports}),
        )

    def versions_of(self, service: str) -> list[keys.Key]:
        return sorted(self._versions.get(service, ()))


def affected(view: View, key: keys.Key) -> set[keys.Key]:
    """The configuration keys whose object status depends on `key`."""
    match key.kind:
        case keys.Kind.AGENT_STATUS:
            return {keys.Key(keys.Kind.SERVER, server=key.server)}
        case keys.Kind.INSTANCE_STATUS:
            return {
                keys.Key(keys.Kind.INSTANCE, service=key.service, instance=key.instance),
                keys.Key(keys.Kind.SERVER, server=key.server),
                *view.versions_of(key.service),
            }
        case keys.Kind.ROLLOUT_STATUS:
            return {keys.Key(keys.Kind.ROLLOUT, service=key.service)}
        case keys.Kind.SERVER:
            # The instances it lists (call this before and after the change: what it listed counts too).
            config = view.documents.get(key)
            refs = config.service_instances if isinstance(config, documents.Server) else []
            instances = {keys.Key(keys.Kind.INSTANCE, service=r.name, instance=r.id) for r in refs}
            return {key, *instances, *(v for r in refs for v in view.versions_of(r.name))}
        case keys.Kind.VERSION | keys.Kind.INSTANCE | keys.Kind.ROLLOUT:
            return {key}
    return set()  # keys without an object (the controller's leader key, future kinds)
