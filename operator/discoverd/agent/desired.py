"""What this server should run: etcd entries -> one `model.Target` (or `model.Broken`) per instance.

First stage of the agent's flow after the store: `scope` keeps this
server's entries up to date from the watch (its server document, the version
documents of its services, its instance documents: `listed` says which) and
`loop` calls `resolve` whenever they change. The server document names the instances; each instance names its
version; the instance's run script overrides the version's ("overwrite or
improve", DESIGN section 1). An invalid or missing document makes that one
instance `Broken` (its message names the key and the field); an invalid
server document keeps the instance list that was valid before and is
reported on the agent status. The server document's `drained` (and
`drain_deadline`) becomes `Desired.drain`, kept from the last valid document
like the instance list.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from discoverd.agent import model
from discoverd.schema import documents, keys
from discoverd.store.typed import Entry

__all__ = ["Desired", "drain_of", "listed", "merge_run", "resolve"]


@dataclass(frozen=True)
class Desired:
    instances: Mapping[model.Ref, model.Target | model.Broken] = field(default_factory=dict)
    refs: tuple[model.Ref, ...] = ()
    """The instances the server document lists (the last valid list when it is invalid now)."""
    server_error: str | None = None
    drain: model.Drain | None = None
    """Set when the server document says `drained` (the last valid document's when it is invalid now)."""


def merge_run(version: documents.Script, instance: documents.Script) -> documents.Script:
    """The instance's run script: a command replaces the version's; argv alone is appended to it."""
    env = {**(version.env or {}), **(instance.env or {})} or None
    if not instance.empty:
        return documents.Script(command=instance.command, argv=list(instance.argv), env=env)
    return documents.Script(command=version.command, argv=[*version.argv, *instance.argv], env=env)


def _missing(key: str, what: str, waiting: Collection[str]) -> str:
    if any(key.startswith(w) for w in waiting):
        return (
            f"{key}: not readable yet: etcd refused this server's user (permission denied); reading it again "
            "until the controller grants it (`discoverd auth sync` where no controller runs)"
        )
    return f"{key}: the {what} document does not exist"


def _resolve_one(
    entries: Mapping[str, Entry], prefix: str, ref: model.Ref, waiting: Collection[str] = ()
) -> model.Target | model.Broken:
    instance_key = keys.instance_config(prefix, ref.service, ref.instance)
    entry = entries.get(instance_key)
    if entry is None:
        return model.Broken(ref, _missing(instance_key, "instance", waiting))
    if entry.error is not None or not isinstance(entry.document, documents.Instance):
        return model.Broken(ref, str(entry.error or f"{instance_key}: not an instance document"))
    instance = entry.document
    version_key = keys.version_config(prefix, ref.service, instance.service_version)
    ventry = entries.get(version_key)
    if ventry is None:
        return model.Broken(ref, _missing(version_key, "version", waiting))
    if ventry.error is not None or not isinstance(ventry.document, documents.Version):
        return model.Broken(ref, str(ventry.error or f"{version_key}: not a version document"))
    version = ventry.document
    run = merge_run(version.run_script, instance.run_script)
    return model.Target(ref, instance.service_version, version, run, instance.restart_token or "")


def listed(
    entries: Mapping[str, Entry], prefix: str, server_id: str, last_refs: tuple[model.Ref, ...] = ()
) -> tuple[tuple[model.Ref, ...], str | None]:
    """The instances server `server_id` lists, and why its document is invalid (then: `last_refs`)."""
    server_key = keys.server_config(prefix, server_id)
    entry = entries.get(server_key)
    if entry is None:
        return (), None
    if entry.error is not None or not isinstance(entry.document, documents.Server):
        return last_refs, str(entry.error or f"{server_key}: not a server document")
    return tuple(model.Ref(r.name, r.id) for r in entry.document.service_instances), None


def drain_of(
    entries: Mapping[str, Entry], prefix: str, server_id: str, last: model.Drain | None = None
) -> model.Drain | None:
    """Whether server `server_id` is drained, and until when it waits (`last` when its document is invalid)."""
    entry = entries.get(keys.server_config(prefix, server_id))
    if entry is None:
        return None
    if entry.error is not None or not isinstance(entry.document, documents.Server):
        return last
    doc = entry.document
    if not doc.drained:
        return None
    return model.Drain(doc.drain_deadline.timestamp() if doc.drain_deadline is not None else None)


def resolve(
    entries: Mapping[str, Entry],
    prefix: str,
    server_id: str,
    last_refs: tuple[model.Ref, ...] = (),
    last_drain: model.Drain | None = None,
    waiting: Collection[str] = (),
) -> Desired:
    """The desired state of server `server_id` from its entries (extra entries are ignored).

    `waiting`: keys and prefixes etcd does not let this server read yet (`scope.ScopedWatch.waiting`);
    an instance whose document is missing there says so instead of "does not exist"."""
    refs, server_error = listed(entries, prefix, server_id, last_refs)
    instances = {ref: _resolve_one(entries, prefix, ref, waiting) for ref in refs}
    return Desired(instances, refs, server_error, drain_of(entries, prefix, server_id, last_drain))
