"""`discoverd restart` and `discoverd drain|undrain` with real etcd, real agents, a real controller and instances.

One fleet for the module: 3 `discoverd agent` processes (node-1..3) and one
`discoverd controller`; each test has services of its own. Restarts are
checked by pid and process start time (never by restart counters), and the
batch size by sampling every instance's status while it happens.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd import embedded_etcd
from integration.agent.conftest import Node
from integration.agent.test_rollout import SERVE, SERVERS, Fleet, Sampler, running_fleet
from support.wait import wait_until

# Writes "<event> <id> <monotonic-ish wall time>" lines to a file the test reads: when SIGTERM came, when it exited.
GRACEFUL = """
import os, signal, sys, time
log = sys.argv[1]
me = os.environ["DISCOVERD_INSTANCE_ID"]
def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {me} {time.time()}\\n")
def term(*_):
    note("term")
    time.sleep(0.6)
    note("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(3600)
"""
# Takes half a second to stop: each restarted instance is down long enough for the 100 ms Sampler to see it.
SLOW_STOP = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))\nwhile True: time.sleep(3600)"
STUBBORN = "import signal,time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(3600)"


@pytest.fixture(scope="module")
def fleet(etcd_server: embedded_etcd.EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(etcd_server, tmp_path_factory.mktemp("fleet"), controllers=1) as f:
        yield f


def deploy(fleet: Fleet, name: str, per_node: int, code: str = SERVE, *args: str, **version: object) -> list[str]:
    """Versions 1.0 and 2.0 of `name` running `code`, `per_node` instances on each server on 1.0, all Running."""
    node = fleet.nodes[0]
    for v in ("1.0", "2.0"):
        doc: dict[str, object] = {"min_healthy_seconds": 0.5, "stop_timeout": 5, **version}
        node.version(name, v, run_script=node.py(code, *args), **doc)
    ids = [f"{name}-{n}" for n in range(1, per_node * len(fleet.nodes) + 1)]
    for i, instance in enumerate(ids):
        node.instance(name, instance, "1.0")
        fleet.assigned.setdefault(SERVERS[i % len(SERVERS)], []).append((name, instance))
    for n in fleet.nodes:
        n.server(*fleet.assigned.get(n.server_id, []))
    for i, instance in enumerate(ids):
        fleet.nodes[i % len(SERVERS)].wait_phase(name, instance, "Running", timeout=120)
    return ids


def where(fleet: Fleet, instance: str) -> Node:
    return next(n for n in fleet.nodes if any(i == instance for _, i in fleet.assigned.get(n.server_id, [])))


def processes(fleet: Fleet, service: str, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Instance -> (pid, start time) of its live run process, as its record names it and /proc confirms."""
    return {i: where(fleet, i).wait_process(service, i) for i in ids}


def marker(fleet: Fleet, service: str, version: str) -> dict[str, str]:
    return {n.server_id: (n.version_dir(service, version) / ".discoverd-installed").read_text() for n in fleet.nodes}


def test_restart_replaces_every_process_in_batches_and_keeps_the_version(fleet: Fleet) -> None:
    ids = deploy(fleet, "rs", 2, SLOW_STOP)
    bystanders = deploy(fleet, "calm", 1)
    before, calm_before = processes(fleet, "rs", ids), processes(fleet, "calm", bystanders)
    installed = marker(fleet, "rs", "1.0")
    with Sampler(fleet, "rs", ids) as sampler:
        result = fleet.cli("restart", "rs", "--max-unavailable", "2", "--min-healthy-seconds", "1")
        assert result.returncode == 0, result.stderr
        assert "Started a restart of 'rs' (6 instances, at most 2 at a time)" in result.stdout
        done = fleet.wait_rollout("rs", "Succeeded", "Failed", "Reverted", timeout=120)
    assert done["phase"] == "Succeeded", done
    token = done["restart_token"]
    assert token and sorted(done["healthy"]) == sorted(ids) and done["skipped"] == []
    after = processes(fleet, "rs", ids)
    assert all(after[i] != before[i] and after[i][0] != before[i][0] for i in ids), (before, after)
    # Never more than max-unavailable down at once, and the restarts did happen in the sampled window.
    assert sampler.samples > 20 and 1 <= sampler.worst <= 2, (sampler.worst, sampler.samples)
    # Same version, no new install; every document and status carries the token.
    assert set(fleet.versions("rs", ids).values()) == {"1.0"}
    assert all(fleet.doc("rs", i)["restart_token"] == token for i in ids)
    statuses = fleet.statuses("rs")
    assert all(statuses[i]["version"] == "1.0" and statuses[i]["restart_token"] == token for i in ids)
    assert marker(fleet, "rs", "1.0") == installed
    # Another service on the same servers was not touched.
    assert processes(fleet, "calm", bystanders) == calm_before
    shown = fleet.cli("rollout", "status", "rs")
    assert shown.stdout.startswith("rs restart: Succeeded"), shown.stdout


def test_restart_of_one_instance_restarts_only_it(fleet: Fleet) -> None:
    ids = deploy(fleet, "one", 1)
    before = processes(fleet, "one", ids)
    result = fleet.cli("restart", "one/one-2")
    assert result.returncode == 0 and "Asked the agent to restart one/one-2" in result.stdout, result.stderr
    node = where(fleet, "one-2")
    wait_until(lambda: node.process("one", "one-2") not in (None, before["one-2"]), 30, what="one-2 restarted")
    wait_until(
        lambda: (s := node.status("one", "one-2")) is not None and s["phase"] == "Running" and s.get("restart_token"),
        30,
        what="one-2 Running with its token",
    )
    time.sleep(1.0)  # long enough for a wrong restart of the others to show
    after = processes(fleet, "one", ids)
    assert after["one-1"] == before["one-1"] and after["one-3"] == before["one-3"]
    assert after["one-2"] != before["one-2"]
    assert fleet.doc("one", "one-2")["service_version"] == "1.0" and "restart_token" not in fleet.doc("one", "one-1")


def test_restart_refuses_bad_input_in_one_line(fleet: Fleet) -> None:
    for args, text in (
        (("restart", "nothing"), "has no instances to restart"),
        (("restart", "nothing/i1"), "does not exist"),
        (("restart", "a/b/c"), "must not contain '/'"),
        (("restart", "svc", "--max-unavailable", "0"), "at least 1"),
        (("drain", "no-such-server"), "has no server document"),
        (("drain", "node-1", "--deadline", "soon"), "not a duration"),
    ):
        result = fleet.cli(*args)
        assert result.returncode != 0 and text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def _events(log: Path) -> list[tuple[str, str, float]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(what, who, float(at)) for what, who, at in (line.split() for line in lines)]


def test_drain_stops_instances_one_at_a_time_holds_rollouts_and_undrain_starts_them(
    fleet: Fleet, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    ids = deploy(fleet, "dr", 2, GRACEFUL, str(log))
    drained, on_drained = fleet.nodes[2], [i for s, i in fleet.assigned["node-3"] if s == "dr"]
    stays_up = processes(fleet, "dr", [i for i in ids if i not in on_drained])
    result = fleet.cli("drain", "node-3")
    assert result.returncode == 0 and "Drained server 'node-3'" in result.stdout, result.stderr
    for i in on_drained:
        drained.wait_phase("dr", i, "Drained", timeout=30)
        assert drained.process("dr", i) is None
    # The other tests' instances on node-3 are stopped too, one at a time: then the agent says Drained.
    wait_until(
        lambda: json.loads(fleet.etcd.get(f"{fleet.prefix}/servers/node-3/status/agent") or "{}")["drain"] == "Drained",
        30,
        what="node-3's agent Drained",
    )
    # One at a time, each with its grace: every SIGTERM came after the previous instance had exited.
    events = _events(log)
    assert sorted(who for what, who, _ in events if what == "term") == sorted(on_drained), events
    spans = sorted((at, next(t for w, o, t in events if w == "exit" and o == who)) for w, who, at in events)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    # The other servers' instances were left alone.
    assert processes(fleet, "dr", list(stays_up)) == stays_up
    table = fleet.cli("get", "servers").stdout
    assert next(line for line in table.splitlines() if line.startswith("node-3")).split()[1] == "Online,Drained"
    # A rollout updates the others and holds the drained server's instances.
    # Its 2 stopped instances count against max-unavailable: 3 leaves one place for the others.
    start = fleet.cli("rollout", "start", "dr", "--to", "2.0", "--min-healthy-seconds", "0.5", "--max-unavailable", "3")
    assert start.returncode == 0, start.stderr
    holding = wait_until(
        lambda: (s := fleet.rollout("dr")) is not None and len(s["healthy"]) == len(ids) - len(on_drained) and s,
        60,
        what="the instances of the other servers updated and healthy",
    )
    assert holding["phase"] == "Progressing" and "held while their server is drained" in holding["message"]
    assert all(fleet.versions("dr", on_drained)[i] == "1.0" for i in on_drained)
    assert all(drained.process("dr", i) is None for i in on_drained)
    # Undrained: the instances start again, then the rollout takes them to 2.0 and ends.
    result = fleet.cli("undrain", "node-3")
    assert result.returncode == 0 and "Undrained server 'node-3'" in result.stdout, result.stderr
    done = fleet.wait_rollout("dr", "Succeeded", "Failed", "Reverted", timeout=90)
    assert done["phase"] == "Succeeded", done
    wait_until(lambda: fleet.all_running_on("dr", ids, "2.0"), 30, what="every dr instance Running on 2.0")
    assert json.loads(fleet.etcd.get(f"{fleet.prefix}/servers/node-3/status/agent") or "{}")["drain"] is None
    assert "drained" not in json.loads(fleet.etcd.get(f"{fleet.prefix}/servers/node-3/config/details") or "{}")


def test_a_drain_deadline_cuts_the_grace_short(fleet: Fleet) -> None:
    ids = deploy(fleet, "stub", 1, STUBBORN, stop_timeout=120)
    node = fleet.nodes[1]
    (victim,) = [i for s, i in fleet.assigned["node-2"] if s == "stub"]
    pid, _ = node.wait_process("stub", victim)
    began = time.monotonic()
    result = fleet.cli("drain", "node-2", "--deadline", "2s")
    assert result.returncode == 0 and "is killed" in result.stdout, result.stderr
    node.wait_gone(pid, timeout=30)
    took = time.monotonic() - began
    node.wait_phase("stub", victim, "Drained", timeout=30)
    # Killed at the deadline, not after its 120 s stop_timeout.
    assert took < 30, took
    assert fleet.cli("undrain", "node-2").returncode == 0
    for i in ids:
        where(fleet, i).wait_phase("stub", i, "Running", timeout=30)


def test_an_agent_restart_restarts_nothing_but_a_restart_asked_for_while_it_was_away(node: Node) -> None:
    node.version("web", "1.0", run_script=node.py(SERVE), min_healthy_seconds=0.3)
    node.instance("web", "tok", "1.0", restart_token="t1")
    node.instance("web", "old", "1.0")
    node.instance("web", "away", "1.0")
    node.server(("web", "tok"), ("web", "old"), ("web", "away"))
    agent = node.agent()
    ids = ("tok", "old", "away")
    for i in ids:
        node.wait_phase("web", i, "Running")
    before = {i: node.wait_process("web", i) for i in ids}
    assert (node.record("web", "tok") or {})["process"]["restart_token"] == "t1"
    assert agent.terminate() == 0
    # "old" as an agent before restart tokens recorded it; "away" asked to restart meanwhile.
    node.edit_record("web", "old", lambda state: state["process"].pop("restart_token"))
    node.instance("web", "away", "1.0", restart_token="t2")
    again = node.agent()
    again.wait_log("Adopted instance")
    restarted = wait_until(
        lambda: (p := node.process("web", "away")) not in (None, before["away"]) and p, 30, what="away restarted"
    )
    wait_until(lambda: (node.status("web", "away") or {}).get("restart_token") == "t2", 30, what="away on t2")
    time.sleep(1.0)  # long enough for a wrong restart of the others to show
    assert {i: node.process("web", i) for i in ("tok", "old")} == {i: before[i] for i in ("tok", "old")}
    assert node.process("web", "away") == restarted
    assert again.log().count("Started instance") == 1
