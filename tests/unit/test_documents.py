"""Documents: the seed JSON, the original Go spelling, extensions, and errors naming key and field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys

KEY = "/discoverd/services/web/versions/1.0/config/details"

README_SPELLING = {
    "name": "web",
    "download_script": {"command": "curl", "argv": ["-fsSLO", "http://example/web.tgz"], "timeout": 120},
    "install_script": {"command": "tar", "argv": ["xzf", "web.tgz"], "timeout": 60},
    "run_script": {"command": "./web", "argv": ["--port", "8080"], "timeout": 0},
}
GO_SPELLING = {
    "name": "web",
    "download": README_SPELLING["download_script"],
    "install": README_SPELLING["install_script"],
    "run": README_SPELLING["run_script"],
}


def test_go_spelling_reads_as_the_same_model_as_the_readme_spelling() -> None:
    readme = documents.parse(documents.Version, KEY, json.dumps(README_SPELLING).encode())
    go = documents.parse(documents.Version, KEY, json.dumps({**GO_SPELLING, "stray": 1}).encode())
    assert go.download_script == readme.download_script
    assert go.install_script == readme.install_script
    assert go.run_script == readme.run_script
    assert go.model_extra == {"stray": 1}


def test_documents_are_always_written_with_the_readme_names() -> None:
    go = documents.parse(documents.Version, KEY, json.dumps(GO_SPELLING).encode())
    assert json.loads(documents.dumps(go)) == README_SPELLING


def test_seed_document_round_trips_byte_for_byte() -> None:
    raw = json.dumps(README_SPELLING, separators=(",", ":")).encode()
    assert documents.dumps(documents.parse(documents.Version, KEY, raw)) == raw


def test_unknown_fields_are_kept_when_written_back() -> None:
    raw = b'{"service_instances":[{"name":"web","id":"i1","weight":3}],"zone":"eu"}'
    server = documents.parse(documents.Server, "/k", raw)
    assert json.loads(documents.dumps(server)) == json.loads(raw)


def test_instance_run_script_override_reads_short_key() -> None:
    doc = documents.parse(documents.Instance, "/k", b'{"name":"web","service_version":"1.0","run":{"argv":["-v"]}}')
    assert doc.run_script.empty and doc.run_script.argv == ["-v"]


def test_extensions_are_optional_and_have_defaults() -> None:
    doc = documents.parse(documents.Version, KEY, b'{"name":"web"}')
    assert doc.health_check is None
    assert doc.min_healthy_seconds == 5 and doc.stop_signal == "SIGTERM" and doc.stop_timeout == 10
    assert doc.download_script.empty and doc.download_script.timeout_seconds == 600


def test_timeout_zero_means_no_limit() -> None:
    assert documents.Script(command="x", timeout=0).timeout_seconds is None


@pytest.mark.parametrize(
    ("model", "raw", "field", "reason"),
    [
        (documents.Server, b"{", "", "not valid JSON"),
        (documents.Server, b"[1]", "", "must be a JSON object"),
        (documents.Server, b"{}", "service_instances", "Field required"),
        (documents.Server, b'{"service_instances":"web"}', "service_instances", "valid list"),
        (documents.Server, b'{"service_instances":[{"name":"a/b","id":"i"}]}', "service_instances.0.name", "'/'"),
        (documents.Server, b'{"service_instances":[{"name":"web","id":".."}]}', "service_instances.0.id", "'..'"),
        (
            documents.Server,
            b'{"service_instances":[{"name":"w","id":"i"},{"name":"w","id":"i"}]}',
            "",
            "listed twice",
        ),
        (documents.Instance, b'{"name":"web"}', "service_version", "Field required"),
        (documents.Version, b'{"name":"web","run_script":{"command":1}}', "run_script.command", "valid string"),
        (
            documents.Version,
            b'{"name":"web","install_script":{"timeout":-1}}',
            "install_script.timeout",
            "greater than or equal to 0",
        ),
        (documents.Version, b'{"name":"web","stop_signal":"SIGNOPE"}', "stop_signal", "not a signal"),
    ],
)
def test_invalid_documents_name_the_key_and_the_field(
    model: type[documents.Document], raw: bytes, field: str, reason: str
) -> None:
    with pytest.raises(InvalidDocument) as caught:
        documents.parse(model, "/the/key", raw)
    assert caught.value.key == "/the/key"
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_version_name_must_match_the_service_in_the_key() -> None:
    key = keys.parse("/discoverd", KEY)
    assert key is not None
    with pytest.raises(InvalidDocument, match="does not match the service 'web'"):
        documents.parse_at(key, KEY, b'{"name":"api"}')


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_parsing(raw: bytes) -> None:
    try:
        documents.parse(documents.Version, KEY, raw)
    except InvalidDocument as error:
        assert error.key == KEY


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["name", "service_version", "run_script", "run", "x"]), json_values))
def test_arbitrary_json_objects_either_validate_or_name_a_field(data: dict[str, object]) -> None:
    try:
        documents.parse(documents.Instance, "/k", json.dumps(data).encode())
    except InvalidDocument as error:
        assert error.key == "/k" and error.reason
