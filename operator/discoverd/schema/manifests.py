"""Multi-document YAML in the custom-resource format (DESIGN section 4) to specs, or errors.

This is what `discoverd apply -f` and `discoverd validate -f` read: each
document has `apiVersion: discoverd.io/v1alpha1`, a `kind`, an optional
`metadata.name`, and a `spec`. Every problem is reported, each naming the
file, the document and the field, so one run shows everything to fix.
The caps on etcd values (`untrusted`: depth, size, text, NaN) apply here
too, checked before the YAML is built into objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
import yaml
from pydantic.alias_generators import to_camel

from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys, resources, untrusted

__all__ = ["Manifest", "load"]


@dataclass(frozen=True)
class Manifest:
    """One valid document of a file, and the etcd key and document it stands for."""

    source: str
    index: int
    kind: str
    name: str | None
    spec: resources.Spec
    mapped: resources.Mapped

    def describe(self) -> str:
        return f"{self.kind.lower()}/{self.name or self.mapped_name}"

    @property
    def mapped_name(self) -> str:
        from discoverd.schema import names

        return names.object_name(self.mapped.key)


def _where(source: str, index: int, kind: object = None, name: object = None) -> str:
    what = f"{source}: document {index}"
    if kind:
        what += f" ({kind}{' ' + str(name) if name else ''})"
    return what


def _one(source: str, index: int, raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise InvalidDocument(_where(source, index), "", f"must be a mapping, not {type(raw).__name__}")
    untrusted.check_tree(_where(source, index), raw)
    kind, metadata = raw.get("kind"), raw.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = _where(source, index, kind, name)
    if raw.get("apiVersion") != resources.API_VERSION:
        raise InvalidDocument(where, "apiVersion", f"must be {resources.API_VERSION!r}, not {raw.get('apiVersion')!r}")
    if not isinstance(kind, str):
        raise InvalidDocument(where, "kind", "is missing")
    try:
        model = resources.spec_for(kind)
    except ValueError as error:
        raise InvalidDocument(where, "kind", str(error)) from None
    if not isinstance(metadata, dict):
        raise InvalidDocument(where, "metadata", "must be a mapping")
    if "spec" not in raw:
        raise InvalidDocument(where, "spec", "is missing")
    try:
        spec = model.model_validate(raw["spec"])
        mapped = resources.to_document(spec)
    except pydantic.ValidationError as error:
        problem = documents.validation_error(where, error)
        (field, reason), *more = [(_spec_field(f), r) for f, r in problem.problems]
        raise InvalidDocument(where, field, reason, more) from None
    size = len(documents.dumps(mapped.document))
    if size > untrusted.MAX_VALUE_BYTES:
        raise InvalidDocument(where, "spec", f"is {size} bytes in etcd, over the limit of {untrusted.MAX_VALUE_BYTES}")
    return Manifest(source, index, kind, name if isinstance(name, str) else None, spec, mapped)


def _spec_field(field: str) -> str:
    """A document's field path as the spec's camelCase path: `run_script.argv.0` -> `spec.runScript.argv.0`."""
    parts = [part for part in field.split(".") if part]
    after_env = [i > 0 and parts[i - 1] == "env" for i in range(len(parts))]
    camel = ".".join(p if p.isdigit() or env else to_camel(p) for p, env in zip(parts, after_env, strict=True))
    return f"spec.{camel}" if camel else "spec"


def _too_deep(text: str) -> int | None:
    """The line where `text` first nests deeper than `untrusted.MAX_DEPTH` (from parser events, no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > untrusted.MAX_DEPTH:
                return event.start_mark.line + 1 if event.start_mark is not None else 0
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def load(text: str, source: str) -> tuple[list[Manifest], list[InvalidDocument]]:
    """The valid documents of `text` and an error for each invalid one (both in file order)."""
    try:
        line = _too_deep(text)  # the YAML composer recurses: check before it runs
        if line is not None:
            deep = f"nests mappings and lists deeper than {untrusted.MAX_DEPTH} levels"
            return [], [InvalidDocument(f"{source}: line {line}", "", deep)]
        raws = [doc for doc in yaml.safe_load_all(text)]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}: line {mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        return [], [InvalidDocument(where, "", f"not valid YAML: {problem}")]
    except ValueError as error:  # a date that does not exist, an integer of too many digits
        return [], [InvalidDocument(source, "", f"not valid YAML: {error}")]
    manifests: list[Manifest] = []
    errors: list[InvalidDocument] = []
    seen: dict[keys.Key, int] = {}
    index = 0
    for raw in raws:
        if raw is None:  # an empty document between two `---`
            continue
        index += 1
        try:
            manifest = _one(source, index, raw)
        except InvalidDocument as error:
            errors.append(error)
            continue
        first = seen.setdefault(manifest.mapped.key, index)
        if first != index:
            errors.append(
                InvalidDocument(
                    _where(source, index, manifest.kind, manifest.name),
                    "spec",
                    f"describes the same etcd key as document {first}",
                )
            )
            continue
        manifests.append(manifest)
    if not manifests and not errors:
        errors.append(InvalidDocument(source, "", "contains no documents"))
    return manifests, errors
