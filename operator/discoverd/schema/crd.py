"""CustomResourceDefinitions generated from the spec and status models: one source for both.

`crd(kind)` turns a model's JSON schema (pydantic) into a structural
`openAPIV3Schema`: `$ref`s inlined (CRDs cannot use them), `X | None` as
`nullable`, no defaults (the API server would fill them into the spec and the
mirror would then write them to etcd), no `additionalProperties: true` (the
API server prunes fields it does not know). Name segments get the `pattern`
and `maxLength` of `keys.validate_segment`, and are immutable (they name the
etcd key). `prune()` does to a spec what the API server does, so the
operator can compare what it writes with what it will read back.
`hack/gen-crds.py` writes `crds/*.yaml` from here.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from discoverd.schema import keys, resources

__all__ = ["CATEGORY", "SEGMENT_PATTERN", "all_crds", "crd", "prune", "spec_schema"]

CATEGORY = "discoverd"

_C = r"[^/\x00-\x1f\x7f]"
_N = r"[^/\x00-\x1f\x7f.]"
SEGMENT_PATTERN = rf"^({_N}{_C}*|\.{_N}{_C}*|\.\.{_C}+)$"
"""keys.segment_error as a regular expression the API server (Go RE2: no look-ahead) understands."""

_KEEP = (
    "type",
    "description",
    "required",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "format",
    "minItems",
    "maxItems",
)


class _SegmentAware(GenerateJsonSchema):
    """Marks strings validated by keys.validate_segment, which plain JSON schema cannot see."""

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        function = schema["function"]
        if function.get("function") is keys.validate_segment:
            inner = {**inner, "x-discoverd-segment": True}
        return inner


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON schema node as a structural OpenAPI v3 node."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            # A count or a percentage (a rollout's maxUnavailable): Kubernetes' IntOrString.
            kept: dict[str, Any] = {k: node[k] for k in ("description", "x-kubernetes-validations") if k in node}
            return {**kept, "x-kubernetes-int-or-string": True}
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return {**_structural({**rest, **options[0]}, defs), "nullable": True}
    out: dict[str, Any] = {k: node[k] for k in _KEEP if k in node}
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if node.get("x-discoverd-segment"):
        out.update(pattern=SEGMENT_PATTERN, maxLength=keys.MAX_SEGMENT_BYTES)
    if "properties" in node:
        out["properties"] = {name: _structural(sub, defs) for name, sub in node["properties"].items()}
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _structural(extra, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="serialization", schema_generator=_SegmentAware)
    return _structural(raw, raw.get("$defs", {}))


_NAME_FIELDS = ("service", "version", "id")


def spec_schema(kind: keys.Kind | str) -> dict[str, Any]:
    """The spec's schema: names first (immutable: they name the etcd key), then the body."""
    schema = _schema(resources.spec_for(kind))
    properties: dict[str, Any] = schema["properties"]
    names = [n for n in _NAME_FIELDS if n in properties]
    for name in names:
        properties[name]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"{name} is immutable: it names the etcd key"}
        ]
    schema["properties"] = {**{n: properties[n] for n in names}, **properties}
    instances = properties.get("serviceInstances")
    if instances is not None:
        # Each (name, id) at most once, as the model's validator says; the API server can check it.
        instances.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name", "id"]})
    schema.pop("description", None)
    return schema


def _columns(resource: resources.Resource) -> list[dict[str, Any]]:
    out = []
    for c in resource.columns:
        column: dict[str, Any] = {"name": c.name, "type": c.type, "jsonPath": c.path}
        out.append({**column, "priority": c.priority} if c.priority else column)
    return out


def crd(kind: keys.Kind | str) -> dict[str, Any]:
    """The CustomResourceDefinition for one of `resources.RESOURCES`."""
    resource = resources.resource(kind)
    kind, plural = resource.name, resource.plural
    description = (resource.spec.__doc__ or f"A discoverd {kind}.").strip().splitlines()[0]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{resources.GROUP}"},
        "spec": {
            "group": resources.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": resources.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(resource),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(kind),
                                "status": _schema(resource.status),
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name (kubebuilder's `<group>_<plural>.yaml`) -> CRD, for every kind."""
    out: dict[str, dict[str, Any]] = {}
    for resource in resources.RESOURCES.values():
        out[f"{resources.GROUP}_{resource.plural}.yaml"] = crd(resource.kind)
    return out


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with the fields `schema` does not declare removed, as the API server prunes them."""
    if isinstance(value, dict):
        if "properties" in schema:
            props: dict[str, Any] = schema["properties"]
            return {k: prune(v, props[k]) for k, v in value.items() if k in props}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: prune(v, extra) for k, v in value.items()}
        return copy.deepcopy(value)
    if isinstance(value, list) and "items" in schema:
        return [prune(v, schema["items"]) for v in value]
    return value
