"""The runtime kit: the asyncio loops that keep the agent, the operator and the controller alive.

Every long-running part of discoverd does one of three things, and each has
one home here (as Kopf keeps its own in `aiokits`):

- **Back off** (`Backoff`): wait before trying again, doubling from `first`
  to `cap`, each wait shortened by up to `jitter` at random so that many
  clients that failed together (a fleet of agents after an etcd outage) do
  not retry in lockstep; `reset()` after a success.
- **Resync, then watch** (`Resync`): read everything at a revision, follow the
  watch from the next one; on a compacted watch read again at once, on an
  unreachable store wait (`Backoff`) and read again. `Resync.current` is the
  one readiness signal (true from a full read until the stream is lost) and
  `last_heard` the stall detector's input (store/watch.py ends a stream that
  stays silent past its progress deadline, which lands here as a lost watch).
- **Supervise** (`supervise`): run a task forever; an exception (or a return,
  a bug too) is logged with its traceback and the task starts again after a
  back-off, so a value nobody foresaw never ends a process nor spins it.

The defaults are named once, below, and listed in docs/configuration.md.
This module imports only `logs` and `errors`: the agent, the operator and the
controller import it, never the other way round.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn

from discoverd import logs
from discoverd.errors import Compacted, StoreUnavailable

__all__ = [
    "JITTER",
    "RETRY_CAP",
    "RETRY_FIRST",
    "TASK_CAP",
    "TASK_FIRST",
    "TASK_HEALTHY_AFTER",
    "Backoff",
    "Resync",
    "supervise",
]

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
"""Seconds before the first retry of an etcd (or API server) call that found it unreachable."""
RETRY_CAP = 5.0
"""The longest wait between two such retries: an outage is noticed over within 5 s of its end."""
TASK_FIRST = 0.5
"""Seconds before a crashed task is started again the first time."""
TASK_CAP = 30.0
"""The longest wait before a task that keeps crashing is started again."""
TASK_HEALTHY_AFTER = 60.0
"""A task that ran this long before it crashed starts again after `TASK_FIRST`, not its last delay."""
JITTER = 0.25
"""Every wait is shortened by a random fraction up to this, so clients that failed together spread out."""


class Backoff:
    """Doubling waits from `first` to `cap`, each shortened by up to `jitter` at random."""

    def __init__(
        self,
        first: float = RETRY_FIRST,
        cap: float = RETRY_CAP,
        jitter: float = JITTER,
        rng: random.Random | None = None,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = min(max(jitter, 0.0), 1.0)
        self.rng = rng or random.Random()
        self._delay = first
        self.tries = 0
        """Waits handed out since the last `reset` (the first failure makes it 1)."""

    def next(self) -> float:
        """The wait before the next try (then the one after doubles, up to `cap`)."""
        wait = self._delay * (1.0 - self.rng.uniform(0.0, self.jitter))
        self._delay = min(self._delay * 2.0, self.cap)
        self.tries += 1
        return wait

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self._delay = self.first
        self.tries = 0


class Resync:
    """A resync-then-watch loop's state: readiness, losses, the last answer heard; `run` is the loop."""

    def __init__(
        self,
        name: str,
        *,
        on_lost: Callable[[], None] | None = None,
        on_failure: Callable[[str, float], None] | None = None,
        backoff: Backoff | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.name = name
        self.on_lost = on_lost
        self.on_failure = on_failure
        """Told (why, seconds until the next read) each time the store fails, current or not (a page shows it)."""
        self.backoff = backoff or Backoff()
        self.context = dict(context or {})
        self.current = False
        """True from a full read until the stream is lost: what the loop keeps follows etcd (readiness)."""
        self.lost = 0
        """Times the watch was lost and everything read again (reconnects)."""
        self.last_heard: float | None = None
        """`time.monotonic()` of the last answer on the stream (events or a progress notification)."""
        self.failure: str | None = None
        """Why the store failed last, until the next full read (for /readyz)."""

    def synced(self) -> None:
        """A full read is done and the watch follows on from it: ready, and the back-off starts over."""
        self.current = True
        self.failure = None
        self.backoff.reset()
        self.heard()

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def lose(self) -> None:
        """The stream ended: not current until the next full read (counted once per loss)."""
        if self.current:
            self.lost += 1
            if self.on_lost is not None:
                self.on_lost()
        self.current = False

    async def run(
        self,
        cycle: Callable[[], Awaitable[object]],
        *,
        retry_on: tuple[type[Exception], ...] = (StoreUnavailable,),
    ) -> NoReturn:
        """Run `cycle` (read everything, call `synced`, follow the watch) again and again, forever.

        A compacted watch is read again at once; an error of `retry_on` (etcd unreachable, by default)
        after a back-off; a stream that simply ends, at once. Anything else propagates (to `supervise`).
        """
        while True:
            try:
                await cycle()
                self.lose()
                log.warning(
                    "Lost the etcd watch; reading everything again", extra=logs.kv(**self.context, watch=self.name)
                )
            except Compacted as error:
                self.lose()
                log.warning(
                    "Lost the watch to compaction; reading everything again",
                    extra=logs.kv(**self.context, watch=self.name, reason=str(error)),
                )
            except retry_on as error:
                self.lose()
                self.failure = str(error)
                wait = self.backoff.next()
                if self.on_failure is not None:
                    self.on_failure(self.failure, wait)
                log.warning(
                    "Lost the etcd watch; reading everything again once etcd answers",
                    extra=logs.kv(**self.context, watch=self.name, reason=str(error), retry_in=f"{wait:.3f}s"),
                )
                await asyncio.sleep(wait)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[object]],
    *,
    first_delay: float = TASK_FIRST,
    max_delay: float = TASK_CAP,
    reset_after: float = TASK_HEALTHY_AFTER,
    context: Mapping[str, object] | None = None,
) -> NoReturn:
    """Run `run()` forever: after an exception (or a return, which is a bug too) wait, then run it again.

    Cancellation is never caught: cancelling the supervisor cancels the task with it.
    """
    loop = asyncio.get_running_loop()
    backoff = Backoff(first_delay, max_delay)
    while True:
        started = loop.time()
        try:
            await run()
            message, error = "Ended task unexpectedly", None
        except Exception as crash:
            message, error = "Crashed task", crash
        if loop.time() - started >= reset_after:
            backoff.reset()
        wait = backoff.next()
        log.error(message, exc_info=error, extra=logs.kv(**(context or {}), task=name, restart_in=f"{wait:.3f}s"))
        await asyncio.sleep(wait)
