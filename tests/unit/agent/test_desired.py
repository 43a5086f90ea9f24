"""desired.resolve: etcd entries -> one target (or broken) per instance of this server."""

from __future__ import annotations

import json

from discoverd.agent import desired, model
from discoverd.schema import documents
from discoverd.store.typed import Entry, decode

P = "/d"


def entries(**docs: object) -> dict[str, Entry]:
    out = {}
    for key, value in docs.items():
        full = f"{P}/{key.replace('__', '/')}"
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        out[full] = decode(P, full, raw, 1)
    return out


SERVER = {"service_instances": [{"name": "web", "id": "i1"}]}
VERSION = {"name": "web", "run": {"command": "./web", "argv": ["--port", "80"]}}  # the Go short key


def test_resolves_a_target_with_the_go_short_keys() -> None:
    e = entries(
        servers__n1__config__details=SERVER,
        services__web__versions__1__config__details=VERSION,
        services__web__instances__i1__config__details={"name": "web", "service_version": "1", "run": {"argv": ["-v"]}},
    )
    d = desired.resolve(e, P, "n1")
    target = d.instances[model.Ref("web", "i1")]
    assert isinstance(target, model.Target)
    assert target.run.command == "./web"
    assert target.run.argv == ["--port", "80", "-v"]


def test_instance_command_replaces_command_and_argv() -> None:
    merged = desired.merge_run(
        documents.Script(command="./web", argv=["a"], env={"A": "1"}),
        documents.Script(command="./other", argv=["b"], env={"B": "2"}),
    )
    assert (merged.command, merged.argv, merged.env) == ("./other", ["b"], {"A": "1", "B": "2"})


def test_missing_version_is_broken_naming_the_key() -> None:
    e = entries(
        servers__n1__config__details=SERVER,
        services__web__instances__i1__config__details={"name": "web", "service_version": "9"},
    )
    broken = desired.resolve(e, P, "n1").instances[model.Ref("web", "i1")]
    assert isinstance(broken, model.Broken)
    assert "/d/services/web/versions/9/config/details" in broken.message


def test_a_document_etcd_refuses_to_read_yet_says_so_rather_than_missing() -> None:
    e = entries(servers__n1__config__details=SERVER)
    waiting = {f"{P}/services/web/versions/", f"{P}/services/web/instances/i1/config/details"}
    broken = desired.resolve(e, P, "n1", waiting=waiting).instances[model.Ref("web", "i1")]
    assert isinstance(broken, model.Broken)
    assert broken.message.startswith(f"{P}/services/web/instances/i1/config/details: not readable yet")
    assert "does not exist" not in broken.message


def test_invalid_server_keeps_the_last_valid_instance_list() -> None:
    e = entries(servers__n1__config__details=b"[]")
    last = (model.Ref("web", "i1"),)
    d = desired.resolve(e, P, "n1", last)
    assert d.refs == last
    assert d.server_error is not None and "/d/servers/n1/config/details" in d.server_error


def test_no_server_document_means_no_instances() -> None:
    assert desired.resolve({}, P, "n1").instances == {}
