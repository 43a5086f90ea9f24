"""`discoverd operator`: mirror one etcd prefix into one namespace's custom resources, both ways.

It also runs the rollout controller (DESIGN 2b) on the same prefix, unless
`--no-controller`: one of any number of controllers acts, elected through
etcd, so it coexists with `discoverd controller` processes elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions

if TYPE_CHECKING:  # imported when run: the operator's modules load Kopf, slow for `--help`
    from discoverd.operator.main import IdentityServer

__all__ = ["operator"]


async def _run(
    namespace: str, options: EtcdOptions, controller: bool, metrics_address: str, server: IdentityServer | None
) -> None:
    from discoverd import metrics
    from discoverd.controller import loop as controller_loop
    from discoverd.operator import main as operator_main

    if not controller:
        await operator_main.run(namespace, options, metrics_address, identity_server=server)
        return
    stop = asyncio.Event()
    # The controller's metrics are served on the operator's endpoint (one port per process).
    m = metrics.ControllerMetrics(controller_loop.PHASES)
    rollouts = asyncio.create_task(controller_loop.run(options, stop, metrics_=m), name="rollout controller")
    try:
        await operator_main.run(
            namespace, options, metrics_address, [m.registry], server
        )  # returns when Kopf is signalled
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
@click.option(
    "--identity-address",
    default="",
    envvar="DISCOVERD_IDENTITY_ADDRESS",
    help='HOST:PORT serving agents their own server\'s etcd credentials over HTTPS (node identity; "" serves none).',
)
@click.option("--identity-cert", type=click.Path(dir_okay=False, path_type=Path), envvar="DISCOVERD_IDENTITY_CERT")
@click.option("--identity-key", type=click.Path(dir_okay=False, path_type=Path), envvar="DISCOVERD_IDENTITY_KEY")
@click.option(
    "--identity-audience",
    default="discoverd",
    show_default=True,
    envvar="DISCOVERD_IDENTITY_AUDIENCE",
    help="The audience the agents' projected ServiceAccount tokens must be issued for.",
)
@click.option(
    "--agent-service-account",
    default="",
    envvar="DISCOVERD_AGENT_SERVICE_ACCOUNT",
    help="The agents' ServiceAccount (in --namespace); only its pod-bound tokens get credentials.",
)
@click.option(
    "--agent-selector",
    default="",
    envvar="DISCOVERD_AGENT_SELECTOR",
    help="KEY=VALUE[,KEY=VALUE...]: labels every agent pod of this release carries.",
)
@click.option(
    "--identity-ttl",
    type=click.IntRange(min=60),
    default=3600,
    show_default=True,
    envvar="DISCOVERD_IDENTITY_TTL",
    help="Seconds an issued password stays valid; agents renew it after half.",
)
@click.pass_context
def operator(
    ctx: click.Context,
    namespace: str,
    controller: bool,
    metrics_address: str,
    identity_address: str,
    identity_cert: Path | None,
    identity_key: Path | None,
    identity_audience: str,
    agent_service_account: str,
    agent_selector: str,
    identity_ttl: int,
) -> None:
    """Run the Kopf operator (one replica per prefix and namespace) and the rollout controller."""
    server = None
    if identity_address:
        from discoverd.operator import identity
        from discoverd.operator import main as operator_main

        if identity_cert is None or identity_key is None or not agent_service_account or not agent_selector:
            raise main.fail(
                "--identity-address needs --identity-cert, --identity-key, --agent-service-account and --agent-selector"
            )
        labels = dict(part.strip().partition("=")[::2] for part in agent_selector.split(",") if part.strip())
        if any(not k or not v for k, v in labels.items()):
            raise main.fail(f"--agent-selector {agent_selector!r}: give KEY=VALUE pairs separated by commas")
        settings = identity.Settings(namespace, agent_service_account, labels, identity_audience, float(identity_ttl))
        server = operator_main.IdentityServer(identity_address, identity_cert, identity_key, settings)
    main.run_async(_run(namespace, main.etcd_options(ctx), controller, metrics_address, server))
