"""Debian's headless Chromium driven over the DevTools protocol (CDP), for the dashboard's tests and bench.

A small CDP client over aiohttp's websocket client: no npm, no downloaded
browser. `Browser` starts `chromium` with a new profile directory and
`--remote-debugging-port=0`, reads the port from the `DevToolsActivePort`
file Chromium writes there, and is stopped by its pid (its process group:
the renderer and zygote processes are its children). `Page` navigates,
evaluates JavaScript, clicks with real mouse events and takes screenshots;
it keeps every JavaScript exception and console or CSP error in `errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["CHROMIUM", "Browser", "Page", "missing_reason"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
]


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if CHROMIUM is None:
        return "chromium is not installed (Debian: apt-get install chromium; `make deps` installs it)"
    return None


def _save(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Page:
    """One tab, through its own DevTools websocket."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()
        self.errors: list[str] = []
        """JavaScript exceptions, console errors and CSP violations seen in this tab."""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Page.loadEventFired":
                self._loaded.set()
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                self.errors.append(str(params["entry"].get("text")))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    async def enable(self) -> Page:
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        return self

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        self._loaded.clear()
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise AssertionError(f"could not open {url}: {result['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (promises awaited); an AssertionError if it throws."""
        result = await self.send(
            "Runtime.evaluate", timeout, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"{expression!r} threw: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        last = await self.evaluate(expression)
        while not last:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what or expression}: last {last!r}")
            await asyncio.sleep(0.05)
            last = await self.evaluate(expression)
        return last

    async def click(self, selector: str) -> None:
        """A real left click (mouse events at the element's centre), as a person's."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise AssertionError(f"nothing matches {selector!r}")
        x, y = box
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return _save(path, base64.b64decode(data["data"]))

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Browser:
    """One headless Chromium process with a profile directory of its own."""

    def __init__(self, profile: Path, log_path: Path) -> None:
        self.profile = profile
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._session: aiohttp.ClientSession | None = None
        self._pages: list[Page] = []
        self._scratch: Path | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert CHROMIUM is not None, missing_reason()
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        # Chromium makes its singleton directory (org.chromium.Chromium.*, holding a socket, so the
        # path must be short) in TMPDIR and leaves it there: a directory of our own, removed by `stop`.
        self._scratch = Path(tempfile.mkdtemp(prefix="chromium-"))
        env = {**os.environ, "TMPDIR": str(self._scratch)}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )

    def _active_port(self) -> int | None:
        """The port Chromium wrote to DevToolsActivePort (port, then the browser's path), once it has."""
        with contextlib.suppress(FileNotFoundError):
            words = (self.profile / "DevToolsActivePort").read_text().split()
            if len(words) >= 2:
                return int(words[0])
        return None

    async def start(self, timeout: float = 60.0) -> Browser:
        self.process = self._spawn()
        deadline = time.monotonic() + timeout
        while (port := self._active_port()) is None:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited with {self.process.returncode}: see {self.log_path}")
            if time.monotonic() > deadline:
                raise AssertionError(f"chromium wrote no DevToolsActivePort in {timeout:g} s: see {self.log_path}")
            await asyncio.sleep(0.05)
        self.port = port
        self._session = aiohttp.ClientSession()
        return self

    async def page(self) -> Page:
        """A new tab."""
        assert self._session is not None
        async with self._session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as answer:
            target = await answer.json()
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = await Page(self._session, ws).enable()
        self._pages.append(page)
        return page

    async def stop(self) -> None:
        for page in self._pages:
            with contextlib.suppress(Exception):
                await page.close()
        if self._session is not None:
            await self._session.close()
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group: started with a new session
            self.process.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
