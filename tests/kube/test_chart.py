"""charts/discoverd rendered with the real helm (no cluster): lint, schema, and the YAML it produces."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube import chart, controlplane

VALUES_FILES = {"default": (), "tls-auth": (chart.TLS_AUTH_VALUES,)}


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- lint, render, schema ---------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=list(VALUES_FILES))
def test_lint_passes(values: str) -> None:
    files = [a for f in VALUES_FILES[values] for a in ("--values", str(f))]
    proc = chart.helm("lint", "--strict", str(chart.CHART), *files)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=list(VALUES_FILES))
def test_template_renders_every_component(values: str) -> None:
    objects = chart.render(values_files=VALUES_FILES[values])
    kinds = sorted({(o["kind"], o["metadata"]["name"]) for o in objects})
    # etcd with auth (tls-auth): node identity's endpoint, certificate and cluster-scoped rights.
    identity = [
        ("ClusterRole", "discoverd-dd-discoverd-operator-identity"),
        ("ClusterRoleBinding", "discoverd-dd-discoverd-operator-identity"),
        ("ConfigMap", "dd-discoverd-operator-identity-ca"),
        ("Secret", "dd-discoverd-operator-identity-tls"),
        ("Service", "dd-discoverd-operator"),
    ]
    if values == "default":
        assert not set(identity) & set(kinds)
    else:
        assert set(identity) <= set(kinds)
    assert sorted(set(kinds) - set(identity)) == [
        ("CustomResourceDefinition", "servers.discoverd.io"),
        ("CustomResourceDefinition", "serviceinstances.discoverd.io"),
        ("CustomResourceDefinition", "servicerollouts.discoverd.io"),
        ("CustomResourceDefinition", "serviceversions.discoverd.io"),
        ("DaemonSet", "dd-discoverd-agent"),
        ("Deployment", "dd-discoverd-operator"),
        ("Pod", "dd-discoverd-test-mirror"),
        ("Role", "dd-discoverd-operator"),
        ("Role", "dd-discoverd-test"),
        ("RoleBinding", "dd-discoverd-operator"),
        ("RoleBinding", "dd-discoverd-test"),
        ("ServiceAccount", "dd-discoverd-agent"),
        ("ServiceAccount", "dd-discoverd-operator"),
        ("ServiceAccount", "dd-discoverd-test"),
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("agent.hostPID=true", "at '/agent': additional properties 'hostPID' not allowed"),
        ("agent.hostPid=0", "at '/agent/hostPid'"),
        ("agent.capabilities={ALL}", "at '/agent/capabilities/0'"),
        ("etcd.server.storage.type=nfs", "at '/etcd/server/storage/type'"),
        ("logFormat=xml", "at '/logFormat': value must be one of 'json', 'text'"),
        (
            "agent.terminationGracePeriodSeconds=soon",
            "at '/agent/terminationGracePeriodSeconds': got string, want integer",
        ),
        ("etcd.prefix=discoverd", "at '/etcd/prefix'"),
    ],
)
def test_schema_rejects_bad_value_naming_it(setting: str, message: str) -> None:
    proc = chart.helm("template", "dd", str(chart.CHART), "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["etcd.tls.enabled=true"], "etcd.tls.secretName is required when etcd.tls.enabled is true"),
        (["etcd.auth.enabled=true"], "etcd.auth.secretName is required when etcd.auth.enabled is true"),
        (
            ["etcd.tls.enabled=true", "etcd.tls.secretName=s", "etcd.tls.keyKey="],
            "etcd.tls.certKey and etcd.tls.keyKey go together",
        ),
    ],
)
def test_incomplete_etcd_security_fails_with_the_value_named(settings: list[str], message: str) -> None:
    args = [a for s in settings for a in ("--set", s)]
    proc = chart.helm("template", "dd", str(chart.CHART), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def _value_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every value the schema declares, dotted; maps and Kubernetes objects count as one."""
    paths: list[str] = []
    for name, child in schema.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        nested = "properties" in child and "Kubernetes" not in child.get("description", "")
        paths += _value_paths(child, f"{dotted}.") if nested else [dotted]
    return paths


def test_every_value_is_documented_by_a_comment_starting_with_its_name() -> None:
    schema = yaml.safe_load((chart.CHART / "values.schema.json").read_text())
    text = (chart.CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    undocumented = [p for p in _value_paths(schema) if p != "global" and f"# {p} " not in text]
    assert undocumented == []
    missing = [p for p in _value_paths(schema) if p != "global" and not _has(values, p)]
    assert missing == [], "declared in values.schema.json but without a default in values.yaml"


def _has(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = yaml.safe_load((chart.CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(where or "/")
            for name, child in node["properties"].items():
                walk(child, f"{where}/{name}")

    walk(schema, "")
    assert open_objects == []


# --- the agent --------------------------------------------------------------------------------


def test_agent_runs_unprivileged_with_named_capabilities_in_the_host_pid_namespace() -> None:
    daemonset = chart.find(chart.render(), "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    container = _container(daemonset)
    assert pod["hostPID"] is True
    assert pod["hostNetwork"] is True
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"add": ["SYS_ADMIN", "SYS_PTRACE"]}
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert security["runAsUser"] == 0
    assert "--host-namespaces" in container["args"]
    assert "--host-pid=1" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--cgroups")]


def test_agent_nsenter_target_and_capabilities_come_from_values() -> None:
    daemonset = chart.find(
        chart.render(
            "agent.hostPid=4242", "agent.capabilities={SYS_ADMIN,SYS_PTRACE,NET_ADMIN}", "agent.cgroups.mode=cgroupfs"
        ),
        "DaemonSet",
        "-agent",
    )
    container = _container(daemonset)
    assert "--host-pid=4242" in container["args"]
    assert "--cgroups=cgroupfs" in container["args"]
    assert container["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]


def test_agent_mounts_the_hosts_cgroupfs_writable_at_the_same_path() -> None:
    daemonset = chart.find(chart.render(), "DaemonSet", "-agent")
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in _container(daemonset)["volumeMounts"]}
    assert volumes["cgroupfs"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    assert mounts["cgroupfs"]["mountPath"] == "/sys/fs/cgroup"
    assert not mounts["cgroupfs"].get("readOnly", False)
    daemonset = chart.find(chart.render("agent.cgroups.hostPath="), "DaemonSet", "-agent")
    assert "cgroupfs" not in {v["name"] for v in daemonset["spec"]["template"]["spec"]["volumes"]}


def test_agent_server_id_is_the_node_name_from_the_downward_api() -> None:
    container = _container(chart.find(chart.render(), "DaemonSet", "-agent"))
    assert "--server-id=$(DISCOVERD_NODE_NAME)" in container["args"]
    assert _env(container)["DISCOVERD_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The variable must be defined before anything that refers to it.
    assert container["env"][0]["name"] == "DISCOVERD_NODE_NAME"


def test_agent_state_dir_is_a_host_path_at_the_same_path() -> None:
    daemonset = chart.find(chart.render("agent.stateDir=/srv/discoverd"), "DaemonSet", "-agent")
    container = _container(daemonset)
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["state"]["hostPath"] == {"path": "/srv/discoverd", "type": "DirectoryOrCreate"}
    assert mounts["state"]["mountPath"] == "/srv/discoverd"
    assert "--state-dir=/srv/discoverd" in container["args"]


def test_agent_has_no_kubernetes_credentials_or_rights() -> None:
    objects = chart.render()
    daemonset = chart.find(objects, "DaemonSet", "-agent")
    account = chart.find(objects, "ServiceAccount", "-agent")
    assert daemonset["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    subjects = [s["name"] for o in objects if o["kind"].endswith("Binding") for s in o["subjects"]]
    assert account["metadata"]["name"] not in subjects


def test_agent_without_host_namespaces_leaves_the_host_pid_namespace() -> None:
    daemonset = chart.find(chart.render("agent.hostNamespaces=false", "agent.hostNetwork=false"), "DaemonSet", "-agent")
    assert daemonset["spec"]["template"]["spec"]["hostPID"] is False
    assert "hostNetwork" not in daemonset["spec"]["template"]["spec"]
    assert "--host-namespaces" not in _container(daemonset)["args"]
    assert not [a for a in _container(daemonset)["args"] if a.startswith("--host-pid")]


def test_agent_tolerations_node_selector_and_resources_come_from_values() -> None:
    daemonset = chart.find(chart.render(values_files=[chart.TLS_AUTH_VALUES]), "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "discoverd.io/server": "true"}
    assert _container(daemonset)["resources"]["limits"] == {"memory": "2Gi"}


# --- the operator -----------------------------------------------------------------------------


def test_operator_is_one_replica_replaced_by_recreate() -> None:
    deployment = chart.find(chart.render(), "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_runs_as_non_root_in_the_release_namespace() -> None:
    deployment = chart.find(chart.render(namespace="shop"), "Deployment", "-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"][:2] == ["operator", "--namespace=shop"]
    assert pod["serviceAccountName"] == "dd-discoverd-operator"


# Exactly what the operator uses (docs/kubernetes.md): Kopf lists, watches and patches the
# objects; the mirror lists, creates, patches and deletes them and patches their status; both
# post Events. No ClusterRole: Kopf's resource and namespace scanning is off.
OPERATOR_RULES = [
    {
        "apiGroups": ["discoverd.io"],
        "resources": ["servers", "serviceversions", "serviceinstances", "servicerollouts"],
        "verbs": ["list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["discoverd.io"],
        "resources": ["servers/status", "serviceversions/status", "serviceinstances/status", "servicerollouts/status"],
        "verbs": ["patch"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def test_operator_rbac_is_exactly_what_it_uses() -> None:
    objects = chart.render(namespace="shop")
    role = chart.find(objects, "Role", "-operator")
    binding = chart.find(objects, "RoleBinding", "-operator")
    assert role["metadata"]["namespace"] == "shop"
    assert role["rules"] == OPERATOR_RULES
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "dd-discoverd-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dd-discoverd-operator", "namespace": "shop"}]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_rbac_create_false_renders_no_role() -> None:
    objects = chart.render("rbac.create=false")
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def test_existing_service_accounts_are_used_when_not_created() -> None:
    objects = chart.render(
        "operator.serviceAccount.create=false",
        "operator.serviceAccount.name=ops",
        "agent.serviceAccount.create=false",
        "agent.serviceAccount.name=node-agent",
    )
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"] == ["dd-discoverd-test"]
    assert chart.find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert chart.find(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "node-agent"
    assert chart.find(objects, "RoleBinding", "-operator")["subjects"][0]["name"] == "ops"


# --- etcd connection --------------------------------------------------------------------------


# The agents get the operator's Secret and certificate only in the shared mode (default: node identity,
# tests/kube/test_chart_identity.py).
@pytest.mark.parametrize(("kind", "values"), [("Deployment", []), ("DaemonSet", ["etcd.auth.agentCredentials=shared"])])
def test_etcd_tls_files_and_password_come_from_secrets(kind: str, values: list[str]) -> None:
    workload = chart.find(chart.render(*values, values_files=[chart.TLS_AUTH_VALUES]), kind)
    container = _container(workload)
    env = _env(container)
    assert (
        env["DISCOVERD_ETCD_ENDPOINTS"]
        == "https://etcd-0.etcd.discoverd.svc:2379,https://etcd-1.etcd.discoverd.svc:2379"
    )
    assert env["DISCOVERD_PREFIX"] == "/discoverd-prod"
    assert env["DISCOVERD_ETCD_CACERT"] == "/etc/discoverd/etcd-tls/ca.crt"
    assert env["DISCOVERD_ETCD_CERT"] == "/etc/discoverd/etcd-tls/tls.crt"
    assert env["DISCOVERD_ETCD_KEY"] == "/etc/discoverd/etcd-tls/tls.key"
    assert env["DISCOVERD_ETCD_USER"] == {"secretKeyRef": {"name": "discoverd-etcd-auth", "key": "username"}}
    assert env["DISCOVERD_ETCD_PASSWORD"] == {"secretKeyRef": {"name": "discoverd-etcd-auth", "key": "password"}}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["etcd-tls"]["secret"]["secretName"] == "discoverd-etcd-client"
    assert mounts["etcd-tls"] == {"name": "etcd-tls", "mountPath": "/etc/discoverd/etcd-tls", "readOnly": True}


def test_no_tls_or_auth_by_default() -> None:
    for kind in ("Deployment", "DaemonSet"):
        workload = chart.find(chart.render(), kind)
        env = _env(_container(workload))
        assert env["DISCOVERD_ETCD_ENDPOINTS"] == "http://etcd:2379"
        assert not {"DISCOVERD_ETCD_CACERT", "DISCOVERD_ETCD_USER", "DISCOVERD_ETCD_PASSWORD"} & env.keys()
        assert "etcd-tls" not in {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]}


# --- CRDs -------------------------------------------------------------------------------------


def test_chart_crd_templates_are_generated_from_crds() -> None:
    script = controlplane.REPO / "hack" / "gen-chart-crds.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_rendered_crds_equal_the_repository_crds() -> None:
    source = {
        doc["metadata"]["name"]: doc
        for path in sorted(Path(chart.CRDS).glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert source, "crds/ is empty: run hack/gen-crds.py"
    rendered = {o["metadata"]["name"]: o for o in chart.render() if o["kind"] == "CustomResourceDefinition"}
    assert rendered.keys() == source.keys()
    for name, crd in rendered.items():
        assert crd["spec"] == source[name]["spec"], name


def test_crds_are_kept_on_uninstall_by_default() -> None:
    for crd in (o for o in chart.render() if o["kind"] == "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crds_keep_false_lets_uninstall_delete_them() -> None:
    for crd in (o for o in chart.render("crds.keep=false") if o["kind"] == "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_enabled_false_renders_no_crd() -> None:
    assert not [o for o in chart.render("crds.enabled=false") if o["kind"] == "CustomResourceDefinition"]


# --- helm test --------------------------------------------------------------------------------


def test_helm_test_hook_runs_after_its_identity_and_is_cleaned_up() -> None:
    hooks = [o for o in chart.render() if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    weights = {(o["kind"], int(o["metadata"]["annotations"]["helm.sh/hook-weight"])) for o in hooks}
    assert weights == {("ServiceAccount", -5), ("Role", -5), ("RoleBinding", -5), ("Pod", 0)}
    for hook in hooks:
        assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"


def test_helm_test_identity_may_only_handle_service_versions() -> None:
    objects = chart.render()
    role = chart.find(objects, "Role", "-test")
    assert role["rules"] == [
        {"apiGroups": ["discoverd.io"], "resources": ["serviceversions"], "verbs": ["create", "get", "delete"]}
    ]
    pod = chart.find(objects, "Pod", "-test-mirror")
    assert pod["spec"]["serviceAccountName"] == chart.find(objects, "ServiceAccount", "-test")["metadata"]["name"]


def test_tests_enabled_false_renders_no_hook() -> None:
    objects = chart.render("tests.enabled=false")
    assert not [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
@pytest.mark.parametrize("verbose", ["false", "true"])
@pytest.mark.parametrize("values", VALUES_FILES, ids=list(VALUES_FILES))
def test_rendered_command_line_is_accepted_by_discoverd(kind: str, verbose: str, values: str) -> None:
    """Flags the chart passes exist in the real CLI (unknown options fail even with --help)."""
    objects = chart.render(f"verbose={verbose}", values_files=VALUES_FILES[values])
    container = _container(chart.find(objects, kind))
    args = [a.replace("$(DISCOVERD_NODE_NAME)", "node-1") for a in container["args"]]
    discoverd = Path(sys.executable).with_name("discoverd")
    proc = subprocess.run([str(discoverd), *args, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- etcd in the release (etcd.server) --------------------------------------------------------


def test_no_etcd_in_the_release_by_default() -> None:
    objects = chart.render()
    assert not [o for o in objects if o["kind"] in ("StatefulSet", "Service")]
    assert (
        _env(_container(chart.find(objects, "Deployment", "-operator")))["DISCOVERD_ETCD_ENDPOINTS"]
        == "http://etcd:2379"
    )


def test_etcd_server_is_one_member_with_a_claim_that_both_parts_use() -> None:
    objects = chart.render("etcd.server.enabled=true", "etcd.endpoints={http://elsewhere:2379}")
    statefulset = chart.find(objects, "StatefulSet", "-etcd")
    service = chart.find(objects, "Service", "-etcd")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] == "dd-discoverd-etcd"
    assert service["spec"]["clusterIP"] == "None"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    container = _container(statefulset)
    assert container["image"] == "gcr.io/etcd-development/etcd:v3.5.21"
    assert container["command"] == ["/usr/local/bin/etcd"]
    assert "--listen-client-urls=http://0.0.0.0:2379" in container["args"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/etcd"}
    endpoint = "http://dd-discoverd-etcd.discoverd.svc:2379"
    assert f"--advertise-client-urls={endpoint}" in container["args"]
    for kind in ("Deployment", "DaemonSet"):
        assert _env(_container(chart.find(objects, kind)))["DISCOVERD_ETCD_ENDPOINTS"] == endpoint


def test_etcd_server_on_the_host_network_listens_on_loopback_with_a_host_path() -> None:
    objects = chart.render(
        "etcd.server.enabled=true",
        "etcd.server.hostNetwork=true",
        "etcd.server.clientPort=23790",
        "etcd.server.peerPort=23800",
        "etcd.server.storage.type=hostPath",
        "etcd.server.storage.hostPath=/srv/etcd",
        "etcd.server.image.repository=localhost/etcd",
        "etcd.server.image.tag=local",
    )
    statefulset = chart.find(objects, "StatefulSet", "-etcd")
    pod = statefulset["spec"]["template"]["spec"]
    container = _container(statefulset)
    assert pod["hostNetwork"] is True
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert pod["volumes"] == [{"name": "data", "hostPath": {"path": "/srv/etcd", "type": "DirectoryOrCreate"}}]
    assert container["image"] == "localhost/etcd:local"
    assert "--listen-client-urls=http://127.0.0.1:23790" in container["args"]
    assert "--listen-peer-urls=http://127.0.0.1:23800" in container["args"]
    for kind in ("Deployment", "DaemonSet"):
        assert _env(_container(chart.find(objects, kind)))["DISCOVERD_ETCD_ENDPOINTS"] == "http://127.0.0.1:23790"


def test_etcd_server_refuses_tls_or_auth_settings_it_cannot_honour() -> None:
    proc = chart.helm(
        "template",
        "dd",
        str(chart.CHART),
        "--set",
        "etcd.server.enabled=true",
        "--values",
        str(chart.TLS_AUTH_VALUES),
        check=False,
    )
    assert proc.returncode != 0
    assert "etcd.server.enabled runs an etcd without TLS, with a root password the chart generates" in proc.stderr


def test_operator_host_network_and_env_also_apply_to_the_helm_test_pod() -> None:
    objects = chart.render(
        "operator.hostNetwork=true",
        "operator.extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        "operator.extraEnv[0].value=127.0.0.1",
    )
    for kind in ("Deployment", "Pod"):
        found = chart.find(objects, kind)
        spec = found["spec"] if kind == "Pod" else found["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in spec["containers"][0]["env"]
    assert "hostNetwork" not in chart.find(chart.render(), "Pod")["spec"]


# --- metrics and health -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "port"), [("Deployment", 9465), ("DaemonSet", 9464)])
def test_metrics_port_and_health_probes(kind: str, port: int) -> None:
    container = _container(chart.find(chart.render(), kind))
    # The pod's IP, not 0.0.0.0: with the host network, 0.0.0.0 opens the unauthenticated port on
    # every address of the node.
    assert f"--metrics-address=[$(DISCOVERD_POD_IP)]:{port}" in container["args"]
    pod_ip = {"name": "DISCOVERD_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert pod_ip in container["env"]
    assert not any("0.0.0.0" in arg for arg in container["args"] if arg.startswith("--metrics-address"))
    assert container["ports"][0] == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_metrics_ports_come_from_values() -> None:
    objects = chart.render("operator.metrics.port=19465", "agent.metrics.port=19464", "metrics.bindAddress=10.0.0.1")
    assert "--metrics-address=10.0.0.1:19465" in _container(chart.find(objects, "Deployment"))["args"]
    agent = _container(chart.find(objects, "DaemonSet"))
    assert "--metrics-address=10.0.0.1:19464" in agent["args"]
    assert agent["ports"][0]["containerPort"] == 19464


def test_the_agent_serves_logs_on_the_node_and_publishes_the_node_ip() -> None:
    agent = _container(chart.find(chart.render(), "DaemonSet"))
    assert "--api-address=0.0.0.0:9467" in agent["args"]
    assert "--api-advertise-address=$(DISCOVERD_HOST_IP):9467" in agent["args"]
    host_ip = {"name": "DISCOVERD_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
    assert host_ip in agent["env"]
    assert {"name": "api", "containerPort": 9467, "hostPort": 9467, "protocol": "TCP"} in agent["ports"]
    off = _container(chart.find(chart.render("agent.api.port=0"), "DaemonSet"))
    assert "--api-address=" in off["args"]
    assert [p["name"] for p in off["ports"]] == ["metrics"]


def test_no_service_monitor_unless_enabled() -> None:
    assert [o for o in chart.render() if o["kind"] == "ServiceMonitor"] == []


def test_service_monitor_scrapes_each_components_metrics_port_through_a_headless_service() -> None:
    objects = chart.render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=prom",
    )
    for component, port in (("operator", 9465), ("agent", 9464)):
        monitor = chart.find(objects, "ServiceMonitor", f"-{component}-metrics")
        service = chart.find(objects, "Service", f"-{component}-metrics")
        workload = chart.find(objects, "Deployment" if component == "operator" else "DaemonSet")
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
        selected = monitor["spec"]["selector"]["matchLabels"]
        assert selected.items() <= service["metadata"]["labels"].items()
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
        ]
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
    only_operator = chart.render("metrics.serviceMonitor.enabled=true", "agent.enabled=false")
    assert [o["metadata"]["name"] for o in only_operator if o["kind"] == "ServiceMonitor"] == [
        "dd-discoverd-operator-metrics"
    ]


def test_the_dashboard_is_shipped_in_the_chart_package(tmp_path: Path) -> None:
    chart.helm("package", str(chart.CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("discoverd-*.tgz")
    with tarfile.open(package) as tar:
        assert "discoverd/dashboards/discoverd.json" in tar.getnames()
