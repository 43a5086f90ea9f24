"""The saved instance state: rejections survive `kill -9`, earlier agents' records are adopted, files are private."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from discoverd.agent import desired, model, observe
from discoverd.schema import documents
from support.wait import wait_until

# Every step appends "<event> <version>" to events.txt in the instance directory.
NOTE = (
    "import os,sys,time\n"
    "def note(event):\n"
    "    with open(os.path.join(os.environ['DISCOVERD_INSTANCE_DIR'], 'events.txt'), 'a') as f:\n"
    "        f.write(f\"{event} {os.environ['DISCOVERD_VERSION']}\\n\")\n"
)
SERVE = NOTE + "note('start')\nwhile True: time.sleep(3600)"
EXIT_SOON = NOTE + "note('start')\ntime.sleep(0.5)\nsys.exit(2)"


def events(node: Any) -> list[str]:
    path = node.instance_dir("svc", "i1") / "events.txt"
    return path.read_text().splitlines() if path.exists() else []


def stays(predicate: Callable[[], bool], seconds: float) -> None:
    """Assert `predicate` holds for `seconds` (polled): the opposite of waiting for a change."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(0.1)


def version(node: Any, name: str, run: str = SERVE, install: str = "note('install')", **doc: Any) -> None:
    node.version(
        "svc",
        name,
        download_script=node.py(NOTE + "note('download')", timeout=30),
        install_script=node.py(NOTE + install, timeout=30),
        run_script=node.py(run),
        stop_timeout=5,
        **{"min_healthy_seconds": 1, **doc},
    )


FAILURES = {  # the version 2.0 document, and the last event once 1.0 runs again
    "exits before min_healthy_seconds": ({"run": EXIT_SOON, "min_healthy_seconds": 3}, "start 1.0"),
    "install fails": ({"install": "note('install'); sys.exit(5)"}, "install 2.0"),
}


@pytest.mark.parametrize("failure", list(FAILURES), ids=list(FAILURES))
def test_rolled_back_version_is_not_retried_after_agent_kill_9(node: Any, failure: str) -> None:
    version(node, "1.0")
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    node.wait_phase("svc", "i1", "Running")
    doc, last = FAILURES[failure]
    version(node, "2.0", **doc)
    node.instance("svc", "i1", "2.0")
    status = node.wait_phase("svc", "i1", "RolledBack", timeout=30)
    assert (status["version"], status["previous_version"]) == ("1.0", "2.0")
    identity = node.wait_process("svc", "i1")
    assert len(node.record("svc", "i1")["rejected"]) == 1
    seen = wait_until(lambda: (e := events(node)) and e[-1] == last and e, 10, what=last)
    assert "install 2.0" in seen

    node.agents[-1].kill()  # SIGKILL: nothing saved on the way out
    again = node.agent()
    again.wait_log("Adopted instance")
    again.wait_log("Read configuration")
    node.server(("svc", "i1"))  # rewrite the server document: another pass over the same configuration
    stays(lambda: events(node) == seen and node.process("svc", "i1") == identity, 3)
    status = node.wait_phase("svc", "i1", "RolledBack")
    assert (status["version"], status["pid"]) == ("1.0", identity[0])
    log = again.log()
    for step in ("Running download script", "Running install script", "Started instance", "Stopping instance"):
        assert step not in log

    version(node, "2.0", min_healthy_seconds=0.5)  # a fixed document of the same version is tried
    wait_until(lambda: (s := node.status("svc", "i1")) and s["version"] == "2.0" and s["phase"] == "Running", 30)
    assert events(node)[len(seen) :] == ["download 2.0", "install 2.0", "start 2.0"]


def test_record_of_an_earlier_agent_is_adopted_without_a_restart(node: Any) -> None:
    """A record as agents before format 2 wrote it (in the instance directory) is migrated, its process kept."""
    run_script = node.py(node.sleep_forever)
    node.version("web", "1.0", run_script=run_script, min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    # The target the agent will resolve from those documents, as `desired.resolve` builds it.
    doc = documents.Version.model_validate({"name": "web", "run_script": run_script, "min_healthy_seconds": 0.3})
    inst = documents.Instance.model_validate({"name": "web", "service_version": "1.0"})
    target = model.Target(model.Ref("web", "a"), "1.0", doc, desired.merge_run(doc.run_script, inst.run_script))
    idir = node.instance_dir("web", "a")
    idir.mkdir(parents=True)
    env = {**os.environ, "DISCOVERD_SERVER_ID": node.server_id, "DISCOVERD_INSTANCE_DIR": str(idir)}
    argv = [target.run.command, *target.run.argv]
    proc = subprocess.Popen(argv, cwd=idir, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        started = observe.start_time(proc.pid)
        assert started is not None
        saved_target = {"version": "1.0", "document": documents.dump(doc), "run": documents.dump(target.run)}
        old = {
            "service": "web",
            "instance": "a",
            "process": {
                "pid": proc.pid,
                "start_time": started,
                "config_hash": target.config_hash,
                "version": "1.0",
                "started_at": time.time() - 60,
                "run_id": "",
            },
            "current": saved_target,
            "good": saved_target,
            "restarts": 3,
        }
        old_path = idir / ".discoverd" / "record.json"
        old_path.parent.mkdir()
        old_path.write_text(json.dumps(old))
        node.server(("web", "a"))

        agent = node.agent()
        agent.wait_log("Migrated record")
        agent.wait_log("Adopted instance")
        status = node.wait_phase("web", "a", "Running")
        assert (status["pid"], status["restarts"]) == (proc.pid, 3)
        assert observe.alive(proc.pid, started)
        assert node.process("web", "a") == (proc.pid, started)
        assert "Started instance" not in agent.log() and "Stopping instance" not in agent.log()
        assert not old_path.exists()
        assert stat.S_IMODE(node.record_path("web", "a").stat().st_mode) == 0o600
    finally:
        proc.kill()
        proc.wait()


def test_state_files_are_private_and_records_out_of_the_run_scripts_reach(node: Any) -> None:
    node.state_dir.mkdir(mode=0o755)
    os.chmod(node.state_dir, 0o755)  # as an earlier agent (or an admin) left it
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0", run_script={"env": {"TOKEN": "secret"}})
    node.server(("web", "a"))
    node.agent()
    node.wait_phase("web", "a", "Running")

    def mode(path: Any) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(node.state_dir) == 0o700
    record = node.record_path("web", "a")
    assert mode(record) == 0o600 and "secret" in record.read_text()
    idir = node.instance_dir("web", "a")
    assert not record.resolve().is_relative_to(idir.resolve())
    assert not list(idir.rglob("*.json"))
    logs = list(node.log_dir("web", "a").glob("*.log"))
    assert logs and {mode(p) for p in logs} == {0o600}
    assert mode(node.log_dir("web", "a")) == mode(node.state_dir / "logs") == 0o700
    assert not list(idir.rglob("*.log"))  # nothing of the agent's in the run script's directory


def test_removed_instance_keeps_its_files_and_no_status_after_agent_restart(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    node.instance("web", "b", "1.0")
    node.server(("web", "a"), ("web", "b"))
    node.agent()
    node.wait_phase("web", "a", "Running")
    node.wait_phase("web", "b", "Running")
    pid, _ = node.wait_process("web", "a")

    node.server(("web", "b"))
    node.wait_gone(pid)
    wait_until(lambda: node.status("web", "a") is None, 15, what="status key deleted")
    record = wait_until(lambda: (r := node.record("web", "a")) and r["removed_at"] and r, 10, what="tombstone")
    assert record["process"] is None
    assert (node.log_dir("web", "a") / "run.log").exists()  # kept for the grace period

    node.agents[-1].kill()
    node.agent().wait_log("Read configuration")
    node.wait_phase("web", "b", "Running")
    stays(lambda: node.status("web", "a") is None, 1)

    node.server(("web", "a"), ("web", "b"))  # desired again: starts afresh
    node.wait_phase("web", "a", "Running")
    assert node.record("web", "a")["removed_at"] is None
