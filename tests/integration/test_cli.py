"""`discoverd apply / validate / get` as a user runs them, against a real etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from discoverd.embedded_etcd import EtcdServer, free_port
from discoverd.schema import keys
from support.cli import discoverd
from support.etcd import RawEtcd

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "service.yaml")
HEAD = "apiVersion: discoverd.io/v1alpha1\n"


@pytest.fixture
def env(etcd_server: EtcdServer, prefix: str) -> dict[str, str]:
    return {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}


def test_apply_writes_the_seed_json_at_the_seed_keys(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    result = discoverd("apply", "-f", EXAMPLE, env=env)
    assert result.returncode == 0, result.stderr
    assert "serviceversion/web.1.0 created" in result.stdout
    stored = raw_etcd.keys(prefix + "/")
    assert json.loads(stored[keys.server_config(prefix, "node-1")]) == {
        "service_instances": [{"name": "web", "id": "i1"}]
    }
    assert json.loads(stored[keys.instance_config(prefix, "web", "i2")]) == {
        "name": "web",
        "service_version": "2.0",
        "run_script": {"command": "", "argv": ["18082"]},
    }
    version = json.loads(stored[keys.version_config(prefix, "web", "1.0")])
    assert version["name"] == "web"
    assert version["download_script"]["command"] == "sh" and version["download_script"]["timeout"] == 60


def test_apply_twice_changes_nothing(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    before = {k: raw_etcd.mod_revision(k) for k in raw_etcd.keys(prefix + "/")}
    again = discoverd("apply", "-f", EXAMPLE, env=env)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 6
    assert {k: raw_etcd.mod_revision(k) for k in raw_etcd.keys(prefix + "/")} == before


def test_apply_keeps_fields_another_writer_stored(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    key = keys.server_config(prefix, "node-1")
    raw_etcd.put(key, '{"service_instances":[],"rack":"r7"}')
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    assert json.loads(raw_etcd.get(key) or b"") == {"service_instances": [{"name": "web", "id": "i1"}], "rack": "r7"}


def test_apply_is_all_or_nothing_when_a_document_is_invalid(
    env: dict[str, str], prefix: str, raw_etcd: RawEtcd
) -> None:
    text = HEAD + "kind: Server\nspec: {id: good}\n---\n" + HEAD + "kind: Server\nspec: {id: ../etc}\n"
    result = discoverd("apply", "-f", "-", env=env, input=text)
    assert result.returncode == 1
    assert "document 2 (Server): field 'spec.id': must not contain '/'" in result.stderr
    assert "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert raw_etcd.keys(prefix + "/") == {}


def test_dry_run_shows_the_valid_changes_and_the_errors_and_writes_nothing(
    env: dict[str, str], prefix: str, raw_etcd: RawEtcd
) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    before = raw_etcd.keys(prefix + "/")
    text = (
        HEAD
        + "kind: ServiceInstance\nspec: {service: web, id: i1, serviceVersion: '2.0'}\n---\n"
        + HEAD
        + "kind: Gadget\nspec: {}\n"
    )
    result = discoverd("apply", "--dry-run", "-f", "-", env=env, input=text)
    assert result.returncode == 1
    assert "serviceinstance/web.i1 configured (dry run)" in result.stdout
    assert '-  "service_version": "1.0"' in result.stdout and '+  "service_version": "2.0"' in result.stdout
    assert "unknown kind 'Gadget'" in result.stderr
    assert raw_etcd.keys(prefix + "/") == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "contains no documents"),
        ("{", "not valid YAML"),
        (HEAD + "kind: Widget\nspec: {}\n", "unknown kind 'Widget'"),
        (HEAD + "kind: ServiceInstance\nspec: {service: web, id: i1}\n", "'spec.serviceVersion': Field required"),
        (HEAD + "kind: ServiceInstance\nspec: {service: web, id: i1, serviceVersion: {a: 1}}\n", "valid string"),
        (HEAD + "kind: ServiceVersion\nspec: {service: web, version: '..'}\n", "'spec.version': must not be '..'"),
    ],
)
def test_validate_reports_each_problem_in_one_line(text: str, message: str) -> None:
    result = discoverd("validate", "-f", "-", input=text)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_the_example() -> None:
    result = discoverd("validate", "-f", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" valid") == 6


def test_get_instances_lists_configuration_and_status(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    raw_etcd.put(
        keys.instance_status(prefix, "node-1", "web", "i1"),
        json.dumps(
            {
                "phase": "Running",
                "version": "1.0",
                "pid": 4242,
                "restarts": 3,
                "since": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
        ),
    )
    result = discoverd("get", "instances", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0][:7] == ["SERVICE", "ID", "SERVER", "VERSION", "PHASE", "PID", "RESTARTS"]
    assert lines[1][:7] == ["web", "i1", "node-1", "1.0", "Running", "4242", "3"]
    assert lines[2][:5] == ["web", "i2", "node-2", "2.0", "Unknown"]


def test_get_output_yaml_can_be_applied_again(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    out = discoverd("get", "versions", "-o", "yaml", env=env)
    assert out.returncode == 0, out.stderr
    items = yaml.safe_load(out.stdout)["items"]
    assert {i["spec"]["version"] for i in items} == {"1.0", "2.0"}
    manifests = "---\n".join(yaml.safe_dump({k: v for k, v in i.items() if k != "status"}) for i in items)
    again = discoverd("apply", "-f", "-", env=env, input=manifests)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2, again.stdout + again.stderr


def test_get_reports_invalid_keys_and_shows_the_rest(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    raw_etcd.put(keys.server_config(prefix, "ok"), '{"service_instances":[]}')
    raw_etcd.put(keys.server_config(prefix, "broken"), "{")
    result = discoverd("get", "servers", env=env)
    assert result.returncode == 0
    assert "ok" in result.stdout and "not valid JSON" in result.stderr and "broken" in result.stderr


def test_an_unreachable_etcd_is_one_line_naming_it() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = discoverd("--etcd-endpoints", endpoint, "--etcd-timeout", "1", "get", "servers", timeout=20)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"etcd at {endpoint} is unreachable" in result.stderr


def test_a_bad_endpoint_is_one_line_naming_the_flag() -> None:
    result = discoverd("--etcd-endpoints", "ftp://x", "get", "servers")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --etcd-endpoints:")
