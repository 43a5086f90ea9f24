"""`discoverd controller`: the rollout controller (DESIGN 2b); run any number, one acts (wiring only)."""

from __future__ import annotations

import asyncio
import signal

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions

__all__ = ["controller", "run_until_signal"]


async def run_until_signal(options: EtcdOptions, ttl: int, metrics_address: str = "") -> None:
    """Run a controller until SIGTERM or SIGINT; then hand the leader lease back at once."""
    from discoverd.controller import loop

    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    try:
        await loop.run(options, stop, ttl, metrics_address)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)


@click.command()
@click.option(
    "--lease-ttl",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    envvar="DISCOVERD_CONTROLLER_LEASE_TTL",
    help="Seconds a dead leader holds the leader key before another copy takes over.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1:9466",
    show_default=True,
    envvar="DISCOVERD_CONTROLLER_METRICS_ADDRESS",
    callback=main.metrics_address,
    help='HOST:PORT serving /metrics, /healthz and /readyz ("" serves none).',
)
@click.pass_context
def controller(ctx: click.Context, lease_ttl: int, metrics_address: str) -> None:
    """Run the rollout controller; of any number of copies one acts, the others wait to take over."""
    main.run_async(run_until_signal(main.etcd_options(ctx), lease_ttl, metrics_address))
