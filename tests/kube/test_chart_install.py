"""`helm install`, `upgrade` and `uninstall` of charts/discoverd against the real kube-apiserver.

There is no kubelet, scheduler or controller-manager, so no pod runs: what is
tested is that the API server accepts every object the chart makes (schema,
RBAC objects, CRDs with their OpenAPI validation), for the default values and
for etcd over TLS with a user and password.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kube import chart
from kube.controlplane import ControlPlane


def _manifest(cp: ControlPlane, namespace: str, release: str = "dd") -> list[dict[str, Any]]:
    text = cp.helm_run("get", "manifest", release, "--namespace", namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _get(cp: ControlPlane, obj: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    kind = obj["kind"].lower()
    args = ["get", kind, obj["metadata"]["name"], "-o", "json"]
    if kind != "customresourcedefinition":
        args += ["--namespace", namespace]
    proc = cp.kubectl_run(*args, check=False)
    if proc.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(proc.stdout)
    return found


@pytest.mark.parametrize("values", ["default", "tls-auth"])
def test_helm_install_is_accepted_by_the_api_server(control_plane: ControlPlane, namespace: str, values: str) -> None:
    files = [chart.TLS_AUTH_VALUES] if values == "tls-auth" else []
    chart.install(control_plane, namespace, values_files=files)

    objects = _manifest(control_plane, namespace)
    kinds = sorted(o["kind"] for o in objects)
    # etcd auth on (tls-auth): node identity's ClusterRole and binding, CA ConfigMap, TLS Secret, Service.
    identity = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "Service"] if values == "tls-auth" else []
    assert kinds == sorted(
        ["CustomResourceDefinition"] * len(chart.CRD_NAMES)
        + ["DaemonSet", "Deployment", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount", *identity]
    )
    missing = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if _get(control_plane, o, namespace) is None]
    assert missing == []
    status = json.loads(control_plane.helm_run("status", "dd", "--namespace", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


def test_crds_are_established_with_the_chart(control_plane: ControlPlane, namespace: str) -> None:
    chart.install(control_plane, namespace)
    for name in chart.CRD_NAMES:
        crd = json.loads(control_plane.kubectl_run("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == namespace


def test_helm_upgrade_changes_the_release_and_keeps_crds_on_uninstall(
    control_plane: ControlPlane, namespace: str
) -> None:
    chart.install(control_plane, namespace)
    control_plane.helm_run(
        "upgrade", "dd", str(chart.CHART), "--namespace", namespace, "--reuse-values", "--set", "agent.stateDir=/srv/dd"
    )
    daemonset = json.loads(
        control_plane.kubectl_run("get", "daemonset", "dd-discoverd-agent", "-n", namespace, "-o", "json").stdout
    )
    assert "--state-dir=/srv/dd" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]

    control_plane.helm_run("uninstall", "dd", "--namespace", namespace)
    gone = control_plane.kubectl_run("get", "deployment", "dd-discoverd-operator", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    for name in chart.CRD_NAMES:  # helm.sh/resource-policy: keep
        control_plane.kubectl_run("get", "crd", name)
