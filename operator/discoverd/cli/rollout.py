"""`discoverd rollout start|status|pause|resume|undo SERVICE`: ask the controller for a fleet rollout (DESIGN 2b).

These commands only write the rollout config (`.../rollout/config/details`),
each guarded by the key's mod_revision, and read the status the acting
controller writes; the controller is the only writer of instance documents.
`start` also deletes the previous rollout's status in the same transaction,
so the controller starts afresh even for the same target version.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.errors import Compacted, Conflict, StoreUnavailable, printable
from discoverd.schema import documents, keys, rollouts
from discoverd.store import client, watch
from discoverd.store.documents import Entry, Store, Write

__all__ = ["rollout"]

_ACTIVE = (rollouts.RolloutPhase.PROGRESSING, rollouts.RolloutPhase.PAUSED)


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


def _status_of(entry: Entry | None) -> rollouts.RolloutStatus | None:
    if entry is None:
        return None
    if entry.error is not None:
        raise entry.error
    return entry.document if isinstance(entry.document, rollouts.RolloutStatus) else None


async def _start(options: EtcdOptions, config: rollouts.RolloutConfig) -> str:
    store = await _store(options)
    try:
        prefix, service = options.prefix, config.name
        version = await store.get(keys.version_config(prefix, service, config.to_version))
        if version is None:
            raise main.fail(
                f"service {service!r} has no version {config.to_version!r}: apply its version document first"
            )
        if version.error is not None:
            raise version.error
        instances = await store.snapshot(keys.service_instances_prefix(prefix, service))
        if not instances.entries:
            raise main.fail(f"service {service!r} has no instances to roll out")
        config_key, status_key = keys.rollout_config(prefix, service), keys.rollout_status(prefix, service)
        old_config, old_status = await store.get(config_key), await store.get(status_key)
        status = _status_of(old_status)
        if status is not None and status.phase in _ACTIVE:
            raise main.fail(
                f"a rollout of {service!r} to {status.to_version} is {status.phase.value.lower()}; "
                f"wait for it or run `discoverd rollout undo {service}` first"
            )
        writes = [Write(config_key, documents.dumps(config), old_config.mod_revision if old_config else 0)]
        if old_status is not None:
            writes.append(Write(status_key, None, old_status.mod_revision))
        try:
            await store.apply(writes)
        except Conflict:
            raise main.fail(f"the rollout of {service!r} changed meanwhile; run the command again") from None
        return f"Started a rollout of {service!r} to version {config.to_version} ({len(instances.entries)} instances)."
    finally:
        await store.close()


async def _change(options: EtcdOptions, service: str, what: str, **fields: Any) -> str:
    store = await _store(options)
    try:
        key = keys.rollout_config(options.prefix, service)
        entry = await store.get(key)
        if entry is None:
            raise main.fail(f"service {service!r} has no rollout (start one with `discoverd rollout start`)")
        if entry.error is not None or not isinstance(entry.document, rollouts.RolloutConfig):
            raise main.fail(f"cannot {what}: {entry.error}")
        status = _status_of(await store.get(keys.rollout_status(options.prefix, service)))
        if what != "undo" and status is not None and status.phase not in _ACTIVE:
            raise main.fail(f"the rollout of {service!r} has ended ({status.phase.value}); nothing to {what}")
        if what == "undo" and status is not None and status.phase is rollouts.RolloutPhase.REVERTED:
            raise main.fail(f"the rollout of {service!r} is already reverted")
        try:
            await store.put(key, entry.document.model_copy(update=fields), expect=entry.mod_revision)
        except Conflict:
            raise main.fail(f"the rollout of {service!r} changed meanwhile; run the command again") from None
        return f"Asked the controller to {what} the rollout of {service!r} to {entry.document.to_version}."
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
    fields: dict[str, Any] = {"name": service, "to_version": to_version}
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
    config = documents.validate(rollouts.RolloutConfig, keys.rollout_config(options.prefix, service), fields)
    click.echo(main.run_async(_start(options, config)))


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def pause(ctx: click.Context, service: str) -> None:
    """Start no further batches (instances being updated finish)."""
    click.echo(main.run_async(_change(main.etcd_options(ctx), service, "pause", paused=True)))


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def resume(ctx: click.Context, service: str) -> None:
    """Go on after `pause` or after the canary."""
    click.echo(
        main.run_async(_change(main.etcd_options(ctx), service, "resume", paused=False, pause_after_canary=False))
    )


@rollout.command()
@click.argument("service", callback=_service)
@click.pass_context
def undo(ctx: click.Context, service: str) -> None:
    """Set every instance the rollout changed back to its previous version, now."""
    click.echo(main.run_async(_change(main.etcd_options(ctx), service, "undo", undo=True)))


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
            status = _status_of(status_entry)
            if not follow or _done(status, config):
                printer.show(status, final=True)
                return
            printer.show(status)
            try:
                async for batch in watch.watch(store, snapshot.revision + 1, under=under):
                    for event in batch:
                        if isinstance(event, watch.Put) and event.entry.key == status_key:
                            status = _status_of(event.entry)
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
