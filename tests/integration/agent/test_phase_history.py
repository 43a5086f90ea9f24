"""The agent keeps an instance's last phase changes in its status, and `discoverd describe` shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from discoverd.schema import documents
from support.wait import wait_until

SERVE = "import time\nwhile True: time.sleep(3600)"


def test_status_history_records_each_phase_and_describe_shows_it(node: Any) -> None:
    for version in ("1.0", "2.0"):
        node.version("web", version, run_script=node.py(SERVE), min_healthy_seconds=0.3)
    node.instance("web", "i1", "1.0")
    node.server(("web", "i1"))
    node.agent()
    node.wait_phase("web", "i1", "Running")
    node.instance("web", "i1", "2.0")

    def upgraded() -> dict[str, Any] | None:
        s = node.status("web", "i1")
        return s if s is not None and s["phase"] == "Running" and s["version"] == "2.0" else None

    status = wait_until(upgraded, 30, what="web/i1 Running on 2.0")
    history = [(h["phase"], h.get("version")) for h in status["history"]]
    # The current phase is the last entry, entered when `since` says; Running on 1.0 came before.
    assert history[-1] == ("Running", "2.0")
    assert status["history"][-1]["at"] == status["since"]
    assert ("Running", "1.0") in history
    assert history.index(("Running", "1.0")) < len(history) - 1
    assert any(phase == "Starting" for phase, _ in history)
    assert len(history) <= documents.MAX_PHASE_HISTORY

    discoverd = Path(sys.executable).with_name("discoverd")
    shown = subprocess.run(
        [str(discoverd), "--etcd-endpoints", node.endpoint, "--prefix", node.prefix, "describe", "instance", "web/i1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    phases = shown.stdout.split("  Phases:\n", 1)[1].splitlines()
    assert any("Running (version 1.0)" in line for line in phases)
    assert "Running (version 2.0)" in [line for line in phases if line.startswith("    ")][-1]
