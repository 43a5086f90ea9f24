"""Log rotation: generations shift up, the oldest beyond `keep` goes, and no copy is ever missing meanwhile."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from discoverd.agent.scriptlogs import LogLimit, rotate


def test_rotation_shifts_generations_and_keeps_only_keep_copies(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    limit = LogLimit(max_bytes=4, keep=2)
    for generation in range(1, 5):
        log.write_bytes(f"generation {generation}".encode())
        assert rotate(log, limit)
        assert log.read_bytes() == b""
    assert Path(f"{log}.1").read_bytes() == b"generation 4"
    assert Path(f"{log}.2").read_bytes() == b"generation 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.log", "run.log.1", "run.log.2"]
    assert stat.S_IMODE(Path(f"{log}.1").stat().st_mode) == 0o600
    log.write_bytes(b"1234")
    assert not rotate(log, limit)  # at the cap, not over it


def test_no_rotated_copy_is_missing_while_rotating(tmp_path: Path) -> None:
    """A reader listing or tailing the logs while they rotate finds `.1` and `.2` every time it looks."""
    log = tmp_path / "run.log"
    limit = LogLimit(max_bytes=4, keep=2)
    for _ in range(2):
        log.write_bytes(b"0123456789")
        rotate(log, limit)
    copies = [Path(f"{log}.1"), Path(f"{log}.2")]
    missing: list[str] = []
    done = threading.Event()

    def look() -> None:
        while not done.is_set():
            missing.extend(p.name for p in copies if not p.exists())

    reader = threading.Thread(target=look)
    reader.start()
    try:
        for _ in range(500):
            log.write_bytes(b"0123456789")
            rotate(log, limit)
    finally:
        done.set()
        reader.join()
    assert missing == []
