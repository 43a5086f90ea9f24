"""Each instance runs in a cgroup of its own (`--cgroups cgroupfs`), on this machine's real hierarchies.

Every test agent places its instances under a cgroup root of the test's own
(`Node.cgroup_root`, removed in teardown), so parallel runs never share a cgroup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from discoverd.agent import cgroups
from support import cgroups as test_cgroups
from support.wait import wait_until

pytestmark = pytest.mark.skipif(not test_cgroups.writable(), reason="needs root and a writable cgroup hierarchy")

PRINT_CGROUP_THEN_SLEEP = (
    "import time\nprint(open('/proc/self/cgroup').read(), flush=True)\nwhile True: time.sleep(3600)"
)

DAEMON_WITHOUT_ENV = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open('daemon.pid', 'w').write(str(os.getpid()))
        os.execve(sys.executable, [sys.executable, '-c', 'import time\\nwhile True: time.sleep(3600)'], {})
    os._exit(0)
while True: time.sleep(3600)
"""


def _rel(node: Any, service: str, instance: str) -> str:
    return f"{node.cgroup_root}/discoverd/{service}/{instance}"


def _dirs(node: Any, service: str, instance: str) -> list[Path]:
    return test_cgroups.cgroup_dirs(_rel(node, service, instance))


def _procs(path: Path) -> set[int]:
    try:
        return {int(p) for p in (path / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _start(node: Any, service: str, code: str, **version: Any) -> tuple[int, int]:
    node.version(service, "1.0", run_script=node.py(code), min_healthy_seconds=0.3, stop_timeout=2, **version)
    node.instance(service, "i1", "1.0")
    node.server((service, "i1"))
    if not node.agents:
        node.agent("--cgroups", "cgroupfs")
    node.wait_phase(service, "i1", "Running")
    return node.wait_process(service, "i1")


def test_run_script_is_in_its_cgroup_in_every_hierarchy_from_its_first_instruction(node: Any) -> None:
    pid, _ = _start(node, "cg", PRINT_CGROUP_THEN_SLEEP)
    rel = _rel(node, "cg", "i1")
    dirs = _dirs(node, "cg", "i1")
    assert dirs, "no writable hierarchy"
    for d in dirs:
        assert pid in _procs(d), f"{pid} not in {d}/cgroup.procs"
    # What the script printed first: every hierarchy of /proc/self/cgroup names the instance's cgroup.
    log = node.log_dir("cg", "i1") / "run.log"
    lines = wait_until(lambda: [ln for ln in log.read_text().splitlines() if ln[:1].isdigit()], what="cgroup lines")
    by_hierarchy = {ln.split(":", 2)[1]: ln.split(":", 2)[2] for ln in lines}
    names = {h.name if h.version == 1 else "" for h in cgroups.hierarchies() if h.writable}
    for name in names:
        assert by_hierarchy.get(name) == rel, f"hierarchy {name!r}: {by_hierarchy.get(name)!r}"
    # ... which is not the agent's.
    agent_cgroups = Path(f"/proc/{node.agents[0].pid}/cgroup").read_text()
    assert rel not in agent_cgroups
    # The agent's start-up probe (a process joining discoverd/.probe/<pid>) left nothing behind.
    assert not any(d.exists() for d in test_cgroups.cgroup_dirs(f"{node.cgroup_root}/discoverd/.probe"))


def test_stopping_an_instance_kills_a_daemon_that_cleared_its_environment(node: Any) -> None:
    pid, _ = _start(node, "cgd", DAEMON_WITHOUT_ENV)
    pidfile = node.instance_dir("cgd", "i1") / "daemon.pid"
    daemon = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    assert _alive(daemon)
    # Out of reach of the group's signals and of the environment-tag sweeper:
    assert os.getpgid(daemon) != pid
    assert b"DISCOVERD_" not in Path(f"/proc/{daemon}/environ").read_bytes()
    assert all(daemon in _procs(d) for d in _dirs(node, "cgd", "i1"))

    node.server()  # the instance is removed: stopped
    wait_until(lambda: not _alive(daemon) and not _alive(pid), 15, what="the daemon and the run script gone")
    # and its cgroups are removed once empty
    wait_until(lambda: not any(d.exists() for d in _dirs(node, "cgd", "i1")), 10, what="cgroups removed")


def test_a_daemon_left_by_an_exited_run_is_killed_before_the_next_start(node: Any) -> None:
    exits_after_daemon = DAEMON_WITHOUT_ENV.replace("while True: time.sleep(3600)\n", "time.sleep(0.5)\n", 1)
    node.version("cge", "1.0", run_script=node.py(exits_after_daemon), min_healthy_seconds=0.3, stop_timeout=2)
    node.instance("cge", "i1", "1.0")
    node.server(("cge", "i1"))
    node.agent("--cgroups", "cgroupfs")
    pidfile = node.instance_dir("cge", "i1") / "daemon.pid"
    first = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    wait_until(lambda: not _alive(first), 15, what=f"the first run's daemon {first} killed")
    # the instance goes on: restarted, with a daemon of the new run
    wait_until(lambda: pidfile.read_text() != str(first), 15, what="a second run")


def test_resource_limits_are_written_and_enforced(node: Any) -> None:
    try_forks = (
        "import os, time\nok = 0\nfor _ in range(30):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(3600)\n    ok += 1\n"
        "open('forked', 'w').write(str(ok))\nwhile True: time.sleep(3600)"
    )
    _start(node, "cgr", try_forks, resources={"memory_mb": 64, "cpu_millis": 250, "pids_max": 10})
    files = {}
    for d in _dirs(node, "cgr", "i1"):
        for name in ("memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"):
            if (d / name).exists():
                files[name] = (d / name).read_text().strip()
        if (d / "pids.max").exists():
            files["pids.max"] = (d / "pids.max").read_text().strip()
    assert files.get("pids.max") == "10"
    if "memory.limit_in_bytes" in files or "memory.max" in files:
        assert files.get("memory.limit_in_bytes", files.get("memory.max")) == str(64 * 2**20)
    if "cpu.cfs_quota_us" in files:
        assert (files["cpu.cfs_quota_us"], files["cpu.cfs_period_us"]) == ("25000", "100000")
    elif "cpu.max" in files:
        assert files["cpu.max"] == "25000 100000"
    assert {"memory.limit_in_bytes", "memory.max"} & files.keys(), files
    # pids.max counts the run script too: at most 9 children.
    forked = node.instance_dir("cgr", "i1") / "forked"
    assert int(wait_until(lambda: forked.exists() and forked.read_text())) == 9


def test_memory_limit_kills_an_instance_that_exceeds_it(node: Any) -> None:
    grow = "import time\nchunks = []\nwhile True:\n    chunks.append(bytearray(8 * 2**20))\n    time.sleep(0.01)"
    node.version("cgm", "1.0", run_script=node.py(grow), min_healthy_seconds=30, resources={"memory_mb": 48})
    node.instance("cgm", "i1", "1.0")
    node.server(("cgm", "i1"))
    node.agent("--cgroups", "cgroupfs")
    status = wait_until(
        lambda: (s := node.status("cgm", "i1")) is not None and s.get("last_exit_code") is not None and s,
        30,
        what="the instance killed",
    )
    assert status["last_exit_code"] == -signal.SIGKILL


def test_agent_restart_keeps_the_instance_in_its_cgroup(node: Any) -> None:
    pid, started = _start(node, "cga", DAEMON_WITHOUT_ENV)
    pidfile = node.instance_dir("cga", "i1") / "daemon.pid"
    daemon = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    first = node.agents[0]
    first.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.process.wait(10)  # type: ignore[union-attr]
    second = node.agent("--cgroups", "cgroupfs")
    second.wait_log("Adopted instance")
    node.wait_phase("cga", "i1", "Running")
    assert node.process("cga", "i1") == (pid, started)
    assert _alive(daemon)
    for d in _dirs(node, "cga", "i1"):
        assert {pid, daemon} <= _procs(d)
    # the new agent still reaches everything in it
    node.server()
    wait_until(lambda: not _alive(daemon) and not _alive(pid), 15, what="the daemon and the run script gone")


def test_a_missing_command_is_reported_by_name_not_as_the_helpers_exit_code(node: Any) -> None:
    node.version("cgx", "1.0", run_script={"command": "./not-installed"}, min_healthy_seconds=0.3)
    node.instance("cgx", "i1", "1.0")
    node.server(("cgx", "i1"))
    node.agent("--cgroups", "cgroupfs")
    status = wait_until(
        lambda: (s := node.status("cgx", "i1")) is not None and "could not start" in s.get("message", "") and s,
        20,
        what="the start failure reported",
    )
    assert "'./not-installed': No such file or directory" in status["message"]
