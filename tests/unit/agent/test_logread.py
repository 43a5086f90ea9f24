"""Reading a step log and its rotated copies (agent/logread.py) and the index of when bytes were seen (logindex)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from discoverd.agent import logindex, logread, scriptlogs
from discoverd.schema import logaccess

LIMIT = scriptlogs.LogLimit(max_bytes=1, keep=2)


def write(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def read(path: Path, **query: object) -> tuple[list[str], logaccess.End | None]:
    async def never() -> logaccess.End | None:
        return None

    got: list[str] = []
    end = None
    async for piece in logread.read(path, LIMIT.keep, logaccess.LogQuery.model_validate(query), never):
        if isinstance(piece, logaccess.End):
            end = piece
        else:
            got.append(piece.line.decode())
    return got, end


def rotated_log(tmp_path: Path) -> Path:
    """run.log.2: 0-9, run.log.1: 10-19, run.log: 20-24 (as scriptlogs.rotate leaves them)."""
    path = tmp_path / "run.log"
    for first in (0, 10):
        write(path, *(f"line {i:02}" for i in range(first, first + 10)))
        assert scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=LIMIT.keep))
    write(path, *(f"line {i:02}" for i in range(20, 25)))
    return path


async def test_everything_is_read_oldest_copy_first(tmp_path: Path) -> None:
    path = rotated_log(tmp_path)
    got, end = await read(path)
    assert got == [f"line {i:02}" for i in range(25)]
    assert end is logaccess.End.DONE


@pytest.mark.parametrize("tail", [0, 1, 3, 6, 17, 100])
async def test_tail_counts_back_across_the_copies(tmp_path: Path, tail: int) -> None:
    path = tmp_path / "run.log"
    write(path, *(f"a{i}" for i in range(10)))
    scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=2))
    write(path, *(f"b{i}" for i in range(10)))
    scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=2))
    write(path, *(f"c{i}" for i in range(5)))
    everything = [f"{c}{i}" for c, n in (("a", 10), ("b", 10), ("c", 5)) for i in range(n)]
    got, _ = await read(path, tail=tail)
    assert got == (everything[-tail:] if tail else [])


async def test_a_last_line_without_newline_counts(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_bytes(b"one\ntwo\nthree")
    assert (await read(path, tail=2))[0] == ["two", "three"]


async def test_a_long_line_comes_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_bytes(b"x" * (logaccess.MAX_LINE_BYTES + 10) + b"\nshort\n")
    got, _ = await read(path)
    assert [len(g) for g in got] == [logaccess.MAX_LINE_BYTES, 10, 5]


async def test_follow_reads_on_after_copy_and_truncate_and_resumes_by_position(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    write(path, "first")
    stop = asyncio.Event()

    async def check() -> logaccess.End | None:
        return logaccess.End.REMOVED if stop.is_set() else None

    got: list[logread.Piece] = []

    async def follow() -> None:
        async for piece in logread.read(path, 2, logaccess.LogQuery(follow=True), check, poll=0.01):
            if isinstance(piece, logread.Piece):
                got.append(piece)

    task = asyncio.create_task(follow())
    await _until(lambda: len(got) == 1)
    write(path, "before rotation")
    scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=2))  # copied to run.log.1 and emptied...
    write(path, "after")  # ...and written again before the reader looked
    await _until(lambda: len(got) == 3)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [p.line for p in got] == [b"first", b"before rotation", b"after"]
    # A reader that lost its connection after "first" continues from its position: nothing twice, nothing lost.
    assert got[0].pos is not None
    resumed: list[bytes] = []
    async for piece in logread.read(path, 2, logaccess.LogQuery(follow=True, resume=got[0].pos), check, poll=0.01):
        if isinstance(piece, logread.Piece):
            resumed.append(piece.line)
    assert resumed == [b"before rotation", b"after"]


async def _until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_index_dates_each_line_and_moves_with_the_rotation(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    sampler = logindex.Sampler(keep=2)
    write(path, "a")
    sampler.sample([path], now=100.0)
    write(path, "b")
    sampler.sample([path], now=101.0)
    sampler.sample([path], now=102.0)  # no growth: no entry
    times = logindex.Times.read(path)
    assert (times.at(2), times.at(4)) == (100.0, 101.0)
    assert times.start_for(100.5) == 2  # "a" was seen before 100.5
    scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=2))
    write(path, "c")
    sampler.sample([path], now=103.0)
    assert logindex.Times.read(logindex.rotated(path, 1)).at(4) == 101.0  # the copy kept its dates
    assert logindex.Times.read(path).at(2) == 103.0
    assert oct(os.stat(logindex.index_path(path)).st_mode & 0o777) == "0o600"


def test_a_rotation_is_seen_even_when_the_log_grew_back_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    sampler = logindex.Sampler(keep=2)
    write(path, "short")
    sampler.sample([path], now=1.0)
    scriptlogs.rotate(path, scriptlogs.LogLimit(max_bytes=1, keep=2))
    write(path, "a longer line than before")
    sampler.sample([path], now=2.0)
    assert logindex.Times.read(path).at(5) == 2.0
    assert logindex.Times.read(logindex.rotated(path, 1)).at(6) == 1.0


async def test_a_log_that_is_a_fifo_or_an_index_linked_to_a_device_is_not_read(tmp_path: Path) -> None:
    """A run script that can write beside its logs cannot make a reader (or the agent) block or read elsewhere."""
    path = tmp_path / "run.log"
    os.mkfifo(path)
    assert await asyncio.wait_for(read(path), 5) == ([], logaccess.End.DONE)
    path.unlink()
    write(path, "mine")
    logindex.index_path(path).symlink_to("/dev/zero")
    assert await asyncio.wait_for(read(path), 5) == (["mine"], logaccess.End.DONE)
    logindex.Sampler(keep=2).sample([path])  # refuses to write through the link, and returns
    assert logindex.index_path(path).is_symlink()
    (tmp_path / "secret").write_text("do not read\n")
    path.unlink()
    path.symlink_to(tmp_path / "secret")
    assert await asyncio.wait_for(read(path), 5) == ([], logaccess.End.DONE)


async def test_a_line_being_written_when_a_follow_starts_comes_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_bytes(b"done\nhalf a l")
    stop = asyncio.Event()

    async def check() -> logaccess.End | None:
        return logaccess.End.REMOVED if stop.is_set() else None

    got: list[bytes] = []

    async def follow() -> None:
        async for piece in logread.read(path, 2, logaccess.LogQuery(follow=True), check, poll=0.01):
            if isinstance(piece, logread.Piece):
                got.append(piece.line)

    task = asyncio.create_task(follow())
    await _until(lambda: got == [b"done"])
    append(path, b"ine\n")
    await _until(lambda: len(got) == 2)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert got == [b"done", b"half a line"]
