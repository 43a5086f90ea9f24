"""The standalone install: the systemd unit verifies, and a wheel and an sdist install and run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
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


def _copy_source(destination: Path) -> Path:
    """The working tree without the venv, git and caches: the build never writes into the repository."""
    skip = shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "__pycache__", "build", "dist", ".*_cache", ".hypothesis"
    )
    shutil.copytree(REPO, destination, ignore=skip)
    return destination


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


def test_a_wheel_and_an_sdist_install_into_a_fresh_venv_and_run(tmp_path: Path) -> None:
    source = _copy_source(tmp_path / "source")
    out = tmp_path / "out"
    # --no-isolation: the build backend comes from the dev dependencies, so the test needs no network.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    (wheel,) = out.glob("discoverd-*.whl")
    (sdist,) = out.glob("discoverd-*.tar.gz")

    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = z.namelist()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    assert "Project-URL: Source, https://github.com/discoverd/discoverd" in metadata
    assert "Requires-Dist: aetcd" in metadata
    assert "discoverd/data/hello-1.0.py" in names and "discoverd/py.typed" in names
    dashboard = {"index.html", "app.js", "style.css", "favicon.svg"}
    assert {f"discoverd/dashboard/static/{name}" for name in dashboard} <= set(names)
    with tarfile.open(sdist) as t:
        members = t.getnames()
    assert any(m.endswith("packaging/systemd/discoverd-agent.service") for m in members)
    assert any(m.endswith("docs/install-standalone.md") for m in members)

    # Dependencies come from this venv (no network): on PYTHONPATH, where discoverd itself is not
    # importable (this venv has it as an editable path in a .pth file, which PYTHONPATH does not read).
    dependencies = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_relative_to(sys.prefix))
    env = {**os.environ, "PYTHONPATH": dependencies}
    for artifact in (wheel, sdist):
        venv = tmp_path / f"venv-{artifact.suffix.lstrip('.')}"
        _run(sys.executable, "-m", "venv", "--without-pip", venv)
        python = venv / "bin" / "python"
        _run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            artifact,
            env=env,
        )
        version = _run(venv / "bin" / "discoverd", "--version", env=env)
        assert version.stdout == "discoverd, version 0.1.0\n"
        where = _run(python, "-c", "import discoverd; print(discoverd.__file__)", env=env)
        assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
        # `discoverd dashboard` serves its page from the installed package (the sdist's build too).
        static = Path(where.stdout.strip()).parent / "dashboard" / "static"
        assert dashboard <= {p.name for p in static.iterdir()}, artifact
