"""`discoverd operator`: mirror one etcd prefix into one namespace's custom resources, both ways."""

from __future__ import annotations

import click

from discoverd.cli import main

__all__ = ["operator"]


@click.command("operator")
@click.option(
    "--namespace",
    "-n",
    required=True,
    envvar="DISCOVERD_NAMESPACE",
    help="Namespace whose Server, ServiceVersion and ServiceInstance objects mirror the prefix.",
)
@click.pass_context
def operator(ctx: click.Context, namespace: str) -> None:
    """Run the Kopf operator (one replica per prefix and namespace)."""
    from discoverd.operator import main as operator_main

    main.run_async(operator_main.run(namespace, main.etcd_options(ctx)))
