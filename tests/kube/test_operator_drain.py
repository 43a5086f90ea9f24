"""Drain and restart through Kubernetes: `kubectl patch` of a `Server` / `ServiceInstance` reaches etcd, and back.

A real `discoverd operator` between a real etcd and a real kube-apiserver
(docs/operating.md, "Restart" and "Drain").
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from discoverd.config import EtcdOptions
from discoverd.schema import documents, keys
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator, crds, kubectl_json, operator, put_with_lease
from support.etcd import RawEtcd
from support.wait import wait_until

__all__ = ["crds", "operator"]

SERVER = {"service_instances": [{"name": "web", "id": "i1"}]}
INSTANCE = {"name": "web", "service_version": "1.0"}


def _json(raw: RawEtcd, key: str) -> Any:
    value = raw.get(key)
    return None if value is None else json.loads(value)


def _exists(cp: ControlPlane, ns: str, what: str, name: str) -> bool:
    return cp.kubectl_run("get", what, name, "-n", ns, check=False).returncode == 0


def test_kubectl_patch_drained_reaches_etcd_and_the_phase_shows_drained(
    operator: Operator,
    control_plane: ControlPlane,
    raw_etcd: RawEtcd,
    prefix: str,
    namespace: str,
    etcd_options: EtcdOptions,
) -> None:
    key = keys.server_config(prefix, "node-1")
    raw_etcd.put(key, json.dumps(SERVER))
    wait_until(lambda: _exists(control_plane, namespace, "dsrv", "node-1"), timeout=10, what="the Server object")
    patch = '{"spec":{"drained":true,"drainDeadline":"2026-12-06T21:00:00Z"}}'
    control_plane.kubectl_run("patch", "dsrv", "node-1", "-n", namespace, "--type=merge", "-p", patch)
    doc = wait_until(lambda: (d := _json(raw_etcd, key)) and d.get("drained") and d, timeout=10, what="drained")
    assert doc == {**SERVER, "drained": True, "drain_deadline": "2026-12-06T21:00:00Z"}
    # The agent's report shows in the printer column.
    now = dt.datetime.now(dt.UTC)
    status = documents.AgentStatus(
        hostname="h", agent_version="1", started_at=now, heartbeat=now, drain=documents.DrainPhase.DRAINED
    )
    revoke = put_with_lease(etcd_options, {keys.agent_status(prefix, "node-1"): status})
    try:
        wait_until(
            lambda: (
                kubectl_json(control_plane, "get", "dsrv", "node-1", "-n", namespace).get("status", {}).get("phase")
                == "Online,Drained"
            ),
            timeout=10,
            what="phase Online,Drained",
        )
    finally:
        revoke()
    # Undrained from etcd (`discoverd undrain`): the object follows.
    raw_etcd.put(key, json.dumps(SERVER))
    wait_until(
        lambda: "drained" not in kubectl_json(control_plane, "get", "dsrv", "node-1", "-n", namespace)["spec"],
        timeout=10,
        what="spec.drained gone",
    )


def test_kubectl_patch_restart_token_reaches_etcd(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(key, json.dumps(INSTANCE))
    wait_until(lambda: _exists(control_plane, namespace, "si", "web.i1"), timeout=10, what="the ServiceInstance")
    patch = '{"spec":{"restartToken":"by-kubectl"}}'
    control_plane.kubectl_run("patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", patch)
    doc = wait_until(lambda: (d := _json(raw_etcd, key)) and d.get("restart_token") and d, timeout=10, what="token")
    assert doc == {**INSTANCE, "restart_token": "by-kubectl"}
