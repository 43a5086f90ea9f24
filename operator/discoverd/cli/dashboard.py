"""`discoverd dashboard [--address 127.0.0.1:3100] [--read-only]`: serve the live web dashboard locally.

Like `kubectl argo rollouts dashboard`, it runs on the caller's machine with
the caller's etcd options; wiring only, the server is `discoverd.dashboard`.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
import socket
from collections.abc import Awaitable

import click
from aiohttp import web

from discoverd import logs, metrics, runtime
from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.dashboard import feed as feed_
from discoverd.dashboard import server
from discoverd.store import client
from discoverd.store.typed import Store

__all__ = ["dashboard"]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:3100"


def _address(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        parsed = metrics.parse_address(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if parsed is None:
        raise click.BadParameter("must be HOST:PORT")
    return parsed


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one, which the printed URL then names)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _serve(options: EtcdOptions, host: str, port: int, read_only: bool) -> None:
    store = Store(await client.connect(options))
    await store.revision()  # a clear error now if etcd cannot be reached, before a URL is printed
    feed = feed_.Feed(store)
    # Supervised like the other components' loops: a value nobody foresaw is logged, and the feed starts again.
    following = asyncio.create_task(runtime.supervise("dashboard feed", feed.run), name="dashboard-feed")
    reader = f"dashboard {options.user or getpass.getuser()}@{socket.gethostname()}"
    board = server.Dashboard(feed, host=host, read_only=read_only, reader=reader)
    runner = web.AppRunner(board.app(), access_log=None, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        try:
            sock = _bind(host, port)
        except OSError as error:
            raise main.fail(f"--address {host}:{port}: {error.strerror or error}") from None
        await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        board.port = int(sock.getsockname()[1])
        mode = " (read-only)" if read_only else ""
        click.echo(f"Dashboard{mode} at {board.url()}")
        click.echo("Open that URL (it carries this run's access token); Ctrl-C stops the dashboard.")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # Each step bounded: a dashboard asked to stop stops, and a step that hangs is named in the log.
        await _within("the web server", runner.cleanup())
        following.cancel()
        await _within("the etcd feed", following)
        await _within("the etcd connection", store.close())


STOP_STEP_SECONDS = 5.0
"""How long one step of stopping (the web server, the feed, the etcd connection) may take."""


async def _within(what: str, step: Awaitable[object]) -> None:
    """Wait for `step` at most STOP_STEP_SECONDS; past that, log it and go on (it is not waited for again)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=STOP_STEP_SECONDS)
    if not done:
        task.cancel()
        log.warning("Stopped without waiting", extra=logs.kv(step=what, waited=f"{STOP_STEP_SECONDS:g}s"))
    elif not task.cancelled() and (error := task.exception()) is not None:
        log.warning("Failed while stopping", extra=logs.kv(step=what, error=str(error)))


@click.command()
@click.option(
    "--address",
    default=DEFAULT_ADDRESS,
    show_default=True,
    callback=_address,
    help="HOST:PORT to serve on (port 0: any free port). Keep it on loopback: the page acts with your etcd rights.",
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing: the buttons are off and refused.")
@click.pass_context
def dashboard(ctx: click.Context, address: tuple[str, int], read_only: bool) -> None:
    """Serve a live web page of the fleet and its rollouts, using your etcd credentials."""
    host, port = address
    main.run_async(_serve(main.etcd_options(ctx), host, port, read_only))
