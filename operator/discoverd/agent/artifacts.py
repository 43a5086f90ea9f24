"""Artifacts: fetched by the agent over HTTP(S), verified, kept in a content-addressed cache per server.

Called by the supervisor before a version's download script (`Artifacts.install`):
every artifact of the version is fetched into the cache (or found there), and
only when all of them are there and verified are they placed in the version
directory (`extract`). A digest mismatch or a failed fetch places nothing.

    <state>/cache/<algo>/<digest>           a verified blob, 0600, named by its digest
    <state>/cache/partial/<algo>-<digest>   a download under way (kept for a resume)
    <state>/cache/pins/<service>/<version>  the blobs an install uses (JSON list)

- A blob present with the right digest is never fetched again, whichever
  version or instance asks: one lock per digest, so concurrent asks share one
  download. A blob is hashed again before each use (a damaged one is fetched again).
- The fetch (aiohttp, no shell): connect and read timeouts per attempt, a total
  timeout per artifact, retries with exponential back-off and jitter (`runtime.Backoff`) on
  connection errors, timeouts, 408, 429 and 5xx; a resume with `Range` and
  `If-Range` where the server answered with `Accept-Ranges: bytes` and a
  validator (ETag or Last-Modified), a fresh start otherwise; a size cap,
  checked against `Content-Length` and while receiving; at most `parallel`
  downloads at once over the whole agent. No content decoding: the bytes
  hashed are the bytes served.
- The cache has a size limit: after each fetch the least recently used blobs
  (mtime, refreshed at each use) that no install pins and no fetch holds are
  evicted until it fits.

Imports `extract`, `metrics` and `schema`; not `plan` (it decides nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp

from discoverd import logs, runtime
from discoverd.agent import extract
from discoverd.metrics import AgentMetrics
from discoverd.schema import documents, keys

__all__ = ["Artifacts", "DigestMismatch", "FetchError", "Progress", "Settings", "shown"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

Progress = Callable[[str, int, int | None], None]
"""(url, bytes received, bytes expected or None): called while a download runs."""


@dataclass(frozen=True)
class Settings:
    """The agent's artifact options (docs/agent.md, "Artifacts")."""

    cache_bytes: int = 10 * 2**30
    max_bytes: int = 4 * 2**30
    """Largest artifact fetched."""
    parallel: int = 4
    """Downloads at once over the whole agent."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    """Seconds without a byte before an attempt is given up."""
    total_timeout: float = 3600.0
    """Seconds for one artifact, every attempt and back-off included (not the wait for a download slot)."""
    attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    unpack: extract.Limits = field(default_factory=extract.Limits)


class FetchError(Exception):
    """An artifact could not be fetched, verified or placed: the message names its URL."""


class DigestMismatch(FetchError):
    def __init__(self, url: str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"artifact {shown(url)} has {algorithm} {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class _Retry(Exception):
    """A failure worth another attempt."""


def shown(url: str) -> str:
    """The URL for messages and logs: without a user and password."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class Artifacts:
    """The cache of one agent and the downloads into it."""

    def __init__(self, state_dir: Path, settings: Settings | None = None, metrics: AgentMetrics | None = None) -> None:
        self.root = state_dir.resolve() / "cache"
        self.versions = state_dir.resolve() / "versions"
        self.settings = settings or Settings()
        self.metrics = metrics
        self.rng = random.Random()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._busy: dict[str, int] = defaultdict(int)
        """Blobs being fetched or placed right now (name -> holders): never evicted."""
        self._slots: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetched_bytes = 0
        """Bytes received over the network since the agent started."""

    # paths

    def blob(self, artifact: documents.Artifact) -> Path:
        return self.root / artifact.algorithm / artifact.digest

    def _pin_path(self, service: str, version: str) -> Path:
        for segment in (service, version):
            if keys.segment_error(segment) is not None:
                raise ValueError(f"{segment!r} cannot be a path segment")
        return self.root / "pins" / service / version

    # the one entry point

    async def install(
        self, artifacts: list[documents.Artifact], service: str, version: str, vdir: Path, progress: Progress
    ) -> None:
        """Fetch every artifact (or find it cached), then place each in `vdir`; FetchError naming the URL if not."""
        names = [f"{a.algorithm}/{a.digest}" for a in artifacts]
        for name in names:
            self._busy[name] += 1
        try:
            fetches = [asyncio.create_task(self.get(a, progress)) for a in artifacts]
            try:
                await asyncio.gather(*fetches)
            finally:  # one failed: the others are not left running
                for task in fetches:
                    task.cancel()
                await asyncio.gather(*fetches, return_exceptions=True)
            # The directory first: a pin counts only while its version directory exists (`pinned`).
            await asyncio.to_thread(vdir.mkdir, parents=True, exist_ok=True)
            self._pin(service, version, names)
            for a in artifacts:
                await asyncio.to_thread(self._place, a, vdir)
        finally:
            for name in names:
                self._busy[name] -= 1
                if not self._busy[name]:
                    del self._busy[name]
        # On the loop, not in a thread: no fetch can finish (and need its blob) while this decides.
        # It stats and unlinks a few files (one per blob): cheap.
        self.evict()

    def _place(self, a: documents.Artifact, vdir: Path) -> None:
        blob = self.blob(a)
        try:
            if a.archive is None:
                extract.place(blob, vdir, a.dest, a.file_name, 0o644 if a.mode is None else a.mode)
            else:
                extract.unpack(blob, a.archive, vdir, a.dest, self.settings.unpack, a.mode)
        except extract.UnsafeArchive as error:
            raise FetchError(f"artifact {shown(a.url)} {error}") from None
        except OSError as error:
            raise FetchError(f"artifact {shown(a.url)} could not be placed: {error.strerror or error}") from None

    # the cache

    async def get(self, a: documents.Artifact, progress: Progress) -> Path:
        """The verified blob of `a`: from the cache, or fetched into it (once, whoever else asks meanwhile)."""
        blob = self.blob(a)
        async with self._locks[f"{a.algorithm}/{a.digest}"]:
            if blob.exists():
                actual = await asyncio.to_thread(_hash, blob, a.algorithm)
                if actual == a.digest:
                    os.utime(blob)  # the LRU clock
                    self._count("hit")
                    return blob
                log.warning("Dropped damaged cached artifact", extra=logs.kv(path=str(blob), actual=actual))
                blob.unlink(missing_ok=True)
            try:
                await self._fetch(a, blob, progress)
            except TimeoutError:
                self._count("failed")
                raise FetchError(
                    f"artifact {shown(a.url)} was not fetched within {self.settings.total_timeout:g} s"
                ) from None
            except DigestMismatch:
                self._count("mismatch")
                raise
            except FetchError:
                self._count("failed")
                raise
            self._count("fetched")
            return blob

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.artifact_requests.labels(result).inc()

    def _pin(self, service: str, version: str, names: list[str]) -> None:
        path = self._pin_path(service, version)
        _private_dir(path.parent)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(sorted(set(names))))
        os.replace(tmp, path)

    def unpin(self, service: str, version: str) -> None:
        """The install of `version` is gone: its blobs may be evicted."""
        self._pin_path(service, version).unlink(missing_ok=True)

    def pinned(self) -> set[str]:
        """Blobs used by an install still on disk (pins of removed installs are dropped here)."""
        names: set[str] = set()
        for pin in self.root.glob("pins/*/*"):
            if pin.name.endswith(".tmp"):
                continue
            if not (self.versions / pin.parent.name / pin.name).is_dir():
                pin.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError, ValueError):
                names.update(str(n) for n in json.loads(pin.read_text()))
        return names

    def evict(self) -> list[str]:
        """Remove the least recently used blobs nothing pins or holds until the cache fits; their names."""
        blobs = []
        for algorithm in ("sha256", "sha512"):
            for path in (self.root / algorithm).glob("*"):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    blobs.append((st.st_mtime, st.st_size, f"{algorithm}/{path.name}", path))
        total = sum(size for _, size, _, _ in blobs)
        keep = self.pinned() | set(self._busy)
        evicted = []
        for _, size, name, path in sorted(blobs):
            if total <= self.settings.cache_bytes:
                break
            if name in keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            evicted.append(name)
            log.info("Evicted cached artifact", extra=logs.kv(blob=name, bytes=size))
        if self.metrics is not None:
            self.metrics.artifact_cache_bytes.set(total)
            self.metrics.artifact_evictions.inc(len(evicted))
        if total > self.settings.cache_bytes:
            log.warning(
                "Kept artifact cache over its limit",
                extra=logs.kv(bytes=total, limit=self.settings.cache_bytes, reason="every blob left is in use"),
            )
        return evicted

    # the download

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No content decoding: the digest is of the bytes served. Proxies from the environment, as curl.
            self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=True)
        return self._session

    async def _fetch(self, a: documents.Artifact, blob: Path, progress: Progress) -> None:
        s = self.settings
        if self._slots is None:
            self._slots = asyncio.Semaphore(s.parallel)
        partial = _private_dir(self.root / "partial") / f"{a.algorithm}-{a.digest}"
        meta = partial.with_name(partial.name + ".json")
        fresh_retry = True
        try:
            await self._download(a, partial, meta, progress, fresh_retry)
        except FetchError:
            _forget(partial, meta)
            raise
        _private_dir(blob.parent)
        os.chmod(partial, 0o600)
        os.replace(partial, blob)
        meta.unlink(missing_ok=True)
        log.info("Fetched artifact", extra=logs.kv(url=shown(a.url), blob=f"{a.algorithm}/{a.digest}"))

    async def _download(
        self, a: documents.Artifact, partial: Path, meta: Path, progress: Progress, fresh_retry: bool
    ) -> None:
        """Attempts with back-off until `partial` holds the whole file with the right digest."""
        s = self.settings
        assert self._slots is not None
        # The total timeout starts once a download slot is ours: waiting behind others does not count.
        async with self._slots, asyncio.timeout(s.total_timeout):
            attempt = 0
            backoff = runtime.Backoff(s.backoff_base, s.backoff_cap, rng=self.rng)
            while True:
                attempt += 1
                try:
                    uncertain = await self._attempt(a, partial, meta, progress)
                except _Retry as error:
                    if attempt >= s.attempts:
                        raise FetchError(f"artifact {shown(a.url)}: {error} (after {attempt} attempts)") from None
                    delay = backoff.next()
                    log.warning(
                        "Failed to fetch artifact",
                        extra=logs.kv(url=shown(a.url), attempt=attempt, reason=str(error), retry_in=f"{delay:.1f}s"),
                    )
                    await asyncio.sleep(delay)
                    continue
                actual = await asyncio.to_thread(_hash, partial, a.algorithm)
                if actual == a.digest:
                    break
                _forget(partial, meta)
                # Resumed (the pieces may come from two different files) or of no announced size (it may
                # have been cut short): once more, whole, before it counts as a mismatch.
                if uncertain and fresh_retry:
                    fresh_retry = False
                    continue
                raise DigestMismatch(a.url, a.algorithm, a.digest, actual)

    async def _attempt(self, a: documents.Artifact, partial: Path, meta: Path, progress: Progress) -> bool:
        """One GET into `partial`, resumed when the server allows; _Retry or FetchError.

        True when the result is uncertain: a resume, or a body of no announced size.
        """
        s = self.settings
        offset, validator = _resume_point(a.url, partial, meta)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": validator}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        try:
            async with self._client().get(a.url, headers=headers, timeout=timeout) as answer:
                if answer.status == 206 and offset and _range_start(answer.headers.get("Content-Range")) == offset:
                    mode = "ab"
                elif answer.status == 200:
                    offset, mode = 0, "wb"
                elif answer.status in (206, 416) and offset:
                    _forget(partial, meta)
                    raise _Retry(f"the server did not resume at byte {offset} (HTTP {answer.status}); starting over")
                elif answer.status in _RETRY_STATUS:
                    raise _Retry(f"HTTP {answer.status}")
                else:
                    raise FetchError(f"artifact {shown(a.url)}: the server answered HTTP {answer.status}")
                length = answer.content_length
                expected = offset + length if length is not None else None
                if expected is not None and expected > s.max_bytes:
                    raise FetchError(f"artifact {shown(a.url)} is {expected} bytes, over --artifact-max-mb")
                validator = answer.headers.get("ETag") or answer.headers.get("Last-Modified") or ""
                resumable = answer.headers.get("Accept-Ranges", "").lower() == "bytes" or answer.status == 206
                _write_meta(meta, a.url, validator if resumable else "")
                return await self._receive(a, answer, partial, mode, offset, expected, progress)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise _Retry(str(error) or type(error).__name__) from None

    async def _receive(
        self,
        a: documents.Artifact,
        answer: aiohttp.ClientResponse,
        partial: Path,
        mode: str,
        offset: int,
        expected: int | None,
        progress: Progress,
    ) -> bool:
        received = offset
        last = 0.0
        m = self.metrics
        if m is not None and expected is not None:
            m.artifact_downloading.labels("expected").inc(expected)
            m.artifact_downloading.labels("received").inc(offset)
        try:
            with _open_partial(partial, mode) as out:
                async for chunk in answer.content.iter_chunked(_CHUNK):
                    received += len(chunk)
                    if received > self.settings.max_bytes:
                        raise FetchError(f"artifact {shown(a.url)} is over --artifact-max-mb")
                    out.write(chunk)
                    self.fetched_bytes += len(chunk)
                    if m is not None:
                        m.artifact_fetched_bytes.inc(len(chunk))
                        if expected is not None:
                            m.artifact_downloading.labels("received").inc(len(chunk))
                    now = time.monotonic()
                    if now - last >= 0.5:
                        last = now
                        progress(a.url, received, expected)
        finally:
            if m is not None and expected is not None:
                m.artifact_downloading.labels("expected").dec(expected)
                m.artifact_downloading.labels("received").dec(received)
        if expected is not None and received != expected:
            raise _Retry(f"the connection ended after {received} of {expected} bytes")
        progress(a.url, received, expected)
        return offset > 0 or expected is None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _forget(partial: Path, meta: Path) -> None:
    partial.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


def _resume_point(url: str, partial: Path, meta: Path) -> tuple[int, str]:
    """(bytes already received, the validator to send in If-Range) of a resumable partial download of `url`."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(meta.read_text())
        if saved["url"] == url and saved["validator"]:
            return partial.stat().st_size, str(saved["validator"])
    return 0, ""


def _write_meta(meta: Path, url: str, validator: str) -> None:
    meta.write_text(json.dumps({"url": url, "validator": validator}))


def _open_partial(path: Path, mode: str) -> BinaryIO:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    return open(os.open(path, flags, 0o600), "wb")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of `Content-Range: bytes 100-199/200`, or None."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    first = content_range[6:].split("-", 1)[0]
    return int(first) if first.isdigit() else None
