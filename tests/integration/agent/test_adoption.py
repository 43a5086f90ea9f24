"""Agent restarts: running instances are adopted by identity (pid + start time), never started twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any


def two_running(node: Any) -> dict[str, tuple[int, int]]:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    node.instance("web", "b", "1.0")
    node.server(("web", "a"), ("web", "b"))
    node.agent()
    node.wait_phase("web", "a", "Running")
    node.wait_phase("web", "b", "Running")
    return {i: node.wait_process("web", i) for i in ("a", "b")}


def test_kill_9_and_restart_keeps_every_instance_identity(node: Any) -> None:
    before = two_running(node)
    node.agents[-1].kill()  # SIGKILL
    assert {i: node.process("web", i) for i in before} == before

    again = node.agent()
    log = again.wait_log("Adopted instance")
    again.wait_log("Read configuration")
    node.wait_phase("web", "a", "Running")
    node.wait_phase("web", "b", "Running")
    assert {i: node.process("web", i) for i in before} == before
    assert {i: node.status("web", i)["pid"] for i in before} == {i: p for i, (p, _) in before.items()}
    log = again.log()
    assert log.count("Adopted instance") == 2
    assert "Started instance" not in log


def test_instance_killed_while_the_agent_was_down_is_restarted(node: Any) -> None:
    before = two_running(node)
    node.agents[-1].kill()
    pid_a, _ = before["a"]
    os.killpg(pid_a, signal.SIGKILL)
    node.wait_gone(pid_a)

    again = node.agent()
    again.wait_log("Found instance gone")
    restarted = node.wait_process("web", "a")
    assert restarted != before["a"]
    assert node.process("web", "b") == before["b"]
    node.wait_phase("web", "a", "Running")


def test_a_reused_pid_is_not_adopted(node: Any) -> None:
    before = two_running(node)
    node.agents[-1].kill()
    pid_a, _ = before["a"]
    os.killpg(pid_a, signal.SIGKILL)
    node.wait_gone(pid_a)
    # Another process now has the recorded pid's place: same pid in the record, different start time.
    stranger = subprocess.Popen([sys.executable, "-c", node.sleep_forever], start_new_session=True)
    try:
        node.edit_record("web", "a", lambda state: state["process"].update(pid=stranger.pid))

        node.agent()
        pid, _ = node.wait_process("web", "a")
        assert pid not in (stranger.pid, pid_a)
        assert stranger.poll() is None  # the stranger was neither adopted nor signalled
        assert node.process("web", "b") == before["b"]
    finally:
        stranger.kill()
        stranger.wait()
