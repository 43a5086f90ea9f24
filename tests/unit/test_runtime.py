"""The runtime kit: back-off with jitter, the resync-then-watch loop, supervised tasks (the agent's, the
operator's and the controller's one copy of each)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re

import pytest

from discoverd import runtime
from discoverd.errors import Compacted, StoreUnavailable
from support.wait import async_wait_until


def restart_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    found = []
    for record in caplog.records:
        fields = getattr(record, "discoverd_fields", {})
        if "restart_in" in fields:
            found.append(float(re.sub("s$", "", str(fields["restart_in"]))))
    return found


async def test_a_crashing_task_is_restarted_with_growing_delays_and_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="discoverd.runtime")
    runs = 0
    healthy = asyncio.Event()

    async def writer() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ValueError(f"bad value number {runs}")
        healthy.set()
        await asyncio.Event().wait()  # runs on, as a status writer does

    task = asyncio.create_task(runtime.supervise("status writer", writer, first_delay=0.02, max_delay=1.0))
    try:
        await asyncio.wait_for(healthy.wait(), 10)
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert runs == 5
    crashes = [r for r in caplog.records if r.getMessage() == "Crashed task"]
    assert len(crashes) == 4
    assert all(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in crashes)
    assert "bad value number 1" in caplog.text and "Traceback" in caplog.text
    delays = restart_delays(caplog)
    # 0.02 doubling, each shortened by at most 25 % jitter: never a fixed delay
    assert all(0.75 * 0.02 * 2**i <= d <= 0.02 * 2**i + 0.0005 for i, d in enumerate(delays)), delays
    assert delays[3] > 2 * delays[0]


async def test_the_back_off_stops_growing_at_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="discoverd.runtime")

    async def always_broken() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    task = asyncio.create_task(runtime.supervise("etcd watch", always_broken, first_delay=0.01, max_delay=0.04))
    try:
        await async_wait_until(lambda: _count(caplog, 6), timeout=10)  # reaches the cap after 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert max(restart_delays(caplog)) <= 0.04 + 0.0005


async def _count(caplog: pytest.LogCaptureFixture, n: int) -> bool:
    return len(restart_delays(caplog)) >= n


async def test_a_task_that_returns_is_started_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="discoverd.runtime")
    runs = 0

    async def reconcile() -> None:
        nonlocal runs
        runs += 1

    async def ran_thrice() -> bool:
        return runs >= 3

    task = asyncio.create_task(runtime.supervise("reconcile", reconcile, first_delay=0.01))
    try:
        await async_wait_until(ran_thrice, timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert any(r.getMessage() == "Ended task unexpectedly" for r in caplog.records)


async def test_cancelling_the_supervisor_cancels_the_task_and_is_not_restarted() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(runtime.supervise("etcd watch", work))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


def test_back_off_doubles_to_its_cap_with_jitter_and_starts_over_after_reset() -> None:
    b = runtime.Backoff(first=1.0, cap=8.0, jitter=0.25)
    waits = [b.next() for _ in range(6)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.75 * c <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert len({round(w, 9) for w in waits[3:]}) > 1, "jittered: never the same wait over and over"
    b.reset()
    assert 0.75 <= b.next() <= 1.0


def test_back_off_counts_its_tries_and_takes_a_seeded_rng() -> None:
    a, b = (runtime.Backoff(first=1.0, cap=8.0, rng=random.Random(7)) for _ in range(2))
    assert [a.next() for _ in range(4)] == [b.next() for _ in range(4)], "the same seed, the same waits"
    assert a.tries == 4
    a.reset()
    assert a.tries == 0 and 0.75 <= a.next() <= 1.0 and a.tries == 1


def test_every_component_waits_the_same_for_etcd() -> None:
    b = runtime.Backoff()
    assert (b.first, b.cap, b.jitter) == (runtime.RETRY_FIRST, runtime.RETRY_CAP, runtime.JITTER) == (0.5, 5.0, 0.25)


async def test_resync_reads_again_after_compaction_at_once_and_after_an_outage_with_back_off() -> None:
    lost: list[bool] = []
    failures: list[tuple[str, float]] = []
    r = runtime.Resync(
        "test",
        on_lost=lambda: lost.append(True),
        on_failure=lambda why, wait: failures.append((why, wait)),
        backoff=runtime.Backoff(first=0.05, cap=0.05),
    )
    cycles = 0
    followed = asyncio.Event()
    seen: list[tuple[bool, str | None]] = []

    async def cycle() -> None:
        nonlocal cycles
        cycles += 1
        seen.append((r.current, r.failure))
        if cycles == 1:
            r.synced()
            raise Compacted(5, 9)
        if cycles == 2:
            raise StoreUnavailable("etcd at 127.0.0.1:1 is unreachable")  # before any read: no new loss
        r.synced()
        followed.set()
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(r.run(cycle))
    try:
        await asyncio.wait_for(followed.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert cycles == 3
    assert seen == [(False, None), (False, None), (False, "etcd at 127.0.0.1:1 is unreachable")]
    assert lost == [True], "a loss is counted once, when a current watch is lost"
    assert [why for why, _ in failures] == ["etcd at 127.0.0.1:1 is unreachable"], (
        "told of the outage, not of compaction"
    )
    assert 0.05 * 0.75 <= failures[0][1] <= 0.05, "with the wait before the next read"
    assert r.lost == 1 and r.current and r.failure is None and r.last_heard is not None
    assert loop.time() - started >= 0.05 * 0.75, "the outage was waited out with the back-off"


async def test_resync_lets_a_bug_through_to_its_supervisor() -> None:
    r = runtime.Resync("test")

    async def cycle() -> None:
        r.synced()
        raise KeyError("a value nobody foresaw")

    with pytest.raises(KeyError):
        await asyncio.wait_for(r.run(cycle), 5)
