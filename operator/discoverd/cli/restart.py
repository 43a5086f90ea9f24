"""`discoverd restart SERVICE[/ID]`: restart instances without a version change, like `kubectl rollout restart`.

A service's restart is a rollout (DESIGN 2b) whose config carries a new
`restart_token`: the acting controller writes that token into each instance
document, in batches of `--max-unavailable`, and waits for the agents to
report each instance `Running` with it; so `rollout status|pause|resume`
work on it. The agent restarts an instance whose token differs from the one
its process was started with: stop with its grace, start the same version, no
install. One instance (`SERVICE/ID`) gets the token written directly (a
compare-and-swap on its document). The token is the time of the request, as
kubectl's `restartedAt` annotation. See docs/operating.md, "Restart".
"""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import click

from discoverd.cli import main
from discoverd.cli import rollout as rollout_cli
from discoverd.config import EtcdOptions
from discoverd.errors import Conflict
from discoverd.schema import documents, keys, rollouts
from discoverd.store import client, rollout_requests
from discoverd.store.typed import Store

__all__ = ["new_token", "restart"]


def new_token(now: dt.datetime | None = None) -> str:
    """A fresh restart token: the time of the request, to the microsecond (`2026-12-06T20:01:02.123456Z`)."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _target(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str | None]:
    service, _, instance = value.partition("/")
    for name in (service, instance) if "/" in value else (service,):
        reason = keys.segment_error(name)
        if reason is not None:
            raise click.BadParameter(f"{name!r} {reason} (expected SERVICE or SERVICE/ID)")
    return service, instance if "/" in value else None


async def _active(store: Store, prefix: str, service: str) -> rollouts.RolloutStatus | None:
    """The status of a rollout (or restart) of `service` under way, if there is one."""
    entry = await store.get(keys.rollout_status(prefix, service))
    if entry is None or not isinstance(entry.document, rollouts.RolloutStatus):
        return None
    return entry.document if entry.document.phase in rollout_requests.ACTIVE else None


def _busy(service: str, status: rollouts.RolloutStatus) -> main.Failure:
    what = "a restart" if status.restart_token is not None else f"a rollout to {status.to_version}"
    return main.fail(
        f"{what} of {service!r} is {status.phase.value.lower()}; wait for it "
        f"(`discoverd rollout status {service} -w`) or end it (`discoverd rollout undo {service}`) first"
    )


async def _one(options: EtcdOptions, service: str, instance: str, token: str) -> str:
    store = Store(await client.connect(options))
    try:
        key = keys.instance_config(options.prefix, service, instance)
        entry = await store.get(key)
        if entry is None:
            raise main.fail(f"instance {service}/{instance} does not exist ({key})")
        if entry.error is not None:
            raise entry.error
        assert isinstance(entry.document, documents.Instance)
        if (status := await _active(store, options.prefix, service)) is not None:
            raise _busy(service, status)
        try:
            await store.put(key, entry.document.model_copy(update={"restart_token": token}), expect=entry.mod_revision)
        except Conflict:
            raise main.fail(f"instance {service}/{instance} changed meanwhile; run the command again") from None
        return f"Asked the agent to restart {service}/{instance} (restart token {token})."
    finally:
        await store.close()


async def _service(options: EtcdOptions, service: str, fields: dict[str, Any]) -> str:
    store = Store(await client.connect(options))
    try:
        prefix = options.prefix
        instances = await store.snapshot(keys.service_instances_prefix(prefix, service))
        versions = collections.Counter(
            e.document.service_version for e in instances.entries.values() if isinstance(e.document, documents.Instance)
        )
        if not versions:
            raise main.fail(f"service {service!r} has no instances to restart")
        # Each instance keeps its version; the status names the one most of them run.
        version = sorted(versions.items(), key=lambda item: (-item[1], item[0]))[0][0]
        config_key, status_key = keys.rollout_config(prefix, service), keys.rollout_status(prefix, service)
        old_config, old_status = await store.get(config_key), await store.get(status_key)
        if (status := await _active(store, prefix, service)) is not None:
            raise _busy(service, status)
        config = documents.validate(rollouts.RolloutConfig, config_key, {**fields, "to_version": version})
        try:
            await rollout_requests.replace(store, config, old_config, old_status)
        except rollout_requests.Refused as refused:
            raise main.fail(str(refused)) from None
        count = sum(versions.values())
        return (
            f"Started a restart of {service!r} ({count} instances, at most {config.max_unavailable} at a time); "
            f"follow it with `discoverd rollout status {service} -w`."
        )
    finally:
        await store.close()


@click.command()
@click.argument("target", metavar="SERVICE[/ID]", callback=_target)
@click.option(
    "--max-unavailable",
    callback=rollout_cli._max_unavailable,  # the same option as `rollout start`, parsed the same way
    help="Instances restarting or not healthy at once: a count or a percentage such as 25%.  [default: 1]",
)
@click.option(
    "--min-healthy-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a restarted instance must be Running before the next batch.  [default: 10]",
)
@click.pass_context
def restart(
    ctx: click.Context,
    target: tuple[str, str | None],
    max_unavailable: int | str | None,
    min_healthy_seconds: float | None,
) -> None:
    """Restart a service's instances in batches (or one instance), keeping their versions."""
    service, instance = target
    options = main.etcd_options(ctx)
    token = new_token()
    if instance is not None:
        if max_unavailable is not None or min_healthy_seconds is not None:
            raise main.fail("--max-unavailable and --min-healthy-seconds are for a whole service, not SERVICE/ID")
        click.echo(main.run_async(_one(options, service, instance, token)))
        return
    fields: dict[str, Any] = {"name": service, "restart_token": token, "auto_revert": False}
    if max_unavailable is not None:
        fields["max_unavailable"] = max_unavailable
    if min_healthy_seconds is not None:
        fields["min_healthy_seconds"] = min_healthy_seconds
    click.echo(main.run_async(_service(options, service, fields)))
