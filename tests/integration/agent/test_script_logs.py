"""Run, step and health logs: created 0600, capped and rotated (copy and truncate), also while a script writes."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from support.wait import wait_until

CAP = 64 * 1024

CHATTY = """
import sys, time
n = 0
while True:
    n += 1
    sys.stdout.write(f"line {n:08d} " + "x" * 1000 + "\\n")
    sys.stdout.flush()
    if n % 50 == 0:
        open('written', 'w').write(str(n))
    time.sleep(0.002)
"""

HEALTH = "import sys\nsys.stdout.write('h' * 20000 + '\\n')"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_logs_are_private_capped_and_rotated_while_the_script_writes(node: Any) -> None:
    node.version(
        "chatty",
        "1.0",
        install_script=node.py("print('installed')"),
        run_script=node.py(CHATTY),
        health_check=node.py(HEALTH, interval=0.3, timeout=10, failure_threshold=100),
        min_healthy_seconds=0.3,
    )
    node.instance("chatty", "i1", "1.0")
    node.server(("chatty", "i1"))
    node.agent("--script-log-max-bytes", str(CAP), "--script-log-keep", "2", "--script-log-check-interval", "0.2")
    logs = node.log_dir("chatty", "i1")
    run, health = logs / "run.log", logs / "health.log"
    written = node.instance_dir("chatty", "i1") / "written"
    # Written well past three times the cap: rotated at least twice.
    wait_until(lambda: written.exists() and int(written.read_text() or 0) > 250, 30, what="250 kB written")
    wait_until(lambda: Path(f"{run}.2").exists(), 15, what="run.log rotated twice")
    wait_until(lambda: Path(f"{health}.1").exists(), 15, what="health.log rotated")
    for path in (run, Path(f"{run}.1"), Path(f"{run}.2"), logs / "install.log", health, Path(f"{health}.1")):
        assert _mode(path) == 0o600, f"{path} is {_mode(path):o}"
    assert not Path(f"{run}.3").exists()  # keep 2
    # Bounded while the output keeps growing: at most the live log and 2 copies, each the cap plus what
    # the script writes between two size checks (~100 kB at this rate), so under 1 MB however much was
    # written. Measured once 3 MB have been written, so a late check cannot decide the outcome.
    wait_until(lambda: int(written.read_text() or 0) > 3000, 60, what="3 MB written")
    on_disk = sum(p.stat().st_size for p in logs.glob("run.log*"))
    total = int(written.read_text()) * 1014
    assert on_disk < 1_000_000 < total, (on_disk, total)
    assert not Path(f"{run}.3").exists()
    # The script's writes after a truncation land at the start of the emptied file (O_APPEND): no hole
    # of NUL bytes, and the newest line is in run.log.
    data = run.read_bytes()
    assert b"\0" not in data
    last = int(written.read_text())
    wait_until(lambda: f"line {last:08d}".encode() in b"".join(p.read_bytes() for p in logs.glob("run.log*")))
    # The run goes on, never restarted by the rotation.
    status = node.status("chatty", "i1")
    assert status is not None and status["phase"] == "Running" and status.get("restarts", 0) == 0
