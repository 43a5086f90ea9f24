"""Step log files out of every script's reach: private directories, no link ever followed.

The agent runs as root and writes the output of every script to
`<state>/logs/<service>/<id>/<step>.log` (see `layout`), as the kubelet keeps
/var/log/pods outside the containers. A script (or a service that runs as
another user) must not be able to make the agent write, truncate or chmod any
other file, so every operation here:

- reaches the log directory by walking its absolute path one component at a
  time from `/` with `O_NOFOLLOW | O_DIRECTORY` (a symbolic link anywhere on
  the way is refused, not followed), creating what is missing 0700;
- checks the directory it ends in is owned by the agent's user, and makes it
  0700, so nobody else can plant a name in it;
- then acts on names inside that directory through its file descriptor only
  (`openat`, `linkat`, `renameat`, `fstatat`), each file opened `O_NOFOLLOW`
  and checked to be a regular file.

`steps` opens logs with `open_append` and rotates them with `rotate`; `layout`
says where they are. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["open_append", "open_dir", "rotate"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: Path | str, why: str) -> OSError:
    return OSError(errno.ELOOP, f"refused to use {path}: {why}")


def open_dir(path: Path, create: bool = True) -> int:
    """A file descriptor of the private directory `path` (absolute), no component a link; created 0700 if missing.

    FileNotFoundError when it is missing and `create` is false; OSError naming the path when a
    component is a link or not a directory, or the directory belongs to another user.
    """
    if not path.is_absolute():
        raise ValueError(f"{path} is not absolute")
    fd = os.open("/", _DIR)
    try:
        walked = Path("/")
        for part in path.parts[1:]:
            walked /= part
            try:
                child = _open_child(part, fd, walked)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = _open_child(part, fd, walked)
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise _refuse(path, f"owned by uid {st.st_uid}, not by the agent's user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(part: str, parent: int, walked: Path) -> int:
    try:
        return os.open(part, _DIR, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(walked, "a symbolic link or not a directory") from None
        raise


@contextlib.contextmanager
def _directory(path: Path, create: bool) -> Iterator[int]:
    fd = open_dir(path, create)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_regular(name: str, flags: int, dir_fd: int, mode: int = 0o600) -> int:
    """Open `name` in `dir_fd` with O_NOFOLLOW; refuse anything but a regular file (a FIFO, a device)."""
    try:
        fd = os.open(name, flags | _FILE, mode, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _refuse(name, "a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(name, "not a regular file")
    return fd


def open_append(path: Path) -> BinaryIO:
    """Open the log `path` for appending, created (and made) 0600: logs may show env values."""
    with _directory(path.parent, create=True) as dir_fd:
        fd = _open_regular(path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, dir_fd)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return open(fd, "wb")


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """If the log `path` is over `max_bytes`: copy it to `<path>.1` (older copies shifted up to `.<keep>`), empty it.

    Copy and truncate, not rename: a live run script keeps its log open (O_APPEND), a renamed file
    would go on growing under the new name. With O_APPEND its next write lands at the new end of the
    file. What it writes between the copy and the truncation (a few milliseconds) is lost.

    No copy is ever missing, not even for an instant (someone tailing or listing the logs never sees
    `.1` vanish): each older copy is hard-linked to a hidden temporary name that then atomically
    replaces the next one up, and the new `.1` is written under a hidden name and renamed over it.
    Everything happens on names in the log directory (reached without following a link) through its
    file descriptor; a name that is not a regular file is left alone. False when nothing was done.
    """
    try:
        dir_fd = open_dir(path.parent, create=False)
    except FileNotFoundError:
        return False
    try:
        name = path.name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size <= max_bytes:
            return False
        live = _open_regular(name, os.O_RDWR, dir_fd)
        try:
            if keep > 0:
                for n in range(keep - 1, 0, -1):
                    _replace_with_link(f"{name}.{n}", f"{name}.{n + 1}", dir_fd)
                staged = f".{name}.1.tmp"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged, dir_fd=dir_fd)
                copy = _open_regular(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd)
                with open(copy, "wb") as dst, open(live, "rb", closefd=False) as src:
                    shutil.copyfileobj(src, dst)
                os.replace(staged, f"{name}.1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.ftruncate(live, 0)
        finally:
            os.close(live)
        return True
    finally:
        os.close(dir_fd)


def _replace_with_link(source: str, target: str, dir_fd: int) -> None:
    """Make `target` the file `source` is, atomically, leaving `source` in place (a missing source: nothing)."""
    staged = f".{target}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged, dir_fd=dir_fd)
    try:
        # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW links a link itself, never its target
        os.link(source, staged, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError:  # a filesystem without hard links: a plain rename, `source` missing for a moment
        os.replace(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.replace(staged, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
