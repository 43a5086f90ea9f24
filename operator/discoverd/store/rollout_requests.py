"""What a person asks of a rollout (DESIGN 2b): start, pause, resume, undo, each one guarded write.

`discoverd rollout start|pause|resume|undo` and the dashboard's buttons both
call these, so a click and a command write the same thing with the same
checks. They only write the rollout config (`.../rollout/config/details`),
guarded by the key's mod_revision, and read the status the acting controller
writes; the controller is the only writer of instance documents. `start` also
deletes the previous rollout's status in the same transaction, so the
controller starts afresh even for the same target version.

A request that cannot be carried out raises `Refused`, whose message says why
and what to do (the CLI prints it as its one-line error, the dashboard shows it).
"""

from __future__ import annotations

from typing import Any

from discoverd.errors import Conflict, DiscoverdError
from discoverd.schema import documents, keys, rollouts
from discoverd.store.typed import Entry, Store, Write

__all__ = ["ACTIVE", "CHANGES", "Refused", "change", "config", "replace", "start", "status_of"]

ACTIVE = (rollouts.RolloutPhase.PROGRESSING, rollouts.RolloutPhase.PAUSED)
"""Phases of a rollout still under way: another cannot start, pause and resume apply."""

CHANGES: dict[str, dict[str, Any]] = {
    "pause": {"paused": True},
    "resume": {"paused": False, "pause_after_canary": False},
    "undo": {"undo": True},
}
"""The config fields each change of a running rollout sets."""


class Refused(DiscoverdError):
    """The request cannot be carried out as things are; the message says why and what to do."""


def status_of(entry: Entry | None) -> rollouts.RolloutStatus | None:
    """The rollout status an entry holds (None: no status yet); its InvalidDocument if it is unreadable."""
    if entry is None:
        return None
    if entry.error is not None:
        raise entry.error
    return entry.document if isinstance(entry.document, rollouts.RolloutStatus) else None


def config(prefix: str, service: str, fields: dict[str, Any]) -> rollouts.RolloutConfig:
    """The rollout config asked for (`name` is `service`); InvalidDocument naming the field if it is wrong."""
    return documents.validate(rollouts.RolloutConfig, keys.rollout_config(prefix, service), {**fields, "name": service})


async def start(store: Store, config: rollouts.RolloutConfig) -> str:
    """Write `config` as the service's new rollout; what was done, as a sentence."""
    prefix, service = store.prefix, config.name
    version = await store.get(keys.version_config(prefix, service, config.to_version))
    if version is None:
        raise Refused(f"service {service!r} has no version {config.to_version!r}: apply its version document first")
    if version.error is not None:
        raise version.error
    instances = await store.snapshot(keys.service_instances_prefix(prefix, service))
    if not instances.entries:
        raise Refused(f"service {service!r} has no instances to roll out")
    config_key, status_key = keys.rollout_config(prefix, service), keys.rollout_status(prefix, service)
    old_config, old_status = await store.get(config_key), await store.get(status_key)
    status = status_of(old_status)
    if status is not None and status.phase in ACTIVE:
        raise Refused(
            f"a rollout of {service!r} to {status.to_version} is {status.phase.value.lower()}; "
            f"wait for it or run `discoverd rollout undo {service}` first"
        )
    await replace(store, config, old_config, old_status)
    return f"Started a rollout of {service!r} to version {config.to_version} ({len(instances.entries)} instances)."


async def replace(
    store: Store, config: rollouts.RolloutConfig, old_config: Entry | None, old_status: Entry | None
) -> None:
    """Write `config` over `old_config` and delete `old_status`, in one transaction guarded by both
    revisions (the controller then starts afresh, even for the same target); Refused if either changed."""
    service = config.name
    config_key, status_key = keys.rollout_config(store.prefix, service), keys.rollout_status(store.prefix, service)
    writes = [Write(config_key, documents.dumps(config), old_config.mod_revision if old_config else 0)]
    if old_status is not None:
        writes.append(Write(status_key, None, old_status.mod_revision))
    try:
        await store.apply(writes)
    except Conflict:
        raise Refused(f"the rollout of {service!r} changed meanwhile; run the command again") from None


async def change(store: Store, service: str, what: str) -> str:
    """Pause, resume or undo (`what`, a key of CHANGES) the service's rollout; what was done, as a sentence."""
    fields = CHANGES[what]
    key = keys.rollout_config(store.prefix, service)
    entry = await store.get(key)
    if entry is None:
        raise Refused(f"service {service!r} has no rollout (start one with `discoverd rollout start`)")
    if entry.error is not None or not isinstance(entry.document, rollouts.RolloutConfig):
        raise Refused(f"cannot {what}: {entry.error}")
    status = status_of(await store.get(keys.rollout_status(store.prefix, service)))
    if what != "undo" and status is not None and status.phase not in ACTIVE:
        raise Refused(f"the rollout of {service!r} has ended ({status.phase.value}); nothing to {what}")
    if what == "undo" and status is not None and status.phase is rollouts.RolloutPhase.REVERTED:
        raise Refused(f"the rollout of {service!r} is already reverted")
    try:
        await store.put(key, entry.document.model_copy(update=fields), expect=entry.mod_revision)
    except Conflict:
        raise Refused(f"the rollout of {service!r} changed meanwhile; run the command again") from None
    return f"Asked the controller to {what} the rollout of {service!r} to {entry.document.to_version}."
