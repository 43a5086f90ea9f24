"""The reconciler's workers: a key that fails, however it fails, never stops the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from discoverd.errors import StoreUnavailable
from discoverd.operator import reconciler
from discoverd.schema import keys
from discoverd.store import typed
from support.wait import async_wait_until

BAD = keys.Key(keys.Kind.INSTANCE, service="web", instance="bad")
FLAKY = keys.Key(keys.Kind.INSTANCE, service="web", instance="flaky")
GOOD = keys.Key(keys.Kind.INSTANCE, service="web", instance="good")


class _Prefix:
    prefix = "/p"


class Recording(reconciler.Reconciler):
    """The real queue and workers; syncing a key is replaced by recording it (and failing for some)."""

    def __init__(self) -> None:
        super().__init__(_Prefix(), None)  # type: ignore[arg-type]  # no store or API: sync_* are replaced
        self.queue.base_delay = 0.01
        self.synced: list[keys.Key] = []
        self.statuses: list[keys.Key] = []
        self.flaky_failures = 2

    async def sync_key(self, key: keys.Key, **_: Any) -> reconciler.Outcome:
        if key == BAD:
            raise RecursionError("a value nobody foresaw")
        if key == FLAKY and self.flaky_failures:
            self.flaky_failures -= 1
            raise StoreUnavailable("etcd is down")
        self.synced.append(key)
        return reconciler.Outcome(reconciler.decision.Skip(), None)

    async def sync_status(self, key: keys.Key) -> None:
        self.statuses.append(key)


async def test_an_unexpected_failure_is_logged_once_with_its_traceback_and_retried_with_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="discoverd.operator.reconciler")
    r = Recording()
    workers = [asyncio.create_task(r.work()) for _ in range(2)]
    try:
        r.enqueue(BAD, seen=typed.Entry("/p/bad", b"", 1))
        r.enqueue(FLAKY)
        r.enqueue(GOOD, seen=None)

        async def progressed() -> bool:
            return GOOD in r.synced and FLAKY in r.synced and r.queue.failures(BAD) >= 3

        await async_wait_until(progressed, timeout=10)
    finally:
        for w in workers:
            w.cancel()
        for w in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        r.queue.close()
    assert BAD not in r.synced
    assert r.queue.failures(FLAKY) == 0  # forgotten once it succeeded
    tracebacks = [rec for rec in caplog.records if rec.exc_info is not None]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[0] is RecursionError  # type: ignore[index]
    assert "/p/services/web/instances/bad/config/details" in str(tracebacks[0].discoverd_fields)  # type: ignore[attr-defined]
    again = [rec for rec in caplog.records if rec.getMessage().startswith("Failed to mirror key again")]
    assert again and all(rec.exc_info is None for rec in again)


async def test_a_status_only_change_does_not_sync_the_configuration() -> None:
    r = Recording()
    worker = asyncio.create_task(r.work())
    try:
        r.enqueue(GOOD, config=False)

        async def done() -> bool:
            return GOOD in r.statuses

        await async_wait_until(done, timeout=5)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert r.synced == []
