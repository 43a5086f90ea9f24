"""Read one step log of an instance: its history (rotated copies, then the live log), then follow it.

A log is the live file `<log>` and its rotated copies `<log>.1` (newest) to
`<log>.<keep>` (`scriptlogs.rotate`: copy, then truncate in place). History is
read oldest copy first; `tail` is found by scanning backwards, `since` with
the index (`logindex`). Following polls the live file every `poll` seconds:

- it grew: send the new complete lines (a partial line waits for its newline,
  at most `partial_after` seconds);
- it shrank below what was read: it was rotated, and the bytes not read yet
  are at the end of the new `<log>.1` (the copy is complete before the
  truncation): read them from there, then the live log from 0;
- another file now has the name: read the old one to its end, then the new
  one from 0.

Each live line carries `pos` (`<inode>:<offset>:<inode of <log>.1>` just
after it), from which a reader that lost its connection (an agent restart)
asks to continue (`resume`) without a gap or a repeat: a different `<log>.1`
by then means the log was rotated meanwhile, and the rest is read from the
copy first. Files are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from discoverd.agent import logindex
from discoverd.schema import logaccess

__all__ = ["Piece", "read"]

_BLOCK = 64 * 1024
_CHECK_WHILE_BUSY = 0.5
"""Seconds between checks (grant, instance) while a log grows faster than it is read."""


@dataclass(frozen=True)
class Piece:
    line: bytes
    at: float | None
    pos: str | None
    """`<inode>:<offset>:<copy inode>` after the line when it came from the live log."""


Check = Callable[[], Awaitable[logaccess.End | None]]
"""Asked between reads while following: None to go on, or why the stream ends."""


def _open(path: Path) -> int | None:
    return logindex.open_regular(path)


def _lines(data: bytes) -> tuple[list[tuple[bytes, int]], bytes]:
    """Complete lines of `data` with the offset just after each (relative to `data`), and the rest.

    A line longer than MAX_LINE_BYTES is cut into pieces of that size.
    """
    out: list[tuple[bytes, int]] = []
    start = 0
    while True:
        nl = data.find(b"\n", start, start + logaccess.MAX_LINE_BYTES + 1)
        if nl < 0:
            if len(data) - start > logaccess.MAX_LINE_BYTES:
                end = start + logaccess.MAX_LINE_BYTES
                out.append((data[start:end], end))
                start = end
                continue
            return out, data[start:]
        out.append((data[start:nl], nl + 1))
        start = nl + 1


def _tail_start(fds: list[tuple[int, int]], count: int) -> tuple[int, int]:
    """(index into `fds`, offset) where the last `count` lines begin; `fds` oldest first, (fd, size) each."""
    wanted = count + 1  # the newline before the first line wanted
    for index in range(len(fds) - 1, -1, -1):
        fd, size = fds[index]
        end = size
        # A final line without its newline counts as a line.
        if index == len(fds) - 1 and size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            wanted -= 1
        while end > 0:
            begin = max(0, end - _BLOCK)
            block = os.pread(fd, end - begin, begin)
            at = len(block)
            while True:
                at = block.rfind(b"\n", 0, at)
                if at < 0:
                    break
                wanted -= 1
                if wanted == 0:
                    return index, begin + at + 1
            end = begin
    return 0, 0


async def read(
    path: Path,
    keep: int,
    query: logaccess.LogQuery,
    check: Check,
    poll: float = 0.025,
    partial_after: float = 1.0,
) -> AsyncGenerator[Piece | logaccess.End, None]:
    """The pieces `query` asks for, then why it ended (DONE without follow)."""
    if query.resume is not None:
        async for piece in _follow(path, keep, query, check, poll, partial_after, _resume_point(query.resume)):
            yield piece
        return
    names = [logindex.rotated(path, n) for n in range(keep, -1, -1)]  # oldest first, the live log last
    opened = [(fd, name) for name in names if (fd := _open(name)) is not None]
    try:
        sized = [(fd, os.fstat(fd).st_size) for fd, _ in opened]
        first, offset = (0, 0) if query.tail is None else await asyncio.to_thread(_tail_start, sized, query.tail)
        if query.tail == 0:
            first, offset = len(sized), 0
        live_ino, live_end, copy = 0, 0, logindex.copy_id(path)[0]
        if opened and opened[-1][1] == path:
            live_ino, live_end = os.fstat(opened[-1][0]).st_ino, sized[-1][1]
        for index in range(first, len(opened)):
            fd, name = opened[index]
            times = await asyncio.to_thread(logindex.Times.read, name)
            start = offset if index == first else 0
            if query.since is not None and times.start_for(query.since) > start:
                start = _line_start(fd, times.start_for(query.since))
            is_live = name == path
            size = sized[index][1]
            if is_live and query.follow:
                # A last line still being written is left to the follow, which sends it whole.
                size = live_end = max(start, _line_start(fd, size))
            ino = os.fstat(fd).st_ino
            tag = (ino, copy) if is_live else None
            async for piece in _history(fd, start, size, times, query.since, tag):
                yield piece
        if not query.follow:
            yield logaccess.End.DONE
            return
    finally:
        for fd, _ in opened:
            os.close(fd)
    async for piece in _follow(path, keep, query, check, poll, partial_after, (live_ino, live_end, copy)):
        yield piece


async def _history(
    fd: int, start: int, end: int, times: logindex.Times, since: float | None, tag: tuple[int, int] | None
) -> AsyncIterator[Piece]:
    """The complete lines of `fd` between `start` and `end` (a last line without newline too)."""
    rest = b""
    offset = start
    while offset < end:
        data = os.pread(fd, min(_BLOCK, end - offset), offset)
        if not data:
            break
        base = offset - len(rest)
        lines, rest = _lines(rest + data)
        offset += len(data)
        for line, after in lines:
            at = times.at(base + after)
            if since is None or at is None or at >= since:
                yield Piece(line, at, _pos(tag, base + after))
        await asyncio.sleep(0)  # let the agent's other tasks run between blocks
    if rest:
        at = times.at(offset)
        if since is None or at is None or at >= since:
            yield Piece(rest, at, _pos(tag, offset))


def _line_start(fd: int, offset: int) -> int:
    """Where the line holding the byte before `offset` begins (`offset` itself after a newline)."""
    if offset <= 0:
        return 0
    begin = max(0, offset - logaccess.MAX_LINE_BYTES)
    found = os.pread(fd, offset - begin, begin).rfind(b"\n")
    return begin + found + 1 if found >= 0 else (0 if begin == 0 else offset)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _pos(tag: tuple[int, int] | None, offset: int) -> str | None:
    """`<inode>:<offset>:<copy inode>` of a live log's line; None for a line of a copy."""
    return None if tag is None else f"{tag[0]}:{offset}:{tag[1]}"


def _resume_point(resume: str) -> tuple[int, int, int]:
    ino, offset, *copy = resume.split(":")
    return int(ino), int(offset), int(copy[0]) if copy else -1


async def _follow(
    path: Path,
    keep: int,
    query: logaccess.LogQuery,
    check: Check,
    poll: float,
    partial_after: float,
    where: tuple[int, int, int],
) -> AsyncIterator[Piece | logaccess.End]:
    """New lines of the live log from `where` (inode, offset, copy inode or -1), across rotations, until `check` says stop."""
    ino, offset, copy_then = where
    fd: int | None = None
    rest = b""
    rest_since = 0.0

    def lines_of(data: bytes, end: int) -> list[Piece]:
        """The complete lines `data` (ending at offset `end` of the file) completes; keeps the rest."""
        nonlocal rest, rest_since
        base = end - len(data) - len(rest)
        found, rest = _lines(rest + data)
        rest_since = (rest_since or time.monotonic()) if rest else 0.0
        now = time.time()
        return [Piece(line, now, f"{ino}:{base + after}:{copy_seen[0]}") for line, after in found]

    def flush(end: int) -> list[Piece]:
        nonlocal rest, rest_since
        out = [Piece(rest, time.time(), f"{ino}:{end}:{copy_seen[0]}")] if rest else []
        rest, rest_since = b"", 0.0
        return out

    def from_copy(start: int) -> list[Piece]:
        """The bytes from `start` to the end of `<log>.1`: what the live log held before it was emptied."""
        out: list[Piece] = []
        copy = _open(logindex.rotated(path, 1))
        if copy is None:
            return out
        try:
            size = os.fstat(copy).st_size
            at = start
            while at < size:
                data = os.pread(copy, min(_BLOCK, size - at), at)
                if not data:
                    break
                at += len(data)
                out += lines_of(data, at)
            out += flush(at)
        finally:
            os.close(copy)
        return out

    def reopen() -> list[Piece]:
        """Open the file now at `path`; a new file is read from its start."""
        nonlocal fd, ino, offset
        out: list[Piece] = []
        if fd is not None:
            os.close(fd)
        fd = _open(path)
        if fd is None:
            return out
        st = os.fstat(fd)
        if st.st_ino != ino:
            out += flush(offset)
            ino, offset = st.st_ino, 0
        elif st.st_size < offset or copy_then not in (-1, copy_seen[0]):  # rotated while nobody read it
            out += from_copy(offset)
            offset = 0
        return out

    last_check = time.monotonic()
    copy_seen = logindex.copy_id(path)
    try:
        for piece in reopen():
            yield piece
        while True:
            progressed = False
            if fd is None:
                for piece in reopen():
                    yield piece
            if fd is not None:
                size = os.fstat(fd).st_size
                copy = logindex.copy_id(path)
                # Copied and emptied: the rest of what we had is in the new `<log>.1`. It shows as a
                # log shorter than what was read or, when it was written to again as far meanwhile,
                # as a new copy longer than the log (a copy not yet followed by the truncation waits).
                if size < offset or (copy != copy_seen and 0 < size < _size(logindex.rotated(path, 1))):
                    for piece in from_copy(offset):
                        yield piece
                    offset = 0
                    copy_seen = copy
                elif copy != copy_seen and size >= offset and size >= _size(logindex.rotated(path, 1)):
                    pass  # a copy whose truncation has not happened yet, or a log that grew past it: next look
                else:
                    copy_seen = copy
                if size > offset:
                    chunk = os.pread(fd, min(_BLOCK, size - offset), offset)
                    offset += len(chunk)
                    for piece in lines_of(chunk, offset):
                        yield piece
                    progressed = bool(chunk)
                else:
                    try:
                        moved = os.stat(path).st_ino != ino
                    except OSError:
                        moved = False
                    if moved:
                        for piece in reopen():
                            yield piece
                        continue
            if rest and time.monotonic() - rest_since > partial_after:
                for piece in flush(offset):
                    yield piece
            if progressed and time.monotonic() - last_check < _CHECK_WHILE_BUSY:
                continue
            last_check = time.monotonic()
            end = await check()
            if end is logaccess.End.REMOVED and progressed:
                end = None  # not before everything the instance wrote has been sent
            if end is not None:
                for piece in flush(offset):
                    yield piece
                yield end
                return
            if not progressed:
                await asyncio.sleep(poll)
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
