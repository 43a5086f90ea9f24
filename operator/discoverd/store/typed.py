"""Typed reads and writes of discoverd's documents, with revisions.

Raw bytes become models here, once (`decode`); a bad document becomes an
`Entry` carrying an `InvalidDocument` rather than an exception, so one bad
key never stops a loop over the others. Writes can be guarded by the key's
`mod_revision` (compare-and-swap) and grouped into one transaction.

Full reads page by size, not by count: values may be up to etcd's request
limit (1.5 MiB by default), so a fixed number of keys per Range could exceed
the gRPC message limit. The first page is small (`_FIRST_PAGE` keys); later
pages hold about `_PAGE_BYTES` at the sizes seen so far; a page too large for
one message is asked for again with half the limit.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc

from discoverd.errors import Conflict, InvalidDocument, StoreUnavailable
from discoverd.schema import documents, keys
from discoverd.store import client as client_

__all__ = ["Entry", "Snapshot", "Store", "Write", "decode", "decode_kv"]

_FIRST_PAGE = 32
"""Keys in the first page of a range: 32 values of etcd's default 1.5 MiB limit fit in one message."""
_PAGE_BYTES = 4 * 2**20
"""About this many bytes per later page, at the sizes seen so far (gRPC's limit here is 64 MiB)."""
_MAX_PAGE = 4096


@dataclass(frozen=True)
class Entry:
    """One key as read from etcd: its parsed key and document, or why it is invalid."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0
    parsed: keys.Key | None = None
    document: documents.Document | None = None
    error: InvalidDocument | None = None


def decode(prefix: str, key: str, value: bytes, mod_revision: int, create_revision: int = 0, lease: int = 0) -> Entry:
    """Parse a key and its value; never raises for bad data (the Entry carries the error).

    The schema promises InvalidDocument for every bad value; should a decoder bug raise
    anything else (a RecursionError, say), it is caught here too, the one place the agent,
    the operator and the controller all decode through, so one value never fails a whole
    read or watch, and every resync after it.
    """
    parsed: keys.Key | None = None
    try:
        parsed = keys.parse(prefix, key)
        if parsed is None:
            return Entry(key, value, mod_revision, create_revision, lease)
        doc = documents.parse_at(parsed, key, value)
    except InvalidDocument as error:
        return Entry(key, value, mod_revision, create_revision, lease, parsed=parsed, error=error)
    except Exception as error:  # a decoder bug: one value must not stop the others
        problem = InvalidDocument(key, "", f"could not be decoded: {type(error).__name__}: {error}"[:500])
        return Entry(key, value, mod_revision, create_revision, lease, parsed=parsed, error=problem)
    return Entry(key, value, mod_revision, create_revision, lease, parsed=parsed, document=doc)


def decode_kv(prefix: str, kv: rpc.KeyValue) -> Entry:
    """`decode` for a KeyValue of a Range or watch response (key bytes that are not UTF-8 kept as surrogates)."""
    return decode(
        prefix,
        kv.key.decode("utf-8", errors="surrogateescape"),
        kv.value,
        kv.mod_revision,
        kv.create_revision,
        kv.lease,
    )


@dataclass(frozen=True)
class Snapshot:
    """Every key under a prefix, read at one revision."""

    revision: int
    entries: Mapping[str, Entry] = field(default_factory=dict)


@dataclass(frozen=True)
class Write:
    """One change in a transaction: put `value` (or delete when None), if `expect` holds.

    `expect` is the mod_revision the key must still have (0: must not exist),
    or None for an unconditional write.
    """

    key: str
    value: bytes | None
    expect: int | None = None
    lease: int = 0


class Store:
    """discoverd's view of etcd: one client, one prefix."""

    def __init__(self, client: client_.Client) -> None:
        self.client = client
        self.prefix = client.etcd_options.prefix

    async def close(self) -> None:
        await self.client.close()

    async def get(self, key: str) -> Entry | None:
        c = self.client
        response = await client_.call(
            c,
            lambda: c.kvstub.Range(rpc.RangeRequest(key=key.encode()), timeout=c._timeout, metadata=c.metadata),
        )
        return decode_kv(self.prefix, response.kvs[0]) if response.kvs else None

    async def snapshot(self, under: str | None = None) -> Snapshot:
        """Every key under `under` (default: the whole prefix) at one revision, page by page."""
        start = (under or self.prefix + "/").encode()
        return await self.read([(start, keys.prefix_range_end(start))])

    async def read(
        self,
        ranges: Iterable[tuple[bytes, bytes]],
        revision: int = 0,
        *,
        where: Callable[[bytes, bytes], bool] | None = None,
        parallel: int = 1,
    ) -> Snapshot:
        """Every key in `ranges` at one revision (`revision`, or etcd's current one when 0).

        A range is `(key, range_end)` as in etcd: `range_end` b"" means the key alone. `where`:
        keep only the keys it accepts, judged on the raw key and value before anything is decoded
        (called in key order within a range). `parallel` > 1: once the revision is known, up to
        that many ranges are read at once (many small ranges cost a round trip each); `where` is
        then called for the ranges in any order, so it must not depend on the keys before.
        """
        entries: dict[str, Entry] = {}
        todo = list(ranges)
        if parallel > 1 and len(todo) > 1:
            if not revision:
                start, end = todo.pop(0)
                revision = await self._read_range(start, end, revision, entries, where)
            gate = asyncio.Semaphore(parallel)
            parts: list[dict[str, Entry]] = [{} for _ in todo]

            async def one(i: int, start: bytes, end: bytes) -> None:
                async with gate:
                    await self._read_range(start, end, revision, parts[i], where)

            await asyncio.gather(*(one(i, start, end) for i, (start, end) in enumerate(todo)))
            for part in parts:
                entries.update(part)
            todo = []
        for start, end in todo:
            revision = await self._read_range(start, end, revision, entries, where)
        if not revision:
            revision = await self.revision()
        return Snapshot(revision, entries)

    async def _read_range(
        self,
        start: bytes,
        end: bytes,
        revision: int,
        into: dict[str, Entry],
        where: Callable[[bytes, bytes], bool] | None = None,
    ) -> int:
        c = self.client
        limit = _FIRST_PAGE
        while True:
            response = await client_.call(c, functools.partial(self._range, start, end, revision, limit))
            if response is None:
                if limit == 1:
                    raise StoreUnavailable(
                        f"{start.decode(errors='replace')}: one value is larger than the gRPC message limit"
                    )
                limit = max(1, limit // 2)
                continue
            revision = revision or int(response.header.revision)
            size = 0
            for kv in response.kvs:
                size += len(kv.key) + len(kv.value)
                if where is None or where(kv.key, kv.value):
                    entry = decode_kv(self.prefix, kv)
                    into[entry.key] = entry
            if not end or not response.more or not response.kvs:
                return revision
            start = response.kvs[-1].key + b"\0"
            limit = max(1, min(_MAX_PAGE, _PAGE_BYTES * len(response.kvs) // max(size, 1)))

    async def _range(self, start: bytes, end: bytes, revision: int, limit: int) -> Any:
        """One page; None when it is too large for one gRPC message (ask again with fewer keys)."""
        c = self.client
        request = rpc.RangeRequest(key=start, range_end=end, limit=limit if end else 0, revision=revision)
        try:
            return await c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return None
            raise

    async def first_key(self, start: bytes, end: bytes, revision: int = 0) -> tuple[bytes | None, int]:
        """The first key in `[start, end)` at `revision` (etcd's current one when 0), or None; and that revision.

        One small request, keys only, whatever the range holds: a skip scan walks a range by what its
        keys start with (one service after another) without reading what lies between.
        """
        c = self.client
        request = rpc.RangeRequest(key=start, range_end=end, limit=1, keys_only=True, revision=revision)
        response = await client_.call(c, lambda: c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata))
        return (bytes(response.kvs[0].key) if response.kvs else None), revision or int(response.header.revision)

    async def revision(self) -> int:
        """etcd's current revision (a cheap probe that etcd answers)."""
        c = self.client
        request = rpc.RangeRequest(key=self.prefix.encode(), keys_only=True, count_only=True)
        response = await client_.call(c, lambda: c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata))
        return int(response.header.revision)

    async def apply(self, writes: Iterable[Write]) -> int:
        """Carry out every write in one transaction; Conflict (naming the first key) if any guard fails."""
        todo = list(writes)
        if not todo:
            return await self.revision()
        compares = []
        ops = []
        for w in todo:
            k = w.key.encode()
            if w.expect is not None:
                compares.append(
                    rpc.Compare(
                        key=k,
                        result=rpc.Compare.CompareResult.EQUAL,
                        target=rpc.Compare.CompareTarget.MOD,
                        mod_revision=w.expect,
                    )
                )
            if w.value is None:
                ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)))
            else:
                ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=w.value, lease=w.lease)))
        c = self.client
        request = rpc.TxnRequest(compare=compares, success=ops)
        response = await client_.call(c, lambda: c.kvstub.Txn(request, timeout=c._timeout, metadata=c.metadata))
        if not response.succeeded:
            guarded = [w for w in todo if w.expect is not None]
            first = guarded[0] if guarded else todo[0]
            if len(guarded) == 1:
                raise Conflict(first.key, first.expect or 0)
            raise Conflict(first.key, first.expect or 0, f"{len(guarded)} keys: one changed in etcd meanwhile")
        return int(response.header.revision)

    async def put(self, key: str, doc: documents.Document, *, expect: int | None = None, lease: int = 0) -> int:
        """Write a document (guarded by `expect`, see Write); the new revision."""
        return await self.apply([Write(key, documents.dumps(doc), expect, lease)])

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        return await self.apply([Write(key, None, expect)])

    async def compact(self, revision: int) -> None:
        c = self.client
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await client_.call(c, lambda: c.kvstub.Compact(request, timeout=c._timeout, metadata=c.metadata))
