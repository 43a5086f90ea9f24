"""`discoverd describe instance SERVICE/ID`: one instance's configuration and what each agent reports.

Reads the prefix at one revision (as `get` does) and prints, for people: the
instance document and the version document it points at (scripts, health
check, timings), the servers that list it, and per server the status its
agent reported (phase and since when, version and previous version, pid,
restarts, last exit code, message), plus any further fields the agent keeps
in the status document (such as recent phase changes). Control characters
of text from etcd are escaped; the status a server reports for an instance it
does not list is not shown (only named).
"""

from __future__ import annotations

import datetime as dt
import json

import click

from discoverd.agent import artifacts
from discoverd.cli import get, main
from discoverd.errors import printable
from discoverd.schema import documents, keys

__all__ = ["describe"]


def _script(script: documents.Script) -> str:
    if not script.command and not script.argv:
        return "-"
    text = " ".join(json.dumps(part) if (" " in part or not part) else part for part in [script.command, *script.argv])
    if script.timeout:
        text += f"   (timeout {script.timeout} s)"
    return text


def _when(at: dt.datetime | None, now: dt.datetime) -> str:
    return "-" if at is None else f"{at.isoformat(timespec='seconds')} ({get.age(at, now)} ago)"


def _history(status: documents.InstanceStatus, now: dt.datetime) -> list[str]:
    """The last phase changes the agent kept, oldest first."""
    if not status.history:
        return []
    lines = ["  Phases:"]
    for change in status.history:
        version = f" (version {change.version})" if change.version else ""
        lines.append(f"    {_when(change.at, now)}  {change.phase.value}{version}")
    return lines


def _extra(doc: documents.Document) -> list[str]:
    lines = []
    for name, value in sorted((doc.model_extra or {}).items()):
        if isinstance(value, list):
            lines.append(f"  {name}:")
            lines += [f"    - {json.dumps(item, sort_keys=True)}" for item in value]
        else:
            lines.append(f"  {name}: {json.dumps(value, sort_keys=True)}")
    return lines


def describe_instance(view: get.View, prefix: str, service: str, instance_id: str, now: dt.datetime) -> str:
    instance = view.instances.get((service, instance_id))
    servers = [
        s
        for s, doc in sorted(view.servers.items())
        if any(r.name == service and r.id == instance_id for r in doc.service_instances)
    ]
    key = keys.instance_config(prefix, service, instance_id)
    lines = [f"Instance:     {service}/{instance_id}"]
    if instance is None:
        lines.append(f"Document:     none at {key}")
    else:
        revision = next((r for k, r in view.revisions.items() if k.build(prefix) == key), 0)
        lines += [f"Document:     {key} (revision {revision})", f"Version:      {instance.service_version}"]
        if instance.run_script.command or instance.run_script.argv:
            lines.append(f"Run (own):    {_script(instance.run_script)}")
    lines.append(f"Servers:      {', '.join(servers) if servers else '- (no server lists it)'}")
    version = view.versions.get((service, instance.service_version)) if instance else None
    if instance is not None:
        lines.append("")
        if version is None:
            lines.append(
                f"Version {instance.service_version}: no document at "
                f"{keys.version_config(prefix, service, instance.service_version)}"
            )
        else:
            lines += [
                f"Version {instance.service_version}:",
                f"  Download:   {_script(version.download_script)}",
                f"  Install:    {_script(version.install_script)}",
                f"  Run:        {_script(version.run_script)}",
                f"  Health:     {_script(version.health_check) + f'   every {version.health_check.interval:g} s' if version.health_check else '-'}",
                f"  Healthy after {version.min_healthy_seconds:g} s; stop with {version.stop_signal}, "
                f"then SIGKILL after {version.stop_timeout:g} s",
            ]
            for a in version.artifacts or []:
                into = f"unpacked into {a.dest}" if a.archive else f"placed as {a.dest.rstrip('/')}/{a.file_name}"
                lines.append(f"  Artifact:   {artifacts.shown(a.url)} {a.algorithm}:{a.digest[:16]}... {into}")
    ignored = sorted({s for (s, sv, i) in view.statuses if (sv, i) == (service, instance_id)} - set(servers))
    for server in servers:
        status = view.statuses.get((server, service, instance_id))
        agent = "online" if server in view.agents else "offline"
        lines += ["", f"On {server} (agent {agent}):"]
        if status is None:
            lines.append("  No status reported yet." if agent == "online" else "  No status: the agent is offline.")
            continue
        previous = f" (previous {status.previous_version})" if status.previous_version else ""
        lines += [
            f"  Phase:      {status.phase.value} since {_when(status.since, now)}",
            f"  Version:    {status.version or '-'}{previous}",
            f"  PID:        {status.pid or '-'}",
            f"  Restarts:   {status.restarts} (last exit code {'-' if status.last_exit_code is None else status.last_exit_code})",
            f"  Message:    {status.message or '-'}",
            f"  Updated:    {_when(status.updated_at, now)}",
            *_history(status, now),
            *_extra(status),
        ]
    if ignored:
        lines += ["", f"Ignored: status reported by {', '.join(ignored)}, which do(es) not list this instance."]
    return "\n".join(printable(line) for line in lines)  # every line holds text from etcd


def _instance_ref(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    service, slash, instance_id = value.partition("/")
    if not slash:
        raise click.BadParameter(f"{value!r} is not SERVICE/ID (for example web/i1)")
    for part in (service, instance_id):
        reason = keys.segment_error(part)
        if reason is not None:
            raise click.BadParameter(f"{part!r} {reason}")
    return service, instance_id


@click.group()
def describe() -> None:
    """Show one object in detail: its configuration and what agents report."""


@describe.command("instance")
@click.argument("ref", metavar="SERVICE/ID", callback=_instance_ref)
@click.pass_context
def instance(ctx: click.Context, ref: tuple[str, str]) -> None:
    """An instance: its document, its version's document, and its status on each server."""
    options = main.etcd_options(ctx)

    view = main.run_async(get.read_view(options))
    service, instance_id = ref
    known = (
        (service, instance_id) in view.instances
        or any((sv, i) == ref for (_, sv, i) in view.statuses)
        or any(any((r.name, r.id) == ref for r in s.service_instances) for s in view.servers.values())
    )
    if not known:
        raise main.fail(
            f"no instance {service}/{instance_id} under {options.prefix}: no document, no server lists it, no status"
        )
    click.echo(describe_instance(view, options.prefix, service, instance_id, dt.datetime.now(dt.UTC)))
