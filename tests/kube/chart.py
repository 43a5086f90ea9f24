"""Render, lint and inspect charts/discoverd with the real helm binary (shared by the chart tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube import controlplane

__all__ = [
    "CHART",
    "CRDS",
    "TLS_AUTH_VALUES",
    "find",
    "helm",
    "helm_binary",
    "render",
]

CHART = controlplane.REPO / "charts" / "discoverd"
CRDS = controlplane.REPO / "crds"
TLS_AUTH_VALUES = CHART / "ci" / "tls-auth-values.yaml"


def helm_binary() -> Path:
    """The Go-built helm (tools dir); fails, never skips, when missing, like the control plane fixture."""
    path = controlplane.find_tool("helm")
    if path is None:
        pytest.fail(f"helm not found: {controlplane.BUILD_HINT}", pytrace=False)
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with no cluster (template, lint); on ``check`` failure show helm's stderr."""
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}", pytrace=False)
    return proc


def _set_args(values: Iterable[str], values_files: Iterable[Path]) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for item in values:
        args += ["--set", item]
    return args


def render(
    *values: str,
    values_files: Sequence[Path] = (),
    namespace: str = "discoverd",
    release: str = "dd",
) -> list[dict[str, Any]]:
    """`helm template` with ``--set`` ``values``; the rendered objects (tests hooks included)."""
    proc = helm("template", release, str(CHART), "--namespace", namespace, *_set_args(values, values_files))
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one object of ``kind`` whose name ends with ``name_suffix``."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


# --- installing into the test control plane ------------------------------------------------------

CRD_NAMES = (
    "servers.discoverd.io",
    "serviceinstances.discoverd.io",
    "servicerollouts.discoverd.io",
    "serviceversions.discoverd.io",
)


def adopt_crds(cp: controlplane.ControlPlane, release: str, namespace: str) -> None:
    """Let ``release`` take over CRDs that already exist (another test or release made them).

    The control plane is shared by the session and the CRDs are cluster-wide
    and kept on uninstall, so a second release would otherwise stop with
    "invalid ownership metadata". Helm adopts an existing object that carries
    its release's labels and annotations, which is also how a user moves CRDs
    under a new release.
    """
    for name in CRD_NAMES:
        if cp.kubectl_run("get", "crd", name, check=False).returncode != 0:
            continue
        cp.kubectl_run("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        cp.kubectl_run(
            "annotate",
            "--overwrite",
            "crd",
            name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


def install(
    cp: controlplane.ControlPlane,
    namespace: str,
    *values: str,
    release: str = "dd",
    values_files: Sequence[Path] = (),
) -> subprocess.CompletedProcess[str]:
    """`helm install` the chart (CRDs included) into ``namespace``; no --wait: no kubelet runs pods here."""
    adopt_crds(cp, release, namespace)
    return cp.helm_run(
        "install", release, str(CHART), "--namespace", namespace, *_set_args(values, values_files), timeout=180
    )
