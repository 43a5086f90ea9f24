"""The agent's /metrics, /healthz and /readyz, scraped from a real `discoverd agent` process."""

from __future__ import annotations

import os
import signal
from typing import Any

from discoverd.embedded_etcd import EtcdServer
from support.http import free_port, get, value
from support.wait import wait_until


def test_metrics_follow_an_instance_through_start_and_restart(private_node: Any, private_etcd: EtcdServer) -> None:
    node = private_node
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    node.version(
        "web",
        "1.0",
        download_script=node.py("pass"),
        install_script=node.py("pass"),
        run_script=node.py(node.sleep_forever),
        min_healthy_seconds=0.3,
    )
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent = node.agent("--metrics-address", f"127.0.0.1:{port}")
    node.wait_phase("web", "a", "Running")
    assert f"127.0.0.1:{port}" in agent.wait_log("Serving metrics")
    wait_until(lambda: value(base, "discoverd_agent_instances", phase="Running") == 1, 20, what="1 Running")
    assert value(base, "discoverd_agent_instances", phase="Failed") == 0
    for step in ("download", "install", "start"):
        assert value(base, "discoverd_agent_step_duration_seconds_count", step=step) == 1, step
        assert value(base, "discoverd_agent_step_duration_seconds_sum", step=step) > 0, step
    assert value(base, "discoverd_agent_restarts_total") == 0
    assert (value(base, "discoverd_agent_reconcile_duration_seconds_count") or 0) > 0
    lag = value(base, "discoverd_agent_watch_lag_seconds")
    assert lag is not None and 0 <= lag < 10
    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/readyz") == (200, "ok\n")

    pid, _ = node.wait_process("web", "a")
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: value(base, "discoverd_agent_restarts_total") == 1, 30, what="a restart counted")
    node.wait_phase("web", "a", "Running")
    wait_until(lambda: value(base, "discoverd_agent_instances", phase="Running") == 1, 20, what="Running again")
    assert value(base, "discoverd_agent_step_duration_seconds_count", step="start") == 2

    # etcd gone: still alive, not ready, with a reason; ready again once etcd is back.
    private_etcd.stop()
    _, reason = wait_until(
        lambda: (answer := get(f"{base}/readyz"))[0] == 503 and answer, 30, what="/readyz 503 without etcd"
    )
    assert "etcd" in reason and reason.count("\n") == 1
    assert get(f"{base}/healthz")[0] == 200
    private_etcd.start()
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, 40, what="/readyz 200 after etcd returns")
    assert (value(base, "discoverd_agent_etcd_reconnects_total") or 0) >= 1
    assert value(base, "discoverd_agent_instances", phase="Running") == 1


def test_no_metrics_address_serves_nothing_and_a_bad_one_is_refused(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent = node.agent("--metrics-address", "")
    node.wait_phase("web", "a", "Running")
    assert "Serving metrics" not in agent.log()
    bad = node.agent("--metrics-address", "nonsense")
    assert bad.process is not None and bad.process.wait(30) == 2
    assert "is not HOST:PORT" in bad.log()
