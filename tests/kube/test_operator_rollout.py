"""`discoverd operator` runs the rollout controller too (DESIGN 2b), and rollout keys never stop its mirror."""

from __future__ import annotations

import json
from typing import Any

from discoverd.schema import keys
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator, crds, operator
from support.etcd import RawEtcd
from support.wait import wait_until

__all__ = ["crds", "operator"]


def _spec(cp: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    proc = cp.kubectl_run("get", "si", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout)["spec"] if proc.returncode == 0 else None


def test_the_operator_acts_on_a_rollout_and_mirrors_what_it_writes(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    for version in ("1.0", "2.0"):
        raw_etcd.put(keys.version_config(prefix, "web", version), json.dumps({"name": "web"}))
    for i in ("i1", "i2"):
        raw_etcd.put(keys.instance_config(prefix, "web", i), json.dumps({"name": "web", "service_version": "1.0"}))
    wait_until(lambda: _spec(control_plane, namespace, "web.i2"), timeout=20, what="objects mirrored")
    # No server lists the instances: the rollout updates them without waiting for health.
    config = {"name": "web", "to_version": "2.0", "min_healthy_seconds": 0}
    raw_etcd.put(keys.rollout_config(prefix, "web"), json.dumps(config))

    def succeeded() -> Any:
        raw = raw_etcd.get(keys.rollout_status(prefix, "web"))
        return raw is not None and json.loads(raw)["phase"] == "Succeeded"

    wait_until(succeeded, timeout=30, what="the rollout Succeeded")
    leader = raw_etcd.get(f"{prefix}/controller/leader")
    assert leader is not None and leader.decode().endswith(f"/{operator.proc.pid if operator.proc else 0}")
    for i in ("i1", "i2"):
        wait_until(
            lambda i=i: (_spec(control_plane, namespace, f"web.{i}") or {}).get("serviceVersion") == "2.0",
            timeout=20,
            what=f"web.{i} on 2.0 in Kubernetes",
        )
    assert operator.alive()
    assert "Traceback" not in operator.log_text()
