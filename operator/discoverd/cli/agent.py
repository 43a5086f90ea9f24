"""`discoverd agent --server-id ID`: the node agent (wiring only; the agent lives in `discoverd.agent`).

SIGTERM and SIGINT end the agent cleanly and leave the instances running (they
are services, not children to reap), unless `--stop-instances-on-exit`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from discoverd.agent import loop, plan
from discoverd.cli import main
from discoverd.schema import keys

__all__ = ["agent", "run_until_signal"]


async def run_until_signal(agent: loop.Agent) -> None:
    """Run `agent` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)


def _server_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    reason = keys.segment_error(value)
    if reason is not None:
        raise click.BadParameter(f"{value!r} {reason}")
    return value


@click.command()
@click.option("--server-id", required=True, envvar="DISCOVERD_SERVER_ID", callback=_server_id, help="This server's ID.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/discoverd"),
    show_default=True,
    envvar="DISCOVERD_STATE_DIR",
    help="Where versions are installed and instances run.",
)
@click.option(
    "--host-namespaces",
    is_flag=True,
    envvar="DISCOVERD_HOST_NAMESPACES",
    help="Run every script with nsenter in the namespaces of --host-pid (for an agent in a container).",
)
@click.option("--host-pid", type=click.IntRange(min=1), default=1, show_default=True, envvar="DISCOVERD_HOST_PID")
@click.option("--stop-instances-on-exit", is_flag=True, help="Stop every instance when the agent exits.")
@click.option("--lease-ttl", type=click.IntRange(min=2), default=15, show_default=True, help="Seconds.")
@click.option(
    "--backoff-base",
    type=click.FloatRange(min=0.01),
    default=plan.BACKOFF_BASE,
    show_default=True,
    hidden=True,
    help="First restart delay in seconds (tests shorten it).",
)
@click.pass_context
def agent(
    ctx: click.Context,
    server_id: str,
    state_dir: Path,
    host_namespaces: bool,
    host_pid: int,
    stop_instances_on_exit: bool,
    lease_ttl: int,
    backoff_base: float,
) -> None:
    """Run this server's instances as etcd configures them."""
    options = loop.Options(
        server_id=server_id,
        state_dir=state_dir,
        host_namespaces=host_namespaces,
        host_pid=host_pid,
        stop_instances_on_exit=stop_instances_on_exit,
        lease_ttl=lease_ttl,
        backoff_base=backoff_base,
    )
    main.run_async(run_until_signal(loop.Agent(main.etcd_options(ctx), options)))
