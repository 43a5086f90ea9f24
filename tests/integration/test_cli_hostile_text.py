"""Text from etcd reaches a terminal escaped: `get`, `describe` and `rollout status` against a real etcd.

Any server may be compromised, and a status message is whatever its agent wrote; a run script's
argv is whatever a configuration writer wrote. Printed raw, an escape sequence rewrites the
user's terminal (clears it, sets its title, hides text) and a newline or U+2028 forges a line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from discoverd.embedded_etcd import EtcdServer
from discoverd.schema import keys
from support.cli import discoverd
from support.etcd import RawEtcd

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "service.yaml")
NOW = "2026-01-01T00:00:00Z"
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\u2028forged line\nnode-2 Running"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2028")


@pytest.fixture
def env(etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd) -> dict[str, str]:
    env = {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    status = {"phase": "Failed", "version": "1.0", "message": HOSTILE, "since": NOW, "updated_at": NOW}
    raw_etcd.put(keys.instance_status(prefix, "node-1", "web", "i1"), json.dumps(status))
    version = {"name": "web", "run_script": {"command": "./web", "argv": [HOSTILE]}}
    raw_etcd.put(keys.version_config(prefix, "web", "3.0"), json.dumps(version))
    rollout = {"name": "web", "to_version": "2.0"}
    raw_etcd.put(keys.rollout_config(prefix, "web"), json.dumps(rollout))
    rollout_status = {"phase": "Failed", "to_version": "2.0", "message": HOSTILE, "started_at": NOW, "updated_at": NOW}
    raw_etcd.put(keys.rollout_status(prefix, "web"), json.dumps(rollout_status))
    return env


@pytest.mark.parametrize(
    "args",
    [
        ("get", "instances"),
        ("get", "versions"),
        ("get", "rollouts"),
        ("get", "instances", "-o", "json"),
        ("get", "instances", "-o", "yaml"),
        ("get", "versions", "-o", "yaml"),
        ("describe", "instance", "web/i1"),
        ("rollout", "status", "web"),
    ],
)
def test_control_characters_from_etcd_are_printed_escaped(env: dict[str, str], args: tuple[str, ...]) -> None:
    result = discoverd(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert not [c for c in RAW if c in result.stdout], ascii(result.stdout)
    assert "forged line" in result.stdout  # shown, as one line with the rest
    assert not any(line.startswith(("forged line", "node-2 Running")) for line in result.stdout.splitlines())


def test_the_escapes_say_what_was_there(env: dict[str, str]) -> None:
    shown = discoverd("get", "instances", env=env).stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\u2028forged line\\x0anode-2 Running" in shown


def test_a_status_from_a_server_that_does_not_list_the_instance_is_not_shown(
    env: dict[str, str], prefix: str, raw_etcd: RawEtcd
) -> None:
    forged = {
        "phase": "Running",
        "version": "1.0",
        "pid": 31337,
        "message": "all fine",
        "since": NOW,
        "updated_at": NOW,
    }
    raw_etcd.put(keys.instance_status(prefix, "node-2", "web", "i1"), json.dumps(forged))  # node-2 lists web/i2
    listed = json.loads(discoverd("get", "instances", "-o", "json", env=env).stdout)["items"]
    i1 = next(o for o in listed if o["spec"]["id"] == "i1")
    assert [s["server"] for s in i1["status"]["servers"]] == ["node-1"]
    described = discoverd("describe", "instance", "web/i1", env=env).stdout
    assert "31337" not in described and "On node-2" not in described
    assert "Ignored: status reported by node-2" in described
    table = discoverd("get", "instances", env=env).stdout
    assert "31337" not in table
