"""`discoverd agent --server-id ID`: the node agent (wiring only; the agent lives in `discoverd.agent`).

SIGTERM and SIGINT end the agent cleanly and leave the instances running (they
are services, not children to reap), unless `--stop-instances-on-exit`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from discoverd.agent import cgroups, identity, loop, model, steps
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


def _cgroup_root(ctx: click.Context, param: click.Parameter, value: str) -> str:
    for segment in (s for s in value.split("/") if s):
        reason = keys.segment_error(segment)
        if reason is not None:
            raise click.BadParameter(f"{segment!r} {reason}")
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
@click.option(
    "--cgroups",
    "cgroups_mode",
    type=click.Choice(cgroups.MODES),
    default="auto",
    show_default=True,
    envvar="DISCOVERD_CGROUPS",
    help="How each instance gets a cgroup of its own: auto (systemd on systemd hosts, else cgroupfs when "
    "a process can join a cgroup under /sys/fs/cgroup, else none), cgroupfs, systemd (a transient scope), none.",
)
@click.option(
    "--cgroup-root",
    default="/",
    show_default=True,
    envvar="DISCOVERD_CGROUP_ROOT",
    callback=_cgroup_root,
    help="With cgroupfs: instances go to <root>/discoverd/<service>/<ID> in every hierarchy.",
)
@click.option(
    "--script-log-max-bytes",
    type=click.IntRange(min=1024),
    default=steps.LogLimit.max_bytes,
    show_default=True,
    help="Size at which a run, step or health log is rotated.",
)
@click.option(
    "--script-log-keep",
    type=click.IntRange(min=0),
    default=steps.LogLimit.keep,
    show_default=True,
    help="Rotated copies kept of each log (<log>.1 is the newest).",
)
@click.option(
    "--script-log-check-interval",
    type=click.FloatRange(min=0.05),
    default=steps.LogLimit.interval,
    hidden=True,
    help="Seconds between checks of a running script's log size (tests shorten it).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1:9464",
    show_default=True,
    envvar="DISCOVERD_METRICS_ADDRESS",
    callback=main.metrics_address,
    help='HOST:PORT serving /metrics, /healthz and /readyz ("" serves none).',
)
@click.option(
    "--identity-url",
    default="",
    envvar="DISCOVERD_IDENTITY_URL",
    help="Node identity: get this server's etcd credentials from the operator at this https:// URL "
    "(instead of --etcd-user/--etcd-password), proving who it is with --identity-token-file.",
)
@click.option(
    "--identity-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/var/run/secrets/discoverd/token"),
    show_default=True,
    envvar="DISCOVERD_IDENTITY_TOKEN_FILE",
    help="The projected, audience-bound ServiceAccount token the kubelet keeps for this pod.",
)
@click.option(
    "--identity-ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DISCOVERD_IDENTITY_CA_FILE",
    help="The CA certificate the operator's endpoint certificate must be signed by.",
)
@click.option("--stop-instances-on-exit", is_flag=True, help="Stop every instance when the agent exits.")
@click.option("--lease-ttl", type=click.IntRange(min=2), default=15, show_default=True, help="Seconds.")
@click.option(
    "--backoff-base",
    type=click.FloatRange(min=0.01),
    default=model.BACKOFF_BASE,
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
    cgroups_mode: str,
    cgroup_root: str,
    script_log_max_bytes: int,
    script_log_keep: int,
    script_log_check_interval: float,
    metrics_address: str,
    identity_url: str,
    identity_token_file: Path,
    identity_ca_file: Path | None,
    stop_instances_on_exit: bool,
    lease_ttl: int,
    backoff_base: float,
) -> None:
    """Run this server's instances as etcd configures them."""
    try:
        placement = cgroups.choose(cgroups_mode, cgroup_root, host_pid if host_namespaces else None)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--cgroups") from None
    etcd = main.etcd_options(ctx)
    source = None
    if identity_url:
        if etcd.user is not None:
            raise main.fail("--identity-url gets this server's etcd credentials: give no --etcd-user/--etcd-password")
        source = identity.Source(identity_url, server_id, identity_token_file, identity_ca_file)
        try:
            source.check()
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--identity-url") from None
    options = loop.Options(
        server_id=server_id,
        state_dir=state_dir,
        host_namespaces=host_namespaces,
        host_pid=host_pid,
        stop_instances_on_exit=stop_instances_on_exit,
        lease_ttl=lease_ttl,
        backoff_base=backoff_base,
        placement=placement,
        script_logs=steps.LogLimit(script_log_max_bytes, script_log_keep, script_log_check_interval),
        metrics_address=metrics_address,
        identity=source,
    )
    main.run_async(run_until_signal(loop.Agent(etcd, options)))
