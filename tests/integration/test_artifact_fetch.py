"""The agent's artifact fetch and cache against a real HTTP server on 127.0.0.1 (tests/support/files.py).

Ranges on and off, a server cut mid-body, failing then answering, slow, a wrong
digest, the size cap; the cache: fetched once whoever asks, LRU eviction that
spares pinned blobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.agent import artifacts, extract
from discoverd.metrics import AgentMetrics
from support.files import FileServer, serving

DATA = os.urandom(1 << 20)
FAST = {"backoff_base": 0.05, "backoff_cap": 0.2, "attempts": 4}


@pytest.fixture
def files() -> Iterator[FileServer]:
    with serving() as server:
        yield server


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[artifacts.Artifacts] = []

    def make(**settings: Any) -> artifacts.Artifacts:
        a = artifacts.Artifacts(tmp_path / "state", artifacts.Settings(**{**FAST, **settings}), AgentMetrics(()))
        made.append(a)
        return a

    yield make
    for a in made:
        await a.close()


def art(url: str, sha256: str, **more: Any) -> Any:
    from discoverd.schema import documents

    return documents.Artifact(url=url, sha256=sha256, **more)


def noop(url: str, received: int, expected: int | None) -> None:
    pass


async def test_an_artifact_is_fetched_once_whoever_asks(files: FileServer, make: Any, tmp_path: Path) -> None:
    sha = files.add("/web.bin", DATA)
    cache = make()
    a = art(files.url("/web.bin"), sha)
    await asyncio.gather(*(cache.get(a, noop) for _ in range(10)))  # ten instances at once
    await cache.install([a], "web", "1.0", tmp_path / "v1", noop)
    await cache.install([art(files.url("/web.bin?mirror"), sha)], "web", "2.0", tmp_path / "v2", noop)
    assert len(files.gets("/web.bin")) == 1
    assert (tmp_path / "v1" / "web.bin").read_bytes() == DATA and (tmp_path / "v2" / "web.bin").read_bytes() == DATA
    assert cache.blob(a).read_bytes() == DATA
    fetched = cache.metrics.registry.get_sample_value("discoverd_agent_artifact_requests_total", {"result": "fetched"})
    assert fetched == 1


async def test_a_cut_download_resumes_with_a_range(files: FileServer, make: Any) -> None:
    sha = files.add("/big.bin", DATA)
    files.cut_first, files.cut_at = 1, 300_000
    cache = make()
    await cache.get(art(files.url("/big.bin"), sha), noop)
    first, second = files.gets("/big.bin")
    assert (first.range, first.status) == (None, 200)
    assert (second.range, second.status) == ("bytes=300000-", 206)
    assert files.bytes_sent == len(DATA)  # nothing sent twice


async def test_without_range_support_a_cut_download_starts_over(files: FileServer, make: Any) -> None:
    sha = files.add("/big.bin", DATA)
    files.ranges = False
    files.cut_first, files.cut_at = 1, 300_000
    cache = make()
    blob = await cache.get(art(files.url("/big.bin"), sha), noop)
    assert [r.status for r in files.gets("/big.bin")] == [200, 200]
    assert files.bytes_sent == len(DATA) + 300_000
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha


async def test_a_failing_server_is_retried_until_it_answers(files: FileServer, make: Any) -> None:
    sha = files.add("/f.bin", b"payload")
    files.fail_first = 2
    blob = await make().get(art(files.url("/f.bin"), sha), noop)
    assert [r.status for r in files.gets("/f.bin")] == [503, 503, 200]
    assert blob.read_bytes() == b"payload"


async def test_a_server_that_keeps_failing_is_a_fetch_error_naming_the_url(files: FileServer, make: Any) -> None:
    sha = files.add("/f.bin", b"payload")
    files.fail_first = 100
    with pytest.raises(artifacts.FetchError, match=r"/f.bin: HTTP 503 \(after 4 attempts\)"):
        await make().get(art(files.url("/f.bin"), sha), noop)


async def test_not_found_is_not_retried(files: FileServer, make: Any) -> None:
    with pytest.raises(artifacts.FetchError, match="answered HTTP 404"):
        await make().get(art(files.url("/missing.bin"), "a" * 64), noop)
    assert len(files.gets("/missing.bin")) == 1


async def test_a_wrong_digest_names_url_expected_and_actual_and_installs_nothing(
    files: FileServer, make: Any, tmp_path: Path
) -> None:
    actual = files.add("/web.tgz", DATA)
    wrong = hashlib.sha256(b"something else").hexdigest()
    cache = make()
    vdir = tmp_path / "versions" / "web" / "1.0"
    with pytest.raises(artifacts.DigestMismatch) as caught:
        await cache.install(
            [art(files.url("/ok.bin"), files.add("/ok.bin", b"ok")), art(files.url("/web.tgz"), wrong)],
            "web",
            "1.0",
            vdir,
            noop,
        )
    message = str(caught.value)
    assert files.url("/web.tgz") in message and wrong in message and actual in message
    assert not vdir.exists() or list(vdir.iterdir()) == []  # not even the artifact that was right
    assert not (cache.root / "sha256" / wrong).exists()
    assert list((cache.root / "partial").iterdir()) == []


async def test_a_slow_server_times_out_each_attempt(files: FileServer, make: Any) -> None:
    sha = files.add("/slow.bin", DATA)
    files.delay = 1.0
    with pytest.raises(artifacts.FetchError, match="after 2 attempts"):
        await make(read_timeout=0.3, attempts=2).get(art(files.url("/slow.bin"), sha), noop)


async def test_the_total_timeout_bounds_a_slow_download(files: FileServer, make: Any) -> None:
    sha = files.add("/slow.bin", DATA)
    files.delay = 0.1
    with pytest.raises(artifacts.FetchError, match=r"not fetched within 0\.5 s"):
        await make(total_timeout=0.5).get(art(files.url("/slow.bin"), sha), noop)


async def test_an_artifact_over_the_size_cap_is_refused(files: FileServer, make: Any) -> None:
    big = bytes(32 << 20)  # more than the kernel's socket buffers hold, so what is sent shows what was read
    sha = files.add("/big.bin", big)
    with pytest.raises(artifacts.FetchError, match="over --artifact-max-mb"):
        await make(max_bytes=1000).get(art(files.url("/big.bin"), sha), noop)
    assert files.bytes_sent < len(big) / 2
    assert not (make().root / "sha256" / sha).exists()


async def test_the_size_cap_is_counted_while_receiving_when_the_size_is_not_announced(
    files: FileServer, make: Any
) -> None:
    big = bytes(32 << 20)
    sha = files.add("/big.bin", big)
    files.no_length = True
    with pytest.raises(artifacts.FetchError, match="over --artifact-max-mb"):
        await make(max_bytes=1 << 20).get(art(files.url("/big.bin"), sha), noop)
    assert files.bytes_sent < len(big) / 2
    assert (await make().get(art(files.url("/big.bin"), sha), noop)).stat().st_size == len(big)


async def test_a_body_of_no_announced_size_cut_short_is_fetched_again_whole(files: FileServer, make: Any) -> None:
    sha = files.add("/f.bin", DATA)
    files.no_length, files.cut_first, files.cut_at = True, 1, 300_000
    assert (await make().get(art(files.url("/f.bin"), sha), noop)).read_bytes() == DATA
    assert len(files.gets("/f.bin")) == 2


async def test_the_bytes_served_are_the_bytes_hashed_whatever_the_encoding_header(files: FileServer, make: Any) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    sha = files.add("/a.tar.gz", buf.getvalue())
    files.gzip_encoding = True
    assert (await make().get(art(files.url("/a.tar.gz"), sha), noop)).read_bytes() == buf.getvalue()


async def test_progress_is_reported_with_the_expected_size(files: FileServer, make: Any) -> None:
    sha = files.add("/p.bin", DATA)
    files.delay = 0.02
    seen: list[tuple[int, int | None]] = []
    await make().get(art(files.url("/p.bin"), sha), lambda url, got, size: seen.append((got, size)))
    assert len(seen) >= 2 and seen[-1] == (len(DATA), len(DATA))
    assert all(size == len(DATA) for _, size in seen)


async def test_unpacking_an_archive_artifact_applies_the_limits(files: FileServer, make: Any, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    sha = files.add("/evil.tgz", buf.getvalue())
    with pytest.raises(artifacts.FetchError, match=r"evil.tgz entry '../escape' goes up"):
        await make(unpack=extract.Limits(1000, 10)).install(
            [art(files.url("/evil.tgz"), sha)], "web", "1.0", tmp_path / "v", noop
        )
    assert not (tmp_path / "escape").exists()


async def test_the_cache_evicts_the_least_recently_used_blob_no_install_pins(
    files: FileServer, make: Any, tmp_path: Path
) -> None:
    blobs = {name: os.urandom(400_000) for name in ("a", "b", "c")}
    shas = {name: files.add(f"/{name}.bin", data) for name, data in blobs.items()}
    cache = make(cache_bytes=900_000)
    state = tmp_path / "state"
    # "a" is installed by web 1.0 (its version directory exists): pinned, never evicted.
    await cache.install([art(files.url("/a.bin"), shas["a"])], "web", "1.0", state / "versions" / "web" / "1.0", noop)
    await cache.get(art(files.url("/b.bin"), shas["b"]), noop)
    os.utime(cache.root / "sha256" / shas["a"], (1, 1))  # "a" is the oldest, but pinned
    await cache.install([art(files.url("/c.bin"), shas["c"])], "web", "2.0", state / "versions" / "web" / "2.0", noop)
    left = {p.name for p in (cache.root / "sha256").iterdir()}
    assert left == {shas["a"], shas["c"]}  # "b", unpinned, went
    # Once the install of 1.0 is gone, its blob is no longer pinned.
    (state / "versions" / "web" / "1.0" / "a.bin").unlink()
    (state / "versions" / "web" / "1.0").rmdir()
    await cache.get(art(files.url("/b.bin"), shas["b"]), noop)
    assert cache.evict() == [f"sha256/{shas['a']}"]


@pytest.mark.parametrize("parallel", [1, 3])
async def test_downloads_at_once_are_bounded_over_the_whole_agent(files: FileServer, make: Any, parallel: int) -> None:
    files.delay = 0.05
    wanted = [art(files.url(f"/{i}.bin"), files.add(f"/{i}.bin", os.urandom(200_000))) for i in range(5)]
    cache = make(parallel=parallel)
    await asyncio.gather(*(cache.get(a, noop) for a in wanted))
    assert files.most_active == parallel


async def test_a_damaged_cached_blob_is_fetched_again(files: FileServer, make: Any) -> None:
    sha = files.add("/d.bin", b"good bytes")
    cache = make()
    blob = await cache.get(art(files.url("/d.bin"), sha), noop)
    blob.write_bytes(b"bad bytes!")
    assert (await cache.get(art(files.url("/d.bin"), sha), noop)).read_bytes() == b"good bytes"
    assert len(files.gets("/d.bin")) == 2


def test_a_url_with_a_password_is_shown_without_it() -> None:
    assert artifacts.shown("https://user:secret@example.org:8443/x.tgz") == "https://example.org:8443/x.tgz"
