"""Download, install, run, report, remove: the agent with real etcd and real processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_until

# Each step appends its name and working directory to steps.txt in the version directory.
STEP = "import os,sys\nopen(os.path.join(os.environ['DISCOVERD_VERSION_DIR'], 'steps.txt'), 'a').write(sys.argv[1] + ' ' + os.getcwd() + chr(10))"
# The run script writes what it sees (cwd, environment, argv) to seen.json, then serves forever.
SEEN = (
    "import json,os,sys,time\n"
    "json.dump({'cwd': os.getcwd(), 'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() if k.startswith(('DISCOVERD_', 'EXTRA'))}}, open('seen.json', 'w'))\n"
    "print('serving', flush=True)\n"
    "while True: time.sleep(3600)"
)


def seed(node: Any, instance: str = "i1", **instance_doc: Any) -> None:
    node.version(
        "web",
        "1.0",
        download_script=node.py(STEP, "download", timeout=30),
        install_script=node.py(STEP, "install", timeout=30),
        run_script=node.py(SEEN, "--port", "1"),
        min_healthy_seconds=0.5,
    )
    node.instance("web", instance, "1.0", **instance_doc)


def test_runs_the_seed_configuration_with_cwd_env_and_logs(node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(node, run_script={"command": "", "argv": ["--debug"], "env": {"EXTRA": "yes"}})
    node.server(("web", "i1"))
    # The agent's own settings (in production: DISCOVERD_ETCD_PASSWORD) must not reach the scripts.
    monkeypatch.setenv("DISCOVERD_PREFIX", node.prefix)
    node.agent()
    status = node.wait_phase("web", "i1", "Running")
    pid, _ = node.wait_process("web", "i1")
    assert status["pid"] == pid
    assert status["version"] == "1.0"

    idir = node.instance_dir("web", "i1")
    vdir = node.version_dir("web", "1.0")
    seen = wait_until(lambda: (idir / "seen.json").exists() and json.loads((idir / "seen.json").read_text()))
    assert Path(seen["cwd"]).resolve() == idir.resolve()
    assert seen["argv"] == ["--port", "1", "--debug"]  # an empty command appends the instance's argv
    run_id = seen["env"].pop("DISCOVERD_RUN_ID")  # unique to this start: finds what the run leaves behind
    assert len(run_id) == 32 and run_id == node.record("web", "i1")["process"]["run_id"]
    assert seen["env"] == {
        "DISCOVERD_SERVICE": "web",
        "DISCOVERD_VERSION": "1.0",
        "DISCOVERD_INSTANCE_ID": "i1",
        "DISCOVERD_SERVER_ID": "node-1",
        "DISCOVERD_VERSION_DIR": str(vdir.resolve()),
        "DISCOVERD_INSTANCE_DIR": str(idir.resolve()),
        "EXTRA": "yes",
    }
    assert os.getpgid(pid) == pid  # its own process group

    steps = (vdir / "steps.txt").read_text().splitlines()
    assert steps == [f"download {vdir.resolve()}", f"install {vdir.resolve()}"]
    logs = node.log_dir("web", "i1")
    assert {p.name for p in logs.iterdir()} >= {"download.log", "install.log", "run.log"}
    wait_until(lambda: "serving" in (logs / "run.log").read_text())


def test_instance_command_replaces_the_version_run_script(node: Any) -> None:
    seed(node, run_script=node.py(SEEN, "--other"))
    node.server(("web", "i1"))
    node.agent()
    seen_path = node.instance_dir("web", "i1") / "seen.json"
    seen = wait_until(lambda: seen_path.exists() and json.loads(seen_path.read_text()))
    assert seen["argv"] == ["--other"]


def test_install_not_repeated_after_agent_restart(node: Any) -> None:
    seed(node)
    node.server(("web", "i1"))
    first = node.agent()
    node.wait_phase("web", "i1", "Running")
    identity = node.wait_process("web", "i1")
    assert first.terminate() == 0
    assert node.process("web", "i1") == identity  # SIGTERM leaves instances running

    second = node.agent()
    second.wait_log("Adopted instance")
    node.wait_phase("web", "i1", "Running")
    assert node.process("web", "i1") == identity
    steps = (node.version_dir("web", "1.0") / "steps.txt").read_text().splitlines()
    assert [s.split()[0] for s in steps] == ["download", "install"]


def test_removed_instance_is_stopped_and_its_status_deleted(node: Any) -> None:
    seed(node)
    seed(node, "i2")
    node.server(("web", "i1"), ("web", "i2"))
    node.agent()
    node.wait_phase("web", "i1", "Running")
    node.wait_phase("web", "i2", "Running")
    pid, _ = node.wait_process("web", "i1")
    other = node.wait_process("web", "i2")

    node.server(("web", "i2"))
    node.wait_gone(pid)
    wait_until(lambda: node.status("web", "i1") is None, 15, what="status key deleted")
    assert node.process("web", "i2") == other


def test_stop_instances_on_exit(node: Any) -> None:
    seed(node)
    node.server(("web", "i1"))
    agent = node.agent("--stop-instances-on-exit")
    node.wait_phase("web", "i1", "Running")
    pid, _ = node.wait_process("web", "i1")
    assert agent.terminate() == 0
    assert not node.group_alive(pid)


def test_idle_agent_writes_nothing_but_keepalives(node: Any) -> None:
    seed(node)
    node.server(("web", "i1"))
    node.agent("--lease-ttl", "3")  # a keep-alive every second
    node.wait_phase("web", "i1", "Running")
    keys = [f"{node.prefix}/servers/node-1/status/agent", f"{node.prefix}/servers/node-1/status/instances/web/i1"]
    before = [node.etcd.mod_revision(k) for k in keys]
    deadline = time.monotonic() + 4  # several keep-alives, no status writes
    while time.monotonic() < deadline:
        assert [node.etcd.mod_revision(k) for k in keys] == before
        time.sleep(0.2)
