"""`discoverd apply -f FILE` and `discoverd validate -f FILE`.

apply is all or nothing: every document of every file is validated first, and
the changes are written in one etcd transaction guarded by the mod_revision
each key had when it was read, so a concurrent writer makes apply fail
instead of being overwritten. etcd caps the operations of one transaction
(`--max-txn-ops`, 128 unless set): more documents than that end with one
line saying how to raise it, and nothing written. A document equal to what etcd holds is not
written (apply twice changes nothing). Fields that other writers stored and
discoverd does not know are kept.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from discoverd.cli import main
from discoverd.errors import InvalidDocument
from discoverd.schema import documents, manifests
from discoverd.store import client, typed

__all__ = ["Change", "apply", "plan_changes", "read_manifests", "validate", "write_changes"]


@dataclass(frozen=True)
class Change:
    manifest: manifests.Manifest
    key: str
    action: str  # "created", "configured" or "unchanged"
    old: bytes | None
    new: bytes
    expect: int


def read_manifests(paths: tuple[str, ...]) -> tuple[list[manifests.Manifest], list[InvalidDocument]]:
    """Every document of every file (`-` is standard input)."""
    found: list[manifests.Manifest] = []
    errors: list[InvalidDocument] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as error:
            errors.append(InvalidDocument(path, "", f"cannot read: {error.strerror}"))
            continue
        except UnicodeDecodeError:
            errors.append(InvalidDocument(path, "", "is not UTF-8 text"))
            continue
        valid, invalid = manifests.load(text, "<stdin>" if path == "-" else path)
        found += valid
        errors += invalid
    return found, errors


def _merged(new: documents.Document, old: documents.Document | None) -> documents.Document:
    """`new`, keeping the fields another writer stored in `old` that discoverd does not know, and the
    ones commands set (`kept_by_apply`: a restart token, a drain) when `new` leaves them out."""
    if old is None or type(old) is not type(new):
        return new
    stored = documents.dump(old)
    kept = {k: stored[k] for k in type(new).kept_by_apply if k in stored and k not in new.model_fields_set}
    unknown = {k: v for k, v in (old.model_extra or {}).items() if k not in (new.model_extra or {})}
    if not unknown and not kept:
        return new
    return type(new).model_validate({**documents.dump(new), **kept, **unknown})


async def plan_changes(store: typed.Store, found: list[manifests.Manifest]) -> list[Change]:
    """What applying `found` would do to etcd now."""
    prefix = store.prefix
    entries = await asyncio.gather(*(store.get(m.mapped.key.build(prefix)) for m in found))
    changes = []
    for manifest, entry in zip(found, entries, strict=True):
        key = manifest.mapped.key.build(prefix)
        old_doc = entry.document if entry is not None else None
        doc = _merged(manifest.mapped.document, old_doc)
        if entry is None:
            action = "created"
        elif old_doc is not None and documents.dump(old_doc) == documents.dump(doc):
            action = "unchanged"
        else:
            action = "configured"
        old = entry.value if entry is not None else None
        changes.append(Change(manifest, key, action, old, documents.dumps(doc), entry.mod_revision if entry else 0))
    return changes


async def write_changes(store: typed.Store, changes: list[Change]) -> int:
    writes = [typed.Write(c.key, c.new, c.expect) for c in changes if c.action != "unchanged"]
    return await store.apply(writes)


def _pretty(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False).splitlines(keepends=True)
    except ValueError:
        return raw.decode("utf-8", errors="replace").splitlines(keepends=True)


def _diff(change: Change) -> str:
    lines = difflib.unified_diff(
        _pretty(change.old), _pretty(change.new), fromfile=f"{change.key} (etcd)", tofile=f"{change.key} (applied)"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _report_errors(errors: list[InvalidDocument]) -> None:
    """Every problem of every invalid document, one line each naming the document and the field."""
    for error in errors:
        for line in error.lines():
            click.echo(f"error: {line}", err=True)


files_option = click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    help="YAML file of ServiceVersion, ServiceInstance and Server documents; - for standard input.",
)


@click.command()
@files_option
@click.option("--dry-run", is_flag=True, help="Show what would change (with a diff) and write nothing.")
@click.pass_context
def apply(ctx: click.Context, paths: tuple[str, ...], dry_run: bool) -> None:
    """Write the documents in FILE to etcd, all or nothing."""
    found, errors = read_manifests(paths)
    if errors and not dry_run:
        _report_errors(errors)
        raise main.fail(f"{len(errors)} invalid document{'s' if len(errors) > 1 else ''}: nothing was written")
    options = main.etcd_options(ctx)

    async def run() -> list[Change]:
        store = typed.Store(await client.connect(options))
        try:
            changes = await plan_changes(store, found)
            if not dry_run:
                try:
                    await write_changes(store, changes)
                except client.TxnTooLarge:
                    writes = sum(1 for c in changes if c.action != "unchanged")
                    raise main.fail(
                        f"{writes} documents to write in one transaction are more than etcd's --max-txn-ops "
                        f"allows (128 unless set): start every etcd member with --max-txn-ops={writes} or more, "
                        "or apply fewer documents at once; nothing was written"
                    ) from None
            return changes
        finally:
            await store.close()

    changes = main.run_async(run()) if found else []
    for change in changes:
        suffix = " (dry run)" if dry_run else ""
        click.echo(f"{change.manifest.describe()} {change.action}{suffix}")
        if dry_run and change.action != "unchanged":
            click.echo(_diff(change), nl=False)
    if errors:
        _report_errors(errors)
        raise main.fail(f"{len(errors)} invalid document{'s' if len(errors) > 1 else ''}")


@click.command()
@files_option
def validate(paths: tuple[str, ...]) -> None:
    """Check the documents in FILE without writing anything (no etcd needed)."""
    found, errors = read_manifests(paths)
    for manifest in found:
        click.echo(f"{manifest.describe()} valid")
    if errors:
        _report_errors(errors)
        raise main.fail(f"{len(errors)} invalid document{'s' if len(errors) > 1 else ''}")
