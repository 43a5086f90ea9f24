"""Artifacts end to end: a real agent, real etcd, a real HTTP server on 127.0.0.1 (tests/support/files.py)."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from support.files import FileServer, serving
from support.http import free_port, value
from support.wait import wait_until


def tgz(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


APP = tgz({"bin/tool": (b"#!/bin/sh\necho hi\n", 0o4755), "etc/app.conf": (b"port=1\n", 0o644)})
# The download script runs after the artifacts, in the same directory: it sees them.
SAW = "import os\nassert os.path.isfile('app/etc/app.conf')\nopen('download-saw-artifacts', 'w').close()"


@pytest.fixture
def files() -> Iterator[FileServer]:
    with serving() as server:
        yield server


def version(node: Any, files: FileServer, name: str, **doc: Any) -> None:
    sha = files.add("/app-1.tgz", APP)
    artifacts = doc.pop(
        "artifacts",
        [
            {"url": files.url("/app-1.tgz"), "sha256": sha, "dest": "app"},
            {
                "url": files.url("/tool.bin"),
                "sha256": files.add("/tool.bin", b"\x7fELF..."),
                "extract": "none",
                "mode": 0o755,
            },
        ],
    )
    node.version(
        "svc",
        name,
        artifacts=artifacts,
        download_script=doc.pop("download_script", node.py(SAW)),
        run_script=node.py(node.sleep_forever),
        min_healthy_seconds=0.5,
        stop_timeout=5,
        **doc,
    )


def test_artifacts_are_fetched_once_for_every_instance_and_placed_before_the_download_script(
    node: Any, files: FileServer
) -> None:
    port = free_port()
    version(node, files, "1.0")
    for i in ("a", "b", "c"):
        node.instance("svc", i, "1.0")
    node.server(("svc", "a"), ("svc", "b"), ("svc", "c"))
    node.agent("--metrics-address", f"127.0.0.1:{port}")
    for i in ("a", "b", "c"):
        node.wait_phase("svc", i, "Running")
    vdir = node.version_dir("svc", "1.0")
    assert (vdir / "download-saw-artifacts").exists()
    assert (vdir / "app" / "etc" / "app.conf").read_bytes() == b"port=1\n"
    assert stat.S_IMODE((vdir / "app" / "bin" / "tool").stat().st_mode) == 0o755  # setuid dropped
    assert stat.S_IMODE((vdir / "tool.bin").stat().st_mode) == 0o755
    assert len(files.gets("/app-1.tgz")) == 1 and len(files.gets("/tool.bin")) == 1
    cache = node.state_dir / "cache" / "sha256" / hashlib.sha256(APP).hexdigest()
    assert cache.read_bytes() == APP
    assert value(f"http://127.0.0.1:{port}", "discoverd_agent_artifact_requests_total", result="fetched") == 2
    assert value(f"http://127.0.0.1:{port}", "discoverd_agent_artifact_fetched_bytes_total") == len(APP) + 7

    # An upgrade to a version with the same artifacts fetches nothing: they are in the cache.
    sent = files.bytes_sent
    version(node, files, "2.0")
    for i in ("a", "b", "c"):
        node.instance("svc", i, "2.0")
    for i in ("a", "b", "c"):
        wait_until(lambda i=i: (s := node.status("svc", i)) and s["version"] == "2.0" and s["phase"] == "Running", 30)
    assert files.bytes_sent == sent and len(files.requests) == 2
    assert (node.version_dir("svc", "2.0") / "app" / "etc" / "app.conf").exists()


def test_a_wrong_digest_fails_the_version_naming_url_and_digests_and_installs_nothing(
    node: Any, files: FileServer
) -> None:
    actual = files.add("/app-1.tgz", APP)
    wrong = hashlib.sha256(b"not the app").hexdigest()
    version(node, files, "1.0", artifacts=[{"url": files.url("/app-1.tgz"), "sha256": wrong}])
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    status = node.wait_phase("svc", "i1", "Failed")
    message = status["message"]
    assert files.url("/app-1.tgz") in message and wrong in message and actual in message
    vdir = node.version_dir("svc", "1.0")
    assert not (vdir / ".discoverd-installed").exists()
    assert not (vdir / "download-saw-artifacts").exists()  # the download script never ran
    assert not (vdir / "bin").exists()
    assert node.record("svc", "i1")["process"] is None


def test_a_wrong_digest_on_upgrade_rolls_back_to_the_running_version(node: Any, files: FileServer) -> None:
    version(node, files, "1.0")
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    node.wait_phase("svc", "i1", "Running")
    pid, start = node.wait_process("svc", "i1")
    version(node, files, "2.0", artifacts=[{"url": files.url("/app-1.tgz"), "sha512": "0" * 128}])
    node.instance("svc", "i1", "2.0")
    status = node.wait_phase("svc", "i1", "RolledBack")
    assert status["version"] == "1.0" and "expected " + "0" * 128 in status["message"]
    assert node.process("svc", "i1") == (pid, start)  # the old process never stopped


def test_downloading_shows_its_progress_in_the_status(node: Any, files: FileServer) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    files.delay = 0.05  # 64 KiB every 50 ms: about 1.6 s
    artifacts = [{"url": files.url("/big.bin"), "sha256": files.add("/big.bin", big)}]
    version(node, files, "1.0", artifacts=artifacts, download_script={})
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    node.agent()
    seen = wait_until(
        lambda: (s := node.status("svc", "i1")) and s["phase"] == "Downloading" and "%" in s["message"] and s, 20
    )
    assert re.fullmatch(r"Downloading \d+% \([\d.]+ of 2\.0 MiB\)", seen["message"]), seen["message"]
    node.wait_phase("svc", "i1", "Running")


def test_old_installs_are_pruned_keeping_the_previous_and_keep_versions_more(node: Any, files: FileServer) -> None:
    node.agent("--keep-versions", "1")
    node.server(("svc", "i1"))
    for n in ("1.0", "2.0", "3.0", "4.0"):
        version(node, files, n)
        node.instance("svc", "i1", n)
        wait_until(lambda n=n: (s := node.status("svc", "i1")) and s["version"] == n and s["phase"] == "Running", 30)
    # 4.0 runs, 3.0 is its rollback point, 2.0 the one more --keep-versions 1 keeps; 1.0 is gone.
    wait_until(lambda: not node.version_dir("svc", "1.0").exists(), 10, what="install of 1.0 removed")
    assert all(node.version_dir("svc", n).exists() for n in ("2.0", "3.0", "4.0"))
    assert sorted(p.name for p in (node.state_dir / "cache" / "pins" / "svc").iterdir()) == ["2.0", "3.0", "4.0"]


def test_a_download_cut_by_an_agent_kill_resumes_in_the_next_agent(node: Any, files: FileServer) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB, 64 KiB every 50 ms: about 3 s
    files.delay = 0.05
    artifacts = [{"url": files.url("/big.bin"), "sha256": files.add("/big.bin", big)}]
    version(node, files, "1.0", artifacts=artifacts, download_script={})
    node.instance("svc", "i1", "1.0")
    node.server(("svc", "i1"))
    first = node.agent()
    wait_until(
        lambda: (s := node.status("svc", "i1")) and re.match(r"Downloading [1-9]\d?%", s["message"]), 20, what="> 0 %"
    )
    first.kill()  # SIGKILL in the middle of the download
    files.delay = 0.0
    node.agent()
    node.wait_phase("svc", "i1", "Running")
    gets = files.gets("/big.bin")
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].status == 206
    assert files.bytes_sent < 1.5 * len(big)
    assert (node.version_dir("svc", "1.0") / "big.bin").read_bytes() == big
