"""YAML manifests (the custom-resource format) to documents, with an error per bad document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.schema import documents, keys, manifests

EXAMPLE = Path(__file__).parents[2] / "examples" / "service.yaml"
HEAD = "apiVersion: discoverd.io/v1alpha1\n"


def test_example_maps_onto_the_seed_documents() -> None:
    found, errors = manifests.load(EXAMPLE.read_text(), "example")
    assert errors == []
    by_key = {m.mapped.key: json.loads(documents.dumps(m.mapped.document)) for m in found}
    version = by_key[keys.Key(keys.Kind.VERSION, service="web", version="1.0")]
    assert version["name"] == "web"
    assert set(version) >= {"download_script", "install_script", "run_script"}
    assert by_key[keys.Key(keys.Kind.INSTANCE, service="web", instance="i1")] == {
        "name": "web",
        "service_version": "1.0",
        "run_script": {"command": "", "argv": ["18081"]},
    }
    assert by_key[keys.Key(keys.Kind.SERVER, server="node-1")] == {"service_instances": [{"name": "web", "id": "i1"}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "contains no documents"),
        ("a: [", "not valid YAML"),
        ("- 1\n", "must be a mapping"),
        ("apiVersion: v1\nkind: Server\nspec: {id: a}\n", "field 'apiVersion'"),
        (HEAD + "kind: Pod\nspec: {}\n", "unknown kind 'Pod'"),
        (HEAD + "kind: Server\n", "field 'spec': is missing"),
        (HEAD + "kind: Server\nspec: {id: a/b}\n", "field 'spec.id': must not contain '/'"),
        (HEAD + "kind: Server\nspec: {id: ..}\n", "must not be '..'"),
        (HEAD + "kind: ServiceInstance\nspec: {service: web, id: i1}\n", "field 'spec.serviceVersion': Field required"),
        (HEAD + "kind: ServiceInstance\nspec: {service: web, id: i1, serviceVersion: [1]}\n", "spec.serviceVersion"),
        (HEAD + "kind: ServiceVersion\nspec: {service: web, version: '1', runScrpt: {}}\n", "spec.runScrpt"),
        (
            HEAD + "kind: Server\nspec: {id: a}\n---\n" + HEAD + "kind: Server\nspec: {id: a}\n",
            "document 2 (Server): field 'spec': describes the same etcd key as document 1",
        ),
    ],
)
def test_each_invalid_case_gets_its_own_message(text: str, message: str) -> None:
    _, errors = manifests.load(text, "f.yaml")
    assert len(errors) == 1
    assert message in str(errors[0])
    assert str(errors[0]).startswith("f.yaml")


def test_valid_documents_survive_an_invalid_neighbour() -> None:
    text = HEAD + "kind: Server\nspec: {id: good}\n---\n" + HEAD + "kind: Server\nspec: {id: a/b}\n"
    found, errors = manifests.load(text, "f")
    assert [m.mapped.key.server for m in found] == ["good"]
    assert len(errors) == 1 and "document 2" in str(errors[0])


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    found, errors = manifests.load(text, "f")
    assert found or errors
