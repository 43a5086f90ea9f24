"""Upgrades, rollback and health checks with real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from support.wait import wait_until

# Every step appends "<event> <version> <time>" to events.txt in the instance directory.
NOTE = (
    "import os,sys,time\n"
    "def note(event):\n"
    "    with open(os.path.join(os.environ['DISCOVERD_INSTANCE_DIR'], 'events.txt'), 'a') as f:\n"
    "        f.write(f\"{event} {os.environ['DISCOVERD_VERSION']} {time.time()}\\n\")\n"
)
INSTALL = NOTE + "note('install')"
SERVE = (
    NOTE + "import signal\n"
    "signal.signal(signal.SIGTERM, lambda *_: (note('stop'), sys.exit(0)))\n"
    "note('start')\n"
    "while True: time.sleep(3600)"
)
EXIT_SOON = NOTE + "note('start')\ntime.sleep(1)\nsys.exit(2)"


def events(node: Any, instance: str = "i1") -> list[tuple[str, str, float]]:
    path = node.instance_dir("svc", instance) / "events.txt"
    if not path.exists():
        return []
    return [(e, v, float(t)) for e, v, t in (line.split() for line in path.read_text().splitlines())]


def version(node: Any, name: str, run: str = SERVE, **doc: Any) -> None:
    node.version(
        "svc",
        name,
        install_script=node.py(INSTALL, timeout=30),
        run_script=node.py(run),
        min_healthy_seconds=doc.pop("min_healthy_seconds", 1),
        stop_timeout=5,
        **doc,
    )


def running_v1(node: Any) -> tuple[int, int]:
    version(node, "1.0")
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    node.wait_phase("svc", "i1", "Running")
    return node.wait_process("svc", "i1")


def stays(predicate: Callable[[], bool], seconds: float) -> None:
    """Assert `predicate` holds for `seconds` (polled): the opposite of waiting for a change."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(0.1)


def test_upgrade_installs_the_new_version_before_stopping_the_old(node: Any) -> None:
    running_v1(node)
    version(node, "2.0")
    node.instance("svc", "i1", "2.0")
    status = wait_until(
        lambda: (s := node.status("svc", "i1")) and s["version"] == "2.0" and s["phase"] == "Running" and s, 30
    )
    assert status["previous_version"] == "1.0"
    seen = events(node)
    when = {(e, v): t for e, v, t in seen}
    assert when[("install", "2.0")] < when[("stop", "1.0")] < when[("start", "2.0")]
    gap = when[("start", "2.0")] - when[("stop", "1.0")]
    print(f"\nupgrade gap without a running process: {gap * 1000:.0f} ms")
    assert [e for e, _, _ in seen].count("start") == 2

    # Installs: the previous version is kept until the next upgrade counts as started.
    assert node.version_dir("svc", "1.0").exists()
    version(node, "3.0")
    node.instance("svc", "i1", "3.0")
    wait_until(lambda: (s := node.status("svc", "i1")) and s["version"] == "3.0" and s["phase"] == "Running", 30)
    wait_until(lambda: not node.version_dir("svc", "1.0").exists(), 10, what="install of 1.0 removed")
    assert node.version_dir("svc", "2.0").exists() and node.version_dir("svc", "3.0").exists()


def test_new_version_exiting_early_rolls_back_and_is_not_retried(node: Any) -> None:
    running_v1(node)
    version(node, "2.0", run=EXIT_SOON, min_healthy_seconds=3)
    node.instance("svc", "i1", "2.0")
    status = node.wait_phase("svc", "i1", "RolledBack", timeout=30)
    assert status["version"] == "1.0" and status["previous_version"] == "2.0"
    assert "2.0" in status["message"] and "exited with code 2" in status["message"]
    pid, _ = node.wait_process("svc", "i1")
    assert status["pid"] == pid
    assert node.record("svc", "i1")["process"]["version"] == "1.0"

    node.server(("svc", "i1"))  # rewrite the server document: a new reconcile pass
    starts_of_v2 = lambda: [v for e, v, _ in events(node) if e == "start"].count("2.0")  # noqa: E731
    stays(lambda: starts_of_v2() == 1 and node.process("svc", "i1") is not None, 3)

    version(node, "2.0", min_healthy_seconds=1)  # a fixed document of the same version
    wait_until(lambda: (s := node.status("svc", "i1")) and s["version"] == "2.0" and s["phase"] == "Running", 30)
    assert starts_of_v2() == 2


def test_failed_install_keeps_the_old_process_running(node: Any) -> None:
    identity = running_v1(node)
    node.version("svc", "2.0", install_script=node.py("raise SystemExit(5)"), run_script=node.py(SERVE))
    node.instance("svc", "i1", "2.0")
    status = node.wait_phase("svc", "i1", "RolledBack", timeout=30)
    assert "install script exited with code 5" in status["message"]
    assert status["version"] == "1.0" and status["previous_version"] == "2.0"
    assert node.process("svc", "i1") == identity  # never stopped


def test_unhealthy_new_version_rolls_back(node: Any) -> None:
    running_v1(node)
    version(
        node,
        "2.0",
        min_healthy_seconds=20,
        health_check=node.py("raise SystemExit(1)", interval=0.3, failure_threshold=2, timeout=5),
    )
    node.instance("svc", "i1", "2.0")
    status = node.wait_phase("svc", "i1", "RolledBack", timeout=30)
    assert "unhealthy" in status["message"] and "health check" in status["message"]
    assert node.record("svc", "i1")["process"]["version"] == "1.0"


def test_unhealthy_running_instance_is_restarted(node: Any) -> None:
    sick = "import os,sys; sys.exit(1 if os.path.exists('sick') else 0)"
    version(node, "1.0", min_healthy_seconds=0.5, health_check=node.py(sick, interval=0.3, failure_threshold=2))
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    node.wait_phase("svc", "i1", "Running")
    pid, _ = node.wait_process("svc", "i1")
    (node.instance_dir("svc", "i1") / "sick").touch()
    status = node.wait_phase("svc", "i1", "Unhealthy", "BackOff", timeout=20)
    assert "health check" in status["message"]
    node.wait_gone(pid)
    (node.instance_dir("svc", "i1") / "sick").unlink()
    status = wait_until(
        lambda: (s := node.status("svc", "i1")) and s["phase"] == "Running" and s["pid"] != pid and s, 30
    )
    assert status["restarts"] >= 1
