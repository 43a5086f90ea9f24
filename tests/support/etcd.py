"""A plain etcd client for tests: the "other writer" whose raw bytes discoverd must read."""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd

__all__ = ["RawEtcd"]


class RawEtcd:
    """Synchronous put/get/delete of raw bytes through aetcd (no discoverd code in the way).

    Keys are str (sent as UTF-8) or bytes (sent as they are: etcd keys need not be UTF-8).
    """

    def __init__(self, endpoint: str, user: str | None = None, password: str | None = None) -> None:
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.user, self.password = user, password
        """Credentials for an etcd with auth on (None: none sent)."""

    def _run(self, operation: str, *args: Any) -> Any:
        async def go() -> Any:
            async with aetcd.Client(
                host=self.host, port=self.port, username=self.user, password=self.password
            ) as client:
                return await getattr(client, operation)(*args)

        return asyncio.run(go()) if not _in_loop() else _thread_run(go)

    def put(self, key: str | bytes, value: bytes | str) -> int:
        data = value.encode() if isinstance(value, str) else value
        return int(self._run("put", _bytes(key), data).header.revision)

    def get(self, key: str | bytes) -> bytes | None:
        result = self._run("get", _bytes(key))
        return None if result is None else bytes(result.value)

    def mod_revision(self, key: str | bytes) -> int | None:
        result = self._run("get", _bytes(key))
        return None if result is None else int(result.mod_revision)

    def lease(self, key: str | bytes) -> int | None:
        """The id of the lease holding `key` (0: none), or None when the key does not exist."""
        result = self._run("get", _bytes(key))
        return None if result is None else int(result.lease)

    def delete(self, key: str | bytes) -> None:
        self._run("delete", _bytes(key))

    def keys(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix`; a key that is not UTF-8 is decoded with surrogateescape."""
        result = self._run("get_prefix", prefix.encode())
        return {kv.key.decode("utf-8", "surrogateescape"): bytes(kv.value) for kv in result}


def _bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _thread_run(factory: Any) -> Any:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
