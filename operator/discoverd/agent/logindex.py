"""When each byte of a script's log was first seen: the index behind `discoverd logs --timestamps` and `--since`.

Scripts write their logs themselves (the agent is not in the path: a run
script keeps logging while the agent restarts), so no line carries a time of
its own. Instead the agent samples each log's size every `interval` (1 s)
and, when it grew, appends `<size> <unix time>` to an index beside it
(`<log>.idx`, 0600). A line ending at offset `e` was first seen at the time
of the first entry whose size is at least `e`: an upper bound, late by at
most the interval; a line newer than the last entry gets the log's mtime.
When a log shrinks it was rotated (`scriptlogs.rotate`: copied to `<log>.1`, then
emptied): the index moves along to `<log>.1.idx` (older ones shift up, as the
copies do) and a new one starts.

Lines a reader gets while following live are stamped with the time the agent
read them instead (within the follow poll interval of the write).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from discoverd import logs

__all__ = ["Sampler", "Times", "copy_id", "index_path", "open_regular", "rotated"]

log = logging.getLogger(__name__)

_MAX_INDEX_BYTES = 4 * 2**20
"""An index past this (a log growing every second for weeks without rotation) is started anew."""


def open_regular(path: Path, flags: int = os.O_RDONLY) -> int | None:
    """A file descriptor on `path` if it is a regular file reached without following a final link.

    None otherwise: missing, a link, a FIFO (which would block the agent), a device. The log
    directory is the agent's own (`logfiles`), but a reader of it never relies on that alone.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def rotated(path: Path, n: int) -> Path:
    """The `n`th rotated copy of a log (`scriptlogs.rotate` names them `<path>.<n>`; 0 is the live log)."""
    return path if n == 0 else Path(f"{path}.{n}")


def index_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".idx")


@dataclass
class Times:
    """The index of one log file: when each offset was first seen."""

    sizes: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    mtime: float | None = None

    @classmethod
    def read(cls, log_path: Path) -> Times:
        """The index of `log_path` (empty when there is none or it is unreadable) and the log's mtime."""
        times = cls()
        with contextlib.suppress(OSError):
            times.mtime = log_path.stat().st_mtime
        fd = open_regular(index_path(log_path))
        if fd is None:
            return times
        try:
            text = os.pread(fd, _MAX_INDEX_BYTES, 0)
        except OSError:
            return times
        finally:
            os.close(fd)
        for line in text.splitlines():
            parts = line.split()
            try:
                size, at = int(parts[0]), float(parts[1])
            except (IndexError, ValueError):
                continue
            if times.sizes and size <= times.sizes[-1]:
                continue  # not from one file's growth: ignore rather than misplace
            times.sizes.append(size)
            times.times.append(at)
        return times

    def at(self, end: int) -> float | None:
        """When the byte before offset `end` was first seen (an upper bound), if known."""
        i = bisect.bisect_left(self.sizes, end)
        return self.times[i] if i < len(self.times) else self.mtime

    def start_for(self, since: float) -> int:
        """An offset before which everything was seen before `since` (0 when unknown)."""
        i = bisect.bisect_left(self.times, since)
        return self.sizes[i - 1] if i > 0 else 0


def _append(path: Path, size: int, now: float) -> None:
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if fd is None:
        raise OSError(f"{path} is not a regular file")
    try:
        os.write(fd, f"{size} {now:.3f}\n".encode())
    finally:
        os.close(fd)


def _shift(log_path: Path, keep: int) -> None:
    """The log was rotated: its index becomes `<log>.1.idx`, older indexes shift up like the copies."""
    for n in range(keep - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(index_path(rotated(log_path, n)), index_path(rotated(log_path, n + 1)))
    target = index_path(rotated(log_path, 1)) if keep > 0 else None
    with contextlib.suppress(FileNotFoundError):
        if target is None:
            index_path(log_path).unlink()
        else:
            os.replace(index_path(log_path), target)


def _last_size(log_path: Path) -> int:
    times = Times.read(log_path)
    return times.sizes[-1] if times.sizes else 0


def copy_id(path: Path) -> tuple[int, int]:
    """Identifies `<log>.1`: a new one (rotation) has a new inode or mtime."""
    try:
        st = rotated(path, 1).stat()
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


class Sampler:
    """Samples the size of logs and keeps their indexes; one per agent, `sample` called every interval."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._seen: dict[Path, tuple[int, tuple[int, int]]] = {}

    def sample(self, paths: Iterable[Path], now: float | None = None) -> None:
        """Look at each log once: note growth, follow a rotation. Logs not named are forgotten."""
        now = time.time() if now is None else now
        seen: dict[Path, tuple[int, tuple[int, int]]] = {}
        for path in paths:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            copy = copy_id(path)
            before = self._seen.get(path)
            last = _last_size(path) if before is None else before[0]
            # A rotation shows as a smaller log or, should it have grown back past the last size
            # within one interval, as a new `<log>.1`.
            was_rotated = size < last or (before is not None and before[1] != copy and copy != (0, 0))
            try:
                if was_rotated:
                    _shift(path, self.keep)
                    last = 0
                if size > last:
                    idx = index_path(path)
                    with contextlib.suppress(FileNotFoundError):
                        if idx.stat().st_size > _MAX_INDEX_BYTES:
                            idx.unlink()
                    _append(idx, size, now)
            except OSError as error:
                log.warning("Failed to index a log", extra=logs.kv(path=str(path), reason=str(error)))
            seen[path] = (size, copy)
        self._seen = seen
