"""`discoverd get servers|versions|instances`: configuration joined with agent status.

Reads the whole prefix at one revision. Tables for people (control
characters of etcd text escaped); `-o json|yaml` gives the documents in the
custom-resource format (what `apply -f` takes), with the status agents
reported (JSON and YAML escape control characters themselves). A status key
of an instance its server does not list is ignored. Invalid keys are listed on standard error
with the reason, and the rest is shown. `-w` prints again whenever what it
shows changes (a watch on the prefix; each change re-reads it at one
revision), until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import click
import yaml

from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable, printable
from discoverd.schema import documents, keys, names, resources
from discoverd.schema import rollouts as rollouts_
from discoverd.store import client, typed, watch

__all__ = ["View", "build_view", "get", "read_view", "render"]


@dataclass
class View:
    """Everything under the prefix, sorted by kind."""

    revision: int
    servers: dict[str, documents.Server] = field(default_factory=dict)
    versions: dict[tuple[str, str], documents.Version] = field(default_factory=dict)
    instances: dict[tuple[str, str], documents.Instance] = field(default_factory=dict)
    agents: dict[str, documents.AgentStatus] = field(default_factory=dict)
    statuses: dict[tuple[str, str, str], documents.InstanceStatus] = field(default_factory=dict)
    rollouts: dict[str, rollouts_.RolloutConfig] = field(default_factory=dict)
    rollout_statuses: dict[str, rollouts_.RolloutStatus] = field(default_factory=dict)
    revisions: dict[keys.Key, int] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)


def build_view(snapshot: typed.Snapshot) -> View:
    view = View(snapshot.revision)
    for entry in snapshot.entries.values():
        if entry.error is not None:
            view.invalid.append(str(entry.error))
            continue
        key, doc = entry.parsed, entry.document
        if key is None or doc is None:
            continue
        view.revisions[key] = entry.mod_revision
        if isinstance(doc, documents.Server):
            view.servers[key.server] = doc
        elif isinstance(doc, documents.Version):
            view.versions[(key.service, key.version)] = doc
        elif isinstance(doc, documents.Instance):
            view.instances[(key.service, key.instance)] = doc
        elif isinstance(doc, documents.AgentStatus):
            view.agents[key.server] = doc
        elif isinstance(doc, documents.InstanceStatus):
            view.statuses[(key.server, key.service, key.instance)] = doc
        elif isinstance(doc, rollouts_.RolloutConfig):
            view.rollouts[key.service] = doc
        elif isinstance(doc, rollouts_.RolloutStatus):
            view.rollout_statuses[key.service] = doc
    return view


def age(since: dt.datetime | None, now: dt.datetime) -> str:
    """Kubernetes-style age: 42s, 5m, 3h, 2d."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    """Aligned columns; every cell's control characters escaped (its text comes from etcd)."""
    body = [header, *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in body)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _listed(view: View, server_id: str, service: str, instance_id: str) -> bool:
    """Whether the server's document lists the instance: only then is its status key read."""
    server = view.servers.get(server_id)
    return server is not None and any((r.name, r.id) == (service, instance_id) for r in server.service_instances)


def _assignments(view: View) -> dict[tuple[str, str], list[str]]:
    """Which servers list each instance."""
    where: dict[tuple[str, str], list[str]] = {}
    for server_id, server in sorted(view.servers.items()):
        for ref in server.service_instances:
            where.setdefault((ref.name, ref.id), []).append(server_id)
    return where


def instance_rows(view: View, now: dt.datetime) -> list[list[str]]:
    rows = []
    where = _assignments(view)
    for service, instance_id in sorted(set(view.instances) | set(where)):
        instance = view.instances.get((service, instance_id))
        desired = instance.service_version if instance else None
        servers: list[str | None] = list(where.get((service, instance_id), [])) or [None]
        for server_id in servers:
            status = view.statuses.get((server_id, service, instance_id)) if server_id else None
            if status is not None:
                phase, version = status.phase.value, status.version or desired
            elif server_id is None:
                phase, version = "Unassigned", desired
            elif instance is None:
                phase, version = "NoDocument", None
            else:
                phase, version = ("Pending" if server_id in view.agents else "Unknown"), desired
            rows.append(
                [
                    service,
                    instance_id,
                    _text(server_id),
                    _text(version),
                    phase,
                    _text(status.pid if status else None),
                    _text(status.restarts if status else None),
                    age(status.since if status else None, now),
                    _text(status.message if status else None),
                ]
            )
    return rows


def version_rows(view: View) -> list[list[str]]:
    using: dict[tuple[str, str], int] = {}
    for (service, _), instance in view.instances.items():
        using[(service, instance.service_version)] = using.get((service, instance.service_version), 0) + 1
    rows = []
    for (service, version), doc in sorted(view.versions.items()):
        run = " ".join([doc.run_script.command, *doc.run_script.argv]) or "-"
        rows.append([service, version, str(using.get((service, version), 0)), run[:60]])
    return rows


def rollout_rows(view: View) -> list[list[str]]:
    rows = []
    for service, config in sorted(view.rollouts.items()):
        s = view.rollout_statuses.get(service)
        counts = [str(len(s.updated)), str(len(s.healthy)), str(s.total)] if s else ["-", "-", "-"]
        rows.append(
            [service, config.to_version, s.phase.value if s else "Pending", *counts, _text(s.message if s else None)]
        )
    return rows


def _server_state(server: documents.Server | None, agent: documents.AgentStatus | None) -> str:
    """`Online`/`Offline`, then `,Drained` when the server document says so (`,Draining` while its
    agent still stops instances), as kubectl shows `Ready,SchedulingDisabled`."""
    state = "Online" if agent else "Offline"
    if server is None or not server.drained:
        return state
    draining = agent is not None and agent.drain is documents.DrainPhase.DRAINING
    return state + (",Draining" if draining else ",Drained")


def server_rows(view: View, now: dt.datetime) -> list[list[str]]:
    rows = []
    for server_id in sorted(set(view.servers) | set(view.agents)):
        server = view.servers.get(server_id)
        agent = view.agents.get(server_id)
        listed = len(server.service_instances) if server else 0
        running = sum(
            1
            for (s, sv, i), st in view.statuses.items()
            if s == server_id and st.phase == documents.Phase.RUNNING and _listed(view, s, sv, i)
        )
        rows.append(
            [
                server_id,
                _server_state(server, agent),
                str(listed),
                str(running),
                _text(agent.agent_version if agent else None),
                age(agent.started_at if agent else None, now),
            ]
        )
    return rows


def _status_list(items: Iterable[tuple[str, documents.InstanceStatus]]) -> list[dict[str, Any]]:
    return [{"server": server, **documents.dump(status)} for server, status in items]


def objects(view: View, what: str, prefix: str) -> list[dict[str, Any]]:
    """The custom-resource form of each document, with agent status."""
    out = []
    kind = _KINDS[what]
    for key, revision in sorted(view.revisions.items()):
        if key.kind != kind:
            continue
        doc: documents.Document
        status: dict[str, Any]
        if key.kind == keys.Kind.SERVER:
            doc = view.servers[key.server]
            agent = view.agents.get(key.server)
            status = {"online": agent is not None}
            if agent is not None:
                status["agent"] = documents.dump(agent)
        elif key.kind == keys.Kind.VERSION:
            doc = view.versions[(key.service, key.version)]
            status = {}
        elif key.kind == keys.Kind.ROLLOUT:
            doc = view.rollouts[key.service]
            rollout = view.rollout_statuses.get(key.service)
            status = {"rollout": documents.dump(rollout)} if rollout is not None else {}
        else:
            doc = view.instances[(key.service, key.instance)]
            found = (
                (s, st)
                for (s, sv, i), st in sorted(view.statuses.items())
                if (sv, i) == (key.service, key.instance) and _listed(view, s, sv, i)
            )
            status = {"servers": _status_list(found)}
        out.append(
            {
                "apiVersion": resources.API_VERSION,
                "kind": resources.resource(key.kind).name,
                "metadata": {"name": names.object_name(key)},
                "spec": resources.to_spec(key, doc),
                "status": {"etcdKey": key.build(prefix), "modRevision": revision, **status},
            }
        )
    return out


_KINDS = {r.cli_name: r.kind for r in resources.RESOURCES.values()}
"""`discoverd get` words -> kinds, from the one registry of kinds."""


def render(view: View, what: str, output: str, prefix: str, now: dt.datetime) -> str | None:
    """The text `get` prints for `view`; None when there is nothing to list (a table of no rows)."""
    if output != "table":
        document = {"apiVersion": "v1", "kind": "List", "items": objects(view, what, prefix)}
        return json.dumps(document, indent=2) if output == "json" else yaml.safe_dump(document, sort_keys=False)
    if what == "instances":
        header = ["SERVICE", "ID", "SERVER", "VERSION", "PHASE", "PID", "RESTARTS", "AGE", "MESSAGE"]
        rows = instance_rows(view, now)
    elif what == "versions":
        header, rows = ["SERVICE", "VERSION", "INSTANCES", "RUN"], version_rows(view)
    elif what == "rollouts":
        header, rows = ["SERVICE", "TARGET", "PHASE", "UPDATED", "HEALTHY", "TOTAL", "MESSAGE"], rollout_rows(view)
    else:
        header, rows = ["SERVER", "AGENT", "INSTANCES", "RUNNING", "AGENT-VERSION", "AGE"], server_rows(view, now)
    return _table(header, rows) if rows else None


async def _read(store: typed.Store) -> View:
    return build_view(await store.snapshot())


async def read_view(options: EtcdOptions) -> View:
    """Configuration and status under the prefix, read once at one revision."""
    store = typed.Store(await client.connect(options))
    try:
        return await _read(store)
    finally:
        await store.close()


async def _follow(options: EtcdOptions, what: str, output: str) -> None:
    """Print, then print again whenever what is shown changes (a watch on the prefix), until Ctrl-C."""
    store = typed.Store(await client.connect(options))
    last: str | None = None
    warned: set[str] = set()
    try:
        while True:
            try:
                view = await _read(store)
                while True:
                    for problem in view.invalid:
                        if problem not in warned:
                            warned.add(problem)
                            click.echo(f"warning: invalid: {problem}", err=True)
                    text = render(view, what, output, options.prefix, dt.datetime.now(dt.UTC))
                    shown = text if text is not None else f"No {what} under {options.prefix}."
                    if shown != last:
                        if last is not None:
                            click.echo("---" if output == "yaml" else "")
                        click.echo(shown)
                        last = shown
                    # watch() is an async generator: close it (and its stream) when we stop reading it.
                    events = cast(AsyncGenerator[list[watch.Event], None], watch.watch(store, view.revision + 1))
                    async with contextlib.aclosing(events) as batches:
                        async for batch in batches:
                            if any(not isinstance(event, watch.Progress) for event in batch):
                                break
                    view = await _read(store)
            except (StoreUnavailable, Compacted) as error:
                click.echo(f"warning: {error}; reading again in 1 s", err=True)
                await asyncio.sleep(1)
    finally:
        await store.close()


@click.command()
@click.argument("what", type=click.Choice(list(_KINDS)))
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@click.option("-w", "--watch", "follow", is_flag=True, help="After printing, print again whenever it changes.")
@click.pass_context
def get(ctx: click.Context, what: str, output: str, follow: bool) -> None:
    """Show servers, versions or instances with the status agents reported."""
    options = main.etcd_options(ctx)
    if follow:
        main.run_async(_follow(options, what, output))
        return

    view = main.run_async(read_view(options))
    for problem in view.invalid:
        click.echo(f"warning: invalid: {problem}", err=True)
    text = render(view, what, output, options.prefix, dt.datetime.now(dt.UTC))
    if text is None:
        click.echo(f"No {what} under {options.prefix} in etcd at {options.describe()}.", err=True)
        return
    click.echo(text)
