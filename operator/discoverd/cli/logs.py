"""`discoverd logs SERVICE[/ID]`: an instance's output, read from its agent (wiring only: see `discoverd.logaccess`).

Like `kubectl logs`: all the log without `--tail` for one instance, the last
10 lines of each for a whole service; `-f` follows (across log rotation and
agent restarts) until the instance is removed or Ctrl-C; `--prefix` puts
`[SERVER/ID]` before each line; `--timestamps` the time the agent first saw
the line (RFC 3339, UTC).
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
import sys
import time
from collections.abc import AsyncIterator

import click

from discoverd import logaccess
from discoverd.cli import main
from discoverd.errors import StoreUnavailable
from discoverd.schema import keys
from discoverd.schema import logaccess as protocol
from discoverd.store import client
from discoverd.store.typed import Store

__all__ = ["logs"]

_SERVICE_TAIL = 10
"""Lines per instance without --tail when a whole service is read (kubectl's default with a selector)."""


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return main.parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _which(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str | None]:
    service, _, instance = value.partition("/")
    for what, name in (("service", service), ("ID", instance)):
        if what == "ID" and not instance and "/" not in value:
            continue
        reason = keys.segment_error(name)
        if reason is not None:
            raise click.BadParameter(f"the {what} {name!r} {reason}")
    return service, instance or None


def _stamp(at: float | None) -> bytes:
    if at is None:
        return b"-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b"Z"


def _reader(user: str | None) -> str:
    return user or f"{getpass.getuser()}@{socket.gethostname()}"


@click.command()
@click.argument("which", metavar="SERVICE[/ID]", callback=_which)
@click.option("-f", "--follow", is_flag=True, help="Go on printing new lines (until the instance is removed).")
@click.option("--tail", type=click.IntRange(min=0, max=protocol.MAX_TAIL), help="Only the last N lines of each.")
@click.option("--since", callback=_since, metavar="DURATION", help="Only lines newer than this (30s, 5m, 1h).")
@click.option("--timestamps", is_flag=True, help="Put the time the agent first saw each line before it.")
@click.option(
    "--step",
    type=click.Choice([s.value for s in protocol.Step]),
    default=protocol.Step.RUN.value,
    show_default=True,
    help="Which log: a step's output or the health checks'.",
)
@click.option("--prefix", "with_prefix", is_flag=True, help="Put [SERVER/ID] before each line.")
@click.pass_context
def logs(
    ctx: click.Context,
    which: tuple[str, str | None],
    follow: bool,
    tail: int | None,
    since: float | None,
    timestamps: bool,
    step: str,
    with_prefix: bool,
) -> None:
    """Print the logs of an instance, or of every instance of a service, read from their agents."""
    options = main.etcd_options(ctx)
    service, instance = which
    if tail is None and instance is None:
        tail = _SERVICE_TAIL
    query = protocol.LogQuery(
        step=protocol.Step(step),
        tail=tail,
        since=None if since is None else time.time() - since,
        follow=follow,
    )
    out = sys.stdout.buffer

    def retrying(target: logaccess.Target, reason: str) -> None:
        click.echo(f"warning: {reason}; trying again", err=True)

    async def run() -> int:
        store = Store(await client.connect(options))
        failed = 0
        try:
            found = await logaccess.targets(store, service, instance)
            if not found:
                what = f"{service}/{instance}" if instance else f"service {service}"
                raise main.fail(f"no server lists {what} (see `discoverd get instances`)")
            async with logaccess.Session(store, reader=_reader(options.user), on_retry=retrying) as session:
                items = logaccess.merged(session, found, query) if follow else _one_by_one(session, found, query)
                async for item in items:
                    if isinstance(item, Exception):
                        click.echo(f"error: {item}", err=True)
                        failed += 1
                        continue
                    head = b""
                    if with_prefix:
                        head += f"[{item.target.server}/{item.target.instance}] ".encode()
                    if timestamps:
                        head += _stamp(item.at) + b" "
                    out.write(head + item.text.encode("utf-8", "surrogateescape") + b"\n")
                    out.flush()
        finally:
            await store.close()
        return 1 if failed else 0

    try:
        code = main.run_async(run())
    except BrokenPipeError:  # `discoverd logs ... | head`
        sys.stderr.close()
        code = 0
    if code:
        ctx.exit(code)


async def _one_by_one(
    session: logaccess.Session, found: list[logaccess.Target], query: protocol.LogQuery
) -> AsyncIterator[logaccess.Line | Exception]:
    """Without follow: each instance's lines in turn (sorted by server, then ID)."""
    for target in found:
        try:
            async for line in session.lines(target, query):
                yield line
        except (logaccess.LogAccessError, StoreUnavailable) as error:
            yield error
