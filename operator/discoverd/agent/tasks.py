"""Keep the agent's long-running tasks alive: a crash is logged with its traceback, then a restart.

The status writer, the etcd watch and the reconcile loop each run forever. An
unexpected exception in one of them is a bug (or a value nobody thought of);
it must not end the agent, and the agent must not run on without it (without
the status writer its lease lapses and the server looks offline). `supervise`
runs such a task again after a back-off that doubles from `first_delay` to
`max_delay` (with up to 25 % random jitter), and starts again from
`first_delay` once a run has lasted `reset_after` seconds. Cancellation is
never caught: stopping the agent cancels the supervisor with its task.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn

from discoverd import logs

__all__ = ["supervise"]

log = logging.getLogger(__name__)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[object]],
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    reset_after: float = 60.0,
    context: Mapping[str, object] | None = None,
) -> NoReturn:
    """Run `run()` forever: after an exception (or a return, which is a bug too) wait, then run it again."""
    loop = asyncio.get_running_loop()
    delay = first_delay
    while True:
        started = loop.time()
        try:
            await run()
            message, error = "Ended task unexpectedly", None
        except Exception as crash:
            message, error = "Crashed task", crash
        if loop.time() - started >= reset_after:
            delay = first_delay
        wait = delay * (1 - random.uniform(0, 0.25))
        log.error(
            message,
            exc_info=error,
            extra=logs.kv(**(context or {}), task=name, restart_in=f"{wait:.3f}s"),
        )
        await asyncio.sleep(wait)
        delay = min(delay * 2, max_delay)
