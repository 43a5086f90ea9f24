"""Version `artifacts`: validated like every field (untrusted URL, digest, dest, mode), in JSON and in YAML."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import crd, documents, keys, manifests, resources

KEY = "/discoverd/services/web/versions/1.0/config/details"
SHA = "ab" * 32


def version(*artifacts: dict[str, Any]) -> documents.Version:
    raw = json.dumps({"name": "web", "artifacts": list(artifacts)}).encode()
    return documents.parse(documents.Version, KEY, raw)


def test_a_version_without_artifacts_is_the_seed_document() -> None:
    raw = b'{"name":"web"}'
    doc = documents.parse(documents.Version, KEY, raw)
    assert doc.artifacts is None and documents.dumps(doc) == raw


def test_an_artifact_reads_and_writes_back_as_given() -> None:
    given_ = {"url": "https://example.org/web/web-1.0.tar.gz", "sha256": SHA, "dest": "lib", "mode": 0o755}
    doc = version(given_)
    (a,) = doc.artifacts or []
    assert (a.algorithm, a.digest, a.archive, a.dest, a.mode) == ("sha256", SHA, "tar", "lib", 0o755)
    assert json.loads(documents.dumps(doc))["artifacts"] == [given_]


def test_digests_are_compared_in_lower_case() -> None:
    (a,) = version({"url": "http://h/f.bin", "sha512": "AB" * 64}).artifacts or []
    assert (a.algorithm, a.digest) == ("sha512", "ab" * 64)


@pytest.mark.parametrize(
    ("name", "archive"),
    [("x.zip", "zip"), ("x.tgz", "tar"), ("x.tar.xz", "tar"), ("x.tar.bz2", "tar"), ("x.jar", None), ("x.gz", None)],
)
def test_auto_unpacks_what_the_url_names_as_an_archive(name: str, archive: str | None) -> None:
    (a,) = version({"url": f"https://h/{name}?token=1", "sha256": SHA}).artifacts or []
    assert a.archive == archive
    (b,) = version({"url": f"https://h/{name}", "sha256": SHA, "extract": "none"}).artifacts or []
    assert b.archive is None and b.file_name == name


@pytest.mark.parametrize(
    ("artifact", "field", "reason"),
    [
        ({"url": "file:///etc/passwd", "sha256": SHA}, "artifacts.0.url", "http:// or https://"),
        ({"url": "ftp://h/x", "sha256": SHA}, "artifacts.0.url", "http:// or https://"),
        ({"url": "https:///x", "sha256": SHA}, "artifacts.0.url", "no host"),
        ({"url": "https://h:99999/x", "sha256": SHA}, "artifacts.0.url", "invalid port"),
        ({"url": "https://h/a b", "sha256": SHA}, "artifacts.0.url", "spaces or control"),
        ({"url": "https://h/a\nb", "sha256": SHA}, "artifacts.0.url", "spaces or control"),
        ({"url": "https://h/" + "a" * 9000, "sha256": SHA}, "artifacts.0.url", "at most"),
        ({"url": "https://h/x"}, "artifacts.0", "exactly one of sha256 and sha512"),
        ({"url": "https://h/x", "sha256": SHA, "sha512": "a" * 128}, "artifacts.0", "exactly one"),
        ({"url": "https://h/x", "sha256": "a" * 63}, "artifacts.0.sha256", "64 hexadecimal"),
        ({"url": "https://h/x", "sha256": "g" * 64}, "artifacts.0.sha256", "64 hexadecimal"),
        ({"url": "https://h/x", "sha512": SHA}, "artifacts.0.sha512", "128 hexadecimal"),
        ({"url": "https://h/x", "sha256": SHA, "dest": "/opt"}, "artifacts.0.dest", "not absolute"),
        ({"url": "https://h/x", "sha256": SHA, "dest": "../x"}, "artifacts.0.dest", "no '..'"),
        ({"url": "https://h/x", "sha256": SHA, "dest": "a/../../x"}, "artifacts.0.dest", "no '..'"),
        ({"url": "https://h/x", "sha256": SHA, "dest": "a/\x01"}, "artifacts.0.dest", "control characters"),
        ({"url": "https://h/x", "sha256": SHA, "dest": "a\x00"}, "artifacts.0.dest", "NUL"),
        ({"url": "https://h/x", "sha256": SHA, "mode": 755}, "artifacts.0.mode", "0755 is written 493"),
        ({"url": "https://h/x", "sha256": SHA, "mode": -1}, "artifacts.0.mode", "permission bits"),
        ({"url": "https://h/x", "sha256": SHA, "mode": 0o4755}, "artifacts.0.mode", "permission bits"),
        ({"url": "https://h/x", "sha256": SHA, "mode": True}, "artifacts.0.mode", "not true or false"),
        ({"url": "https://h/x", "sha256": SHA, "extract": "maybe"}, "artifacts.0.extract", "'auto' or 'none'"),
        ({"url": "https://h/", "sha256": SHA}, "artifacts.0", "url must end with a file name"),
        ({"url": "https://h/..", "sha256": SHA, "extract": "none"}, "artifacts.0", "url must end with a file name"),
        ({"url": "https://h/%2e%2e", "sha256": SHA}, "artifacts.0", "url must end with a file name"),
    ],
)
def test_a_bad_artifact_is_an_error_naming_key_and_field(artifact: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        version(artifact)
    assert caught.value.key == KEY
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_too_many_artifacts_are_refused() -> None:
    many = [{"url": f"https://h/{i}", "sha256": SHA} for i in range(documents.MAX_ARTIFACTS + 1)]
    with pytest.raises(InvalidDocument) as caught:
        version(*many)
    assert caught.value.field == "artifacts"


@given(st.text(max_size=300))
def test_any_url_text_is_a_valid_artifact_or_an_invalid_document(url: str) -> None:
    try:
        doc = version({"url": url, "sha256": SHA})
    except InvalidDocument:
        return
    (a,) = doc.artifacts or []
    assert a.url.lower().startswith(("http://", "https://"))


@given(st.text(max_size=100))
def test_a_dest_that_validates_stays_inside_the_version_directory(dest: str) -> None:
    try:
        doc = version({"url": "https://h/x.tgz", "sha256": SHA, "dest": dest})
    except InvalidDocument:
        return
    (a,) = doc.artifacts or []
    assert not a.dest.startswith("/") and ".." not in a.dest.split("/") and "\0" not in a.dest


def test_the_yaml_format_spells_artifacts_as_the_resource_does() -> None:
    text = (
        "apiVersion: discoverd.io/v1alpha1\nkind: ServiceVersion\n"
        "spec:\n  service: web\n  version: '1.0'\n"
        f"  artifacts:\n  - {{url: 'https://h/web.tgz', sha256: '{SHA}', dest: bin, mode: 0755, extract: none}}\n"
    )
    found, errors = manifests.load(text, "f.yaml")
    assert errors == []
    (m,) = found
    doc = json.loads(documents.dumps(m.mapped.document))
    assert doc["artifacts"] == [
        {"url": "https://h/web.tgz", "sha256": SHA, "dest": "bin", "mode": 0o755, "extract": "none"}
    ]
    spec = resources.to_spec(keys.Key(keys.Kind.VERSION, service="web", version="1.0"), m.mapped.document)
    assert spec["artifacts"][0]["sha256"] == SHA


def test_a_bad_artifact_in_yaml_names_its_field() -> None:
    text = (
        "apiVersion: discoverd.io/v1alpha1\nkind: ServiceVersion\n"
        "spec: {service: web, version: '1.0', artifacts: [{url: 'file:///etc/shadow', sha256: x}]}\n"
    )
    _, errors = manifests.load(text, "f.yaml")
    assert len(errors) == 1 and "spec.artifacts.0.url" in str(errors[0])


def test_the_crd_mirrors_the_artifact_fields() -> None:
    schema = crd.spec_schema("ServiceVersion")["properties"]["artifacts"]
    assert schema["maxItems"] == documents.MAX_ARTIFACTS
    props = schema["items"]["properties"]
    assert set(props) == {"url", "sha256", "sha512", "extract", "dest", "mode"}
    assert props["sha256"]["pattern"] == "^[0-9a-fA-F]{64}$"
    assert props["extract"]["enum"] == ["auto", "none"]
    assert (props["mode"]["minimum"], props["mode"]["maximum"]) == (0, 0o777)
    assert schema["items"]["required"] == ["url"]
