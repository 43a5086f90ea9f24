"""The test control plane is a real Kubernetes API server, not an imitation.

Each test checks one behaviour the operator's tests rely on: discovery,
OpenAPI schema validation of custom resources, status subresources, watches,
RBAC with ServiceAccount tokens and impersonation, and server-side apply.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client, config, watch

from kube import controlplane
from kube.controlplane import ControlPlane, wait_until

CRD_GROUP = "tests.discoverd.io"


def _widget_crd(plural: str) -> dict[str, Any]:
    """A namespaced CRD with a structural schema and a status subresource."""
    kind = plural.capitalize().removesuffix("s")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 1},
                                        "image": {"type": "string"},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def widget_crd(control_plane: ControlPlane, namespace: str) -> Iterator[dict[str, Any]]:
    """A CRD unique to this test, Established; removed afterwards."""
    plural = f"w{namespace.replace('-', '')[-12:]}s"
    crd = _widget_crd(plural)
    name = crd["metadata"]["name"]
    control_plane.kubectl_run("apply", "-f", "-", input=json.dumps(crd))
    control_plane.kubectl_run("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")
    yield crd
    control_plane.kubectl_run("delete", "crd", name, "--wait=false")


def _widget(crd: dict[str, Any], name: str, spec: dict[str, Any]) -> str:
    names = crd["spec"]["names"]
    return json.dumps(
        {
            "apiVersion": f"{CRD_GROUP}/v1alpha1",
            "kind": names["kind"],
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_kubectl_version_reports_the_built_release(control_plane: ControlPlane) -> None:
    out = json.loads(control_plane.kubectl_run("version", "-o", "json").stdout)
    server = out["serverVersion"]
    assert server["major"] == "1"
    assert server["gitVersion"].startswith("v1.")
    assert out["clientVersion"]["gitVersion"].startswith("v1.")


def test_api_resources_lists_core_and_extension_apis(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl_run("api-resources", "-o", "name").stdout.split()
    for resource in (
        "configmaps",
        "secrets",
        "namespaces",
        "serviceaccounts",
        "customresourcedefinitions.apiextensions.k8s.io",
        "roles.rbac.authorization.k8s.io",
        "leases.coordination.k8s.io",
    ):
        assert resource in out


def test_configmap_round_trips_through_etcd(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl_run("create", "configmap", "settings", "-n", namespace, "--from-literal=color=blue")
    got = json.loads(control_plane.kubectl_run("get", "configmap", "settings", "-n", namespace, "-o", "json").stdout)
    assert got["data"] == {"color": "blue"}
    assert got["metadata"]["namespace"] == namespace


def test_api_server_keeps_its_data_under_registry_in_the_exported_etcd(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl_run("create", "configmap", "stored", "-n", namespace, "--from-literal=a=b")
    key = f"/registry/configmaps/{namespace}/stored"
    # etcd's JSON gateway: keys are base64; the value is protobuf, so only ask for the key.
    request = urllib.request.Request(
        f"{control_plane.etcd_endpoints}/v3/kv/range",
        data=json.dumps({"key": base64.b64encode(key.encode()).decode(), "keys_only": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        kvs = json.load(response).get("kvs", [])
    assert [base64.b64decode(kv["key"]).decode() for kv in kvs] == [key]


def test_custom_object_matching_schema_is_stored(
    control_plane: ControlPlane, namespace: str, widget_crd: dict[str, Any]
) -> None:
    control_plane.kubectl_run(
        "apply", "-n", namespace, "-f", "-", input=_widget(widget_crd, "good", {"replicas": 2, "image": "x"})
    )
    plural = widget_crd["spec"]["names"]["plural"]
    got = json.loads(control_plane.kubectl_run("get", plural, "good", "-n", namespace, "-o", "json").stdout)
    assert got["spec"] == {"replicas": 2, "image": "x"}


def test_custom_object_violating_schema_is_refused(
    control_plane: ControlPlane, namespace: str, widget_crd: dict[str, Any]
) -> None:
    bad = _widget(widget_crd, "bad", {"replicas": "three"})
    proc = control_plane.kubectl_run("create", "-n", namespace, "-f", "-", input=bad, check=False)
    assert proc.returncode != 0
    # The API server's own OpenAPI validation message, not a client-side one.
    assert "is invalid" in proc.stderr
    assert 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer' in proc.stderr


def test_custom_object_below_minimum_is_refused(
    control_plane: ControlPlane, namespace: str, widget_crd: dict[str, Any]
) -> None:
    bad = _widget(widget_crd, "zero", {"replicas": 0})
    proc = control_plane.kubectl_run("create", "-n", namespace, "-f", "-", input=bad, check=False)
    assert proc.returncode != 0
    assert "spec.replicas in body should be greater than or equal to 1" in proc.stderr


def test_status_subresource_ignores_status_in_main_resource_updates(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str, widget_crd: dict[str, Any]
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    plural = widget_crd["spec"]["names"]["plural"]
    body = json.loads(_widget(widget_crd, "w", {"replicas": 1}))
    body["status"] = {"phase": "Ignored"}
    created = cast(
        dict[str, Any], custom.create_namespaced_custom_object(CRD_GROUP, "v1alpha1", namespace, plural, body)
    )
    assert "status" not in created

    created["status"] = {"phase": "Ready"}
    updated = cast(
        dict[str, Any],
        custom.replace_namespaced_custom_object_status(CRD_GROUP, "v1alpha1", namespace, plural, "w", created),
    )
    assert updated["status"] == {"phase": "Ready"}


def test_python_client_watch_sees_a_change_within_a_second(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched"), data={"n": "0"})
    )
    listing = core.list_namespaced_config_map(namespace).metadata
    assert listing is not None
    resource_version = listing.resource_version

    events: queue.Queue[tuple[float, str, str]] = queue.Queue()
    watcher = watch.Watch()  # type: ignore[no-untyped-call]

    def run() -> None:
        # Ends on the first event (closing the connection) or when the server ends the watch.
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            core.list_namespaced_config_map,
            namespace,
            resource_version=resource_version,
            timeout_seconds=10,
        ):
            obj = event["object"]
            events.put((time.monotonic(), event["type"], (obj.data or {}).get("n", "")))
            break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        changed_at = time.monotonic()
        core.patch_namespaced_config_map("watched", namespace, {"data": {"n": "1"}})
        seen_at, kind, value = events.get(timeout=5)
        assert (kind, value) == ("MODIFIED", "1")
        assert seen_at - changed_at < 1.0
    finally:
        thread.join(timeout=15)
    assert not thread.is_alive()


def _limited_service_account(control_plane: ControlPlane, namespace: str) -> None:
    """ServiceAccount "reader" with a Role that may only read ConfigMaps in ``namespace``."""
    control_plane.kubectl_run("create", "serviceaccount", "reader", "-n", namespace)
    control_plane.kubectl_run(
        "create",
        "role",
        "configmap-reader",
        "-n",
        namespace,
        "--verb=get,list,watch",
        "--resource=configmaps",
    )
    control_plane.kubectl_run(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=configmap-reader",
        f"--serviceaccount={namespace}:reader",
    )
    control_plane.kubectl_run("create", "configmap", "visible", "-n", namespace, "--from-literal=a=b")
    control_plane.kubectl_run("create", "secret", "generic", "hidden", "-n", namespace, "--from-literal=a=b")


def test_service_account_token_may_read_configmaps_but_not_secrets(
    control_plane: ControlPlane, namespace: str, sa_kubeconfig: Callable[[str, str], Path]
) -> None:
    _limited_service_account(control_plane, namespace)
    kubeconfig = sa_kubeconfig(namespace, "reader")

    allowed = control_plane.kubectl_run("get", "configmap", "visible", "-n", namespace, kubeconfig=kubeconfig)
    assert "visible" in allowed.stdout

    refused = control_plane.kubectl_run("get", "secret", "hidden", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert refused.returncode != 0
    assert f'User "system:serviceaccount:{namespace}:reader" cannot get resource "secrets"' in refused.stderr


def test_service_account_token_is_refused_outside_its_namespace(
    control_plane: ControlPlane, namespace: str, sa_kubeconfig: Callable[[str, str], Path]
) -> None:
    _limited_service_account(control_plane, namespace)
    kubeconfig = sa_kubeconfig(namespace, "reader")
    refused = control_plane.kubectl_run("get", "configmaps", "-n", "default", kubeconfig=kubeconfig, check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr


def test_python_client_with_service_account_token_is_refused_secrets(
    namespace: str, control_plane: ControlPlane, sa_kubeconfig: Callable[[str, str], Path]
) -> None:
    _limited_service_account(control_plane, namespace)
    kubeconfig = str(sa_kubeconfig(namespace, "reader"))
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    try:
        core = client.CoreV1Api(api)
        assert core.read_namespaced_config_map("visible", namespace).data == {"a": "b"}
        with pytest.raises(client.ApiException) as refused:
            core.read_namespaced_secret("hidden", namespace)
        assert refused.value.status == 403
    finally:
        api.close()


def test_impersonated_service_account_is_refused_secrets(
    control_plane: ControlPlane, namespace: str, impersonating_kubeconfig: Callable[..., Path]
) -> None:
    _limited_service_account(control_plane, namespace)
    kubeconfig = impersonating_kubeconfig(service_account=(namespace, "reader"))
    can_cm = control_plane.kubectl_run(
        "auth", "can-i", "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    can_secret = control_plane.kubectl_run(
        "auth", "can-i", "get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert can_cm.stdout.strip() == "yes"
    assert can_secret.stdout.strip() == "no"


def test_server_side_apply_records_field_manager_and_detects_conflicts(
    control_plane: ControlPlane, namespace: str
) -> None:
    manifest = yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"owner": "first"}}
    )
    control_plane.kubectl_run(
        "apply", "--server-side", "--field-manager=first", "-n", namespace, "-f", "-", input=manifest
    )
    got = json.loads(
        control_plane.kubectl_run(
            "get", "configmap", "applied", "-n", namespace, "-o", "json", "--show-managed-fields"
        ).stdout
    )
    managers = {(m["manager"], m["operation"]) for m in got["metadata"]["managedFields"]}
    assert ("first", "Apply") in managers

    other = manifest.replace("first", "second")
    conflict = control_plane.kubectl_run(
        "apply",
        "--server-side",
        "--field-manager=second",
        "-n",
        namespace,
        "-f",
        "-",
        input=other,
        check=False,
    )
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower()

    control_plane.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=second",
        "-n",
        namespace,
        "-f",
        "-",
        input=other,
    )
    data = wait_until(
        lambda: json.loads(
            control_plane.kubectl_run("get", "configmap", "applied", "-n", namespace, "-o", "json").stdout
        )["data"],
        timeout=5,
        what="configmap data readable",
    )
    assert data == {"owner": "second"}


def test_no_control_plane_process_outlives_down(tmp_path: Path, control_plane: ControlPlane) -> None:
    """A second control plane in its own DIR starts and stops cleanly, leaving no pid running."""
    directory = tmp_path / "second"
    pids: list[int] = []
    try:
        second = controlplane.start_control_plane(directory)
        pids = [int((directory / f"{name}.pid").read_text()) for name in ("etcd", "kube-apiserver")]
        assert second.server != control_plane.server
        assert all(_is_running(pid) for pid in pids)
    finally:
        controlplane.stop_control_plane(directory)

    def gone() -> bool:
        return not any(_is_running(pid) for pid in pids)

    wait_until(gone, timeout=10, what="control plane pids gone")
    assert not directory.exists()


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
