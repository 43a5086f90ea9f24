"""Nothing a run script started outlives it: daemons that left its process group, orphans of a killed agent."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from discoverd.agent import observe
from support.wait import wait_until

# The daemon double-forks into a session of its own (setsid), out of reach of the script's process group.
DAEMON = "(setsid sh -c 'echo $$ > daemon.pid; exec sleep 1000000' < /dev/null > /dev/null 2>&1 &); exec sleep 1000000"


def daemon_pid(node: Any, instance: str) -> tuple[int, int]:
    path = node.instance_dir("web", instance) / "daemon.pid"

    def read() -> tuple[int, int] | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text().strip())
            started = observe.start_time(pid)
            return None if started is None else (pid, started)
        return None

    found: tuple[int, int] = wait_until(read, 20, what="the daemon's pid file")
    return found


def kill_if_alive(pid: int, started: int) -> None:
    if observe.alive(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_removing_an_instance_kills_the_daemon_it_double_forked(node: Any) -> None:
    node.version("web", "1.0", run_script={"command": "sh", "argv": ["-c", DAEMON]}, min_healthy_seconds=0)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    node.agent()
    node.wait_phase("web", "a", "Running")
    pid, started = daemon_pid(node, "a")
    try:
        assert os.getpgid(pid) != node.process("web", "a")[0]  # really out of the script's group
        node.server()
        wait_until(lambda: node.status("web", "a") is None, 20, what="web/a removed")
        wait_until(lambda: not observe.alive(pid, started), 20, what="the daemon gone")
    finally:
        kill_if_alive(pid, started)


def test_orphan_missing_from_the_record_is_killed_before_the_next_start(node: Any) -> None:
    """An agent killed between starting a run script and recording it leaves an orphan: never two runs."""
    node.version("web", "1.0", run_script={"command": "sh", "argv": ["-c", DAEMON]}, min_healthy_seconds=0)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    node.agent()
    node.wait_phase("web", "a", "Running")
    orphan = node.wait_process("web", "a")
    daemon = daemon_pid(node, "a")
    node.agents[-1].kill()
    node.edit_record("web", "a", lambda state: state.update(process=None))  # as if the agent died before writing it
    (node.instance_dir("web", "a") / "daemon.pid").unlink()
    try:
        node.agent()
        fresh = wait_until(
            lambda: (p := node.process("web", "a")) is not None and p != orphan and p, 20, what="a new run"
        )
        assert not observe.alive(*orphan)
        assert not observe.alive(*daemon)
        assert "Killed leftover processes" in node.agents[-1].log()
        assert fresh != orphan
    finally:
        kill_if_alive(*orphan)
        kill_if_alive(*daemon)


def test_run_recorded_only_by_its_run_id_is_adopted_not_started_again(node: Any) -> None:
    """An agent killed after recording a start's run ID but before its pid: the next agent adopts the run."""
    node.version("web", "1.0", run_script={"command": "sleep", "argv": ["1000000"]}, min_healthy_seconds=0)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    node.agent()
    node.wait_phase("web", "a", "Running")
    before = node.wait_process("web", "a")
    node.agents[-1].kill()
    node.edit_record("web", "a", lambda state: state["process"].update(pid=0, start_time=0))  # as before spawning

    again = node.agent()
    again.wait_log("Adopted instance")
    node.wait_phase("web", "a", "Running")
    assert node.process("web", "a") == before
    assert "Found unrecorded run" in again.log()
    assert "Started instance" not in again.log()
