"""`discoverd rollout start|status|pause|resume|undo SERVICE`: ask the controller for a fleet rollout (DESIGN 2b).

`start`, `pause`, `resume` and `undo` are `store.rollout_requests` (shared with the
dashboard's buttons): guarded writes of the rollout config only; the
controller is the only writer of instance documents. `status` reads the
status the acting controller writes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, StoreUnavailable, printable
from discoverd.schema import documents, keys, rollouts
from discoverd.store import client, rollout_requests, watch
from discoverd.store.typed import Store

__all__ = ["rollout"]


def _service(ctx: click.Context, param: click.Parameter, value: str) -> str:
    reason = keys.segment_error(value)
    if reason is not None:
        raise click.BadParameter(f"{value!r} {reason}")
    return value


def _max_unavailable(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return rollouts.parse_max_unavailable(int(value) if value.strip().isdigit() else value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


async def _store(options: EtcdOptions) -> Store:
    return Store(await client.connect(options))


async def _start(options: EtcdOptions, config: rollouts.RolloutConfig) -> str:
    store = await _store(options)
    try:
        return await rollout_requests.start(store, config)
    finally:
        await store.close()


async def _change(options: EtcdOptions, service: str, what: str) -> str:
    store = await _store(options)
    try:
        return await rollout_requests.change(store, service, what)
    finally:
        await store.close()


@click.group()
def rollout() -> None:
    """Roll a service out to a new version across the fleet: canary, pause, batches, revert."""


@rollout.command()
@click.argument("service", callback=_service)
@click.option("--to", "to_version", required=True, help="The version to roll out (its document must exist).")
@click.option("--canary", type=click.IntRange(min=0), default=0, show_default=True, help="Instances to update first.")
@click.option("--pause-after-canary", is_flag=True, help="Stop after the canary until `rollout resume`.")
@click.option(
    "--max-unavailable",
    callback=_max_unavailable,
    help="Instances upgrading or not healthy at once: a count or a percentage such as 25%.  [default: 1]",
)
@click.option(
    "--min-healthy-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds an updated instance must be Running before it counts as healthy.  [default: 10]",
)
@click.option(
    "--progress-deadline-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="An updated instance not healthy this long fails the rollout.  [default: 600]",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=1),
    default=None,
    help="Restarts on the new version, before it was ever healthy, that fail the rollout at once.  [default: 2]",
)
@click.option("--no-auto-revert", is_flag=True, help="On failure stop, instead of setting every instance back.")
@click.pass_context
def start(
    ctx: click.Context,
    service: str,
    to_version: str,
    canary: int,
    pause_after_canary: bool,
    max_unavailable: int | str | None,
    min_healthy_seconds: float | None,
    progress_deadline_seconds: float | None,
    max_restarts: int | None,
    no_auto_revert: bool,
) -> None:
    """Start rolling SERVICE out to a new version."""
    fields: dict[str, Any] = {"to_version": to_version}
    if canary:
        fields["canary"] = canary
    if pause_after_canary:
        fields["pause_after_canary"] = True
    if max_unavailable is not None:
        fields["max_unavailable"] = max_unavailable
    if min_healthy_seconds is not None:
        fields["min_healthy_seconds"] = min_healthy_seconds
    if progress_deadline_seconds is not None:
        fields["progress_deadline_seconds"] = progress_deadline_seconds
    if max_restarts is not None:
        fields["max_restarts"] = max_restarts
    if no_auto_revert:
        fields["auto_revert"] = False
    options = main.etcd_options(ctx)
    config = rollout_requests.config(options.prefix, service, fields)
    click.echo(main.run_async(_start(options, config)))


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def pause(ctx: click.Context, service: str) -> None:
    """Start no further batches (instances being updated finish)."""
    click.echo(main.run_async(_change(main.etcd_options(ctx), service, "pause")))


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def resume(ctx: click.Context, service: str) -> None:
    """Go on after `pause` or after the canary."""
    click.echo(main.run_async(_change(main.etcd_options(ctx), service, "resume")))


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def undo(ctx: click.Context, service: str) -> None:
    """Set every instance the rollout changed back to its previous version, now."""
    click.echo(main.run_async(_change(main.etcd_options(ctx), service, "undo")))


# status


def _done(status: rollouts.RolloutStatus | None, config: rollouts.RolloutConfig | None) -> bool:
    if status is None:
        return False
    if status.phase in rollouts.TERMINAL:
        return True
    return status.phase is rollouts.RolloutPhase.FAILED and config is not None and not config.auto_revert


def _title(service: str, s: rollouts.RolloutStatus) -> str:
    """`web -> 2.0`, or for a restart `web restart`."""
    return f"{service} restart" if s.restart_token is not None else f"{service} -> {s.to_version}"


def _line(service: str, s: rollouts.RolloutStatus) -> str:
    parts = [
        f"{_title(service, s)}: {s.phase.value}",
        f"updated {len(s.updated)}/{s.total}",
        f"healthy {len(s.healthy)}/{s.total}",
    ]
    if s.skipped:
        parts.append(f"skipped {len(s.skipped)} ({', '.join(s.skipped)})")
    if s.message:
        parts.append(s.message)
    return printable(", ".join(parts))


def _bar(service: str, s: rollouts.RolloutStatus, width: int = 30) -> str:
    total = max(s.total, 1)
    healthy = min(width, width * len(s.healthy) // total)
    updated = min(width - healthy, width * len(s.updated) // total - healthy)
    bar = "#" * healthy + "+" * max(0, updated) + "." * (width - healthy - max(0, updated))
    return f"{_title(service, s)} [{bar}] {len(s.healthy)}/{s.total} healthy, {len(s.updated)} updated  {s.phase.value}"


class _Printer:
    def __init__(self, service: str, output: str, tty: bool, follow: bool) -> None:
        self.service, self.output, self.tty, self.follow = service, output, tty, follow
        self.last: str | None = None

    def show(self, status: rollouts.RolloutStatus | None, final: bool = False) -> None:
        if status is None:
            text = f"{self.service}: no rollout status yet"
        elif self.output == "json":
            text = json.dumps(documents.dump(status), indent=None if self.follow else 2)
        elif self.tty:
            text = _bar(self.service, status)
        else:
            text = _line(self.service, status)
        if text == self.last:
            return
        if self.tty and self.output != "json":
            click.echo("\r\033[K" + text, nl=False)
            if final:
                click.echo()
                if status is not None and status.message:
                    click.echo(printable(status.message))
        else:
            click.echo(text)
        self.last = text


async def _status(options: EtcdOptions, service: str, follow: bool, printer: _Printer) -> None:
    store = await _store(options)
    under = keys.rollout_prefix(options.prefix, service)
    config_key, status_key = keys.rollout_config(options.prefix, service), keys.rollout_status(options.prefix, service)
    try:
        while True:
            snapshot = await store.snapshot(under)
            config_entry, status_entry = snapshot.entries.get(config_key), snapshot.entries.get(status_key)
            if config_entry is None and status_entry is None:
                raise main.fail(f"service {service!r} has no rollout")
            if config_entry is not None and config_entry.error is not None:
                click.echo(f"warning: invalid: {config_entry.error}", err=True)
            doc = config_entry.document if config_entry is not None else None
            config = doc if isinstance(doc, rollouts.RolloutConfig) else None
            status = rollout_requests.status_of(status_entry)
            if not follow or _done(status, config):
                printer.show(status, final=True)
                return
            printer.show(status)
            try:
                async for batch in watch.watch(store, snapshot.revision + 1, under=under):
                    for event in batch:
                        if isinstance(event, watch.Put) and event.entry.key == status_key:
                            status = rollout_requests.status_of(event.entry)
                        elif isinstance(event, watch.Put) and event.entry.key == config_key:
                            doc = event.entry.document
                            config = doc if isinstance(doc, rollouts.RolloutConfig) else config
                        elif isinstance(event, watch.Delete) and event.key == status_key:
                            status = None
                    if _done(status, config):
                        printer.show(status, final=True)
                        return
                    printer.show(status)
            except (StoreUnavailable, Compacted) as error:  # read everything again and go on watching
                click.echo(f"\nwarning: {error}; watching again", err=True)
                await asyncio.sleep(1)
    finally:
        await store.close()


@rollout.command()
@click.argument("service", callback=_service)
@click.option("-w", "--watch", "follow", is_flag=True, help="Show progress until the rollout ends.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def status(ctx: click.Context, service: str, follow: bool, output: str) -> None:
    """Show where the rollout of SERVICE is (`-o json`: the status document)."""
    printer = _Printer(service, output, sys.stdout.isatty(), follow)
    main.run_async(_status(main.etcd_options(ctx), service, follow, printer))
