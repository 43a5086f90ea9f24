"""The standalone install: the systemd unit verifies, and a wheel and an sdist install and run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "discoverd-agent.service"
INSTALLED_AT = "/opt/discoverd/bin/discoverd"  # where docs/install-standalone.md puts it


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """`systemd-analyze`, from Debian's systemd package (installed here when missing and we may)."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True, capture_output=True, env=env)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    return found


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(systemd_analyze: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `text`, with the binary at the path the install gives it pointing at ours.

    verify checks that ExecStart's program exists; on this machine discoverd is in the test venv,
    so the copy differs from the shipped unit by that path alone.
    """
    ours = str(Path(sys.executable).parent / "discoverd")
    assert INSTALLED_AT in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_AT, ours))
    return subprocess.run([systemd_analyze, "verify", str(copy)], capture_output=True, text=True, check=False)


def test_the_agent_unit_verifies_without_a_warning(systemd_analyze: str, tmp_path: Path) -> None:
    result = verify(systemd_analyze, UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_the_unit_says_what_the_install_needs() -> None:
    unit = settings(UNIT.read_text())
    assert unit["Restart"] == ["always"]
    # systemd ends the agent only: instances keep running and the next agent adopts them.
    assert unit["KillMode"] == ["process"]
    assert unit["EnvironmentFile"] == ["/etc/discoverd/agent.env"]
    assert unit["ExecStart"] == [f"{INSTALLED_AT} agent --state-dir /var/lib/discoverd"]
    # The example environment file names only settings the command takes.
    example = settings((UNIT.parent / "agent.env.example").read_text().replace("#DISCOVERD", "DISCOVERD"))
    help_text = subprocess.run(
        [sys.executable, "-m", "discoverd", "agent", "--help"], capture_output=True, text=True, check=True
    )
    known = (
        {"DISCOVERD_SERVER_ID", "DISCOVERD_LOG_FORMAT", "DISCOVERD_PREFIX"}
        | {
            "DISCOVERD_" + flag.removeprefix("--").upper().replace("-", "_")
            for flag in ("--etcd-endpoints", "--etcd-cacert", "--etcd-cert", "--etcd-key", "--etcd-user")
        }
        | {"DISCOVERD_ETCD_PASSWORD_FILE"}
    )
    assert set(example) <= known, set(example) - known
    assert "--server-id" in help_text.stdout


def test_a_broken_unit_fails_the_check(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above can fail: a wrong value is reported."""
    result = verify(systemd_analyze, UNIT.read_text().replace("KillMode=process", "KillMode=sometimes"), tmp_path)
    assert "kill mode" in result.stderr and "sometimes" in result.stderr
