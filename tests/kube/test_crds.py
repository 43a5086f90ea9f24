"""The generated CRDs on a real API server: accepted, and refusing invalid objects with its message."""

from __future__ import annotations

import pytest

from kube.controlplane import ControlPlane
from kube.operator_fixtures import crds

__all__ = ["crds"]

VALID = """
apiVersion: discoverd.io/v1alpha1
kind: ServiceVersion
metadata: {name: web.1.0}
spec:
  service: web
  version: "1.0"
  runScript: {command: ./web, argv: ["--port", "8080"], timeout: 0}
"""


def test_valid_object_is_accepted_and_unknown_fields_pruned(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    with_extra = VALID.replace("timeout: 0", "timeout: 0, extra: 1")
    strict = control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=with_extra, check=False)
    assert strict.returncode != 0 and 'unknown field "spec.runScript.extra"' in strict.stderr
    control_plane.kubectl_run("apply", "--validate=ignore", "-n", namespace, "-f", "-", input=with_extra)
    got = control_plane.kubectl_run("get", "sv", "web.1.0", "-n", namespace, "-o", "jsonpath={.spec.runScript}").stdout
    assert "extra" not in got and "8080" in got


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("service: web", 'service: "a/b"'), "spec.service"),
        (("service: web", 'service: ".."'), "spec.service"),
        (('version: "1.0"', "version: 1.0"), "spec.version"),
        (("timeout: 0", "timeout: -1"), "spec.runScript.timeout"),
        (('argv: ["--port", "8080"]', "argv: 8080"), "spec.runScript.argv"),
    ],
    ids=["slash-in-name", "dot-dot-name", "version-not-a-string", "negative-timeout", "argv-not-a-list"],
)
def test_invalid_object_is_refused_by_the_api_server(
    control_plane: ControlPlane, crds: list[str], namespace: str, change: tuple[str, str], message: str
) -> None:
    proc = control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=VALID.replace(*change), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Invalid value" in proc.stderr, proc.stderr


def test_names_are_immutable(control_plane: ControlPlane, crds: list[str], namespace: str) -> None:
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=VALID)
    proc = control_plane.kubectl_run(
        "patch", "sv", "web.1.0", "-n", namespace, "--type=merge", "-p", '{"spec":{"version":"2.0"}}', check=False
    )
    assert proc.returncode != 0 and "immutable" in proc.stderr, proc.stderr


def test_duplicate_instance_on_a_server_is_refused(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    server = "apiVersion: discoverd.io/v1alpha1\nkind: Server\nmetadata: {name: n1}\nspec: {id: n1, serviceInstances: [{name: web, id: i1}, {name: web, id: i1}]}\n"
    proc = control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=server, check=False)
    assert proc.returncode != 0 and "Duplicate" in proc.stderr, proc.stderr
