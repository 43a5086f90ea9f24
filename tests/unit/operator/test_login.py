"""In a pod, Kopf talks to the API server the pod's environment names, as the mirror's client does."""

from __future__ import annotations

from discoverd.operator.startup import in_cluster_server


def test_the_pods_environment_names_the_api_server() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env) == "https://10.96.0.1:443"
    # The e2e node's operator on the host network, told the loopback API server.
    assert in_cluster_server({**env, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}) == (
        "https://127.0.0.1:6443"
    )


def test_an_ipv6_service_address_is_bracketed() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env) == "https://[fd00:10:96::1]:443"


def test_without_both_variables_kopf_keeps_its_own_address() -> None:
    assert in_cluster_server({}) is None
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None
    assert in_cluster_server({"KUBERNETES_SERVICE_PORT": "443"}) is None
