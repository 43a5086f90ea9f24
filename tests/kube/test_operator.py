"""`discoverd operator` as a real process between a real etcd and a real kube-apiserver."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import aetcd

from discoverd.config import EtcdOptions
from discoverd.schema import documents, keys
from kube.controlplane import REPO, ControlPlane
from kube.operator_fixtures import Operator, crds, kubectl_json, operator, put_with_lease
from support.etcd import RawEtcd
from support.wait import wait_until

__all__ = ["crds", "operator"]

VERSION = {
    "name": "web",
    "download_script": {"command": "sh", "argv": ["-c", "true"], "timeout": 120},
    "install_script": {"command": "", "argv": [], "timeout": 60},
    "run_script": {"command": "./web", "argv": ["--port", "8080"], "timeout": 0},
}
INSTANCE = {"name": "web", "service_version": "1.0", "run_script": {"command": "", "argv": ["--debug"], "timeout": 0}}


def _get(cp: ControlPlane, ns: str, what: str, name: str) -> dict[str, Any] | None:
    proc = cp.kubectl_run("get", what, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _json(raw: RawEtcd, key: str) -> Any:
    value = raw.get(key)
    return None if value is None else json.loads(value)


def test_kubectl_apply_of_the_example_writes_seed_json(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    control_plane.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "service.yaml"))
    server = wait_until(lambda: _json(raw_etcd, keys.server_config(prefix, "node-1")), timeout=10, what="node-1")
    assert server == {"service_instances": [{"name": "web", "id": "i1"}]}
    instance = wait_until(lambda: _json(raw_etcd, keys.instance_config(prefix, "web", "i1")), timeout=10)
    assert instance == {"name": "web", "service_version": "1.0", "run_script": {"command": "", "argv": ["18081"]}}
    version = wait_until(lambda: _json(raw_etcd, keys.version_config(prefix, "web", "2.0")), timeout=10)
    assert version["name"] == "web" and version["download_script"]["timeout"] == 60
    assert version["min_healthy_seconds"] == 2 and "downloadScript" not in version
    body = wait_until(
        lambda: (
            (_get(control_plane, namespace, "sv", "web.2.0") or {})
            .get("metadata", {})
            .get("annotations", {})
            .get("discoverd.io/mod-revision")
        )
    )
    assert int(body) == raw_etcd.mod_revision(keys.version_config(prefix, "web", "2.0"))


def test_etcd_put_creates_objects_and_etcd_delete_removes_them(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    version_key = keys.version_config(prefix, "web", "1.0")
    instance_key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(version_key, json.dumps(VERSION))
    started = time.monotonic()
    raw_etcd.put(instance_key, json.dumps(INSTANCE))
    obj = wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=5)
    assert time.monotonic() - started < 1.5
    assert obj["spec"] == {
        "service": "web",
        "id": "i1",
        "serviceVersion": "1.0",
        "runScript": {"command": "", "argv": ["--debug"], "timeout": 0},
    }
    annotations = obj["metadata"]["annotations"]
    assert annotations["discoverd.io/key"] == instance_key
    assert int(annotations["discoverd.io/mod-revision"]) == raw_etcd.mod_revision(instance_key)
    version = wait_until(lambda: _get(control_plane, namespace, "sv", "web.1.0"), timeout=5)
    assert version["spec"]["downloadScript"] == {"command": "sh", "argv": ["-c", "true"], "timeout": 120}
    assert json.loads(raw_etcd.get(version_key) or b"") == VERSION  # mirroring wrote nothing back
    raw_etcd.delete(instance_key)
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1") is None, timeout=5, what="object deleted")


def test_kubectl_delete_deletes_the_etcd_key(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    key = keys.version_config(prefix, "web", "1.0")
    raw_etcd.put(key, json.dumps(VERSION))
    wait_until(lambda: _get(control_plane, namespace, "sv", "web.1.0"), timeout=5)
    control_plane.kubectl_run("delete", "sv", "web.1.0", "-n", namespace, "--wait=true", "--timeout=20s")
    wait_until(lambda: raw_etcd.get(key) is None, timeout=5, what="key deleted")


def test_user_edit_is_written_to_etcd(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(key, json.dumps({**INSTANCE, "later_field": 1}))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=5)
    control_plane.kubectl_run(
        "patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", '{"spec":{"serviceVersion":"2.0"}}'
    )
    doc = wait_until(lambda: (d := _json(raw_etcd, key)) and d["service_version"] == "2.0" and d, timeout=5)
    assert doc["later_field"] == 1  # unknown etcd fields survive a write from Kubernetes


def test_conflict_etcd_wins_with_a_warning_event(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(key, json.dumps(INSTANCE))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=5)
    operator.pause()  # both sides change while the operator is not looking
    try:
        raw_etcd.put(key, json.dumps({**INSTANCE, "service_version": "3.0"}))
        control_plane.kubectl_run(
            "patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", '{"spec":{"serviceVersion":"2.0"}}'
        )
    finally:
        operator.resume()
    wait_until(
        lambda: (_get(control_plane, namespace, "si", "web.i1") or {}).get("spec", {}).get("serviceVersion") == "3.0",
        timeout=10,
    )
    assert _json(raw_etcd, key)["service_version"] == "3.0"

    def warning() -> list[dict[str, Any]]:
        events = kubectl_json(control_plane, "get", "events", "-n", namespace, "--field-selector", "type=Warning")[
            "items"
        ]
        return [e for e in events if e["reason"] == "EtcdWins" and e["involvedObject"]["name"] == "web.i1"]

    events = wait_until(warning, timeout=10, what="a Warning event")
    assert "etcd wins" in events[0]["message"]


def test_a_second_object_for_the_same_key_is_refused_with_an_event(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(key, json.dumps(INSTANCE))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=5)
    twin = {
        "apiVersion": "discoverd.io/v1alpha1",
        "kind": "ServiceInstance",
        "metadata": {"name": "web-i1-twin", "namespace": namespace},
        "spec": {"service": "web", "id": "i1", "serviceVersion": "9.9"},
    }
    control_plane.kubectl_run("apply", "-f", "-", input=json.dumps(twin))

    def refused() -> list[dict[str, Any]]:
        events = kubectl_json(control_plane, "get", "events", "-n", namespace)
        return [e for e in events["items"] if e["involvedObject"]["name"] == "web-i1-twin"]

    events = wait_until(refused, timeout=15, what="an event on the twin")
    assert events[0]["type"] == "Error"  # Kopf's type for an error it logged about the object
    assert any("already mirrored by web.i1" in e["message"] for e in events), events
    assert _json(raw_etcd, key)["service_version"] == "1.0"  # the twin never reached etcd


def test_changes_while_stopped_converge_on_restart(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    raw_etcd.put(keys.version_config(prefix, "web", "1.0"), json.dumps(VERSION))
    raw_etcd.put(keys.instance_config(prefix, "web", "i1"), json.dumps(INSTANCE))
    raw_etcd.put(keys.instance_config(prefix, "web", "i2"), json.dumps(INSTANCE))
    for name in ("web.1.0",):
        wait_until(lambda n=name: _get(control_plane, namespace, "sv", n), timeout=5)
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i2"), timeout=5)
    operator.stop()
    raw_etcd.put(keys.version_config(prefix, "web", "2.0"), json.dumps(VERSION))  # new in etcd
    raw_etcd.delete(keys.instance_config(prefix, "web", "i2"))  # gone from etcd
    control_plane.kubectl_run(
        "patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", '{"spec":{"serviceVersion":"2.0"}}'
    )
    control_plane.kubectl_run("delete", "sv", "web.1.0", "-n", namespace, "--wait=false")  # held by the finalizer
    server = "apiVersion: discoverd.io/v1alpha1\nkind: Server\nmetadata: {name: my-node}\nspec: {id: node-1, serviceInstances: [{name: web, id: i1}]}\n"
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=server)  # new in Kubernetes, any name
    operator.start()
    wait_until(lambda: _get(control_plane, namespace, "sv", "web.2.0"), timeout=10, what="web.2.0 created")
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i2") is None, timeout=10, what="web.i2 deleted")
    wait_until(
        lambda: (_json(raw_etcd, keys.instance_config(prefix, "web", "i1")) or {}).get("service_version") == "2.0",
        timeout=10,
    )
    wait_until(
        lambda: raw_etcd.get(keys.version_config(prefix, "web", "1.0")) is None, timeout=10, what="web 1.0 deleted"
    )
    wait_until(lambda: _json(raw_etcd, keys.server_config(prefix, "node-1")), timeout=10, what="node-1 written")
    assert _get(control_plane, namespace, "dsrv", "node-1") is None  # the user's object mirrors it: no duplicate


def test_agent_status_shows_in_kubectl_get(
    operator: Operator,
    control_plane: ControlPlane,
    raw_etcd: RawEtcd,
    prefix: str,
    namespace: str,
    etcd_options: EtcdOptions,
) -> None:
    raw_etcd.put(keys.instance_config(prefix, "web", "i1"), json.dumps(INSTANCE))
    raw_etcd.put(keys.server_config(prefix, "node-1"), json.dumps({"service_instances": [{"name": "web", "id": "i1"}]}))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=5)
    now = dt.datetime.now(dt.UTC)
    revoke = put_with_lease(
        etcd_options,
        {
            keys.agent_status(prefix, "node-1"): documents.AgentStatus(
                hostname="host-1", agent_version="0.1.0", started_at=now, heartbeat=now
            ),
            keys.instance_status(prefix, "node-1", "web", "i1"): documents.InstanceStatus(
                phase=documents.Phase.RUNNING, version="1.0", pid=4242, restarts=3, since=now, updated_at=now
            ),
        },
    )

    def row() -> list[str] | None:
        lines = control_plane.kubectl_run("get", "serviceinstances", "-n", namespace, "--no-headers").stdout.split()
        return lines if "Running" in lines else None

    columns = wait_until(row, timeout=5, what="status columns")
    assert columns[:6] == ["web.i1", "web", "i1", "1.0", "Running", "node-1"] and columns[6] == "3"
    assert kubectl_json(control_plane, "get", "si", "web.i1", "-n", namespace)["status"]["servers"][0]["pid"] == 4242
    server = wait_until(
        lambda: (_get(control_plane, namespace, "dsrv", "node-1") or {}).get("status", {}).get("online"), timeout=5
    )
    assert server is True
    revoke()  # the agent is gone: its lease-held keys expire
    wait_until(lambda: _get(control_plane, namespace, "dsrv", "node-1")["status"]["phase"] == "Offline", timeout=5)


def test_quiet_mirror_writes_nothing(
    operator: Operator,
    control_plane: ControlPlane,
    raw_etcd: RawEtcd,
    prefix: str,
    namespace: str,
    etcd_options: EtcdOptions,
) -> None:
    control_plane.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "service.yaml"))
    raw_etcd.put(keys.version_config(prefix, "db", "9"), json.dumps(VERSION | {"name": "db"}))
    wait_until(lambda: _get(control_plane, namespace, "sv", "db.9"), timeout=5)
    wait_until(lambda: raw_etcd.get(keys.server_config(prefix, "node-2")), timeout=5)

    def state() -> tuple[dict[str, str], dict[str, int], int]:
        objects = {}
        for what in ("sv", "si", "dsrv"):
            for item in kubectl_json(control_plane, "get", what, "-n", namespace)["items"]:
                objects[f"{what}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
        revisions = {k: int(raw_etcd.mod_revision(k) or 0) for k in raw_etcd.keys(prefix + "/")}
        events = len(kubectl_json(control_plane, "get", "events", "-n", namespace)["items"])
        return objects, revisions, events

    time.sleep(2)  # let the last echoes settle before the measured window
    before = state()
    time.sleep(5)  # the measured quiet period
    after = state()
    assert after == before, "the mirror wrote during a quiet period"
    print(f"\nquiet period 5 s: {len(before[0])} objects, {len(before[1])} etcd keys, 0 API writes, 0 etcd writes")


def test_status_reports_the_generation_mirrored(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    control_plane.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "service.yaml"))
    raw_etcd.put(keys.version_config(prefix, "db", "9"), json.dumps(VERSION | {"name": "db"}))  # made from etcd

    def observed(what: str, name: str) -> tuple[int, int | None] | None:
        body = _get(control_plane, namespace, what, name) or {}
        generation = body.get("metadata", {}).get("generation")
        seen = body.get("status", {}).get("observedGeneration")
        return (generation, seen) if generation is not None and generation == seen else None

    for what, name in (("si", "web.i1"), ("sv", "web.2.0"), ("dsrv", "node-1"), ("sv", "db.9")):
        assert wait_until(lambda w=what, n=name: observed(w, n), timeout=10, what=f"{what}/{name} observed")[0] == 1
    control_plane.kubectl_run(
        "patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", '{"spec":{"serviceVersion":"2.0"}}'
    )
    assert wait_until(lambda: observed("si", "web.i1"), timeout=10, what="generation 2 observed")[0] == 2
    assert _json(raw_etcd, keys.instance_config(prefix, "web", "i1"))["service_version"] == "2.0"
    raw_etcd.put(keys.version_config(prefix, "db", "9"), json.dumps(VERSION | {"name": "db", "stop_timeout": 3}))
    assert wait_until(lambda: observed("sv", "db.9"), timeout=10, what="etcd's change observed")[0] == 2


def _put_bytes(raw: RawEtcd, key: bytes, value: bytes) -> None:
    """A put with raw key bytes (RawEtcd takes text keys; a hostile writer need not)."""

    async def go() -> None:
        async with aetcd.Client(host=raw.host, port=raw.port) as client:
            await client.put(key, value)

    asyncio.run(go())


def test_hostile_values_in_etcd_never_stop_the_mirror(
    operator: Operator,
    control_plane: ControlPlane,
    raw_etcd: RawEtcd,
    prefix: str,
    namespace: str,
    etcd_options: EtcdOptions,
) -> None:
    raw_etcd.put(keys.instance_config(prefix, "web", "i1"), json.dumps(INSTANCE))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=10, what="web.i1 before")
    deep = b"[" * 5000 + b"]" * 5000
    surrogate_value = b'{"name":"web","service_version":"\\ud800"}'
    hostile: dict[str, bytes] = {
        keys.instance_config(prefix, "web", "deep"): b'{"name":"web","service_version":"1.0","x":' + deep + b"}",
        keys.server_config(prefix, "deep"): deep,
        keys.instance_status(prefix, "node-1", "web", "i1"): deep,
        keys.agent_status(prefix, "node-1"): b'{"hostname":' + deep + b"}",
        keys.instance_config(prefix, "web", "surrogate"): surrogate_value,
        keys.version_config(prefix, "web", "nan"): b'{"name":"web","min_healthy_seconds":NaN,"stop_timeout":Infinity}',
        keys.version_config(prefix, "web", "nul"): json.dumps(
            {"name": "web", "run_script": {"command": "./web\u0000", "argv": ["a\u0000b"]}}
        ).encode(),
        keys.version_config(prefix, "web", "big"): json.dumps(
            {"name": "web", "run_script": {"command": "./web", "argv": ["x" * (1200 * 1024)]}}
        ).encode(),
    }

    def put_all() -> None:
        for key, value in hostile.items():
            raw_etcd.put(key, value)
        _put_bytes(raw_etcd, f"{prefix}/servers/n".encode() + b"\xff\xfe/config/details", b'{"service_instances":[]}')
        # an invalid value at a key whose object exists: the object stays, a Warning names key and field
        raw_etcd.put(keys.instance_config(prefix, "web", "i1"), json.dumps({**INSTANCE, "run_script": {"argv": 7}}))

    def still_mirrors(instance: str) -> None:
        key = keys.instance_config(prefix, "web", instance)
        raw_etcd.put(key, json.dumps(INSTANCE))
        wait_until(lambda: _get(control_plane, namespace, "si", f"web.{instance}"), timeout=20, what=f"web.{instance}")
        assert operator.alive(), "the operator exited"

    put_all()  # seen by the watch
    still_mirrors("later1")
    body = _get(control_plane, namespace, "si", "web.i1")
    assert body is not None and body["spec"]["serviceVersion"] == "1.0"  # left as it was

    def invalid_warning() -> list[dict[str, Any]]:
        events = kubectl_json(control_plane, "get", "events", "-n", namespace, "--field-selector", "type=Warning")
        return [e for e in events["items"] if e["reason"] == "InvalidDocument"]

    message = wait_until(invalid_warning, timeout=10, what="an InvalidDocument event")[0]["message"]
    assert keys.instance_config(prefix, "web", "i1") in message and "run_script" in message

    operator.stop()  # and read at start-up, by the resync
    operator.start()
    still_mirrors("later2")
    time.sleep(2)  # let retries with back-off happen, then check it is still up and quiet
    assert operator.alive()
    assert _get(control_plane, namespace, "si", "web.surrogate") is None
    assert raw_etcd.get(keys.instance_config(prefix, "web", "surrogate")) == surrogate_value  # never rewritten
    assert raw_etcd.get(keys.version_config(prefix, "web", "nan")) == hostile[keys.version_config(prefix, "web", "nan")]
    log = operator.log_text()
    assert log.count("Traceback") <= 2 * len(hostile), log[-4000:]


def test_object_status_believes_only_listing_servers_and_escapes_their_text(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    """Issue 19: any server could report any instance into its object's status, and its text reached
    `kubectl get` (the printer columns) with terminal sequences raw; a 1 MiB message went along too."""
    raw_etcd.put(keys.instance_config(prefix, "web", "i1"), json.dumps(INSTANCE))
    raw_etcd.put(keys.server_config(prefix, "node-1"), json.dumps({"service_instances": [{"name": "web", "id": "i1"}]}))
    now = "2026-01-01T00:00:00Z"
    hostile = {"phase": "Failed", "version": "1.0", "message": "\x1b]0;owned\x07\x1b[2Jgone\nnode-2", "since": now}
    raw_etcd.put(keys.instance_status(prefix, "node-1", "web", "i1"), json.dumps({**hostile, "updated_at": now}))
    forged = {"phase": "Running", "version": "1.0", "pid": 31337, "message": "fine", "since": now, "updated_at": now}
    raw_etcd.put(keys.instance_status(prefix, "node-9", "web", "i1"), json.dumps(forged))  # node-9 lists nothing

    def status() -> dict[str, Any] | None:
        s = (_get(control_plane, namespace, "si", "web.i1") or {}).get("status", {})
        return s if s.get("phase") else None

    shown = wait_until(status, timeout=10, what="the instance's status")
    assert (shown["phase"], shown["server"]) == ("Failed", "node-1")
    assert [s["server"] for s in shown["servers"]] == ["node-1"]
    assert shown["message"] == "\\x1b]0;owned\\x07\\x1b[2Jgone\\x0anode-2"
    wide = control_plane.kubectl_run("get", "si", "web.i1", "-n", namespace, "-o", "wide").stdout
    assert "\x1b" not in wide and "\x07" not in wide and "gone\\x0anode-2" in wide
    # A report over its caps is refused (logged), as if absent: nothing of it reaches the object.
    huge = {**forged, "phase": "Failed", "message": "x" * (1024 * 1024 - 300)}
    raw_etcd.put(keys.instance_status(prefix, "node-1", "web", "i1"), json.dumps(huge))
    wait_until(lambda: status() is None, timeout=10, what="the refused report gone from the status")
    log = operator.log_text()
    assert "status/instances/web/i1" in log and "over the limit of 65536 bytes" in log
