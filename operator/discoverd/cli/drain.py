"""`discoverd drain SERVER [--deadline DURATION]` and `discoverd undrain SERVER`: take a server out for maintenance.

Both only change the server document (a compare-and-swap on its
mod_revision): `drained: true` and, with `--deadline`, `drain_deadline` (now
plus the duration, so an agent restart does not extend it). The server's
agent then stops its instances one at a time, each with its stop signal and
`stop_timeout`, starts none, and reports `Drained`; past the deadline it kills
the ones still running at once. The controller holds the server's instances
out of rollouts until `undrain`, which removes both fields: the agent starts
everything again. On Kubernetes the `Server` object's `spec.drained` is the
same field. See docs/operating.md, "Drain".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.errors import Conflict
from discoverd.schema import documents, keys
from discoverd.store import client
from discoverd.store.typed import Store

__all__ = ["drain", "parse_duration", "undrain"]

_MAX_DEADLINE = 365 * 86400.0


def parse_duration(text: str) -> dt.timedelta:
    """A drain deadline: `main.parse_duration` (surrounding spaces allowed), more than 0, at most 365 days."""
    seconds = main.parse_duration(text.strip())
    if not 0 < seconds <= _MAX_DEADLINE:
        raise ValueError(f"{text!r} must be more than 0 and at most 365 days")
    return dt.timedelta(seconds=seconds)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _server(ctx: click.Context, param: click.Parameter, value: str) -> str:
    reason = keys.segment_error(value)
    if reason is not None:
        raise click.BadParameter(f"{value!r} {reason}")
    return value


async def _set(options: EtcdOptions, server: str, drained: bool, deadline: dt.datetime | None) -> str:
    store = Store(await client.connect(options))
    try:
        key = keys.server_config(options.prefix, server)
        entry = await store.get(key)
        if entry is None:
            raise main.fail(f"server {server!r} has no server document ({key})")
        if entry.error is not None:
            raise entry.error
        assert isinstance(entry.document, documents.Server)
        body: dict[str, Any] = documents.dump(entry.document)
        body.pop("drained", None)
        body.pop("drain_deadline", None)
        if drained:
            body["drained"] = True
            if deadline is not None:
                body["drain_deadline"] = deadline.isoformat().replace("+00:00", "Z")
        doc = documents.validate(documents.Server, key, body)
        try:
            await store.put(key, doc, expect=entry.mod_revision)
        except Conflict:
            raise main.fail(f"server {server!r} changed meanwhile; run the command again") from None
        count = len(doc.service_instances)
        if not drained:
            return f"Undrained server {server!r}: its agent starts its {count} instance(s) again."
        until = f"; whatever still runs at {body['drain_deadline']} is killed" if deadline is not None else ""
        return (
            f"Drained server {server!r}: its agent stops its {count} instance(s) one at a time{until}. "
            "`discoverd get servers` shows Drained when they are all stopped."
        )
    finally:
        await store.close()


@click.command()
@click.argument("server", callback=_server)
@click.option(
    "--deadline",
    callback=_duration,
    metavar="DURATION",
    help="After this long (90s, 10m, 1h30m), instances still running are killed without their grace.",
)
@click.pass_context
def drain(ctx: click.Context, server: str, deadline: dt.timedelta | None) -> None:
    """Stop every instance of SERVER, one at a time, and keep rollouts off it until `undrain`."""
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) + deadline if deadline is not None else None
    click.echo(main.run_async(_set(main.etcd_options(ctx), server, True, at)))


@click.command()
@click.argument("server", callback=_server)
@click.pass_context
def undrain(ctx: click.Context, server: str) -> None:
    """Start SERVER's instances again and let rollouts update them."""
    click.echo(main.run_async(_set(main.etcd_options(ctx), server, False, None)))
