"""The `status` of each custom resource: agent status keys, summarised per object (camelCase).

The operator rebuilds these from the status keys agents keep in etcd
(DESIGN section 2) and writes them to the status subresource; the CRD's
status schema is generated from these models (`crd`). Only fields that
change when something happens are here (no heartbeats or `updated_at`), so
an agent rewriting the same status never causes an API write. What one
agent reports about an instance has one shape, `documents.InstanceState`;
`InstanceOnServer` is that shape plus the server and `since`.
`observedGeneration` is the object's `metadata.generation` the operator last
mirrored (Kubernetes API conventions).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from discoverd.schema import documents

__all__ = [
    "InstanceOnServer",
    "ServerStatus",
    "ServiceInstanceStatus",
    "ServiceRolloutStatus",
    "ServiceVersionStatus",
    "Status",
]

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class InstanceOnServer(documents.InstanceState):
    """What one server's agent reports about an instance: the agent's summary, its server and since when."""

    model_config = ConfigDict(extra="forbid")

    server: str
    since: dt.datetime | None = None
    """When the instance entered its current phase."""

    @classmethod
    def of(cls, server: str, report: documents.InstanceStatus) -> InstanceOnServer:
        """The report an agent wrote at `<prefix>/servers/<server>/status/instances/...`, known fields only."""
        known: dict[str, Any] = {name: getattr(report, name) for name in documents.InstanceState.model_fields}
        return cls(server=server, since=report.since, **known)


class ServiceInstanceStatus(BaseModel):
    """Per server, how the instance runs; summary fields feed the printer columns."""

    model_config = _CAMEL

    observed_generation: int | None = None
    phase: str | None = None
    """The phase on its server; with several servers, the least advanced one."""
    version: str | None = None
    server: str | None = None
    """The servers reporting the instance, comma-separated."""
    restarts: int = 0
    """Restarts summed over servers."""
    message: str = ""
    servers: list[InstanceOnServer] = []


class ServerStatus(BaseModel):
    """Whether the server's agent is online (its lease-held status key exists) and what it runs."""

    model_config = _CAMEL

    observed_generation: int | None = None
    online: bool = False
    phase: str = "Offline"
    """Online or Offline (the printer column); `Online,Draining` / `Online,Drained` on a drained server."""
    hostname: str | None = None
    agent_version: str | None = None
    started_at: str | None = None
    instances: int = 0
    """Instances assigned in the server's configuration."""
    reported: int = 0
    """Instances the agent reports a status for."""
    running: int = 0
    """Reported instances in phase Running."""


class ServiceVersionStatus(BaseModel):
    """How many instances run this version, over all servers."""

    model_config = _CAMEL

    observed_generation: int | None = None
    instances: int = 0
    """Instance statuses whose current version is this one."""
    running: int = 0
    """Of those, the ones in phase Running."""
    servers: list[str] = []


class ServiceRolloutStatus(BaseModel):
    """The rollout status the acting controller keeps in etcd (DESIGN 2b), counts for the printer columns."""

    model_config = _CAMEL

    observed_generation: int | None = None
    phase: str | None = None
    to_version: str | None = None
    updated: int = 0
    healthy: int = 0
    total: int = 0
    skipped: list[str] = []
    message: str = ""


Status = ServiceInstanceStatus | ServerStatus | ServiceVersionStatus | ServiceRolloutStatus
