"""--host-namespaces: scripts run in the namespaces of --host-pid, not the agent's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any

import pytest

from support.wait import wait_until

SEE_HOSTNAME = (
    "import socket, time\nopen('hostname.txt', 'w').write(socket.gethostname())\nwhile True: time.sleep(3600)"
)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    probe = subprocess.run(["unshare", "--uts", "--fork", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root with unshare and nsenter (creating a UTS namespace)")
def test_scripts_see_the_host_hostname_not_the_agents(node: Any) -> None:
    outer = socket.gethostname()
    inner = "agent-container"
    assert outer != inner
    node.version(
        "ns",
        "1.0",
        install_script=node.py("import socket; open('installed-on', 'w').write(socket.gethostname())"),
        run_script=node.py(SEE_HOSTNAME),
        min_healthy_seconds=0.3,
    )
    node.instance("ns", "i1", "1.0")
    node.server(("ns", "i1"))
    # The agent runs in a UTS namespace of its own with another hostname, as in a container;
    # the "host" is this test process.
    agent = node.agent("--host-namespaces", "--host-pid", str(os.getpid()), start=False)
    agent.argv = [
        "unshare",
        "--uts",
        "--kill-child",
        "--",
        "sh",
        "-c",
        f'hostname {inner} && exec "$@"',
        "sh",
        *agent.argv,
    ]
    agent.start()
    node.wait_phase("ns", "i1", "Running")
    seen = node.instance_dir("ns", "i1") / "hostname.txt"
    assert wait_until(lambda: seen.exists() and seen.read_text()) == outer
    assert (node.version_dir("ns", "1.0") / "installed-on").read_text() == outer
    status = node.status("ns", "i1")
    assert status is not None
    assert "nsenter" in (node.log_dir("ns", "i1") / "run.log").read_text()
