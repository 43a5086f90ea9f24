"""Old installs: which versions of a service to keep on disk, and removing the rest.

Called by the executor after an instance counts as started on a version (the
moment a new rollback point exists). `keep` decides (pure); `prune` removes.

Kept, per service:

- every version an instance of this server runs, ran last, or may roll back
  to (its current, its last good configuration, its live process);
- every instance's previous version (`InstanceRecord.previous_version`, and the
  version the instance that just counted as started ran before): a rollback by
  hand or by the rollout controller (`auto_revert`) finds its install there and
  starts at once;
- `--keep-versions N` more: the N most recently installed other versions
  (default 0), as a Deployment's `revisionHistoryLimit`;
- any version being installed right now.

The rest is removed, and with it the pin of its artifacts in the cache
(`artifacts.Artifacts.pinned`), so their blobs may be evicted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from discoverd import logs
from discoverd.agent import layout as layout_
from discoverd.agent import model

__all__ = ["keep", "prune"]

log = logging.getLogger(__name__)


def keep(
    service: str,
    states: Iterable[model.InstanceRecord],
    previous: str | None,
    installed: dict[str, float],
    keep_versions: int = 0,
) -> set[str]:
    """The versions of `service` to keep; `installed` maps each version on disk to when it was installed."""
    kept = {previous} if previous else set()
    for state in states:
        if state.ref.service != service or state.removed_at is not None:
            continue
        for target in (state.current, state.good):
            if target is not None:
                kept.add(target.version)
        if state.process is not None:
            kept.add(state.process.version)
        if state.previous_version:
            kept.add(state.previous_version)
    others = sorted((v for v in installed if v not in kept), key=lambda v: installed[v], reverse=True)
    return kept | set(others[: max(keep_versions, 0)])


def prune(
    layout: layout_.Layout,
    service: str,
    states: Iterable[model.InstanceRecord],
    previous: str | None,
    busy: Callable[[str], bool],
    keep_versions: int = 0,
) -> list[str]:
    """Remove the installs of `service` that `keep` does not keep and nobody is installing; the versions removed."""
    versions = layout.service_versions(service)
    installed = {v: layout.installed_at(service, v) for v in versions}
    kept = keep(service, states, previous, installed, keep_versions)
    removed = []
    for version in versions:
        if version in kept or busy(version):
            continue
        layout.remove_version(service, version)
        removed.append(version)
        log.info("Removed old install", extra=logs.kv(service=service, version=version))
    return removed
