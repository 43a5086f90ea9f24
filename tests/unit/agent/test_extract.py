"""Unpacking artifacts never writes outside `dest`: crafted tar and zip archives, made here, on a real filesystem."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from discoverd.agent import extract

LIMITS = extract.Limits(max_bytes=1 << 20, max_files=100)
Add = Callable[[tarfile.TarFile], None]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "") -> Add:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


def tar(path: Path, *members: Add, compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as t:
        for add in members:
            add(t)
    return path


def zip_(path: Path, *entries: tuple[str, bytes, int]) -> Path:
    """Entries (name, data, unix mode with file type bits)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return path


@pytest.fixture
def where(tmp_path: Path) -> tuple[Path, Path]:
    """(version directory, a directory beside it that nothing may touch)."""
    vdir, outside = tmp_path / "versions" / "svc" / "1.0", tmp_path / "outside"
    vdir.mkdir(parents=True)
    outside.mkdir()
    (outside / "victim").write_text("original")
    return vdir, outside


def unpack(archive: Path, vdir: Path, dest: str = "app", kind: str = "tar", **kw: int) -> extract.Unpacked:
    return extract.unpack(archive, kind, vdir, dest, extract.Limits(**kw) if kw else LIMITS, None)


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"


@pytest.mark.parametrize("compression", ["gz", "xz", "bz2", ""])
def test_a_plain_archive_unpacks_with_its_files_links_and_modes(where: tuple[Path, Path], compression: str) -> None:
    vdir, _ = where
    archive = tar(
        vdir.parent / "a.tar",
        member("bin", tarfile.DIRTYPE, mode=0o755),
        member("bin/web", data=b"#!/bin/sh\n", mode=0o755),
        member("./etc/web.conf", data=b"port=1\n"),
        member("web", tarfile.SYMTYPE, link="bin/web"),
        member("etc/copy.conf", tarfile.LNKTYPE, link="etc/web.conf"),
        compression=compression,
    )
    got = unpack(archive, vdir)
    app = vdir / "app"
    assert got == extract.Unpacked(files=5, bytes=17)
    assert (app / "bin" / "web").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((app / "bin" / "web").stat().st_mode) == 0o755
    assert stat.S_IMODE((app / "etc" / "web.conf").stat().st_mode) == 0o644
    assert os.readlink(app / "web") == "bin/web"
    assert (app / "etc" / "copy.conf").stat().st_ino == (app / "etc" / "web.conf").stat().st_ino


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([member("../victim", data=b"x")], "goes up with '..'"),
        ([member("app2/../../../outside/victim", data=b"x")], "goes up with '..'"),
        ([member("/abs/victim", data=b"x")], "absolute path"),
        ([member("esc", tarfile.SYMTYPE, link="../../../../outside")], "outside the destination"),
        ([member("esc", tarfile.SYMTYPE, link="/etc")], "outside the destination"),
        ([member("a/b", tarfile.SYMTYPE, link="../..")], "outside the destination"),
        ([member("hl", tarfile.LNKTYPE, link="../../../../outside/victim")], "goes up with '..'"),
        ([member("hl", tarfile.LNKTYPE, link="/etc/passwd")], "absolute path"),
        ([member("hl", tarfile.LNKTYPE, link="never-unpacked")], "not a file unpacked before it"),
        ([member("dev", tarfile.CHRTYPE)], "device file"),
        ([member("blk", tarfile.BLKTYPE)], "device file"),
        ([member("fifo", tarfile.FIFOTYPE)], "FIFO"),
        # An escaping link, then a write through it: refused at the link, nothing reaches outside.
        ([member("esc", tarfile.SYMTYPE, link="../../../../outside"), member("esc/victim", data=b"pwned")], "outside"),
        # A link inside dest is allowed, but nothing is written through it.
        ([member("d", tarfile.DIRTYPE), member("ln", tarfile.SYMTYPE, link="d"), member("ln/f", data=b"x")], "link"),
    ],
)
def test_a_crafted_tar_is_refused_and_nothing_leaves_dest(
    where: tuple[Path, Path], members: list[Add], reason: str
) -> None:
    vdir, outside = where
    archive = tar(vdir.parent / "evil.tgz", *members)
    with pytest.raises(extract.UnsafeArchive, match=reason):
        unpack(archive, vdir)
    untouched(outside)


def test_an_escaping_symlink_then_a_write_through_it_never_writes_outside(where: tuple[Path, Path]) -> None:
    vdir, outside = where
    (vdir / "app").mkdir()
    # As an earlier download script could have left it: a link in dest pointing outside.
    os.symlink(outside, vdir / "app" / "esc")
    with pytest.raises(extract.UnsafeArchive, match="goes through a link"):
        unpack(tar(vdir.parent / "a.tgz", member("esc/victim", data=b"pwned")), vdir)
    untouched(outside)


def test_a_file_over_an_existing_link_replaces_the_link_not_its_target(where: tuple[Path, Path]) -> None:
    vdir, outside = where
    (vdir / "app").mkdir()
    os.symlink(outside / "victim", vdir / "app" / "conf")
    os.link(outside / "victim", vdir / "app" / "hard")
    unpack(tar(vdir.parent / "a.tgz", member("conf", data=b"new"), member("hard", data=b"new")), vdir)
    assert (vdir / "app" / "conf").read_bytes() == b"new" and not (vdir / "app" / "conf").is_symlink()
    assert (vdir / "app" / "hard").read_bytes() == b"new"
    untouched(outside)


def test_a_dest_through_a_link_is_refused(where: tuple[Path, Path]) -> None:
    vdir, outside = where
    os.symlink(outside, vdir / "lib")
    with pytest.raises(extract.UnsafeArchive, match="goes through a link"):
        unpack(tar(vdir.parent / "a.tgz", member("victim", data=b"x")), vdir, dest="lib")
    untouched(outside)


def test_setuid_setgid_and_sticky_bits_are_dropped(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    unpack(
        tar(vdir.parent / "a.tgz", member("su", data=b"x", mode=0o6755), member("d", tarfile.DIRTYPE, mode=0o1777)),
        vdir,
    )
    assert stat.S_IMODE((vdir / "app" / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((vdir / "app" / "d").stat().st_mode) == 0o777


def test_the_artifact_mode_applies_to_every_unpacked_file(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    archive = tar(vdir.parent / "a.tgz", member("a", data=b"x", mode=0o600), member("b/c", data=b"y", mode=0o4777))
    extract.unpack(archive, "tar", vdir, ".", LIMITS, 0o750)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (vdir / "a", vdir / "b" / "c")} == {0o750}


def test_a_gzip_bomb_stops_at_the_size_limit(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    path = vdir.parent / "bomb.tgz"
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo("zeros")
        info.size = 64 << 20
        t.addfile(info, io.BytesIO(bytes(info.size)))
    assert path.stat().st_size < 1 << 20  # small on the wire, 64 MiB unpacked
    with pytest.raises(extract.UnsafeArchive, match="more than 1048576 bytes"):
        unpack(path, vdir)
    assert not (vdir / "app" / "zeros").exists() or (vdir / "app" / "zeros").stat().st_size <= 1 << 20


def test_many_small_files_stop_at_the_file_count_limit(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    archive = tar(vdir.parent / "many.tgz", *(member(f"f{i}", data=b"x") for i in range(20)))
    with pytest.raises(extract.UnsafeArchive, match="more than 10 entries"):
        unpack(archive, vdir, max_bytes=1 << 20, max_files=10)
    assert len(list((vdir / "app").iterdir())) <= 10


def test_a_zip_unpacks_with_modes_and_links(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    archive = zip_(
        vdir.parent / "a.zip",
        ("bin/", b"", stat.S_IFDIR | 0o755),
        ("bin/tool", b"#!/bin/sh\n", stat.S_IFREG | 0o4755),
        ("tool", b"bin/tool", stat.S_IFLNK | 0o777),
    )
    assert unpack(archive, vdir, kind="zip").files == 3
    assert stat.S_IMODE((vdir / "app" / "bin" / "tool").stat().st_mode) == 0o755
    assert os.readlink(vdir / "app" / "tool") == "bin/tool"


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("../../outside/victim", b"x", stat.S_IFREG | 0o644)], "goes up with '..'"),
        ([("/tmp/x", b"x", stat.S_IFREG | 0o644)], "absolute path"),
        ([("esc", b"../../../outside", stat.S_IFLNK | 0o777)], "outside the destination"),
        (
            [("d/", b"", stat.S_IFDIR | 0o755), ("l", b"d", stat.S_IFLNK | 0o777), ("l/f", b"x", stat.S_IFREG)],
            "goes through a link",
        ),
        ([("dev", b"", stat.S_IFCHR | 0o644)], "device file"),
        ([("fifo", b"", stat.S_IFIFO | 0o644)], "FIFO"),
    ],
)
def test_a_crafted_zip_is_refused_and_nothing_leaves_dest(
    where: tuple[Path, Path], entries: list[tuple[str, bytes, int]], reason: str
) -> None:
    vdir, outside = where
    with pytest.raises(extract.UnsafeArchive, match=reason):
        unpack(zip_(vdir.parent / "evil.zip", *entries), vdir, kind="zip")
    untouched(outside)


def test_a_zip_bomb_stops_at_the_size_limit_whatever_its_header_says(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    path = zip_(vdir.parent / "bomb.zip", ("zeros", bytes(32 << 20), stat.S_IFREG | 0o644))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(extract.UnsafeArchive, match="more than 1048576 bytes"):
        unpack(path, vdir, kind="zip")


def test_a_zip_with_too_many_entries_is_refused_before_unpacking(where: tuple[Path, Path]) -> None:
    vdir, _ = where
    path = zip_(vdir.parent / "many.zip", *((f"f{i}", b"x", stat.S_IFREG | 0o644) for i in range(20)))
    with pytest.raises(extract.UnsafeArchive, match="more than 10"):
        unpack(path, vdir, kind="zip", max_bytes=1 << 20, max_files=10)
    assert not (vdir / "app" / "f0").exists()


@pytest.mark.parametrize("data", [b"", b"not an archive at all", bytes(1024)])
def test_a_broken_archive_is_an_error_not_a_crash(where: tuple[Path, Path], data: bytes) -> None:
    vdir, _ = where
    for kind in ("tar", "zip"):
        path = vdir.parent / f"broken.{kind}"
        path.write_bytes(data)
        try:
            unpack(path, vdir, kind=kind)
        except extract.UnsafeArchive as error:
            assert "archive" in str(error)


def test_place_copies_the_file_with_its_mode_and_replaces_a_link(where: tuple[Path, Path]) -> None:
    vdir, outside = where
    blob = vdir.parent / "blob"
    blob.write_bytes(b"binary")
    (vdir / "bin").mkdir()
    os.symlink(outside / "victim", vdir / "bin" / "tool")
    extract.place(blob, vdir, "bin", "tool", 0o755)
    assert (vdir / "bin" / "tool").read_bytes() == b"binary"
    assert stat.S_IMODE((vdir / "bin" / "tool").stat().st_mode) == 0o755
    assert blob.exists()
    untouched(outside)
