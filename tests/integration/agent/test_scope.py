"""The agent reads and watches only its own keys (issue 11): what happens elsewhere in the fleet never reaches it.

The agent logs `Received configuration change ... events=N` for every watch
response it gets, N counting every watch event since it started: a write to
its own server document after writes elsewhere shows, by N, whether any of
those reached it (etcd sends a stream's events in revision order).
"""

from __future__ import annotations

import re
import signal
from typing import Any

from discoverd.embedded_etcd import EtcdServer
from support.wait import wait_until

SLEEP = {"min_healthy_seconds": 0.3}


def received(agent: Any) -> list[int]:
    """The event counter of every `Received configuration change` line so far."""
    return [int(n) for n in re.findall(r"Received configuration change .*?events=(\d+)", agent.log())]


def touch_own_server(node: Any, *instances: tuple[str, str]) -> int:
    """Write this server's document again (same content) and wait for the agent to receive it; its counter."""
    before = len(received(node.agents[-1]))
    node.server(*instances)
    return wait_until(
        lambda: received(node.agents[-1])[before:] and received(node.agents[-1])[-1],
        20,
        what="the agent to receive its own server document",
    )


def write_fleet(node: Any, servers: int, *, first: int = 0) -> None:
    """Other servers' configuration and status, and other services' documents, as a busy fleet writes them."""
    for n in range(first, first + servers):
        other = f"other-{n}"
        node.put(f"servers/{other}/config/details", {"service_instances": [{"name": "db", "id": f"db-{n}"}]})
        node.put(f"services/db/instances/db-{n}/config/details", {"name": "db", "service_version": "1.0"})
        node.put(f"servers/{other}/status/instances/db/db-{n}", {"phase": "Running", "restarts": n})
        node.put(f"servers/{other}/status/agent", {"hostname": other})
    node.version("db", f"9.{first}", run_script=node.py(node.sleep_forever))


def read_lines(agent: Any) -> list[dict[str, int]]:
    out = []
    for keys, watches in re.findall(r"Read configuration .*?keys=(\d+) watches=(\d+)", agent.log()):
        out.append({"keys": int(keys), "watches": int(watches)})
    return out


def test_writes_elsewhere_in_the_fleet_deliver_no_event_and_change_nothing(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent = node.agent()
    node.wait_phase("web", "a", "Running")
    before = node.wait_process("web", "a")
    assert read_lines(agent) == [{"keys": 3, "watches": 3}]  # server, the web versions, web/a
    count = touch_own_server(node, ("web", "a"))

    write_fleet(node, 100)

    assert touch_own_server(node, ("web", "a")) == count + 1  # only its own write arrived
    assert node.process("web", "a") == before
    assert "Started instance" in agent.log() and agent.log().count("Started instance") == 1


def test_a_new_service_on_the_server_is_read_watched_and_run_and_a_removed_one_is_no_longer_watched(
    node: Any,
) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent = node.agent()
    node.wait_phase("web", "a", "Running")
    web = node.wait_process("web", "a")

    # written before the server document names the service: read when it does, not watched before
    node.version("db", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("db", "x", "1.0")
    count = touch_own_server(node, ("web", "a"))
    node.server(("web", "a"), ("db", "x"))
    node.wait_phase("db", "x", "Running")
    agent.wait_log("added=2 cancelled=0 watches=5")
    assert received(agent)[-1] == count + 1

    # a later version of the new service is watched: the upgrade applies
    node.version("db", "2.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("db", "x", "2.0")
    wait_until(lambda: (node.status("db", "x") or {}).get("version") == "2.0", 30, what="db/x on 2.0")
    node.wait_phase("db", "x", "Running")

    # removed: its watchers are cancelled, its writes no longer reach the agent
    node.server(("web", "a"))
    agent.wait_log("added=0 cancelled=2 watches=3")
    wait_until(lambda: node.status("db", "x") is None, 30, what="db/x status deleted")
    count = received(agent)[-1]
    node.version("db", "3.0", run_script=node.py(node.sleep_forever))
    node.instance("db", "x", "3.0")
    node.put("services/db/versions/1.0/config/details", {"name": "db"})
    assert touch_own_server(node, ("web", "a")) == count + 1
    assert node.process("web", "a") == web


def test_after_an_etcd_restart_the_agent_reads_only_its_keys_and_converges(
    private_node: Any, private_etcd: EtcdServer
) -> None:
    node = private_node
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    write_fleet(node, 40)
    agent = node.agent()
    node.wait_phase("web", "a", "Running")
    before = node.wait_process("web", "a")

    private_etcd.stop()
    private_etcd.start()
    wait_until(lambda: len(read_lines(agent)) >= 2, 40, what="the agent to read its keys again")
    assert read_lines(agent)[-1] == {"keys": 3, "watches": 3}  # not the 40 servers around it

    node.instance("web", "b", "1.0")
    node.server(("web", "a"), ("web", "b"))
    node.wait_phase("web", "b", "Running", timeout=40)
    assert node.process("web", "a") == before


def test_changes_and_compaction_while_its_watch_was_lost_are_read_from_its_keys_alone(
    private_node: Any, private_etcd: EtcdServer
) -> None:
    node = private_node
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    agent = node.agent()
    node.wait_phase("web", "a", "Running")
    before = node.wait_process("web", "a")

    private_etcd.stop()
    agent.process.send_signal(signal.SIGSTOP)  # it cannot reconnect before the changes and the compaction
    try:
        private_etcd.start()
        write_fleet(node, 20)
        node.instance("web", "b", "1.0")
        revision = node.server(("web", "a"), ("web", "b"))
        node.etcd._run("compact", revision)
    finally:
        agent.process.send_signal(signal.SIGCONT)
    wait_until(lambda: len(read_lines(agent)) >= 2, 40, what="the agent to read its keys again")
    assert read_lines(agent)[-1] == {"keys": 4, "watches": 4}  # server, web versions, a, b: not the 20 others
    node.wait_phase("web", "b", "Running", timeout=40)
    assert node.process("web", "a") == before


def test_an_invalid_document_of_this_server_is_logged_once_not_on_every_pass(node: Any) -> None:
    node.version("web", "1.0", run_script=node.py(node.sleep_forever), **SLEEP)
    node.version("crash", "1.0", run_script=node.py("raise SystemExit(3)"))
    node.put("services/web/instances/bad/config/details", '{"name": "web", "service_version": ')
    node.instance("crash", "c", "1.0")
    node.server(("web", "bad"), ("crash", "c"))
    agent = node.agent()
    failed = node.wait_phase("web", "bad", "Failed")
    assert "services/web/instances/bad/config/details" in failed["message"]
    # the crash-looping neighbour makes the agent plan again and again
    wait_until(lambda: agent.log().count("Exited instance") >= 4, 30, what="4 exits of crash/c")
    touch_own_server(node, ("web", "bad"), ("crash", "c"))  # and a full resolve of its configuration
    wait_until(lambda: agent.log().count("Exited instance") >= 6, 30, what="2 more exits")
    assert agent.log().count("Rejected configuration") == 1
    line = next(x for x in agent.log().splitlines() if "Rejected configuration" in x)
    assert "instance=bad" in line and "services/web/instances/bad/config/details" in line
