"""Hostile etcd values and custom resources never stop `discoverd operator` mirroring the other keys."""

from __future__ import annotations

import json
from typing import Any

from discoverd.schema import keys
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator, crds, operator
from support.etcd import RawEtcd
from support.wait import wait_until

__all__ = ["crds", "operator"]

DEEP = b"[" * 5000 + b"]" * 5000
HOSTILE = {
    "deep": b'{"name":"web","service_version":"1.0","x":' + DEEP + b"}",
    "surrogate": b'{"name":"web\\ud800","service_version":"1.0"}',
    "nan": b'{"name":"web","service_version":"1.0","x":NaN}',
    "nul": b'{"name":"web","service_version":"1.0","run_script":{"command":"a\\u0000"}}',
    "env": b'{"name":"web","service_version":"1.0","run_script":{"env":{"DISCOVERD_SERVER_ID":"x"}}}',
    "big": b'{"name":"web","service_version":"1.0","x":"' + b"a" * (1200 * 1024) + b'"}',
}


def _get(cp: ControlPlane, ns: str, what: str, name: str) -> dict[str, Any] | None:
    proc = cp.kubectl_run("get", what, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _write_hostile(raw: RawEtcd, prefix: str) -> None:
    for name, value in HOSTILE.items():
        raw.put(keys.instance_config(prefix, "web", f"bad-{name}"), value)
        if name != "big":  # one 1.2 MiB value is enough
            raw.put(keys.version_config(prefix, f"api-{name}", "1.0"), value)
            raw.put(keys.server_config(prefix, f"node-{name}"), value)
            raw.put(keys.agent_status(prefix, f"node-{name}"), value)
            raw.put(keys.instance_status(prefix, "node-1", "web", f"bad-{name}"), value)
    for raw_key in (b"/servers/node-\xff/config/details", b"/services/w\xc3/instances/i1/config/details", b"/\xff"):
        raw.put(prefix.encode() + raw_key, b'{"name":"web","service_version":"1.0"}')


def _mirrors_a_valid_instance(op: Operator, cp: ControlPlane, raw: RawEtcd, prefix: str, ns: str, name: str) -> None:
    raw.put(keys.instance_config(prefix, "web", name), json.dumps({"name": "web", "service_version": "1.0"}))
    obj = wait_until(lambda: _get(cp, ns, "si", f"web.{name}"), timeout=30, what=f"web.{name} mirrored")
    assert obj["spec"]["serviceVersion"] == "1.0"
    assert op.proc is not None and op.proc.poll() is None
    assert "Traceback" not in op.log_text()


def test_hostile_etcd_values_are_skipped_and_the_mirror_goes_on(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    _write_hostile(raw_etcd, prefix)  # through the watch
    _mirrors_a_valid_instance(operator, control_plane, raw_etcd, prefix, namespace, "after-watch")
    for name in HOSTILE:
        assert _get(control_plane, namespace, "si", f"web.bad-{name}") is None
    operator.stop()
    operator.start()  # through the full read at startup
    _mirrors_a_valid_instance(operator, control_plane, raw_etcd, prefix, namespace, "after-resync")


def test_a_hostile_object_is_refused_and_the_others_are_mirrored(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    head = "apiVersion: discoverd.io/v1alpha1\nkind: ServiceInstance\nmetadata: {name: NAME}\n"
    bad = head.replace("NAME", "web.bad") + (
        "spec: {service: web, id: bad, serviceVersion: '1.0', runScript: {env: {DISCOVERD_SERVER_ID: x}}}\n"
    )
    good = head.replace("NAME", "web.good") + "spec: {service: web, id: good, serviceVersion: '1.0'}\n"
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=bad)
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=good)
    wait_until(lambda: raw_etcd.get(keys.instance_config(prefix, "web", "good")), timeout=30, what="web.good in etcd")
    refusal = "field 'runScript.env': environment variable name 'DISCOVERD_SERVER_ID' is reserved"
    wait_until(lambda: refusal in operator.log_text(), timeout=30, what="the refusal, naming the field, logged")
    assert raw_etcd.get(keys.instance_config(prefix, "web", "bad")) is None

    # Over the 1 MiB every agent refuses, under the API server's 1.5 MiB: refused here, never written to etcd.
    # `create`, not `apply`: apply's last-applied annotation would double the object past the API server's limit.
    env = {f"BIG{i}": "a" * 110 * 1024 for i in range(10)}
    big = {
        "apiVersion": "discoverd.io/v1alpha1",
        "kind": "ServiceVersion",
        "metadata": {"name": "web.9.9"},
        "spec": {"service": "web", "version": "9.9", "runScript": {"command": "./web", "env": env}},
    }
    control_plane.kubectl_run("create", "-n", namespace, "-f", "-", input=json.dumps(big))
    wait_until(
        lambda: "bytes in etcd, over the limit of 1048576 bytes" in operator.log_text(), timeout=30, what="refused"
    )
    assert raw_etcd.get(keys.version_config(prefix, "web", "9.9")) is None
    assert operator.proc is not None and operator.proc.poll() is None
    assert "Traceback" not in operator.log_text()
