"""Log files never reached through a link: a planted link is refused, never written, truncated or chmod-ed through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from discoverd.agent import layout, logfiles, model

PASSWD = b"root:x:0:0:root:/root:/bin/bash\n" * 64


def _victim(tmp_path: Path) -> Path:
    """A file outside the log directory standing for /etc/passwd: 0644, bigger than any cap below."""
    victim = tmp_path / "passwd"
    victim.write_bytes(PASSWD)
    victim.chmod(0o644)
    return victim


def _unchanged(victim: Path) -> None:
    assert victim.read_bytes() == PASSWD
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_log_directory_is_created_private(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "web" / "i1" / "run.log"
    with logfiles.open_append(log) as f:
        f.write(b"hello\n")
    assert log.read_bytes() == b"hello\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for d in (log.parent, log.parent.parent, log.parent.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_a_log_that_is_a_link_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run.log").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        logfiles.open_append(logs / "run.log")
    _unchanged(victim)


def test_a_directory_on_the_way_that_is_a_link_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.log").symlink_to(victim)  # not even reached
    (tmp_path / "logs").symlink_to(elsewhere)
    with pytest.raises(OSError, match=r"logs: a symbolic link"):
        logfiles.open_append(tmp_path / "logs" / "run.log")
    with pytest.raises(OSError, match=r"logs: a symbolic link"):
        logfiles.rotate(tmp_path / "logs" / "run.log", 4, 2)
    _unchanged(victim)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["run.log"]


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    os.chown(logs, 65534, 65534)
    with pytest.raises(OSError, match="owned by uid 65534"):
        logfiles.open_append(logs / "run.log")
    assert list(logs.iterdir()) == []


def test_rotation_leaves_a_live_log_that_is_a_link_alone(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run.log").symlink_to(victim)
    assert not logfiles.rotate(logs / "run.log", 4, 2)
    _unchanged(victim)
    assert (logs / "run.log").is_symlink() and not (logs / "run.log.1").exists()


def test_rotation_replaces_linked_copies_instead_of_writing_through_them(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("run.log.1", "run.log.2", ".run.log.1.tmp", ".run.log.2.tmp"):
        (logs / name).symlink_to(victim)
    (logs / "run.log").write_bytes(b"generation 1")
    assert logfiles.rotate(logs / "run.log", 4, 2)
    _unchanged(victim)
    assert (logs / "run.log").read_bytes() == b""
    assert (logs / "run.log.1").read_bytes() == b"generation 1" and not (logs / "run.log.1").is_symlink()
    assert (logs / "run.log.2").is_symlink()  # the old `.1`, moved up as the name it is
    assert sorted(p.name for p in logs.iterdir()) == ["run.log", "run.log.1", "run.log.2"]


def test_layout_keeps_logs_out_of_the_instance_directory_and_refuses_a_linked_one(tmp_path: Path) -> None:
    lay = layout.Layout(tmp_path / "state")
    lay.prepare()
    ref = model.Ref("web", "i1")
    run = lay.log_path(ref, "run")
    assert run == lay.root / "logs" / "web" / "i1" / "run.log" and run.is_file()
    assert not run.is_relative_to(lay.instance_dir(ref))
    assert lay.instance_dirs() == [ref] and lay.has_files(ref)
    # A log directory replaced by a link (only root could, but still): refused, never followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lay.remove_instance_dir(ref)
    assert not lay.has_files(ref)
    run.parent.symlink_to(elsewhere)
    with pytest.raises(OSError, match=r"i1: a symbolic link"):
        lay.log_path(ref, "run")
    assert list(elsewhere.iterdir()) == []
