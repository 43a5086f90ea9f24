"""The operator's own tasks are restarted with back-off when they fail (`operator.tasks.supervise`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from discoverd.operator import tasks
from support.wait import async_wait_until


async def test_a_failing_task_is_logged_with_its_traceback_and_restarted_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RecursionError(f"failure {runs}")
        await asyncio.Event().wait()  # then it keeps running

    caplog.set_level(logging.INFO, logger="discoverd.operator.tasks")
    supervisor = asyncio.create_task(tasks.supervise("flaky", flaky, first_delay=0.01, max_delay=0.03))

    async def running() -> bool:
        return runs == 4

    try:
        await async_wait_until(running, timeout=5)
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    failed = [r for r in caplog.records if r.getMessage() == "Task failed, restarting it"]
    assert len(failed) == 3
    assert all(r.exc_info is not None and r.exc_info[0] is RecursionError for r in failed)
    delays = [r.discoverd_fields["retry_in"] for r in failed]  # type: ignore[attr-defined]
    assert delays == [0.01, 0.02, 0.03]


async def test_cancelling_the_supervisor_stops_the_task() -> None:
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    supervisor = asyncio.create_task(tasks.supervise("forever", forever))
    await asyncio.sleep(0)
    supervisor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await supervisor
    assert stopped.is_set()
