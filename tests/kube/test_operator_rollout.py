"""`discoverd operator` runs the rollout controller too (DESIGN 2b) and mirrors rollouts as `ServiceRollout` objects."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from discoverd.schema import keys, rollouts
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator, crds, operator
from support.etcd import RawEtcd
from support.wait import wait_until

__all__ = ["crds", "operator"]


def _get(cp: ControlPlane, ns: str, what: str, name: str) -> dict[str, Any] | None:
    proc = cp.kubectl_run("get", what, name, "-n", ns, "-o", "json", check=False)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else None


def _spec(cp: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    obj = _get(cp, ns, "si", name)
    return obj["spec"] if obj else None


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
    obj = wait_until(
        lambda: (
            (_get(control_plane, namespace, "sro", "web") or {}).get("status", {}).get("phase") == "Succeeded"
            and _get(control_plane, namespace, "sro", "web")
        ),
        timeout=20,
        what="the ServiceRollout object with the controller's status",
    )
    assert obj["spec"] == {"service": "web", "toVersion": "2.0", "minHealthySeconds": 0}
    assert obj["status"]["updated"] == 2 and obj["status"]["total"] == 2
    assert operator.alive()
    assert "Traceback" not in operator.log_text()


def test_kubectl_apply_starts_a_rollout_and_patch_pauses_it(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    for version in ("1.0", "2.0"):
        raw_etcd.put(keys.version_config(prefix, "db", version), json.dumps({"name": "db"}))
    raw_etcd.put(keys.instance_config(prefix, "db", "d1"), json.dumps({"name": "db", "service_version": "1.0"}))
    manifest = (
        "apiVersion: discoverd.io/v1alpha1\nkind: ServiceRollout\nmetadata: {name: db}\n"
        'spec: {service: db, toVersion: "2.0", maxUnavailable: "50%", minHealthySeconds: 0}\n'
    )
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=manifest)
    config_key = keys.rollout_config(prefix, "db")
    config = wait_until(lambda: raw_etcd.get(config_key), timeout=20, what="the rollout config in etcd")
    assert json.loads(config) == {"name": "db", "to_version": "2.0", "max_unavailable": "50%", "min_healthy_seconds": 0}
    wait_until(
        lambda: (
            json.loads(raw_etcd.get(keys.instance_config(prefix, "db", "d1")) or b"{}").get("service_version") == "2.0"
        ),
        timeout=30,
        what="the controller acting on the applied rollout",
    )
    columns = control_plane.kubectl_run("get", "sro", "db", "-n", namespace, "--no-headers").stdout.split()
    assert columns[:3] == ["db", "db", "2.0"]  # name, service, target
    control_plane.kubectl_run("patch", "sro", "db", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":true}}')
    wait_until(
        lambda: json.loads(raw_etcd.get(config_key) or b"{}").get("paused") is True, timeout=20, what="paused in etcd"
    )


def test_the_api_server_refuses_a_bad_max_unavailable_with_the_models_rule(
    crds: list[str], control_plane: ControlPlane, namespace: str
) -> None:
    """The CRD checks maxUnavailable as the model does, so `kubectl apply` fails at once, not the mirror later;
    each accepted value parses to itself (the forms the mirror writes back)."""

    def create(name: str, max_unavailable: int | str) -> subprocess.CompletedProcess[str]:
        body = {
            "apiVersion": "discoverd.io/v1alpha1",
            "kind": "ServiceRollout",
            "metadata": {"name": name},
            "spec": {"service": name, "toVersion": "2.0", "maxUnavailable": max_unavailable},
        }
        return control_plane.kubectl_run("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)

    for n, value in enumerate([1, 7, "1%", "25%", "100%"]):
        created = create(f"ok{n}", value)
        assert created.returncode == 0, created.stderr
        assert rollouts.parse_max_unavailable(value) == value
    for n, value in enumerate([0, -1, "x", "0%", "101%", "25", "25%%", ""]):
        proc = create(f"bad{n}", value)
        assert proc.returncode != 0, value
        assert "spec.maxUnavailable" in proc.stderr and "percentage from 1% to 100%" in proc.stderr, proc.stderr
        with pytest.raises(ValueError):
            rollouts.parse_max_unavailable(value)
