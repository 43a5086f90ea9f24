"""The reconciler's work queue (`operator.workqueue`): de-duplication, one worker per key, back-off per key."""

from __future__ import annotations

import asyncio
import contextlib

from discoverd.operator import workqueue
from support.wait import async_wait_until


async def _drain(queue: workqueue.WorkQueue[str]) -> list[str]:
    """Every key ready now, each marked done."""
    out = []
    while len(queue):
        key = await queue.get()
        queue.done(key)
        out.append(key)
    return out


async def test_a_key_added_several_times_is_handed_out_once() -> None:
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    for key in ("a", "a", "b", "a", "b"):
        queue.add(key)
    assert await _drain(queue) == ["a", "b"]


async def test_a_key_in_flight_is_not_handed_to_a_second_worker_but_processed_again_after() -> None:
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")  # changed again while a worker has it
    queue.add("a")
    assert len(queue) == 0
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # let it wait
    assert not second.done()
    queue.done("a")
    assert await asyncio.wait_for(second, 5) == "a"  # once more, after the first worker
    queue.done("a")
    assert len(queue) == 0


async def test_workers_never_process_one_key_at_once_and_miss_no_change() -> None:
    queue: workqueue.WorkQueue[int] = workqueue.WorkQueue()
    busy: set[int] = set()
    seen: dict[int, int] = {}  # key -> the last "version" a worker saw when it started
    latest: dict[int, int] = {}
    overlaps = 0

    async def worker() -> None:
        nonlocal overlaps
        while True:
            key = await queue.get()
            if key in busy:
                overlaps += 1
            busy.add(key)
            seen[key] = latest[key]
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            busy.discard(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    try:
        for version in range(200):
            key = version % 5
            latest[key] = version
            queue.add(key)
            await asyncio.sleep(0)

        async def settled() -> bool:
            return seen == latest and not busy and not len(queue)

        await async_wait_until(settled, timeout=5)
    finally:
        for w in workers:
            w.cancel()
        for w in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
    assert overlaps == 0
    assert seen == latest  # every key was processed after its last change


async def test_a_worker_lets_other_tasks_run_between_keys_even_with_keys_queued() -> None:
    """Keys that need no I/O must not hold the event loop (the etcd watch, the lease) for a whole queue."""
    queue: workqueue.WorkQueue[int] = workqueue.WorkQueue()
    for i in range(1000):
        queue.add(i)
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    try:
        before = turns
        while len(queue):
            queue.done(await queue.get())  # a worker whose keys all need nothing awaited
        assert turns - before >= 999
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_back_off_doubles_per_failure_up_to_the_cap_and_forget_resets_it() -> None:
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue(base_delay=0.01, max_delay=0.5)
    delays = [queue.add_rate_limited("a") for _ in range(9)]
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5]
    assert queue.failures("a") == 9
    assert queue.delay("b") == 0.01  # per key
    queue.forget("a")
    assert queue.failures("a") == 0 and queue.delay("a") == 0.01
    queue.close()


async def test_a_rate_limited_key_comes_back_after_its_delay() -> None:
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue(base_delay=0.05)
    queue.add_rate_limited("a")
    assert len(queue) == 0  # not at once
    assert await asyncio.wait_for(queue.get(), 5) == "a"


async def test_a_delayed_add_keeps_the_earliest_time_and_an_add_meanwhile_is_not_doubled() -> None:
    queue: workqueue.WorkQueue[str] = workqueue.WorkQueue()
    queue.add_after("a", 60)
    queue.add_after("a", 0.01)  # earlier: wins
    queue.add_after("a", 30)  # later: ignored
    assert await asyncio.wait_for(queue.get(), 5) == "a"
    queue.done("a")
    queue.add_after("b", 0.01)
    queue.add("b")  # now and after the delay: handed out once, then once more when due
    assert await queue.get() == "b"
    queue.done("b")
    assert await asyncio.wait_for(queue.get(), 5) == "b"
    queue.done("b")
    assert len(queue) == 0
    queue.close()


async def test_key_locks_serialise_one_key_and_keep_nothing_once_released() -> None:
    locks: workqueue.KeyLocks[str] = workqueue.KeyLocks()
    inside: list[str] = []
    overlap: list[str] = []

    async def work(key: str) -> None:
        async with locks.hold(key):
            if key in inside:
                overlap.append(key)
            inside.append(key)
            await asyncio.sleep(0.001)
            inside.remove(key)

    await asyncio.gather(*(work(k) for k in ["a", "b"] * 20))
    assert overlap == []
    # 10,000 keys reconciled once each, as in a fleet that churns: no lock is left behind.
    await asyncio.gather(*(work(f"k{i}") for i in range(10_000)))
    assert len(locks) == 0


async def test_a_key_lock_survives_while_someone_waits_for_it() -> None:
    locks: workqueue.KeyLocks[str] = workqueue.KeyLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first in")
            await release.wait()
        order.append("first out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("second in")

    one = asyncio.create_task(first())
    await asyncio.sleep(0.01)
    assert order == ["first in"]
    two = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert order == ["first in"] and len(locks) == 1
    release.set()
    await asyncio.gather(one, two)
    assert order.index("second in") > 0 and len(locks) == 0
