"""CLI habits: options after the subcommand, `get -w`, `describe instance`, shell completion."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from discoverd.embedded_etcd import EtcdServer
from discoverd.schema import keys
from support.cli import discoverd
from support.etcd import RawEtcd

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "service.yaml")


def test_connection_options_work_after_the_subcommand(etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd) -> None:
    applied = discoverd("apply", "-f", EXAMPLE, "--etcd-endpoints", etcd_server.endpoint, f"--prefix={prefix}")
    assert applied.returncode == 0, applied.stderr
    assert keys.server_config(prefix, "node-1") in raw_etcd.keys(prefix + "/")
    # the same, with the options before, between and after the arguments
    after = discoverd("get", "servers", "-o", "json", "--etcd-endpoints", etcd_server.endpoint, "--prefix", prefix)
    before = discoverd("--etcd-endpoints", etcd_server.endpoint, "--prefix", prefix, "get", "servers", "-o", "json")
    between = discoverd("get", "--prefix", prefix, "servers", "--etcd-endpoints", etcd_server.endpoint, "-o", "json")
    assert after.returncode == before.returncode == between.returncode == 0, after.stderr
    assert [i["metadata"]["name"] for i in json.loads(after.stdout)["items"]] == ["node-1", "node-2"]
    assert after.stdout == before.stdout == between.stdout


def test_an_option_after_the_subcommand_is_checked_like_before() -> None:
    result = discoverd("get", "servers", "--etcd-endpoints", "ftp://x")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --etcd-endpoints: ") and result.stderr.count("\n") == 1


def test_get_watch_prints_again_when_something_changes(etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd) -> None:
    env = {**os.environ, "DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "discoverd", "get", "servers", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    output = b""

    def read_until(text: bytes, timeout: float = 20) -> None:
        nonlocal output
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        while text not in output:
            assert time.monotonic() < deadline, f"no {text!r} in {output!r}"
            if selector.select(timeout=0.2):
                chunk = os.read(process.stdout.fileno(), 65536)  # type: ignore[union-attr]
                assert chunk, f"get -w exited: {process.stderr.read() if process.stderr else ''}"
                output += chunk

    try:
        read_until(b"node-2")
        assert b"node-3" not in output
        raw_etcd.put(keys.server_config(prefix, "node-3"), '{"service_instances": []}')
        read_until(b"node-3")
        # printed a second time, whole: the header twice
        assert output.count(b"SERVER ") == 2
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)


def test_describe_instance_shows_configuration_and_each_server_status(
    etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd
) -> None:
    env = {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    assert discoverd("apply", "-f", EXAMPLE, env=env).returncode == 0
    status = {
        "phase": "Running",
        "version": "1.0",
        "pid": 4242,
        "restarts": 1,
        "last_exit_code": 3,
        "message": "up again",
        "since": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:05Z",
        "phase_changes": [{"phase": "Starting", "at": "2026-01-01T00:00:00Z"}],
    }
    raw_etcd.put(keys.instance_status(prefix, "node-1", "web", "i1"), json.dumps(status))
    result = discoverd("describe", "instance", "web/i1", env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Instance:     web/i1" in text
    assert f"Document:     {keys.instance_config(prefix, 'web', 'i1')}" in text
    assert "Servers:      node-1" in text
    assert "Version 1.0:" in text and "Healthy after 2 s" in text
    assert "On node-1 (agent offline):" in text
    assert "Phase:      Running since 2026-01-01T00:00:00+00:00" in text
    assert "PID:        4242" in text
    assert "Restarts:   1 (last exit code 3)" in text
    assert "Message:    up again" in text
    assert '"phase": "Starting"' in text  # fields the agent adds are shown too

    missing = discoverd("describe", "instance", "web/nope", env=env)
    assert missing.returncode == 1
    assert missing.stderr == f"error: no instance web/nope under {prefix}: no document, no server lists it, no status\n"
    bad = discoverd("describe", "instance", "web", env=env)
    assert bad.returncode == 2 and "is not SERVICE/ID" in bad.stderr


def test_shell_completion_completes_commands_and_arguments() -> None:
    script = discoverd("completion", "bash")
    assert script.returncode == 0 and "_DISCOVERD_COMPLETE=bash_complete" in script.stdout
    env = {"_DISCOVERD_COMPLETE": "bash_complete", "COMP_WORDS": "discoverd get ", "COMP_CWORD": "2"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "discoverd")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert result.stdout.split() == ["plain,servers", "plain,versions", "plain,instances", "plain,rollouts"]
    env["COMP_WORDS"], env["COMP_CWORD"] = "discoverd desc", "1"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "discoverd")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert result.stdout.split() == ["plain,describe"]


COMMANDS = ["agent", "apply", "auth", "completion", "controller", "dashboard", "describe", "drain", "get", "logs"]
COMMANDS += ["operator", "restart", "rollout", "undrain", "up", "validate"]


def test_help_lists_every_command_and_one_command_imports_only_its_own() -> None:
    shown = discoverd("--help")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.startswith("  ") and line.split()] == COMMANDS
    # `discoverd get` (a command run many times a day, in scripts too) does not load the agent, the
    # operator or the controller: their imports would double its start-up
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('discoverd.')})))\n"
        "from discoverd.cli.main import main\n"
        "sys.argv = ['discoverd', 'get', '--help']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.splitlines()[-1]
    assert "'cli'" in loaded and not {"'agent'", "'operator'", "'controller'", "'dashboard'"} & set(
        loaded.strip("[]").split(", ")
    ), loaded
