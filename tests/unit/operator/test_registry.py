"""The one registry of custom-resource kinds (`schema.resources.RESOURCES`) and who reads it."""

from __future__ import annotations

import pytest

from discoverd.cli import get
from discoverd.schema import crd, documents, keys, resource_status, resources


def test_every_kind_with_a_configuration_key_is_a_resource_and_nothing_else() -> None:
    assert set(resources.RESOURCES) == {keys.Kind.SERVER, keys.Kind.VERSION, keys.Kind.INSTANCE, keys.Kind.ROLLOUT}
    for kind, entry in resources.RESOURCES.items():
        assert entry.kind is kind and entry.name == kind.value


@pytest.mark.parametrize("name", ["Server", "ServiceVersion", "ServiceInstance", "ServiceRollout"])
def test_a_kind_is_found_by_its_kubernetes_name_and_by_its_key_kind(name: str) -> None:
    assert resources.resource(name) is resources.resource(keys.Kind(name))
    assert resources.spec_for(name) is resources.resource(name).spec


@pytest.mark.parametrize("name", ["AgentStatus", "InstanceStatus", "RolloutStatus", "Pod", ""])
def test_anything_else_is_an_unknown_kind(name: str) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        resources.resource(name)


def test_the_crds_cover_exactly_the_registry() -> None:
    names = {body["spec"]["names"]["kind"] for body in crd.all_crds().values()}
    assert names == {r.name for r in resources.RESOURCES.values()}
    for entry in resources.RESOURCES.values():
        body = crd.crd(entry.kind)
        assert body["spec"]["names"]["plural"] == entry.plural
        assert body["spec"]["names"]["shortNames"] == list(entry.short_names)
        assert (
            "observedGeneration"
            in body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        )


def test_the_cli_offers_every_kind() -> None:
    choice = next(p for p in get.get.params if p.name == "what")
    assert set(choice.type.choices) == {r.cli_name for r in resources.RESOURCES.values()}  # type: ignore[attr-defined]


def test_an_instance_on_a_server_is_the_agents_summary_plus_server_and_since() -> None:
    summary = set(documents.InstanceState.model_fields)
    assert set(resource_status.InstanceOnServer.model_fields) == summary | {"server", "since"}


SPECS = {
    keys.Kind.SERVER: {"id": "node-1", "serviceInstances": [{"name": "web", "id": "i1"}]},
    keys.Kind.VERSION: {"service": "web", "version": "1.0", "runScript": {"command": "./web"}},
    keys.Kind.INSTANCE: {"service": "web", "id": "i1", "serviceVersion": "1.0"},
    keys.Kind.ROLLOUT: {"service": "web", "toVersion": "2.0", "canary": 1, "maxUnavailable": "25%"},
}


@pytest.mark.parametrize("kind", list(resources.RESOURCES))
def test_a_spec_maps_to_its_key_and_document_and_back_through_the_registry(kind: keys.Kind) -> None:
    spec = resources.spec_for(kind).model_validate(SPECS[kind])
    mapped = resources.to_document(spec)
    assert mapped.key.kind is kind
    assert resources.to_spec(mapped.key, mapped.document) == SPECS[kind]
    assert resources.key_names(mapped.key) == tuple(SPECS[kind][field] for field, _ in resources.resource(kind).names)


def test_a_server_spec_without_instances_is_a_document_with_an_empty_list() -> None:
    mapped = resources.to_document(resources.ServerSpec.model_validate({"id": "node-1"}))
    assert documents.dump(mapped.document) == {"service_instances": []}
