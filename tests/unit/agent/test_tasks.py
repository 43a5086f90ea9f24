"""tasks.supervise: a long-running task that raises is logged with its traceback and run again, with back-off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import pytest

from discoverd.agent import tasks
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
    caplog.set_level(logging.ERROR, logger="discoverd.agent.tasks")
    runs = 0
    healthy = asyncio.Event()

    async def writer() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ValueError(f"bad value number {runs}")
        healthy.set()
        await asyncio.Event().wait()  # runs on, as a status writer does

    task = asyncio.create_task(tasks.supervise("status writer", writer, first_delay=0.02, max_delay=1.0))
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
    caplog.set_level(logging.ERROR, logger="discoverd.agent.tasks")

    async def always_broken() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    task = asyncio.create_task(tasks.supervise("etcd watch", always_broken, first_delay=0.01, max_delay=0.04))
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
    caplog.set_level(logging.ERROR, logger="discoverd.agent.tasks")
    runs = 0

    async def reconcile() -> None:
        nonlocal runs
        runs += 1

    async def ran_thrice() -> bool:
        return runs >= 3

    task = asyncio.create_task(tasks.supervise("reconcile", reconcile, first_delay=0.01))
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

    task = asyncio.create_task(tasks.supervise("etcd watch", work))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
