"""`discoverd operator`: mirror one etcd prefix into one namespace's custom resources, both ways.

It also runs the rollout controller (DESIGN 2b) on the same prefix, unless
`--no-controller`: one of any number of controllers acts, elected through
etcd, so it coexists with `discoverd controller` processes elsewhere.
"""

from __future__ import annotations

import asyncio

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions

__all__ = ["operator"]


async def _run(namespace: str, options: EtcdOptions, controller: bool, metrics_address: str) -> None:
    from discoverd import metrics
    from discoverd.controller import loop as controller_loop
    from discoverd.operator import main as operator_main

    if not controller:
        await operator_main.run(namespace, options, metrics_address)
        return
    stop = asyncio.Event()
    # The controller's metrics are served on the operator's endpoint (one port per process).
    m = metrics.ControllerMetrics(controller_loop.PHASES)
    rollouts = asyncio.create_task(controller_loop.run(options, stop, metrics_=m), name="rollout controller")
    try:
        await operator_main.run(namespace, options, metrics_address, [m.registry])  # returns when Kopf is signalled
    finally:
        stop.set()  # the controller gives its leader lease back at once
        await rollouts


@click.command("operator")
@click.option(
    "--namespace",
    "-n",
    required=True,
    envvar="DISCOVERD_NAMESPACE",
    help="Namespace whose Server, ServiceVersion and ServiceInstance objects mirror the prefix.",
)
@click.option(
    "--controller/--no-controller",
    default=True,
    show_default=True,
    envvar="DISCOVERD_OPERATOR_CONTROLLER",
    help="Also run the rollout controller (one of any number acts).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1:9465",
    show_default=True,
    envvar="DISCOVERD_OPERATOR_METRICS_ADDRESS",
    callback=main.metrics_address,
    help='HOST:PORT serving /metrics, /healthz and /readyz ("" serves none).',
)
@click.pass_context
def operator(ctx: click.Context, namespace: str, controller: bool, metrics_address: str) -> None:
    """Run the Kopf operator (one replica per prefix and namespace) and the rollout controller."""
    main.run_async(_run(namespace, main.etcd_options(ctx), controller, metrics_address))
