"""A 3-member etcd cluster with per-member TLS certificates: agents and clients fail over between members.

What the scenario means (a 3-member cluster keeps working while 2 members are up):

1. Kill the leader (SIGKILL). The other two elect a new leader; a real agent
   process and the CLI, given all three endpoints (the dead one first), carry
   on: a new instance is applied and started, the running instances keep their
   pid and start time, the agent keeps its pid and its lease (its server never
   looks offline).
2. Kill another member (the new leader). One member of three is left: no
   quorum, so nothing can be read or written. The CLI says so in one line; the
   agent does not exit and restarts nothing: instances run on.
3. Start the first killed member again: two of three, quorum is back. The
   agent catches up by itself (no restart of the agent or of any instance) and
   a change applied now is carried out.

Each member's certificate carries only its own address, so every connection
after a failover is checked against the member's own name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.embedded_etcd import EtcdServer, free_port
from support import cgroups as test_cgroups
from support.cli import discoverd
from support.cluster import Cluster, Pki, make_pki, read_key
from support.wait import wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
SLEEP = "import time\nwhile True: time.sleep(3600)"
LEASE_TTL = 6


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def cluster(tmp_path: Path, pki: Pki) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", pki).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def _start_time(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[19])


class World:
    """The prefix, the environment every discoverd command gets, and what the agent started."""

    def __init__(self, cluster: Cluster, prefix: str, tmp_path: Path, endpoints: list[str]) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.tmp_path = tmp_path
        # A cgroup root of its own (tests/support/cgroups.py): never the machine's `/discoverd`.
        self.cgroup_root = test_cgroups.new_root()
        self.env = {
            "DISCOVERD_ETCD_ENDPOINTS": ",".join(endpoints),
            "DISCOVERD_ETCD_CACERT": str(cluster.pki.ca),
            "DISCOVERD_ETCD_CERT": str(cluster.pki.client_cert),
            "DISCOVERD_ETCD_KEY": str(cluster.pki.client_key),
            "DISCOVERD_ETCD_TIMEOUT": "2",
            "DISCOVERD_PREFIX": prefix,
        }
        self.agent: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    def apply(self, *instances: str) -> None:
        docs = [
            {
                "kind": "ServiceVersion",
                "metadata": {"name": "web.1.0"},
                "spec": {
                    "service": "web",
                    "version": "1.0",
                    "runScript": {"command": sys.executable, "argv": ["-c", SLEEP]},
                    "minHealthySeconds": 0.3,
                },
            },
            *(
                {"kind": "ServiceInstance", "spec": {"service": "web", "id": i, "serviceVersion": "1.0"}}
                for i in instances
            ),
            {
                "kind": "Server",
                "metadata": {"name": "node-1"},
                "spec": {"id": "node-1", "serviceInstances": [{"name": "web", "id": i} for i in instances]},
            },
        ]
        text = "".join("---\n" + json.dumps({"apiVersion": "discoverd.io/v1alpha1", **d}) + "\n" for d in docs)
        result = discoverd("apply", "-f", "-", input=text, env=self.env, timeout=60)
        assert result.returncode == 0, result.stderr

    def start_agent(self) -> None:
        argv = [DISCOVERD, "agent", "--server-id", "node-1", "--state-dir", str(self.tmp_path / "state")]
        argv += ["--lease-ttl", str(LEASE_TTL), "--backoff-base", "0.2", "--cgroup-root", self.cgroup_root]
        with open(self.tmp_path / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={**os.environ, **self.env}
            )

    def log(self) -> str:
        return (self.tmp_path / "agent.log").read_text(errors="replace")

    def keys(self) -> dict[str, Any]:
        """Every status key under the prefix, read with the CLI's own client (fails over too)."""
        result = discoverd("get", "instances", "-o", "json", env=self.env, timeout=60)
        assert result.returncode == 0, result.stderr
        return {
            (item["spec"]["id"], s["server"]): s
            for item in json.loads(result.stdout)["items"]
            for s in item["status"]["servers"]
        }

    def wait_running(self, *instances: str, timeout: float = 60) -> dict[str, tuple[int, int]]:
        """(pid, start time) of each instance once it reports Running with a live pid."""

        def check() -> dict[str, tuple[int, int]] | None:
            found = {}
            statuses = self.keys()
            for i in instances:
                s = statuses.get((i, "node-1"))
                if s is None or s["phase"] != "Running" or not s.get("pid"):
                    return None
                started = _start_time(s["pid"])
                if started is None:
                    return None
                found[i] = (s["pid"], started)
            return found

        found = wait_until(check, timeout, interval=0.3, what=f"{instances} Running")
        self.pids |= {pid for pid, _ in found.values()}
        return found

    def identities(self, before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int] | None]:
        now: dict[str, tuple[int, int] | None] = {}
        for i, (pid, _) in before.items():
            started = _start_time(pid)
            now[i] = None if started is None else (pid, started)
        return now

    def agent_lease(self) -> int | None:
        """The lease holding the agent's status key (None when the key is gone)."""
        endpoints = self.env["DISCOVERD_ETCD_ENDPOINTS"].split(",")
        return read_key(self.cluster, endpoints, f"{self.prefix}/servers/node-1/status/agent")

    def cleanup(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(10)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        test_cgroups.remove_root(self.cgroup_root)


@pytest.fixture
def world(cluster: Cluster, prefix: str, tmp_path: Path) -> Iterator[World]:
    leader = cluster.wait_leader()
    # The leader first: the agent and the CLI start on it, so killing it is a real failover.
    order = [leader] + [i for i in range(3) if i != leader]
    w = World(cluster, prefix, tmp_path, [cluster.members[i].endpoint for i in order])
    try:
        yield w
    finally:
        w.cleanup()


def test_agents_and_clients_fail_over_when_members_die(world: World, cluster: Cluster) -> None:
    first = cluster.wait_leader()
    world.apply("a", "b")
    world.start_agent()
    assert world.agent is not None
    agent_identity = (world.agent.pid, _start_time(world.agent.pid))
    before = world.wait_running("a", "b")
    lease = wait_until(world.agent_lease, 20, what="the agent's status key")

    # 1. The leader dies; the two others elect a new one.
    cluster.members[first].kill()
    killed_at = time.monotonic()
    second = cluster.wait_leader()
    assert second != first
    world.apply("a", "b", "c")  # the CLI starts on the dead member and moves on
    before |= world.wait_running("c")
    assert world.identities(before) == before
    wait_until(lambda: time.monotonic() - killed_at > 2 * LEASE_TTL, 3 * LEASE_TTL, what="two lease TTLs")
    assert world.agent_lease() == lease  # kept alive through another member: the server never looked offline
    assert world.agent.poll() is None and (world.agent.pid, _start_time(world.agent.pid)) == agent_identity

    # 2. Another member dies: one of three left, no quorum.
    cluster.members[second].kill()
    survivor = ({0, 1, 2} - {first, second}).pop()
    wait_until(lambda: cluster.leader_seen_by(survivor) == 0, 30, what="the survivor to know it has no leader")
    refused = discoverd("get", "instances", env=world.env, timeout=60)
    assert refused.returncode == 1
    assert "lost its quorum" in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert world.identities(before) == before
        assert world.agent.poll() is None
        time.sleep(0.5)

    # 3. The first member comes back: quorum again, and the agent catches up by itself.
    cluster.members[first].start()
    cluster.wait_leader()
    world.apply("a", "b", "c", "d")
    before |= world.wait_running("d")
    assert world.identities(before) == before
    assert (world.agent.pid, _start_time(world.agent.pid)) == agent_identity
    assert world.log().count("Started instance") == 4  # a, b, c and d, once each
    assert "Traceback" not in world.log()


def test_each_member_certificate_is_checked_against_its_own_name(tmp_path: Path, pki: Pki, prefix: str) -> None:
    """A member whose certificate names another address is refused, even after a failover to it."""
    good = EtcdServer(tmp_path / "good", host="127.0.0.5", tls=pki.server_files("good", "127.0.0.5"))
    impostor = EtcdServer(tmp_path / "impostor", host="127.0.0.6", tls=pki.server_files("impostor", "127.0.0.7"))
    good.start()
    try:
        impostor.start()
        try:
            dead = f"https://127.0.0.5:{free_port('127.0.0.5')}"
            base = {
                "DISCOVERD_ETCD_CACERT": str(pki.ca),
                "DISCOVERD_ETCD_CERT": str(pki.client_cert),
                "DISCOVERD_ETCD_KEY": str(pki.client_key),
                "DISCOVERD_ETCD_TIMEOUT": "2",
                "DISCOVERD_PREFIX": prefix,
            }
            ok = discoverd("get", "servers", env={**base, "DISCOVERD_ETCD_ENDPOINTS": f"{dead},{good.endpoint}"})
            assert ok.returncode == 0, ok.stderr
            refused = discoverd(
                "get", "servers", env={**base, "DISCOVERD_ETCD_ENDPOINTS": f"{dead},{impostor.endpoint}"}
            )
            assert refused.returncode == 1
            assert refused.stderr.count("\n") == 1, refused.stderr
            assert (
                f"etcd at {impostor.endpoint}: TLS handshake failed: the server's certificate is not issued for the name"
                in refused.stderr
            )
        finally:
            impostor.stop()
    finally:
        good.stop()
