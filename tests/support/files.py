"""A real HTTP file server on 127.0.0.1 for artifact tests and benches, with faults on request.

It serves `files` (path -> bytes) and records every request, so a test can count
fetches and bytes sent. Behaviour is set on the object while it runs:
`ranges` (Accept-Ranges, ETag and 206 answers; off: every GET is a full 200),
`fail_first` (that many requests answered 503), `cut_first` (that many answers
cut after `cut_at` bytes: the connection is closed mid-body), `delay` (seconds
slept between 64 KiB chunks: a slow server), `gzip_encoding` (a
`Content-Encoding: gzip` header on the bytes, as a misconfigured server sends
for .tar.gz files), `no_length` (no Content-Length: the body ends with the
connection).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["FileServer", "Request", "serving"]


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    fail_first: int = 0
    cut_first: int = 0
    cut_at: int = 0
    delay: float = 0.0
    gzip_encoding: bool = False
    no_length: bool = False
    """Answer without Content-Length, the body ending when the connection closes."""
    requests: list[Request] = field(default_factory=list)
    bytes_sent: int = 0
    active: int = 0
    most_active: int = 0
    """Most answers being sent at once."""
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; its sha256."""
        self.files[path] = data
        return hashlib.sha256(data).hexdigest()

    def gets(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def _record(self, path: str, range_: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Request(path, range_, status))

    def _sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n


def _handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            range_ = self.headers.get("Range") if server.ranges else None
            data = server.files.get(path)
            with server._lock:
                fail = server.fail_first > 0
                if fail:
                    server.fail_first -= 1
                cut = not fail and data is not None and server.cut_first > 0
                if cut:
                    server.cut_first -= 1
            if fail or data is None:
                status = 503 if fail else 404
                server._record(path, range_, status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            start = 0
            if range_ and range_.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
                start = int(range_[6:].split("-", 1)[0])
            status = 206 if start else 200
            server._record(path, range_, status)
            body = data[start:]
            self.send_response(status)
            if server.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            if server.ranges:
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if server.gzip_encoding:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            limit = server.cut_at if cut else len(body)
            with server._lock:
                server.active += 1
                server.most_active = max(server.most_active, server.active)
            try:
                for at in range(0, limit, 1 << 16):
                    piece = body[at : min(at + (1 << 16), limit)]
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    server._sent(len(piece))
                    if server.delay:
                        time.sleep(server.delay)
            finally:
                with server._lock:
                    server.active -= 1
            if cut:
                self.close_connection = True

    return Handler


@contextmanager
def serving(server: FileServer | None = None) -> Iterator[FileServer]:
    """Run `server` on a free loopback port until the block ends."""
    server = server or FileServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="file server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
