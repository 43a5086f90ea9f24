"""Connect to etcd once it answers: the one connect-with-retry of the agent, the operator and the controller.

`client.connect` fails at once when no member answers; a component starting
before etcd (or during an outage) waits here instead, with the runtime kit's
back-off (`runtime.RETRY_FIRST` doubling to `runtime.RETRY_CAP`, jittered),
logging each failed try with what to fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from discoverd import logs, runtime
from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable
from discoverd.store import client, typed

__all__ = ["retrying"]

log = logging.getLogger(__name__)


async def retrying(
    options: EtcdOptions | Callable[[], Awaitable[EtcdOptions]],
    *,
    context: Mapping[str, object] | None = None,
    on_failure: Callable[[StoreUnavailable], None] | None = None,
) -> typed.Store:
    """A store, once etcd answers (retrying with back-off while it does not).

    `options` may be a function asked again before each try (the agent's credentials come from the
    operator and may be renewed meanwhile); `on_failure` hears each failed try.
    """
    backoff = runtime.Backoff()
    while True:
        current = options if isinstance(options, EtcdOptions) else await options()
        try:
            return typed.Store(await client.connect(current))
        except StoreUnavailable as error:
            wait = backoff.next()
            log.warning(
                "Failed to connect to etcd",
                extra=logs.kv(**(context or {}), reason=str(error), retry_in=f"{wait:.3f}s"),
            )
            if on_failure is not None:
                on_failure(error)
            await asyncio.sleep(wait)
