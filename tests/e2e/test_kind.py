"""End to end on a real cluster: hack/kind-e2e.sh (kind, the image, etcd, the chart, examples/service.yaml).

Opt-in by nature: it needs a running Docker engine and kind, and skips with the
reason where they are absent. Run it alone with `pytest -m e2e_kind`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "kind-e2e.sh"
TOOLS_BIN = Path(os.environ.get("DISCOVERD_TOOLS_DIR") or Path.home() / ".cache" / "discoverd" / "tools") / "bin"


def _missing() -> str | None:
    """Why the kind e2e cannot run here, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), str(TOOLS_BIN)])
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool, path=path) is None:
            return f"{tool} is not installed (the kind e2e needs docker, kind, kubectl and helm)"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no running Docker engine (`docker info` failed: {detail})"
    return None


@pytest.mark.e2e_kind
@pytest.mark.timeout(3600)
def test_example_service_runs_and_upgrades_on_kind() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3500)
    assert proc.returncode == 0, f"hack/kind-e2e.sh failed (exit {proc.returncode}):\n{proc.stderr[-20000:]}"
    assert "PASS" in proc.stderr
