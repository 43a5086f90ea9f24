"""The chart's operator RBAC is enough for the operator, and no more.

The chart is installed into the real kube-apiserver; `discoverd operator` then
runs as a local process authenticated as the chart's operator ServiceAccount
(a TokenRequest token, so the API server applies exactly the chart's Role).
It must mirror both ways, patch status and post events without one 403; and
that identity must be refused anything outside the Role.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.config import EtcdOptions
from kube import chart
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator
from support.etcd import RawEtcd
from support.wait import wait_until

RELEASE = "dd"
OPERATOR_SA = f"{RELEASE}-discoverd-operator"


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str) -> str:
    """The chart installed in the test's namespace (CRDs, operator ServiceAccount and Role)."""
    chart.install(control_plane, namespace, release=RELEASE)
    control_plane.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in chart.CRD_NAMES]
    )
    return namespace


@pytest.fixture
def operator_as_chart_identity(
    control_plane: ControlPlane,
    release: str,
    etcd_options: EtcdOptions,
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
) -> Iterator[Operator]:
    """`discoverd operator --namespace NS` with a token of the chart's operator ServiceAccount."""
    kubeconfig = sa_kubeconfig(release, OPERATOR_SA)
    as_operator = dataclasses.replace(
        control_plane, kubeconfig=kubeconfig, exports={**control_plane.exports, "KUBECONFIG": str(kubeconfig)}
    )
    op = Operator(as_operator, etcd_options, release, tmp_path / "operator.log")
    try:
        op.start()
        yield op
    finally:
        op.stop()
        sys.stderr.write(f"\n--- operator log ({release}) ---\n{op.log_text()[-6000:]}\n")


def _objects(cp: ControlPlane, namespace: str, plural: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cp.kubectl_run("get", plural, "-n", namespace, "-o", "json").stdout)[
        "items"
    ]
    return items


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def test_operator_with_the_chart_rbac_mirrors_both_ways(
    control_plane: ControlPlane, operator_as_chart_identity: Operator, raw_etcd: RawEtcd, prefix: str
) -> None:
    cp, ns, op = control_plane, operator_as_chart_identity.namespace, operator_as_chart_identity

    # etcd -> Kubernetes (list, watch, create): a raw put from another writer becomes an object.
    version = {"name": "web", "run_script": {"command": "sleep", "argv": ["1000"], "timeout": 0}}
    raw_etcd.put(f"{prefix}/services/web/versions/1.0/config/details", json.dumps(version))
    mirrored = wait_until(
        lambda: [o for o in _objects(cp, ns, "serviceversions") if o["spec"].get("version") == "1.0"],
        timeout=30,
        what="the etcd ServiceVersion mirrored into Kubernetes",
    )
    assert mirrored[0]["spec"]["service"] == "web"

    # Kubernetes -> etcd (Kopf's watch and finalizer patch, the mirror's annotation patch).
    instance = {
        "apiVersion": "discoverd.io/v1alpha1",
        "kind": "ServiceInstance",
        "metadata": {"name": "web-i1"},
        "spec": {"service": "web", "id": "i1", "serviceVersion": "1.0"},
    }
    cp.kubectl_run("create", "-n", ns, "-f", "-", input=json.dumps(instance))
    instance_key = f"{prefix}/services/web/instances/i1/config/details"
    stored = wait_until(lambda: raw_etcd.get(instance_key), timeout=30, what="the ServiceInstance written to etcd")
    assert stored is not None
    assert json.loads(stored)["service_version"] == "1.0"

    # Agent status -> the objects' status subresource (patch on */status).
    server = {"service_instances": [{"name": "web", "id": "i1"}]}
    raw_etcd.put(f"{prefix}/servers/node-1/config/details", json.dumps(server))
    agent = {"hostname": "node-1", "agent_version": "test", "started_at": _now(), "heartbeat": _now()}
    raw_etcd.put(f"{prefix}/servers/node-1/status/agent", json.dumps(agent))
    wait_until(
        lambda: [o for o in _objects(cp, ns, "servers") if (o.get("status") or {}).get("online") is True],
        timeout=30,
        what="the Server's status patched to online",
    )

    # A user's delete reaches etcd (delete, then Kopf removes its finalizer with a patch).
    cp.kubectl_run("delete", "-n", ns, "serviceinstance", "web-i1", "--wait=false")
    wait_until(lambda: raw_etcd.get(instance_key) is None, timeout=30, what="the etcd key deleted")
    wait_until(
        lambda: not [o for o in _objects(cp, ns, "serviceinstances") if o["metadata"]["name"] == "web-i1"],
        timeout=30,
        what="the object released by the operator",
    )

    # A conflict (etcd and the object changed while the operator was paused): etcd wins, the object
    # is reset (patch) and a Warning event says why (create events).
    name = mirrored[0]["metadata"]["name"]
    op.pause()
    try:
        changed = {**version, "run_script": {"command": "sleep", "argv": ["2000"], "timeout": 0}}
        raw_etcd.put(f"{prefix}/services/web/versions/1.0/config/details", json.dumps(changed))
        user_patch = {"spec": {"runScript": {"command": "sleep", "argv": ["3000"]}}}
        cp.kubectl_run("patch", "-n", ns, "serviceversion", name, "--type=merge", "-p", json.dumps(user_patch))
    finally:
        op.resume()
    events = wait_until(
        lambda: [
            e
            for e in json.loads(cp.kubectl_run("get", "events", "-n", ns, "-o", "json").stdout)["items"]
            if e["involvedObject"].get("name") == name and e["type"] == "Warning"
        ],
        timeout=30,
        what="the Warning event about etcd winning",
    )
    assert events[0]["reason"] == "EtcdWins"
    wait_until(
        lambda: [o for o in _objects(cp, ns, "serviceversions") if o["spec"]["runScript"]["argv"] == ["2000"]],
        timeout=30,
        what="the object reset to etcd's value",
    )

    log = op.log_text()
    assert "Forbidden" not in log and " 403" not in log, "the operator was refused something it needs"


CAN_I = [
    # (verb, resource, where, allowed)
    ("list", "serviceversions.discoverd.io", "ns", True),
    ("watch", "serviceinstances.discoverd.io", "ns", True),
    ("create", "servers.discoverd.io", "ns", True),
    ("patch", "servers.discoverd.io/status", "ns", True),
    ("delete", "serviceinstances.discoverd.io", "ns", True),
    ("create", "events", "ns", True),
    ("update", "servers.discoverd.io", "ns", False),
    ("get", "servers.discoverd.io", "ns", False),
    ("list", "servers.discoverd.io", "other", False),
    ("list", "secrets", "ns", False),
    ("list", "secrets", "all", False),
    ("get", "configmaps", "ns", False),
    ("create", "pods", "ns", False),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "cluster", False),
    ("list", "namespaces", "cluster", False),
    ("delete", "events", "ns", False),
    ("create", "roles.rbac.authorization.k8s.io", "ns", False),
]


def test_operator_identity_is_refused_what_the_role_does_not_grant(
    control_plane: ControlPlane, release: str, impersonating_kubeconfig: Callable[..., Path]
) -> None:
    as_operator = impersonating_kubeconfig(service_account=(release, OPERATOR_SA))

    denied = control_plane.kubectl_run("get", "secrets", "--all-namespaces", kubeconfig=as_operator, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and 'cannot list resource "secrets"' in denied.stderr

    wrong: list[str] = []
    for verb, resource, where, allowed in CAN_I:
        scope = {"ns": ["-n", release], "other": ["-n", "default"], "all": ["--all-namespaces"], "cluster": []}[where]
        proc = control_plane.kubectl_run("auth", "can-i", verb, resource, *scope, kubeconfig=as_operator, check=False)
        answer = proc.stdout.strip() == "yes"
        if answer != allowed:
            wrong.append(f"{verb} {resource} ({where}): {proc.stdout.strip()}, expected {'yes' if allowed else 'no'}")
    assert wrong == []


def test_agent_identity_has_no_rights(
    control_plane: ControlPlane, release: str, impersonating_kubeconfig: Callable[..., Path]
) -> None:
    as_agent = impersonating_kubeconfig(service_account=(release, f"{RELEASE}-discoverd-agent"))
    proc = control_plane.kubectl_run("auth", "can-i", "--list", "-n", release, kubeconfig=as_agent)
    granted = [line for line in proc.stdout.splitlines()[1:] if "discoverd.io" in line or line.split()[0] == "*"]
    assert granted == []
    for resource in ("servers.discoverd.io", "secrets", "pods"):
        answer = subprocess.run(
            [
                str(control_plane.kubectl),
                "--kubeconfig",
                str(as_agent),
                "auth",
                "can-i",
                "list",
                resource,
                "-n",
                release,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.stdout.strip() == "no", resource


def test_helm_test_hook_passes_against_the_operator(
    control_plane: ControlPlane,
    operator_as_chart_identity: Operator,
    sa_kubeconfig: Callable[[str, str], Path],
    raw_etcd: RawEtcd,
    prefix: str,
) -> None:
    """The `helm test` pod's script, run here as the hook's own ServiceAccount (no kubelet to run the pod)."""
    ns = operator_as_chart_identity.namespace
    hooks = chart.render(namespace=ns, release=RELEASE)
    identity = [
        o for o in hooks if o["kind"] in ("ServiceAccount", "Role", "RoleBinding") and "-test" in o["metadata"]["name"]
    ]
    assert len(identity) == 3
    control_plane.kubectl_run(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": identity})
    )
    pod = chart.find(hooks, "Pod", "-test-mirror")
    container = pod["spec"]["containers"][0]
    script, *args = container["args"]
    assert container["command"] == ["python3", "-c"]

    kubeconfig = sa_kubeconfig(ns, pod["spec"]["serviceAccountName"])
    env = {**control_plane.env(kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    # It cleaned up after itself: nothing left in etcd or Kubernetes.
    assert raw_etcd.keys(f"{prefix}/services/discoverd-helm-test/") == {}
    assert not [
        o for o in _objects(control_plane, ns, "serviceversions") if o["spec"]["service"] == "discoverd-helm-test"
    ]
