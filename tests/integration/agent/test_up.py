"""`discoverd up` as a user runs it: serves the sample, stops everything on Ctrl-C (SIGINT)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from discoverd.embedded_etcd import free_port
from support.wait import wait_until

DISCOVERD = str(Path(sys.executable).parent / "discoverd")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                stat = (cmdline.parent / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    found.append(int(cmdline.parent.name))
    return found


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_up_serves_the_sample_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    state = tmp_path / "up-state"
    port, metrics_port = free_port(), free_port()
    out = tmp_path / "up.out"
    argv = [DISCOVERD, "up", "--state-dir", str(state), "--port", str(port)]
    argv += ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    with open(out, "wb") as f:
        up = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        body = wait_until(lambda: _get(f"http://127.0.0.1:{port}/"), 60, interval=0.2, what="the sample answering")
        assert "version 1.0" in body
        text = wait_until(lambda: "Try it" in out.read_text() and out.read_text(), 10)
        assert f"curl http://127.0.0.1:{port}/" in text
        assert "downloading" in text and "installing" in text and "running" in text
        assert _processes_mentioning(str(state))  # etcd and the sample run under the state directory

        # One endpoint serves the agent's and the controller's metrics, as its hint says.
        assert f"curl http://127.0.0.1:{metrics_port}/metrics" in text
        scraped = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'discoverd_agent_instances{phase="Running"} 3.0' in scraped, scraped[:2000]
        leader = wait_until(
            lambda: "discoverd_controller_leader 1.0" in _get(f"http://127.0.0.1:{metrics_port}/metrics"),
            20,
            what="the controller leading, on the same endpoint",
        )
        assert leader
        assert _get(f"http://127.0.0.1:{metrics_port}/readyz") != ""

        # Its logs hint works (without -f, so that it ends): every instance's lines, prefixed.
        hint = next(line for line in text.splitlines() if "Logs:" in line).split("Logs:", 1)[1].split()
        shown = subprocess.run([DISCOVERD, *hint[1:-1]], capture_output=True, text=True, timeout=30, check=False)
        assert shown.returncode == 0, shown.stderr
        assert {line.split("]")[0] + "]" for line in shown.stdout.splitlines()} >= {"[local/hello-1]"}, shown.stdout

        up.send_signal(signal.SIGINT)
        try:
            assert up.wait(30) == 0, out.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"discoverd up still running 30 s after SIGINT:\n{out.read_text()[-4000:]}") from None
        wait_until(lambda: not _processes_mentioning(str(state)), 10, what="nothing left behind")
        assert _get(f"http://127.0.0.1:{port}/") == ""
        assert _get(f"http://127.0.0.1:{metrics_port}/healthz") == ""
        assert "Stopped etcd" in out.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in _processes_mentioning(str(state)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)


def test_up_runs_the_controller_and_rolls_the_sample_out_to_2_0_with_a_canary(tmp_path: Path) -> None:
    state = tmp_path / "up-state"
    port = free_port()
    ports = [port, port + 1, port + 2]
    out = tmp_path / "up.out"
    argv = [DISCOVERD, "up", "--state-dir", str(state), "--port", str(port), "--metrics-address", ""]
    with open(out, "wb") as f:
        up = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        for p in ports:
            wait_until(
                lambda p=p: "version 1.0" in _get(f"http://127.0.0.1:{p}/"), 90, interval=0.2, what=f"{p} on 1.0"
            )
        text = wait_until(lambda: "Roll out:" in out.read_text() and out.read_text(), 10)
        hint = next(line for line in text.splitlines() if "Roll out:" in line)
        argv = hint.split("Roll out:", 1)[1].split()
        assert argv[:4] == ["discoverd", "--etcd-endpoints", argv[2], "rollout"]
        endpoint = argv[2]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [DISCOVERD, "--etcd-endpoints", endpoint, *args], capture_output=True, text=True, timeout=60
            )

        started = cli(*argv[3:], "--min-healthy-seconds", "0")  # the hint as printed, and no extra wait
        assert started.returncode == 0, started.stderr

        def versions() -> list[str]:
            return ["2.0" if "version 2.0" in _get(f"http://127.0.0.1:{p}/") else "1.0" for p in ports]

        def paused() -> bool:
            shown = cli("rollout", "status", "hello", "-o", "json")
            return shown.returncode == 0 and json.loads(shown.stdout)["phase"] == "Paused"

        wait_until(paused, 90, interval=0.5, what="the canary paused")
        assert sorted(versions()) == ["1.0", "1.0", "2.0"]
        assert cli("rollout", "resume", "hello").returncode == 0
        watched = cli("rollout", "status", "hello", "-w")  # returns when the rollout ends
        assert watched.returncode == 0 and "Succeeded" in watched.stdout.splitlines()[-1], watched.stdout
        wait_until(lambda: versions() == ["2.0"] * 3, 30, interval=0.2, what="every instance answering 2.0")
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(30)
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in _processes_mentioning(str(state)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
