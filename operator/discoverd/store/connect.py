"""Connect to etcd once it answers: the one connect-with-retry of the agent, the operator and the controller.

`client.connect` fails at once when no member answers; a component starting
before etcd (or during an outage) waits here instead, with the runtime kit's
back-off (`runtime.RETRY_FIRST` doubling to `runtime.RETRY_CAP`, jittered),
logging each failed try with what to fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from discoverd import logs, runtime
from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable
from discoverd.store import client, documents

__all__ = ["retrying"]

log = logging.getLogger(__name__)


async def retrying(options: EtcdOptions, *, context: Mapping[str, object] | None = None) -> documents.Store:
    """A store, once etcd answers (retrying with back-off while it does not)."""
    backoff = runtime.Backoff()
    while True:
        try:
            return documents.Store(await client.connect(options))
        except StoreUnavailable as error:
            wait = backoff.next()
            log.warning(
                "Failed to connect to etcd",
                extra=logs.kv(**(context or {}), reason=str(error), retry_in=f"{wait:.3f}s"),
            )
            await asyncio.sleep(wait)
