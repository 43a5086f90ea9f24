"""`discoverd logs`: real agents serving their instances' logs over pinned HTTPS, to holders of grants in etcd."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from discoverd import logaccess
from discoverd.schema import documents, keys
from discoverd.schema import logaccess as protocol
from discoverd.store import leases
from discoverd.store.typed import Store, Write
from support.wait import async_wait_until, wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
Node = Any
"""The `node` fixture's type (tests/integration/agent/conftest.py), which tests do not import."""

# Prints `line <n>` every `delay` seconds, `count` times (forever when count is 0), then sleeps;
# on SIGTERM prints `bye` and exits.
COUNTER = (
    "import itertools,signal,sys,time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('bye', flush=True), sys.exit(0)))\n"
    "count, delay = int(sys.argv[1]), float(sys.argv[2])\n"
    "for i in (range(count) if count else itertools.count()):\n"
    "    print(f'line {i}', flush=True)\n"
    "    time.sleep(delay)\n"
    "while True: time.sleep(3600)\n"
)


def seed(node: Node, *instances: str, count: int = 0, delay: float = 0.1) -> None:
    node.version("web", "1.0", run_script=node.py(COUNTER, str(count), str(delay)), min_healthy_seconds=0.2)
    for i in instances:
        node.instance("web", i, "1.0")
    node.server(*(("web", i) for i in instances))


def logs(node: Node, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DISCOVERD, "--etcd-endpoints", node.endpoint, "--prefix", node.prefix, "logs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Follower:
    """`discoverd logs -f ...` running in the background; its output lines collected as they come."""

    def __init__(self, node: Node, *args: str) -> None:
        argv = [DISCOVERD, "--etcd-endpoints", node.endpoint, "--prefix", node.prefix, "logs", "-f", *args]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.lines, timeout, what=f"{text!r} from discoverd logs -f: {self.lines[-5:]}")

    def numbers(self) -> list[int]:
        return [int(line.rsplit(" ", 1)[1]) for line in self.lines if line.startswith("line ")]

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        assert self.process.stderr is not None
        return self.process.stderr.read()


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    running: list[Follower] = []
    try:
        yield running
    finally:
        for f in running:
            f.stop()


def agent_status(node: Node) -> dict[str, Any]:
    raw = node.etcd.get(f"{node.prefix}/servers/{node.server_id}/status/agent")
    assert raw is not None
    return dict(json.loads(raw))


def consecutive(numbers: list[int]) -> bool:
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else False


def test_tail_prints_the_last_lines_of_the_run_log(node: Node) -> None:
    seed(node, "i1", count=20, delay=0.0)
    node.agent()
    node.wait_phase("web", "i1", "Running")
    wait_until(lambda: logs(node, "web/i1", "--tail", "1").stdout == "line 19\n", what="line 19 logged")
    result = logs(node, "web/i1", "--tail", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 17\nline 18\nline 19\n"
    everything = logs(node, "web/i1").stdout.splitlines()
    assert everything[0].startswith("--- ") and "discoverd: running" in everything[0]  # the agent's header
    assert everything[1:] == [f"line {i}" for i in range(20)]


def test_timestamps_and_since_use_when_the_agent_saw_each_line(node: Node) -> None:
    started = time.time()
    seed(node, "i1", count=3, delay=0.0)
    node.agent()
    node.wait_phase("web", "i1", "Running")
    wait_until(lambda: logs(node, "web/i1", "--tail", "1").stdout == "line 2\n", what="line 2 logged")
    written = time.time()
    result = logs(node, "web/i1", "--timestamps", "--tail", "1")
    stamp, text = result.stdout.rstrip("\n").split(" ", 1)
    assert text == "line 2"
    seen = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    # Seen after the script started and before it was read (whole seconds: the stamp's resolution).
    assert started - 1 <= seen <= written + 1
    # Every line is older than a second once nothing is written: --since 1h has them, a moment has none.
    time.sleep(2.5)
    assert "line 2" in logs(node, "web/i1", "--since", "1h").stdout
    assert logs(node, "web/i1", "--since", "1s").stdout == ""


def test_follow_goes_on_across_log_rotation(node: Node, followers: list[Follower]) -> None:
    seed(node, "i1", count=0, delay=0.01)
    node.agent("--script-log-max-bytes", "1024", "--script-log-keep", "2", "--script-log-check-interval", "0.05")
    node.wait_phase("web", "i1", "Running")
    follower = Follower(node, "web/i1", "--tail", "0")
    followers.append(follower)
    wait_until(lambda: len(follower.numbers()) > 400, 60, what="400 lines followed")
    # Rotated more than once meanwhile (wherever the agent keeps the logs: found, not assumed).
    assert [p for p in node.state_dir.rglob("run.log.2") if "i1" in p.parts]
    numbers = follower.numbers()
    # In order, none twice; copy-and-truncate may lose what is written in the instant between the two.
    assert numbers == sorted(set(numbers))
    gaps = [b - a for a, b in itertools.pairwise(numbers) if b - a > 1]
    assert len(gaps) <= len(numbers) // 20, gaps


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_follow_goes_on_across_an_agent_restart_without_a_gap_or_a_repeat(
    node: Node, followers: list[Follower], how: str
) -> None:
    seed(node, "i1", count=0, delay=0.05)
    agent = node.agent()
    node.wait_phase("web", "i1", "Running")
    before = agent_status(node)
    follower = Follower(node, "web/i1", "--tail", "1")
    followers.append(follower)
    wait_until(lambda: len(follower.numbers()) > 5, what="lines followed")
    if how == "SIGTERM":
        agent.terminate()  # its status goes with its lease: the reader waits for the next one
    else:
        agent.kill()  # its status stays until the lease expires, naming a dead address and an old certificate
    node.agent()
    key = f"{node.prefix}/servers/{node.server_id}/status/agent"
    wait_until(
        lambda: (raw := node.etcd.get(key)) and json.loads(raw)["api_cert_sha256"] != before["api_cert_sha256"],
        what="the new agent's status (a new certificate each start)",
    )
    count = len(follower.numbers())
    wait_until(lambda: len(follower.numbers()) > count + 20, 30, what="lines after the agent restart")
    assert consecutive(follower.numbers()), follower.numbers()


def test_follow_ends_when_the_instance_is_removed_after_its_last_words(node: Node, followers: list[Follower]) -> None:
    seed(node, "i1", "i2", count=0, delay=0.1)
    node.agent()
    node.wait_phase("web", "i1", "Running")
    follower = Follower(node, "web/i1")
    followers.append(follower)
    wait_until(lambda: len(follower.numbers()) > 3, what="lines followed")
    node.server(("web", "i2"))
    follower.process.wait(30)
    assert follower.process.returncode == 0
    assert follower.lines[-1] == "bye"  # what the run script printed on its stop signal came too


def test_a_whole_service_with_prefix_reads_every_server(node: Node, tmp_path: Path) -> None:
    other = type(node)(node.etcd, node.endpoint, node.prefix, tmp_path / "state-2", server_id="node-2")
    try:
        seed(node, "a", "b", count=2, delay=0.0)
        other.server(("web", "c"))
        node.instance("web", "c", "1.0")
        node.agent()
        other.agent()
        for n, i in ((node, "a"), (node, "b"), (other, "c")):
            n.wait_phase("web", i, "Running")
        result = logs(node, "web", "--prefix")
        assert result.returncode == 0, result.stderr
        # Each instance in turn (by server, then ID), the agent's header line first.
        expected = [("node-1", "a"), ("node-1", "b"), ("node-2", "c")]
        lines = result.stdout.splitlines()
        assert [line for line in lines if "discoverd: running" not in line] == [
            f"[{server}/{i}] line {n}" for server, i in expected for n in (0, 1)
        ]
        assert [line.split("] ")[0] + "]" for line in lines if "discoverd: running" in line] == [
            f"[{server}/{i}]" for server, i in expected
        ]
    finally:
        other.cleanup()


# refusals, through the reader's library against a real agent


async def _grant(store: Store, server: str, service: str, instance: str, ttl: int = 30) -> tuple[str, int]:
    token = protocol.new_token()
    digest = protocol.token_sha256(token)
    assert digest is not None
    lease = await leases.grant(store, ttl)
    grant = protocol.LogGrant(service=service, instance=instance, reader="test")
    await store.apply([Write(keys.log_grant(store.prefix, server, digest), documents.dumps(grant), lease=lease)])
    return token, lease


async def _read(address: str, digest: str, token: str, target: logaccess.Target, **query: Any) -> list[str]:
    found = []
    async for message in logaccess.fetch(address, digest, token, target, protocol.LogQuery(**query)):
        if message.line is not None:
            found.append(message.line)
    return found


async def _running(node: Node) -> tuple[str, str]:
    seed(node, "i1", "i2", count=2, delay=0.0)
    node.agent("--api-grant-recheck", "0.2")
    await asyncio.to_thread(node.wait_phase, "web", "i1", "Running")
    await asyncio.to_thread(node.wait_phase, "web", "i2", "Running")
    status = agent_status(node)
    return status["api_address"], status["api_cert_sha256"]


async def test_a_request_is_refused_without_a_grant_or_with_a_grant_for_another_instance(
    node: Node, store: Store
) -> None:
    address, digest = await _running(node)
    i1 = logaccess.Target("node-1", "web", "i1")
    token, _ = await _grant(store, "node-1", "web", "i1")

    async def reads_i1() -> bool:  # the control: a grant for i1 reads i1 (Running comes before its first line)
        return "line 1" in await _read(address, digest, token, i1)

    await async_wait_until(reads_i1, 30, 0.1, what="line 1 of web/i1 read with its grant")
    for wrong in (protocol.new_token(), token[:-2] + ("AA" if not token.endswith("AA") else "BB")):
        with pytest.raises(logaccess.Refused) as refused:
            await _read(address, digest, wrong, i1)
        assert refused.value.status == 401
        assert "no grant for this token" in str(refused.value)
    with pytest.raises(logaccess.Refused) as refused:
        await _read(address, digest, token, logaccess.Target("node-1", "web", "i2"))
    assert refused.value.status == 403
    assert "the grant is for web/i1, not web/i2" in str(refused.value)
    # A grant for this instance on another server does not open this one.
    elsewhere, _ = await _grant(store, "node-2", "web", "i1")
    with pytest.raises(logaccess.Refused) as refused:
        await _read(address, digest, elsewhere, i1)
    assert refused.value.status == 401


async def test_a_grant_not_held_by_a_lease_is_refused(node: Node, store: Store) -> None:
    address, digest = await _running(node)
    token = protocol.new_token()
    key = keys.log_grant(store.prefix, "node-1", protocol.token_sha256(token) or "")
    await store.put(key, protocol.LogGrant(service="web", instance="i1"))
    with pytest.raises(logaccess.Refused) as refused:
        await _read(address, digest, token, logaccess.Target("node-1", "web", "i1"))
    assert refused.value.status == 401
    assert "not held by a lease" in str(refused.value)


async def test_a_follow_ends_when_its_grant_expires(node: Node, store: Store) -> None:
    address, digest = await _running(node)
    token, lease = await _grant(store, "node-1", "web", "i1", ttl=60)
    target = logaccess.Target("node-1", "web", "i1")
    ends = []

    async def follow() -> None:
        async for message in logaccess.fetch(address, digest, token, target, protocol.LogQuery(follow=True)):
            if message.end is not None:
                ends.append(message.end)

    task = asyncio.create_task(follow())
    await asyncio.sleep(1.0)
    assert not task.done()
    await leases.revoke(store, lease)  # as when the reader's lease expires
    await asyncio.wait_for(task, 10)
    assert ends == [protocol.End.GRANT]


async def test_a_certificate_other_than_the_published_one_gets_no_token(
    node: Node, store: Store, tmp_path: Path
) -> None:
    """An impostor at the published address (or a changed agent) sees a handshake and nothing else."""
    address, digest = await _running(node)
    token, _ = await _grant(store, "node-1", "web", "i1")
    target = logaccess.Target("node-1", "web", "i1")
    # The real agent, pinned to a digest it does not have: refused before the request is sent.
    with pytest.raises(logaccess.CertificateMismatch):
        await _read(address, "0" * 64, token, target)
    # An impostor with a certificate of its own, at an address the reader was told.
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    received: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(logaccess.CertificateMismatch):
            await _read(f"127.0.0.1:{port}", digest, token, target)
        await asyncio.sleep(0.2)
    finally:
        server.close()
        await server.wait_closed()
    assert all(token.encode() not in data for data in received)
    assert received in ([], [b""])


def test_the_log_server_caps_connections(node: Node) -> None:
    seed(node, "i1", count=1, delay=0.0)
    node.agent("--api-max-connections", "1")
    node.wait_phase("web", "i1", "Running")
    host, port = agent_status(node)["api_address"].rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw) as first:
        first.sendall(b"GET /v1/logs/web/i1 HTTP/1.1\r\n")  # an unfinished request holds the one connection
        time.sleep(0.3)
        result = logs(node, "web/i1")
        assert result.returncode == 1
        assert "too many log readers at once (at most 1)" in result.stderr


def test_the_cli_names_a_server_whose_agent_is_offline(node: Node) -> None:
    seed(node, "i1", count=1, delay=0.0)
    result = logs(node, "web/i1")
    assert result.returncode == 1
    assert result.stderr == "error: server node-1 is offline: its agent has no status in etcd\n"
    missing = logs(node, "web/nope")
    assert missing.stderr == "error: no server lists web/nope (see `discoverd get instances`)\n"


def test_garbage_on_the_log_port_is_refused_and_the_agent_goes_on(node: Node) -> None:
    seed(node, "i1", count=1, delay=0.0)
    agent = node.agent()
    node.wait_phase("web", "i1", "Running")
    host, port = agent_status(node)["api_address"].rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    answers = []
    with socket.create_connection((host, int(port)), timeout=5) as plain:  # not TLS at all
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
        answers.append(plain.recv(100))
    for request in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET /v1/logs/web/%2e%2e HTTP/1.1\r\n\r\n",
        b"GET /v1/logs/web/i1?tail=-5 HTTP/1.1\r\nAuthorization: Bearer " + b"x" * 40 + b"\r\n\r\n",
        b"GET /v1/logs/web/i1 HTTP/1.1\r\n" + b"X: y\r\n" * 4000 + b"\r\n",
        b"POST /v1/logs/web/i1 HTTP/1.1\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(request)
            answers.append(tls.recv(200).split(b"\r\n")[0])
    assert answers[1:] == [
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 405 Method Not Allowed",
    ]
    result = logs(node, "web/i1", "--tail", "1")
    assert (result.returncode, result.stdout) == (0, "line 0\n")
    assert agent.process is not None and agent.process.poll() is None
    assert "Traceback" not in agent.log()


def test_a_request_slowed_by_the_rate_limit_ends_at_its_deadline(node: Node) -> None:
    seed(node, "i1", count=500, delay=0.0)  # about 4 kB
    node.agent("--api-bytes-per-second", "1024", "--api-request-timeout", "1")
    node.wait_phase("web", "i1", "Running")
    wait_until(lambda: logs(node, "web/i1", "--tail", "1").stdout == "line 499\n", what="line 499 logged")
    result = logs(node, "web/i1")
    assert result.returncode == 1
    assert "the agent's deadline for one request passed" in result.stderr
    sent = result.stdout.splitlines()
    assert 0 < len(sent) < 200, len(sent)  # about 1 kB (the burst) plus 1 kB/s for 1 s, not everything


def test_following_a_whole_service_interleaves_its_instances(node: Node, followers: list[Follower]) -> None:
    seed(node, "a", "b", count=0, delay=0.1)
    node.agent()
    node.wait_phase("web", "a", "Running")
    node.wait_phase("web", "b", "Running")
    follower = Follower(node, "web", "--prefix", "--tail", "0")
    followers.append(follower)
    wait_until(
        lambda: (
            {line.split("]")[0] for line in follower.lines} == {"[node-1/a", "[node-1/b"} and len(follower.lines) > 10
        ),
        what="lines of both instances",
    )
    node.server(("web", "b"))  # a removed: its follow ends, b's goes on
    count = len(follower.lines)
    wait_until(lambda: len(follower.lines) > count + 10, what="more lines")
    assert follower.process.poll() is None
    assert follower.lines[-1].startswith("[node-1/b] line ")


def test_an_agent_started_without_a_log_api_is_named(node: Node) -> None:
    seed(node, "i1", count=1, delay=0.0)
    node.agent("--api-address", "")
    node.wait_phase("web", "i1", "Running")
    assert "api_address" not in agent_status(node) or agent_status(node)["api_address"] is None
    result = logs(node, "web/i1")
    assert result.returncode == 1
    assert "the agent of server node-1 serves no logs" in result.stderr
