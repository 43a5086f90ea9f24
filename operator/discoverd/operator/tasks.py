"""The operator's own long-running tasks, kept alive: an unexpected exception restarts the task with back-off.

The etcd watch and the work queue's workers each catch what they expect
(etcd down, the API failing, a bad value) and carry on. Anything else is a
bug or a value nobody foresaw: `supervise` logs it with its traceback and
starts the task again after a delay that doubles up to `MAX_DELAY` (and
starts over once the task has run for `HEALTHY_AFTER` seconds), so the
operator never exits because of a value, and never spins on one either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from discoverd import logs

__all__ = ["FIRST_DELAY", "HEALTHY_AFTER", "MAX_DELAY", "supervise"]

logger = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0


async def supervise(
    name: str,
    task: Callable[[], Awaitable[None]],
    *,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    healthy_after: float = HEALTHY_AFTER,
) -> None:
    """Run `task()` until cancelled, restarting it with back-off whenever it raises or returns."""
    loop = asyncio.get_running_loop()
    delay = first_delay
    while True:
        started = loop.time()
        error: Exception | None = None
        try:
            await task()
        except asyncio.CancelledError:
            raise
        except Exception as caught:
            error = caught
        if loop.time() - started >= healthy_after:
            delay = first_delay
        if error is not None:
            logger.error("Task failed, restarting it", exc_info=error, extra=logs.kv(task=name, retry_in=delay))
        else:
            logger.warning("Task ended, restarting it", extra=logs.kv(task=name, retry_in=delay))
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
