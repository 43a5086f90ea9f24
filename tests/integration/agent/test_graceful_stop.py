"""stop_signal and stop_timeout hold with --host-namespaces: a script that needs 2 s to shut down gets them.

`nsenter --pid` forks and waits for the script; a stop signal used to end
nsenter at once, and the agent then SIGKILLed the group while the script was
still shutting down. Pid 1 of these machines refuses nsenter, so the "host" is
a process of the test's own, as in test_host_namespaces.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_until

SLOW_SHUTDOWN = """
import signal, sys, time
def term(*_):
    open('term', 'w').write(repr(time.monotonic()))
    time.sleep(2)
    open('done', 'w').write(repr(time.monotonic()))
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open('ready', 'w').write('1')
while True: time.sleep(3600)
"""


def _can(*argv: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    return subprocess.run(["unshare", *argv, "--fork", "true"], capture_output=True, check=False).returncode == 0


def _slow_instance(node: Any) -> None:
    node.version("slow", "1.0", run_script=node.py(SLOW_SHUTDOWN), min_healthy_seconds=0.3, stop_timeout=10)
    node.instance("slow", "i1", "1.0")
    node.server(("slow", "i1"))


def _stop_and_check_grace(node: Any) -> None:
    idir = node.instance_dir("slow", "i1")
    node.wait_phase("slow", "i1", "Running")
    wait_until(lambda: (idir / "ready").exists(), what="the TERM handler installed")
    node.server()  # removed: stopped with SIGTERM and up to 10 s of grace
    done = wait_until(lambda: (idir / "done").exists() and (idir / "done").read_text(), 15, what="a clean shutdown")
    assert float(done) - float((idir / "term").read_text()) >= 2.0
    wait_until(lambda: node.status("slow", "i1") is None, 15, what="the status key deleted")


CGROUPS = pytest.mark.parametrize("cgroups", ["none", "cgroupfs"])
"""Without cgroups the grace rests on nsenter and the process group; with them on the cgroup too."""


@CGROUPS
@pytest.mark.skipif(not _can("--uts"), reason="needs root with unshare and nsenter (creating a UTS namespace)")
def test_stop_grace_in_host_namespaces_sharing_the_pid_namespace(node: Any, cgroups: str) -> None:
    """As a pod with hostPID: the agent shares the host's PID namespace (its UTS namespace is its own)."""
    _slow_instance(node)
    agent = node.agent("--host-namespaces", "--host-pid", str(os.getpid()), "--cgroups", cgroups, start=False)
    agent.argv = ["unshare", "--uts", "--kill-child", "--", *agent.argv]
    agent.start()
    _stop_and_check_grace(node)
    # nsenter did not enter the PID namespace it shares already: it exec'd the script, no fork
    assert "--pid" not in (node.log_dir("slow", "i1") / "run.log").read_text()


@pytest.fixture
def pid_namespace() -> Iterator[int]:
    """A process in a PID namespace of its own (a child of this one): its pid as seen from here."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "3600"])
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        yield int(wait_until(lambda: children.read_text().split(), what="unshare's child")[0])
    finally:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


@CGROUPS
@pytest.mark.skipif(not _can("--pid"), reason="needs root with unshare and nsenter (creating a PID namespace)")
def test_stop_grace_when_nsenter_enters_another_pid_namespace(node: Any, pid_namespace: int, cgroups: str) -> None:
    """nsenter --pid forks and dies at the stop signal: the grace lasts until the whole group has exited."""
    _slow_instance(node)
    node.agent("--host-namespaces", "--host-pid", str(pid_namespace), "--cgroups", cgroups)
    _stop_and_check_grace(node)
    assert "--pid" in (node.log_dir("slow", "i1") / "run.log").read_text()
