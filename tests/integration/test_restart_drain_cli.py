"""`discoverd restart SERVICE/ID`, `drain`, `undrain` against a real etcd, and `apply -f` keeping what they set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from discoverd.embedded_etcd import EtcdServer
from discoverd.schema import keys
from support.cli import discoverd
from support.etcd import RawEtcd

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "service.yaml")
SERVER_YAML = """apiVersion: discoverd.io/v1alpha1
kind: Server
spec: {id: node-1, serviceInstances: [{name: web, id: i1}], drained: false}
"""


@pytest.fixture
def env(etcd_server: EtcdServer, prefix: str) -> dict[str, str]:
    return {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}


def test_drain_and_restart_write_their_fields_and_apply_keeps_them(
    env: dict[str, str], prefix: str, raw_etcd: RawEtcd
) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    server, instance = keys.server_config(prefix, "node-1"), keys.instance_config(prefix, "web", "i1")
    drained = discoverd("drain", "node-1", "--deadline", "1h30m", env=env)
    assert drained.returncode == 0, drained.stderr
    doc = json.loads(raw_etcd.get(server) or b"")
    assert doc["drained"] is True and doc["drain_deadline"].endswith("Z")
    restarted = discoverd("restart", "web/i1", env=env)
    assert restarted.returncode == 0, restarted.stderr
    token = json.loads(raw_etcd.get(instance) or b"")["restart_token"]
    assert token in restarted.stdout
    # Applying the same YAML again (which sets neither) keeps both: no undrain, no second restart.
    again = discoverd("apply", "-f", EXAMPLE, env=env)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 6, again.stdout
    assert json.loads(raw_etcd.get(server) or b"") == doc
    assert json.loads(raw_etcd.get(instance) or b"")["restart_token"] == token
    # A YAML that says `drained: false` undrains; so does `discoverd undrain`, which removes both fields.
    assert discoverd("apply", "-f", "-", env=env, input=SERVER_YAML).returncode == 0
    assert json.loads(raw_etcd.get(server) or b"")["drained"] is False
    assert discoverd("drain", "node-1", env=env).returncode == 0
    assert discoverd("undrain", "node-1", env=env).returncode == 0
    assert json.loads(raw_etcd.get(server) or b"") == {"service_instances": [{"name": "web", "id": "i1"}]}


def test_restart_refuses_while_a_rollout_is_under_way(env: dict[str, str], prefix: str, raw_etcd: RawEtcd) -> None:
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    raw_etcd.put(
        keys.rollout_status(prefix, "web"),
        json.dumps(
            {
                "phase": "Progressing",
                "to_version": "2.0",
                "started_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
        ),
    )
    for args in (("restart", "web"), ("restart", "web/i1")):
        result = discoverd(*args, env=env)
        assert result.returncode == 1 and "a rollout to 2.0 of 'web' is progressing" in result.stderr, result.stderr
    assert "restart_token" not in json.loads(raw_etcd.get(keys.instance_config(prefix, "web", "i1")) or b"")
