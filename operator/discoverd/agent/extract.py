"""Place a verified artifact in a version directory: unpack a tar or zip archive, or copy a file, never outside `dest`.

The last stage of an artifact (`artifacts` fetches and verifies it, then calls
`unpack` or `place`). An archive is untrusted input even with the right
digest (whoever published it may be hostile, or careless), so every entry is
checked as it is read, before anything of it is written:

- paths: no absolute path, no `..`, no NUL; `./` and empty segments dropped;
- links: a symbolic link whose target (resolved from its own directory) would
  leave `dest`, or is absolute, is refused; a hard link may only point to a
  regular file unpacked earlier from the same archive;
- writes go through directory file descriptors opened with `O_NOFOLLOW` from
  `dest` down, so no entry is written through a link (one made by an earlier
  entry or found on disk): an entry that would is refused; an existing file
  is unlinked first and created again (`O_EXCL`), so a write never lands in a
  file hard-linked from elsewhere;
- types: device files and FIFOs are refused; modes keep the permission bits
  only (setuid, setgid and sticky bits are dropped), directories stay
  writable by their owner;
- limits: total unpacked bytes and the number of entries, counted while
  unpacking (the bytes actually decompressed, not what headers claim), as
  Nomad's `decompression_size_limit` and `decompression_file_count_limit`.

Blocking file I/O: the supervisor runs it in a thread. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Limits", "Unpacked", "UnsafeArchive", "place", "unpack"]

_CHUNK = 1 << 20
_MAX_LINK_TARGET = 4096


class UnsafeArchive(Exception):
    """The archive cannot be unpacked safely (or at all): the message names the entry and why."""


@dataclass(frozen=True)
class Limits:
    """How much one artifact may unpack to."""

    max_bytes: int = 10 * 2**30
    max_files: int = 4096


@dataclass(frozen=True)
class Unpacked:
    files: int
    bytes: int


def _parts(name: str, what: str = "entry") -> list[str]:
    """The segments of an archive path, checked: relative, no '..', no NUL."""
    if "\0" in name:
        raise UnsafeArchive(f"{what} {name!r} holds NUL")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r} goes up with '..'")
    return parts


def _open_dir(base: int, parts: list[str], create: bool, shown: str) -> int:
    """A new fd of the directory `parts` under `base`, each segment opened without following links."""
    fd = os.dup(base)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeArchive(f"{shown!r} goes through a link or a file ({part!r})") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _clear(parent: int, name: str) -> None:
    """Remove what is at `name` (a file or link; not a directory), so the entry is created afresh."""
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeArchive(f"{name!r} is a directory already")
    os.unlink(name, dir_fd=parent)


class _Writer:
    """Writes entries under the `dest` directory fd, keeping count against the limits."""

    def __init__(self, root: int, limits: Limits, mode: int | None) -> None:
        self.root = root
        self.limits = limits
        self.mode = mode
        self.files = 0
        self.bytes = 0
        self.regular: set[tuple[str, ...]] = set()

    def count(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeArchive(f"holds more than {self.limits.max_files} entries (the agent's --artifact-max-files)")

    def _room(self, size: int, name: str) -> None:
        if self.bytes + size > self.limits.max_bytes:
            raise UnsafeArchive(
                f"unpacks to more than {self.limits.max_bytes} bytes (at {name!r}; the agent's --artifact-max-unpacked-mb)"
            )

    @contextlib.contextmanager
    def _parent(self, parts: list[str], name: str) -> Iterator[int]:
        fd = _open_dir(self.root, parts[:-1], True, name)
        try:
            yield fd
        finally:
            os.close(fd)

    def directory(self, name: str, mode: int) -> None:
        parts = _parts(name)
        if not parts:
            return
        fd = _open_dir(self.root, parts, True, name)
        try:
            os.fchmod(fd, (mode & 0o777) | 0o700)
        finally:
            os.close(fd)

    def file(self, name: str, src: IO[bytes], mode: int, declared: int | None = None) -> None:
        parts = _parts(name)
        if not parts:
            raise UnsafeArchive(f"entry {name!r} has no name")
        if declared is not None:
            self._room(declared, name)
        with self._parent(parts, name) as parent:
            _clear(parent, parts[-1])
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
            with open(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    self._room(len(chunk), name)
                    self.bytes += len(chunk)
                    out.write(chunk)
                os.fchmod(out.fileno(), (self.mode if self.mode is not None else mode) & 0o777)
        self.regular.add(tuple(parts))

    def symlink(self, name: str, target: str) -> None:
        parts = _parts(name)
        if not parts:
            raise UnsafeArchive(f"link {name!r} has no name")
        if not target or "\0" in target or target.startswith("/"):
            raise UnsafeArchive(f"link {name!r} points to {target!r}, outside the destination")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(f"link {name!r} points to {target!r}, outside the destination")
        with self._parent(parts, name) as parent:
            _clear(parent, parts[-1])
            os.symlink(target, parts[-1], dir_fd=parent)

    def hardlink(self, name: str, target: str) -> None:
        parts, source = _parts(name), _parts(target, "link target")
        if not parts or tuple(source) not in self.regular:
            raise UnsafeArchive(f"hard link {name!r} points to {target!r}, not a file unpacked before it")
        src_parent = _open_dir(self.root, source[:-1], False, target)
        try:
            with self._parent(parts, name) as parent:
                _clear(parent, parts[-1])
                os.link(source[-1], parts[-1], src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_parent)
        self.regular.add(tuple(parts))


def _dest_fd(version_dir: Path, dest: str) -> int:
    base = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_dir(base, _parts(dest, "dest"), True, dest)
    finally:
        os.close(base)


def _untar(path: Path, w: _Writer) -> None:
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            w.count(member.name)
            if member.isdir():
                w.directory(member.name, member.mode)
            elif member.isreg():
                src = tar.extractfile(member)
                assert src is not None
                w.file(member.name, src, member.mode, member.size)
            elif member.issym():
                w.symlink(member.name, member.linkname)
            elif member.islnk():
                w.hardlink(member.name, member.linkname)
            elif member.ischr() or member.isblk():
                raise UnsafeArchive(f"entry {member.name!r} is a device file")
            elif member.isfifo():
                raise UnsafeArchive(f"entry {member.name!r} is a FIFO")
            else:
                raise UnsafeArchive(f"entry {member.name!r} is of an unknown type {member.type!r}")


def _unzip(path: Path, w: _Writer) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        if len(entries) > w.limits.max_files:
            w.count("")  # fails at once: the central directory says how many there are
            raise UnsafeArchive(f"holds {len(entries)} entries, more than {w.limits.max_files}")
        for info in entries:
            w.count(info.filename)
            unix = info.external_attr >> 16 if info.create_system == 3 else 0
            kind = stat.S_IFMT(unix)
            if info.is_dir() or kind == stat.S_IFDIR:
                w.directory(info.filename, unix & 0o777 or 0o755)
            elif kind == stat.S_IFLNK:
                with archive.open(info) as src:
                    target = src.read(_MAX_LINK_TARGET + 1)
                if len(target) > _MAX_LINK_TARGET:
                    raise UnsafeArchive(f"link {info.filename!r} has a target longer than {_MAX_LINK_TARGET} bytes")
                w.symlink(info.filename, os.fsdecode(target))
            elif kind in (0, stat.S_IFREG):
                with archive.open(info) as src:
                    w.file(info.filename, src, unix & 0o777 or 0o644)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                raise UnsafeArchive(f"entry {info.filename!r} is a device file")
            else:
                raise UnsafeArchive(f"entry {info.filename!r} is a FIFO or socket")


def unpack(archive: Path, kind: str, version_dir: Path, dest: str, limits: Limits, mode: int | None) -> Unpacked:
    """Unpack `archive` (`tar`, any compression tarfile reads, or `zip`) into `version_dir/dest`.

    UnsafeArchive for an entry refused or a broken archive; OSError for the disk's own errors.
    """
    root = _dest_fd(version_dir, dest)
    w = _Writer(root, limits, mode)
    try:
        if kind == "zip":
            _unzip(archive, w)
        else:
            _untar(archive, w)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, ValueError) as error:
        # RuntimeError: an encrypted zip entry; ValueError: a malformed header field.
        raise UnsafeArchive(f"is not a valid {kind} archive: {error}") from None
    finally:
        os.close(root)
    return Unpacked(w.files, w.bytes)


def place(blob: Path, version_dir: Path, dest: str, name: str, mode: int) -> None:
    """Copy the file `blob` to `version_dir/dest/name` with `mode` (a copy: the cache keeps its blob)."""
    root = _dest_fd(version_dir, dest)
    w = _Writer(root, Limits(max_bytes=1 << 62, max_files=1), mode)
    try:
        with open(blob, "rb") as src:
            w.file(name, src, mode)
    finally:
        os.close(root)
