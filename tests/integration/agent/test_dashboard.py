"""Every metric the shipped Grafana dashboard queries is exported by the real agent and controller."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from integration.agent.conftest import DISCOVERD, Agent
from support.http import free_port, ready, samples
from support.wait import wait_until

DASHBOARD = Path(__file__).parents[3] / "charts" / "discoverd" / "dashboards" / "discoverd.json"
NAME = re.compile(r"\bdiscoverd_[a-z0-9_]+")


def queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_every_metric_in_the_dashboard_is_exported(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent_port, controller_port = free_port(), free_port()
    node.agent("--metrics-address", f"127.0.0.1:{agent_port}")
    argv = [DISCOVERD, "--etcd-endpoints", node.endpoint, "--prefix", node.prefix, "controller"]
    controller = Agent([*argv, "--metrics-address", f"127.0.0.1:{controller_port}"], node.state_dir.parent / "c.log")
    node.agents.append(controller.start())  # ended by the fixture, by pid
    node.wait_phase("web", "a", "Running")
    bases = [f"http://127.0.0.1:{port}" for port in (agent_port, controller_port)]
    # The controller may not listen yet when the agent's instance runs (it was started after it).
    wait_until(lambda: all(ready(b) for b in bases), 20, what="both ready")
    exported = {name for base in bases for name, _ in samples(base)}
    found = queries()
    assert found, "the dashboard has no queries"
    for expr in found:
        names = NAME.findall(expr)
        assert names, f"a query names no discoverd metric: {expr}"
        missing = [n for n in names if n not in exported]
        assert not missing, f"{expr} names metrics nobody exports: {missing}"
