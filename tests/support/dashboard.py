"""A real `discoverd dashboard` process on a free loopback port, for the dashboard's tests and bench."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from support.wait import wait_until

__all__ = ["Dashboard"]

DISCOVERD = str(Path(sys.executable).parent / "discoverd")
_URL = re.compile(r"at (http://\S+)")


@dataclass
class Dashboard:
    """`discoverd dashboard --address 127.0.0.1:0 ...`; `url` is the printed one, with its access token."""

    endpoint: str
    prefix: str
    log_path: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, timeout: float = 30.0) -> Dashboard:
        argv = [DISCOVERD, "--etcd-endpoints", self.endpoint, "--prefix", self.prefix, "dashboard"]
        argv += ["--address", "127.0.0.1:0", *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def printed() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"discoverd dashboard exited: {self.log()}")
            found = _URL.search(self.log())
            return found.group(1) if found else None

        self.url = wait_until(printed, timeout, what="the dashboard's URL")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT"""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        return urlsplit(self.url).query.removeprefix("token=")

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def cookie(self) -> str:
        """The Cookie header a browser sends once it opened `url`."""
        return f"discoverd-dashboard-{self.port}={self.token}"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            spy = Path(sys.executable).with_name("py-spy")  # not a dependency: where a developer installed it
            if spy.exists():
                dump = subprocess.run(
                    [str(spy), "dump", "--pid", str(self.process.pid)], capture_output=True, text=True
                )
                print(f"discoverd dashboard did not stop; its stacks:\n{dump.stdout}{dump.stderr}", file=sys.stderr)
            self.process.kill()
            self.process.wait(10)
            print(f"its log:\n{self.log()}", file=sys.stderr)
            raise
