"""The instance page's live log tail: one instance's run log on one server, as server-sent events.

The reading is `discoverd.logaccess`, what `discoverd logs -f` runs: a lease
of this tail's own with one grant in etcd under it, the agent's certificate
pinned to the SHA-256 its status publishes, following across rotation and
agent restarts, ending when the instance is removed. A closed tab ends the
follow and revokes the lease, so the grant goes with it.

Events sent (each `data:` one JSON object):

    lines    {"lines": [{"text", "at"}]}   the last TAIL lines first, then new ones as they come
    notice   {"message"}                    the agent was lost; trying again
    end      {"message"}                    the instance is no longer there: nothing more will come
    failed   {"message"}                    the log cannot be read (no right to write a grant, the agent refused...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from discoverd import logaccess
from discoverd.errors import StoreUnavailable
from discoverd.schema import logaccess as protocol
from discoverd.store.typed import Store

__all__ = ["MAX_OPEN", "TAIL", "follow"]

TAIL = 200
"""Lines of the log sent first (the page keeps at most 1,000)."""
MAX_OPEN = 32
"""Log tails one dashboard follows at once (each holds a lease and a connection to an agent)."""
_BATCH = 500
"""Most lines in one event: a chatty instance costs one event per batch, not one per line."""

Send = Callable[[bytes], Awaitable[None]]


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event; json.dumps escapes every newline, so `data` is one line."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=True)}\n\n".encode()


def _text(line: logaccess.Line) -> str:
    # Bytes that were not UTF-8 arrive as lone surrogates: shown as U+FFFD, as a terminal would.
    return line.text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def follow(store: Store, target: logaccess.Target, reader: str, send: Send, keepalive: float) -> None:
    """Send `target`'s run log as events until it ends, fails, or `send` raises (the tab was closed)."""
    queue: asyncio.Queue[bytes | logaccess.Line] = asyncio.Queue(maxsize=4 * _BATCH)

    def notice(_: logaccess.Target, reason: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a full queue is already news enough
            queue.put_nowait(event("notice", {"message": f"{reason}; trying again"}))

    async def pump() -> None:
        query = protocol.LogQuery(step=protocol.Step.RUN, tail=TAIL, follow=True)
        try:
            async with logaccess.Session(store, reader=reader, on_retry=notice) as session:
                async for line in session.lines(target, query):
                    await queue.put(line)
            await queue.put(event("end", {"message": f"{target.service}/{target.instance} left {target.server}"}))
        except (logaccess.LogAccessError, StoreUnavailable) as error:
            await queue.put(event("failed", {"message": str(error)}))

    task = asyncio.create_task(pump(), name=f"dashboard log tail {target}")
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                await send(b": keepalive\n\n")
                continue
            lines: list[logaccess.Line] = []
            while isinstance(item, logaccess.Line):
                lines.append(item)
                if len(lines) == _BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            if lines:
                await send(event("lines", {"lines": [{"text": _text(x), "at": x.at} for x in lines]}))
            if isinstance(item, bytes):
                await send(item)
                if item.startswith((b"event: end", b"event: failed")):
                    return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
