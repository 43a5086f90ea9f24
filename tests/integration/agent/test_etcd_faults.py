"""etcd stopped, compacted or paused: instances keep running, the agent catches up afterwards."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

from discoverd.embedded_etcd import EtcdServer
from support.wait import wait_until


def running(node: Any, *instances: str) -> dict[str, tuple[int, int]]:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), min_healthy_seconds=0.3)
    for i in instances:
        node.instance("web", i, "1.0")
    node.server(*(("web", i) for i in instances))
    node.agent()
    for i in instances:
        node.wait_phase("web", i, "Running")
    return {i: node.wait_process("web", i) for i in instances}


def identities(node: Any, before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int] | None]:
    return {i: node.process("web", i) for i in before}


def keep_same(node: Any, before: dict[str, tuple[int, int]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert identities(node, before) == before
        time.sleep(0.5)


def add_instance(node: Any, instance: str, *others: str) -> None:
    node.instance("web", instance, "1.0")
    node.server(*(("web", i) for i in (*others, instance)))


def test_etcd_stopped_for_20_s_restarts_nothing_and_a_later_change_applies(
    private_node: Any, private_etcd: EtcdServer
) -> None:
    node = private_node
    before = running(node, "a", "b")
    private_etcd.stop()
    keep_same(node, before, 20)
    private_etcd.start()
    add_instance(node, "c", "a", "b")
    node.wait_phase("web", "c", "Running", timeout=40)
    assert identities(node, before) == before
    node.wait_phase("web", "a", "Running")  # status is there again (lease re-established if it had expired)
    assert node.agents[-1].log().count("Started instance") == 3  # a, b and c, once each


def _read_at_or_after(log: str, revision: int) -> bool:
    """Whether the agent logged a full read of its keys at `revision` or later."""
    found = re.findall(r"Read configuration .*\brevision=(\d+)", log)
    return any(int(r) >= revision for r in found)


def test_compaction_while_disconnected_converges(private_node: Any, private_etcd: EtcdServer) -> None:
    node = private_node
    before = running(node, "a")
    agent = node.agents[-1]
    private_etcd.stop()
    agent.process.send_signal(signal.SIGSTOP)  # disconnected: it cannot reconnect before the compaction
    try:
        private_etcd.start()
        add_instance(node, "b", "a")
        revision = node.etcd.put(f"{node.prefix}/unrelated", "x")
        node.etcd._run("compact", revision)
    finally:
        agent.process.send_signal(signal.SIGCONT)
    # The agent lost its stream and its history: it must read its keys again, at a revision past the
    # compaction (the revision it last watched from is gone), not resume a watch from the old one.
    wait_until(lambda: _read_at_or_after(agent.log(), revision), 30, what=f"a full read at revision >= {revision}")
    node.wait_phase("web", "b", "Running", timeout=30)
    assert identities(node, before) == before


def test_paused_etcd_stall_is_detected_and_a_change_applies_after_resume(
    private_node: Any, private_etcd: EtcdServer
) -> None:
    node = private_node
    before = running(node, "a")
    agent = node.agents[-1]
    agent.wait_log("Granted lease")
    time.sleep(0)  # nothing to wait for: the pause starts now
    paused_at = time.monotonic()
    private_etcd.pause()
    try:
        agent.wait_log("the etcd watch stalled", timeout=16)  # not "stalled": "Installed" has it
        detected = time.monotonic() - paused_at
        print(f"\nwatch stall detected after {detected:.1f} s")
        assert detected <= 15.5
        keep_same(node, before, max(0.0, 30 - (time.monotonic() - paused_at)))
    finally:
        private_etcd.resume()
    add_instance(node, "b", "a")
    node.wait_phase("web", "b", "Running", timeout=40)
    assert identities(node, before) == before
    assert wait_until(lambda: node.status("web", "a"), 20)
