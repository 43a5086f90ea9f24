"""Failing steps, crash loops and invalid documents: reported, contained, never spreading."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from support.wait import wait_until

# Starts a child that sleeps in the same process group, records both pids, then sleeps itself.
SPAWN_AND_SLEEP = (
    "import subprocess,sys,time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "open('pids.txt', 'w').write(f'{__import__(\"os\").getpid()} {child.pid}')\n"
    "time.sleep(600)"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_install_timeout_kills_the_script_and_its_child(node: Any) -> None:
    node.version(
        "slow", "1.0", install_script=node.py(SPAWN_AND_SLEEP, timeout=2), run_script=node.py(node.sleep_forever)
    )
    node.instance("slow", "i1", "1.0")
    node.server(("slow", "i1"))
    started = time.monotonic()
    node.agent()
    pids_file = node.version_dir("slow", "1.0") / "pids.txt"
    script, child = map(int, wait_until(lambda: pids_file.exists() and pids_file.read_text().split(), 20))
    status = node.wait_phase("slow", "i1", "Failed", timeout=20)
    took = time.monotonic() - started
    assert "timed out after 2 s" in status["message"]
    assert took < 2 + 8  # the timeout, agent start-up and a small grace
    # SIGKILL is delivered when the process is next scheduled: allow the machine a moment.
    wait_until(lambda: not _alive(script) and not _alive(child), 2, what="script and child killed")
    assert node.process("slow", "i1") is None


def test_crash_loop_backs_off_with_growing_delays(node: Any) -> None:
    node.version(
        "crash",
        "1.0",
        run_script=node.py("import time; open('starts.txt', 'a').write(f'{time.time()}\\n'); raise SystemExit(3)"),
        min_healthy_seconds=0.5,
    )
    node.instance("crash", "i1", "1.0")
    node.server(("crash", "i1"))
    node.agent()  # back-off base 0.2 s: delays 0.2, 0.4, 0.8, 1.6 s less up to 25 %
    starts_file = node.instance_dir("crash", "i1") / "starts.txt"
    wait_until(lambda: starts_file.exists() and len(starts_file.read_text().split()) >= 5, 30)
    status = node.wait_phase("crash", "i1", "BackOff")
    starts = [float(t) for t in starts_file.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[3] > gaps[0] * 2, gaps  # growing
    assert gaps[2] >= 0.8 * 0.75 - 0.05, gaps
    assert status["last_exit_code"] == 3
    assert status["restarts"] >= 3
    assert "exited with code 3" in status["message"]


def test_invalid_instance_document_fails_only_that_instance(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.2)
    node.instance("web", "good", "1.0")
    node.put("services/web/instances/bad/config/details", '{"name": "web", "service_version": 7}')
    node.put("services/web/instances/junk/config/details", "{not json")
    node.server(("web", "good"), ("web", "bad"), ("web", "junk"))
    node.agent()
    node.wait_phase("web", "good", "Running")
    bad = node.wait_phase("web", "bad", "Failed")
    assert "services/web/instances/bad/config/details" in bad["message"]
    assert "service_version" in bad["message"]
    junk = node.wait_phase("web", "junk", "Failed")
    assert "not valid JSON" in junk["message"]
    assert node.process("web", "good") is not None


def test_invalid_update_keeps_the_last_valid_configuration_running(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.2)
    node.instance("web", "i1", "1.0")
    node.server(("web", "i1"))
    node.agent()
    node.wait_phase("web", "i1", "Running")
    identity = node.wait_process("web", "i1")
    node.put("services/web/instances/i1/config/details", '{"name": "web", "service_version": ""}')
    status = node.wait_phase("web", "i1", "Failed")
    assert "service_version" in status["message"]
    assert "still running version 1.0" in status["message"]
    assert node.process("web", "i1") == identity


def test_invalid_server_document_keeps_instances_and_is_reported(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.2)
    node.instance("web", "i1", "1.0")
    node.server(("web", "i1"))
    node.agent()
    node.wait_phase("web", "i1", "Running")
    identity = node.wait_process("web", "i1")
    node.put(f"servers/{node.server_id}/config/details", '{"service_instances": [{"name": "web"}]}')

    def agent_message() -> str:
        import json

        raw = node.etcd.get(f"{node.prefix}/servers/{node.server_id}/status/agent")
        return str(json.loads(raw)["message"]) if raw else ""

    message = wait_until(agent_message, 15)
    assert "service_instances.0.id" in message
    assert node.process("web", "i1") == identity
    assert os.getpgid(identity[0]) == identity[0]
