"""Hostile values in etcd, written by a plain client, read by a real agent process.

Whatever a writer puts at the agent's own keys or anywhere else under the
prefix, the agent stays up, keeps its valid instances (same pid and start
time), keeps its lease alive, applies later valid changes, and reports each
invalid document of its own on that instance's status key naming key and field.
"""

from __future__ import annotations

import json
import time
from typing import Any

from support.wait import wait_until

LEASE_TTL = 2
BIG = 1200 * 1024
"""A 1.2 MiB value: under etcd's 1.5 MiB request limit, over discoverd's 1 MiB cap."""


def variants(base: dict[str, Any], scripts: bool = True) -> dict[str, tuple[bytes, str, str]]:
    """Hostile spellings of the document `base`: name -> (bytes, field named in the error, reason)."""
    head = json.dumps(base).encode()[:-1]
    found = {
        "deep": (head + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "", "deeper than 32 levels"),
        "surrogate": (head + b',"x":"\\ud800"}', "x", "lone surrogate"),
        "nan": (head + b',"x":NaN}', "", "NaN"),
        "big": (head + b',"x":"' + b"a" * BIG + b'"}', "", "over the limit"),
    }
    if scripts:
        nul = {**base, "run_script": {"command": "true", "argv": ["a\0b"]}}
        env = {**base, "run_script": {"command": "true", "env": {"DISCOVERD_SERVER_ID": "someone-else"}}}
        found["nul"] = (json.dumps(nul).encode(), "run_script.argv.0", "NUL")
        found["env"] = (json.dumps(env).encode(), "run_script.env", "DISCOVERD_")
    else:
        nul = {"service_instances": [{"name": "web", "id": "a\0b"}]}
        found["nul"] = (json.dumps(nul).encode(), "service_instances.0.id", "control characters")
    return found


def names(key: str, field: str, reason: str, message: str) -> bool:
    where = f"{key}: field '{field}'" if field else f"{key}:"
    return where in message and reason in message


def agent_status_key(node: Any) -> str:
    return f"{node.prefix}/servers/{node.server_id}/status/agent"


def assert_alive_for(node: Any, agent: Any, seconds: float) -> None:
    """The agent process runs and its status key stays under the same lease for `seconds`."""
    key = agent_status_key(node)
    lease = node.etcd.lease(key)
    assert lease, "the agent's status key is not held by a lease"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert agent.process.poll() is None, agent.log()
        assert node.etcd.lease(key) == lease, "the agent's status key expired or changed lease"
        time.sleep(0.2)


def start(node: Any) -> tuple[Any, tuple[int, int]]:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.2)
    node.instance("web", "good", "1.0")
    node.server(("web", "good"))
    agent = node.agent("--lease-ttl", str(LEASE_TTL))
    node.wait_phase("web", "good", "Running")
    return agent, node.wait_process("web", "good")


def assert_unharmed(node: Any, agent: Any, identity: tuple[int, int], *refs: tuple[str, str]) -> None:
    """Valid instance untouched, lease alive past two TTLs, a later valid change applied, no traceback."""
    assert node.process("web", "good") == identity
    assert_alive_for(node, agent, 2 * LEASE_TTL + 1)
    node.instance("web", "later", "1.0")
    node.server(("web", "good"), *refs, ("web", "later"))
    node.wait_phase("web", "later", "Running")
    assert node.process("web", "good") == identity
    assert agent.process.poll() is None
    assert "Traceback" not in agent.log() and "unexpected" not in agent.log()


def test_hostile_instance_and_version_documents_fail_only_their_instance(node: Any) -> None:
    agent, identity = start(node)
    refs = []
    expected = {}
    for name, (raw, field, reason) in variants({"name": "web", "service_version": "1.0"}).items():
        node.put(f"services/web/instances/bad-{name}/config/details", raw)
        key = f"{node.prefix}/services/web/instances/bad-{name}/config/details"
        expected[f"bad-{name}"] = (key, field, reason)
    for name, (raw, field, reason) in variants({"name": "web"}).items():
        node.put(f"services/web/versions/v-{name}/config/details", raw)
        node.instance("web", f"uses-{name}", f"v-{name}")
        key = f"{node.prefix}/services/web/versions/v-{name}/config/details"
        expected[f"uses-{name}"] = (key, field, reason)
    refs = [("web", instance) for instance in expected]
    node.server(("web", "good"), *refs)

    for instance, (key, field, reason) in expected.items():
        status = node.wait_phase("web", instance, "Failed")
        assert names(key, field, reason, status["message"]), (instance, status["message"])
        assert node.process("web", instance) is None
    assert_unharmed(node, agent, identity, *refs)


def test_an_invalid_document_is_logged_once_not_once_per_pass(node: Any) -> None:
    agent, _ = start(node)
    raw, _, _ = variants({"name": "web", "service_version": "1.0"})["nan"]
    node.put("services/web/instances/bad/config/details", raw)
    node.server(("web", "good"), ("web", "bad"))
    node.wait_phase("web", "bad", "Failed")
    for i in range(5):  # more passes: each configuration change wakes the agent
        node.instance("web", "good", "1.0", note=i)
    node.instance("web", "later", "1.0")
    node.server(("web", "good"), ("web", "bad"), ("web", "later"))
    node.wait_phase("web", "later", "Running")  # the passes above have run
    key = f"{node.prefix}/services/web/instances/bad/config/details"
    wait_until(lambda: key in agent.log(), 10, what="the invalid document in the agent log")
    assert agent.log().count(key) == 1, agent.log()


def test_hostile_server_documents_keep_the_last_valid_instances(node: Any) -> None:
    agent, identity = start(node)
    key = f"{node.prefix}/servers/{node.server_id}/config/details"

    def agent_message() -> str:
        raw = node.etcd.get(agent_status_key(node))
        return str(json.loads(raw)["message"]) if raw else ""

    for name, (raw, field, reason) in variants({"service_instances": [{"name": "web", "id": "good"}]}, False).items():
        node.put(f"servers/{node.server_id}/config/details", raw)
        wait_until(lambda f=field, r=reason: names(key, f, r, agent_message()), 15, what=f"{name} reported")
        assert node.process("web", "good") == identity
        assert node.status("web", "good")["phase"] == "Running"  # type: ignore[index]
    assert_unharmed(node, agent, identity)
    wait_until(lambda: agent_message() == "", 15, what="the server error cleared")


def test_a_running_instance_whose_document_turns_hostile_keeps_running(node: Any) -> None:
    agent, identity = start(node)
    key = f"{node.prefix}/services/web/instances/good/config/details"
    for name, (raw, field, reason) in variants({"name": "web", "service_version": "1.0"}).items():
        node.put("services/web/instances/good/config/details", raw)
        status = node.wait_phase("web", "good", "Failed")
        wait_until(lambda f=field, r=reason: names(key, f, r, node.status("web", "good")["message"]), 15, what=name)
        assert "still running version 1.0" in node.status("web", "good")["message"]
        assert node.process("web", "good") == identity, status
    node.instance("web", "good", "1.0")
    node.wait_phase("web", "good", "Running")
    assert_unharmed(node, agent, identity)


def test_hostile_values_at_other_servers_keys_change_nothing_here(node: Any) -> None:
    agent, identity = start(node)
    p = node.prefix
    raw_prefix = p.encode()
    other = {"service_instances": [{"name": "web", "id": "good"}]}
    for name, (raw, _, _) in variants(other, False).items():
        if name == "big":
            continue  # one 1.2 MiB value is enough (below)
        node.put(f"servers/node-{name}/config/details", raw)
        node.put(f"servers/node-{name}/status/agent", raw)
        node.put(f"servers/node-{name}/status/instances/web/good", raw)
        node.put(f"services/api-{name}/versions/1.0/config/details", raw)
        node.put(f"services/api-{name}/instances/i1/config/details", raw)
        node.put(f"elsewhere/{name}", raw)
    node.put("servers/node-big/config/details", variants(other, False)["big"][0])
    for raw_key in (
        raw_prefix + b"/servers/node-\xff/config/details",
        raw_prefix + b"/servers/node-\xff/status/agent",
        raw_prefix + b"/servers/" + node.server_id.encode() + b"/status/instances/web/\xfe\xff",
        raw_prefix + b"/servers/" + node.server_id.encode() + b"/config/details\xff",
        raw_prefix + b"/services/web/instances/\xc3/config/details",
        raw_prefix + b"/services/web/versions/1.0\xed\xa0\x80/config/details",
        raw_prefix + b"/\xff",
    ):
        node.etcd.put(raw_key, json.dumps({"name": "web", "service_version": "1.0"}))
    assert_unharmed(node, agent, identity)
