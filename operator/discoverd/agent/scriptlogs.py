"""The log of a script: capped, rotated while it runs, opened with a header, never through a link.

Run, step and health logs are created 0600 in the agent's own log directory
(`logfiles.open_append`) and capped by `LogLimit`: copy-and-truncate rotation
(`logfiles.rotate`), checked before each step and every `LogLimit.interval`
while a script runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from discoverd import logs
from discoverd.agent import logfiles

__all__ = ["LogLimit", "open_log", "rotate", "rotating"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogLimit:
    """How big a run, step or health log may grow before it is rotated, and how many rotated copies stay."""

    max_bytes: int = 10 * 2**20
    keep: int = 2
    interval: float = 10.0
    """Seconds between two checks of a live run script's log (step logs are checked at every step)."""


def rotate(path: Path, limit: LogLimit) -> bool:
    """Rotate the log `path` if it is over the cap (see `logfiles.rotate`: copy and truncate, no link followed)."""
    return logfiles.rotate(path, limit.max_bytes, limit.keep)


@contextlib.asynccontextmanager
async def rotating(path: Path, limit: LogLimit) -> AsyncIterator[None]:
    """While in the block, rotate `path` whenever it outgrows the cap (checked every `limit.interval`)."""

    async def keep() -> None:
        while True:
            await asyncio.sleep(limit.interval)
            try:
                await asyncio.to_thread(rotate, path, limit)
            except OSError as error:
                log.warning("Failed to rotate a log", extra=logs.kv(path=str(path), reason=str(error)))

    task = asyncio.create_task(keep(), name=f"rotate {path}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def open_log(log_path: Path, argv: list[str], cwd: Path, limit: LogLimit) -> BinaryIO:
    """Create `cwd`, open the step's log for appending (rotated first if over the cap) and write a header."""
    cwd.mkdir(parents=True, exist_ok=True)
    rotate(log_path, limit)
    log = logfiles.open_append(log_path)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log.write(f"--- {now} discoverd: running {argv!r} in {cwd}\n".encode())
    log.flush()
    return log
