"""The /metrics, /healthz and /readyz server holds no client longer than it must (real loopback sockets).

The endpoints have no authentication; whoever reaches the port must not be able to tie the server
up: a request has one deadline in all (a client trickling its headers byte by byte is cut off,
not kept alive by each byte), and connections over the cap are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from discoverd import metrics


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[metrics.Server]:
    server = metrics.Server([metrics.CollectorRegistry()], lambda: None)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `seconds`."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def healthz(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_a_client_trickling_its_headers_is_cut_off_at_the_deadline() -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        cut = False
        # One byte every 0.25 s: every header line completes in 1.5 s, far within any per-line timeout.
        for byte in b"X-Slow: y\r\n" * 20:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            if await closed_within(reader, 0.25):
                cut = True
                break
        elapsed = time.monotonic() - started
        writer.close()
        assert cut, f"still connected after {elapsed:.1f} s of trickled headers"
        assert elapsed < metrics.REQUEST_DEADLINE + 2
        assert server.connections == 0
        assert (await healthz(server.port)).startswith(b"HTTP/1.1 200 OK")


async def test_connections_over_the_cap_are_closed_at_once_and_the_server_still_answers() -> None:
    async with serving() as server:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(metrics.MAX_CONNECTIONS)]
        await asyncio.sleep(0.2)
        assert server.connections == metrics.MAX_CONNECTIONS
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_within(reader, 1.0), "a connection over the cap was kept open"
        writer.close()
        for _, w in idle[:1]:
            w.close()
        await asyncio.sleep(0.2)
        assert (await healthz(server.port)).startswith(b"HTTP/1.1 200 OK")
        for _, w in idle[1:]:
            w.close()


async def test_headers_over_the_limit_are_closed_unanswered() -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"y" * 1000 + b"\r\n")
        for _ in range(metrics.MAX_REQUEST_BYTES // 1000 + 2):
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Big: " + b"y" * 1000 + b"\r\n")
        assert await closed_within(reader, 2.0)
        writer.close()


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_a_plain_request_is_answered(path: str) -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 OK")
        writer.close()
