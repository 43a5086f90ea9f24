"""`discoverd agent --server-id ID`: the node agent (wiring only; the agent lives in `discoverd.agent`).

SIGTERM and SIGINT end the agent cleanly and leave the instances running (they
are services, not children to reap), unless `--stop-instances-on-exit`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from discoverd.agent import artifacts, cgroups, extract, identity, logserver, loop, model, scriptlogs
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


def _advertise(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value:
        try:
            logserver.split_advertise(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
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
    default=scriptlogs.LogLimit.max_bytes,
    show_default=True,
    help="Size at which a run, step or health log is rotated.",
)
@click.option(
    "--script-log-keep",
    type=click.IntRange(min=0),
    default=scriptlogs.LogLimit.keep,
    show_default=True,
    help="Rotated copies kept of each log (<log>.1 is the newest).",
)
@click.option(
    "--script-log-check-interval",
    type=click.FloatRange(min=0.05),
    default=scriptlogs.LogLimit.interval,
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
    "--artifact-cache-mb",
    type=click.IntRange(min=1),
    default=artifacts.Settings.cache_bytes // 2**20,
    show_default=True,
    envvar="DISCOVERD_ARTIFACT_CACHE_MB",
    help="Size of the artifact cache (<state>/cache); the least recently used blob no install uses is evicted first.",
)
@click.option(
    "--artifact-max-mb",
    type=click.IntRange(min=1),
    default=artifacts.Settings.max_bytes // 2**20,
    show_default=True,
    help="Largest artifact fetched.",
)
@click.option(
    "--artifact-max-unpacked-mb",
    type=click.IntRange(min=1),
    default=extract.Limits.max_bytes // 2**20,
    show_default=True,
    help="Most bytes one archive may unpack to (checked while unpacking).",
)
@click.option(
    "--artifact-max-files",
    type=click.IntRange(min=1),
    default=extract.Limits.max_files,
    show_default=True,
    help="Most entries one archive may hold.",
)
@click.option(
    "--artifact-parallel",
    type=click.IntRange(min=1),
    default=artifacts.Settings.parallel,
    show_default=True,
    help="Artifact downloads at once, over the whole agent.",
)
@click.option(
    "--artifact-timeouts",
    type=(click.FloatRange(min=0.01), click.FloatRange(min=0.01), click.FloatRange(min=0.01)),
    default=(artifacts.Settings.connect_timeout, artifacts.Settings.read_timeout, artifacts.Settings.total_timeout),
    show_default=True,
    metavar="CONNECT READ TOTAL",
    help="Seconds to connect, without a byte received, and for one artifact with all its attempts.",
)
@click.option(
    "--artifact-attempts",
    type=click.IntRange(min=1, max=100),
    default=artifacts.Settings.attempts,
    show_default=True,
    help="Attempts per artifact (retried with back-off on connection errors, timeouts, 408, 429, 5xx).",
)
@click.option(
    "--keep-versions",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Installs kept per service besides those in use and each instance's previous one (for rollback).",
)
@click.option(
    "--api-address",
    default="127.0.0.1:0",
    show_default=True,
    envvar="DISCOVERD_API_ADDRESS",
    callback=main.metrics_address,
    help="HOST:PORT serving the instances' logs over HTTPS to readers with a grant (port 0: any free port, "
    'published in the agent status; "" serves none).',
)
@click.option(
    "--api-advertise-address",
    default="",
    envvar="DISCOVERD_API_ADVERTISE_ADDRESS",
    callback=_advertise,
    help="HOST[:PORT] readers are told to connect to (default: the bound address; a wildcard bind: the hostname).",
)
@click.option(
    "--api-max-connections",
    type=click.IntRange(min=1),
    default=logserver.Limits.max_connections,
    show_default=True,
    help="Log readers served at once.",
)
@click.option(
    "--api-bytes-per-second",
    type=click.IntRange(min=1024),
    default=logserver.Limits.bytes_per_second,
    show_default=True,
    help="Rate at which one log reader is sent bytes.",
)
@click.option(
    "--api-request-timeout",
    type=click.FloatRange(min=0.1),
    default=logserver.Limits.request_timeout,
    show_default=True,
    help="Seconds a log request without follow may take.",
)
@click.option(
    "--api-grant-recheck",
    type=click.FloatRange(min=0.05),
    default=logserver.Limits.grant_recheck,
    hidden=True,
    help="Seconds between two checks of a follower's grant (tests shorten it).",
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
    artifact_cache_mb: int,
    artifact_max_mb: int,
    artifact_max_unpacked_mb: int,
    artifact_max_files: int,
    artifact_parallel: int,
    artifact_timeouts: tuple[float, float, float],
    artifact_attempts: int,
    keep_versions: int,
    api_address: str,
    api_advertise_address: str,
    api_max_connections: int,
    api_bytes_per_second: int,
    api_request_timeout: float,
    api_grant_recheck: float,
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
        script_logs=scriptlogs.LogLimit(script_log_max_bytes, script_log_keep, script_log_check_interval),
        metrics_address=metrics_address,
        artifacts=artifacts.Settings(
            cache_bytes=artifact_cache_mb * 2**20,
            max_bytes=artifact_max_mb * 2**20,
            parallel=artifact_parallel,
            connect_timeout=artifact_timeouts[0],
            read_timeout=artifact_timeouts[1],
            total_timeout=artifact_timeouts[2],
            attempts=artifact_attempts,
            unpack=extract.Limits(artifact_max_unpacked_mb * 2**20, artifact_max_files),
        ),
        keep_versions=keep_versions,
        api_address=api_address,
        api_advertise=api_advertise_address,
        api_limits=logserver.Limits(
            max_connections=api_max_connections,
            bytes_per_second=api_bytes_per_second,
            request_timeout=api_request_timeout,
            grant_recheck=api_grant_recheck,
        ),
        identity=source,
    )
    main.run_async(run_until_signal(loop.Agent(etcd, options)))
