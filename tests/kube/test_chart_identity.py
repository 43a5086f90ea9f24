"""The chart's node identity and its bundled etcd's auth (docs/etcd-auth.md), rendered with the real helm,
and installed then upgraded on the test control plane for what `lookup` must keep."""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from kube import chart
from kube.controlplane import ControlPlane


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _secret_refs(workload: dict[str, Any]) -> list[str]:
    """Every Secret a pod template can read: env references, secret and projected volumes."""
    pod = _pod(workload)
    names = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        for value in _env(container).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                names.append(value["secretKeyRef"]["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.append(source["secretRef"]["name"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.append(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.append(source["secret"]["name"])
    return names


NODE_IDENTITY: dict[str, tuple[list[str], list[Path]]] = {
    "external etcd": ([], [chart.TLS_AUTH_VALUES]),
    "bundled etcd": (["etcd.server.enabled=true"], []),
}


def _render(case: str) -> list[dict[str, Any]]:
    values, files = NODE_IDENTITY[case]
    return chart.render(*values, values_files=files)


def test_daemonset_holds_no_etcd_password_nor_client_certificate_with_node_identity() -> None:
    for case in NODE_IDENTITY:
        objects = _render(case)
        daemonset = chart.find(objects, "DaemonSet", "-agent")
        container = _pod(daemonset)["containers"][0]
        env = _env(container)
        assert (
            not {"DISCOVERD_ETCD_USER", "DISCOVERD_ETCD_PASSWORD", "DISCOVERD_ETCD_CERT", "DISCOVERD_ETCD_KEY"}
            & env.keys()
        ), case
        volumes = {v["name"]: v for v in _pod(daemonset)["volumes"]}
        if case == "external etcd":
            # Of etcd's TLS Secret, only the CA certificate: no client key, no client certificate.
            assert _secret_refs(daemonset) == ["discoverd-etcd-client"]
            assert volumes["etcd-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
            assert env["DISCOVERD_ETCD_CACERT"] == "/etc/discoverd/etcd-tls/ca.crt"
        else:
            assert _secret_refs(daemonset) == [], case
        token = volumes["identity-token"]["projected"]["sources"]
        assert token == [{"serviceAccountToken": {"audience": "discoverd", "expirationSeconds": 600, "path": "token"}}]
        assert volumes["identity-ca"]["configMap"]["name"] == "dd-discoverd-operator-identity-ca"
        assert env["DISCOVERD_IDENTITY_URL"] == "https://dd-discoverd-operator.discoverd.svc:9466"
        assert _pod(daemonset)["automountServiceAccountToken"] is False
        # The operator, and only it, has the etcd identity.
        operator = chart.find(objects, "Deployment", "-operator")
        assert "DISCOVERD_ETCD_USER" in _env(_pod(operator)["containers"][0])


def test_shared_mode_is_the_old_one_only_when_asked_for() -> None:
    objects = chart.render("etcd.auth.agentCredentials=shared", values_files=[chart.TLS_AUTH_VALUES])
    env = _env(_pod(chart.find(objects, "DaemonSet", "-agent"))["containers"][0])
    assert env["DISCOVERD_ETCD_USER"] == {"secretKeyRef": {"name": "discoverd-etcd-auth", "key": "username"}}
    assert "DISCOVERD_IDENTITY_URL" not in env
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ConfigMap")]


def test_operator_gets_exactly_the_rights_node_identity_uses() -> None:
    objects = _render("external etcd")
    cluster_role = chart.find(objects, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]
    binding = chart.find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dd-discoverd-operator", "namespace": "discoverd"}
    ]
    role = chart.find(objects, "Role", "-operator")
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in role["rules"]
    args = _pod(chart.find(objects, "Deployment", "-operator"))["containers"][0]["args"]
    assert "--agent-service-account=dd-discoverd-agent" in args
    selector = "app.kubernetes.io/name=discoverd,app.kubernetes.io/instance=dd,app.kubernetes.io/component=agent"
    assert f"--agent-selector={selector}" in args
    # The agent's ServiceAccount is bound to nothing, here either.
    assert "dd-discoverd-agent" not in [
        s["name"] for o in objects if o["kind"].endswith("Binding") for s in o["subjects"]
    ]


def test_endpoint_certificate_names_the_service_and_loopback_and_chains_to_the_agents_ca() -> None:
    objects = _render("bundled etcd")
    secret = chart.find(objects, "Secret", "-operator-identity-tls")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca_pem = chart.find(objects, "ConfigMap", "-identity-ca")["data"]["ca.crt"].encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "dd-discoverd-operator.discoverd.svc" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert b"PRIVATE KEY" not in ca_pem


def test_bundled_etcd_has_a_generated_root_password_and_a_network_policy() -> None:
    objects = _render("bundled etcd")
    secret = chart.find(objects, "Secret", "-etcd-root")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32 and base64.b64decode(secret["data"]["username"]) == b"root"
    operator = chart.find(objects, "Deployment", "-operator")
    init = _pod(operator)["initContainers"][0]
    assert init["args"][:2] == ["auth", "enable"]
    assert _env(_pod(operator)["containers"][0])["DISCOVERD_ETCD_USER"] == {
        "secretKeyRef": {"name": "dd-discoverd-etcd-root", "key": "username"}
    }
    policy = chart.find(objects, "NetworkPolicy", "-etcd")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "etcd"
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 2379, "protocol": "TCP"}]
    [peer] = rule["from"]
    assert {"key": "app.kubernetes.io/component", "operator": "In", "values": ["operator", "agent", "test"]} in (
        peer["podSelector"]["matchExpressions"]
    )
    assert {"key": "app.kubernetes.io/instance", "operator": "In", "values": ["dd"]} in (
        peer["podSelector"]["matchExpressions"]
    )
    assert not [
        o
        for o in chart.render("etcd.server.enabled=true", "etcd.server.networkPolicy.enabled=false")
        if o["kind"] == "NetworkPolicy"
    ]
    # Host-network agents come from their node's address: extraFrom admits it.
    nodes = "etcd.server.networkPolicy.extraFrom[0].ipBlock.cidr=10.1.0.0/24"
    policy = chart.find(chart.render("etcd.server.enabled=true", nodes), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"][1] == {"ipBlock": {"cidr": "10.1.0.0/24"}}


def _secret(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    found = json.loads(cp.kubectl_run("get", "secret", name, "-n", namespace, "-o", "json").stdout)
    data: dict[str, str] = found["data"]
    return data


def test_generated_secrets_are_kept_across_upgrades(control_plane: ControlPlane, namespace: str) -> None:
    chart.install(control_plane, namespace, "etcd.server.enabled=true", "tests.enabled=false", release="keep")
    root = _secret(control_plane, namespace, "keep-discoverd-etcd-root")
    tls = _secret(control_plane, namespace, "keep-discoverd-operator-identity-tls")
    args = ["upgrade", "keep", str(chart.CHART), "--namespace", namespace, "--set", "etcd.server.enabled=true"]
    control_plane.helm_run(*args, "--set", "tests.enabled=false", timeout=180)
    assert _secret(control_plane, namespace, "keep-discoverd-etcd-root") == root
    assert _secret(control_plane, namespace, "keep-discoverd-operator-identity-tls") == tls
    ca = json.loads(
        control_plane.kubectl_run(
            "get", "configmap", "keep-discoverd-operator-identity-ca", "-n", namespace, "-o", "json"
        ).stdout
    )
    assert ca["data"]["ca.crt"].strip() == base64.b64decode(tls["ca.crt"]).decode().strip()
    control_plane.helm_run("uninstall", "keep", "--namespace", namespace, timeout=180)


def test_installed_rbac_lets_the_operator_check_agents_and_nothing_more(
    control_plane: ControlPlane, namespace: str, impersonating_kubeconfig: Callable[..., Path]
) -> None:
    chart.install(control_plane, namespace, "etcd.server.enabled=true", "tests.enabled=false", release="rbac")
    try:
        as_operator = impersonating_kubeconfig(service_account=(namespace, "rbac-discoverd-operator"))
        as_agent = impersonating_kubeconfig(service_account=(namespace, "rbac-discoverd-agent"))
        answers = {}
        for who, kubeconfig in (("operator", as_operator), ("agent", as_agent)):
            for verb, resource, scope in (
                ("create", "tokenreviews.authentication.k8s.io", []),
                ("get", "nodes", []),
                ("get", "pods", ["-n", namespace]),
                ("list", "pods", ["-n", namespace]),
                ("get", "pods", ["-n", "default"]),
                ("list", "nodes", []),
                ("get", "secrets", ["-n", namespace]),
            ):
                args = ["auth", "can-i", verb, resource, *scope]
                proc = control_plane.kubectl_run(*args, kubeconfig=kubeconfig, check=False)
                answers[f"{who} {verb} {resource} {' '.join(scope)}".strip()] = proc.stdout.strip()
        assert answers == {
            "operator create tokenreviews.authentication.k8s.io": "yes",
            "operator get nodes": "yes",
            f"operator get pods -n {namespace}": "yes",
            f"operator list pods -n {namespace}": "no",
            "operator get pods -n default": "no",
            "operator list nodes": "no",
            f"operator get secrets -n {namespace}": "no",
            "agent create tokenreviews.authentication.k8s.io": "no",
            "agent get nodes": "no",
            f"agent get pods -n {namespace}": "no",
            f"agent list pods -n {namespace}": "no",
            "agent get pods -n default": "no",
            "agent list nodes": "no",
            f"agent get secrets -n {namespace}": "no",
        }
    finally:
        control_plane.helm_run("uninstall", "rbac", "--namespace", namespace, timeout=180)
