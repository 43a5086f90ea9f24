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
