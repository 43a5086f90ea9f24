"""The ServiceVersion CRD's `artifacts` on a real API server: what the pydantic model accepts, it accepts; bounds refused."""

from __future__ import annotations

import json

import pytest

from kube.controlplane import ControlPlane
from kube.operator_fixtures import crds

__all__ = ["crds"]

SHA = "ab" * 32
VALID = f"""
apiVersion: discoverd.io/v1alpha1
kind: ServiceVersion
metadata: {{name: web.1.0}}
spec:
  service: web
  version: "1.0"
  artifacts:
  - {{url: "https://example.org/web.tgz", sha256: "{SHA}", extract: auto, dest: app, mode: 0755}}
"""


def test_an_artifact_is_accepted_with_its_mode_read_as_octal(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=VALID)
    got = control_plane.kubectl_run("get", "sv", "web.1.0", "-n", namespace, "-o", "jsonpath={.spec.artifacts}").stdout
    (artifact,) = json.loads(got)
    assert artifact == {
        "url": "https://example.org/web.tgz",
        "sha256": SHA,
        "extract": "auto",
        "dest": "app",
        "mode": 0o755,
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ((f'sha256: "{SHA}"', 'sha256: "xyz"'), "spec.artifacts[0].sha256"),
        (("mode: 0755", "mode: 04755"), "spec.artifacts[0].mode"),
        (("extract: auto", "extract: maybe"), "spec.artifacts[0].extract"),
    ],
    ids=["digest-not-hex", "setuid-mode", "unknown-extract"],
)
def test_a_bad_artifact_is_refused_by_the_api_server(
    control_plane: ControlPlane, crds: list[str], namespace: str, change: tuple[str, str], field: str
) -> None:
    proc = control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=VALID.replace(*change), check=False)
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr
