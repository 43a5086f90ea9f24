"""`discoverd dashboard` over plain HTTP, with a real etcd: who may read, who may press the buttons.

The page acts with the caller's etcd credentials, so these check the guards
a browser test cannot easily reach: the access token, the Host check against
DNS rebinding, the CSRF token and Origin on writes, `--read-only`, and that a
button writes what `discoverd rollout pause` writes. The browser side is
tests/integration/agent/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from discoverd import embedded_etcd
from support.cli import discoverd
from support.dashboard import Dashboard
from support.etcd import RawEtcd

HOSTILE = "<img src=x onerror=alert(1)>"


def seed(etcd: RawEtcd, prefix: str) -> None:
    """Service web: versions 1.0 and 2.0, instance a on 1.0 listed by node-1 (no agent runs)."""
    run = {"command": "true", "argv": []}
    for version in ("1.0", "2.0"):
        etcd.put(
            f"{prefix}/services/web/versions/{version}/config/details", json.dumps({"name": "web", "run_script": run})
        )
    etcd.put(f"{prefix}/services/web/instances/a/config/details", json.dumps({"name": "web", "service_version": "1.0"}))
    etcd.put(f"{prefix}/servers/node-1/config/details", json.dumps({"service_instances": [{"name": "web", "id": "a"}]}))


def rollout_config(etcd: RawEtcd, prefix: str) -> dict[str, Any] | None:
    raw = etcd.get(f"{prefix}/services/web/rollout/config/details")
    return None if raw is None else dict(json.loads(raw))


def start(etcd_server: embedded_etcd.EtcdServer, prefix: str, tmp_path: Path, *args: str) -> Iterator[Dashboard]:
    board = Dashboard(etcd_server.endpoint, prefix, tmp_path / f"dashboard{len(args)}.log", args).start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def dashboard(
    etcd_server: embedded_etcd.EtcdServer, raw_etcd: RawEtcd, prefix: str, tmp_path: Path
) -> Iterator[Dashboard]:
    seed(raw_etcd, prefix)
    yield from start(etcd_server, prefix, tmp_path)


@pytest.fixture
def read_only(
    etcd_server: embedded_etcd.EtcdServer, raw_etcd: RawEtcd, prefix: str, tmp_path: Path
) -> Iterator[Dashboard]:
    seed(raw_etcd, prefix)
    yield from start(etcd_server, prefix, tmp_path, "--read-only")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each request says exactly which cookie it carries.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def csrf_of(http: aiohttp.ClientSession, board: Dashboard) -> str:
    async with http.get(f"{board.base}/", headers={"Cookie": board.cookie}) as answer:
        assert answer.status == 200
        html = await answer.text()
    return html.split('name="discoverd-csrf" content="', 1)[1].split('"', 1)[0]


async def post(
    http: aiohttp.ClientSession, board: Dashboard, path: str, body: Any = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    sent = {
        "Cookie": board.cookie,
        "Origin": board.base,
        "Content-Type": "application/json",
        "X-Discoverd-CSRF": await csrf_of(http, board),
    }
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    async with http.post(f"{board.base}{path}", data=json.dumps(body or {}), headers=sent) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_the_printed_url_sets_the_access_cookie_and_nothing_is_served_without_it(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{dashboard.base}/") as answer:
        assert answer.status == 401
    async with http.get(f"{dashboard.base}/api/events?view=fleet") as answer:
        assert answer.status == 401
    async with http.get(f"{dashboard.base}/?token=wrong", allow_redirects=False) as answer:
        assert answer.status == 401
    async with http.get(dashboard.url, allow_redirects=False) as answer:
        assert answer.status == 303 and answer.headers["Location"] == "/"  # the token leaves the address bar
        cookie = answer.headers["Set-Cookie"]
    assert f"discoverd-dashboard-{dashboard.port}={dashboard.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with http.get(f"{dashboard.base}/", headers={"Cookie": dashboard.cookie}) as answer:
        assert answer.status == 200
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Frame-Options"] == "DENY"


async def test_another_host_name_is_refused_so_dns_rebinding_reaches_nothing(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": dashboard.cookie, "Host": f"attacker.example:{dashboard.port}"}
    async with http.get(f"{dashboard.base}/", headers=headers) as answer:
        assert answer.status == 421
    headers["Host"] = f"localhost:{dashboard.port}"
    async with http.get(f"{dashboard.base}/", headers=headers) as answer:
        assert answer.status == 200


async def test_start_pause_resume_undo_write_the_rollout_config_as_the_cli_does(
    dashboard: Dashboard, http: aiohttp.ClientSession, raw_etcd: RawEtcd, prefix: str
) -> None:
    status, body = await post(http, dashboard, "/api/rollouts/web", {"to_version": "2.0", "canary": 1})
    assert status == 200, body
    assert "Started a rollout of 'web' to version 2.0" in body["message"]
    config = rollout_config(raw_etcd, prefix) or {}
    assert (config["name"], config["to_version"], config["canary"]) == ("web", "2.0", 1)
    status, body = await post(http, dashboard, "/api/rollouts/web/pause")
    assert status == 200, body
    assert (rollout_config(raw_etcd, prefix) or {})["paused"] is True
    status, body = await post(http, dashboard, "/api/rollouts/web/resume")
    assert status == 200, body
    assert (rollout_config(raw_etcd, prefix) or {})["paused"] is False
    status, body = await post(http, dashboard, "/api/rollouts/web/undo")
    assert status == 200 and body["message"] == "Asked the controller to undo the rollout of 'web' to 2.0.", body
    assert (rollout_config(raw_etcd, prefix) or {})["undo"] is True
    status, body = await post(http, dashboard, "/api/rollouts/web/nope")
    assert status == 404 and "pause, resume or undo" in body["error"]
    # A second start while this one is under way is refused with the CLI's own words (no controller
    # runs here: the config alone is "under way", its status not written yet).
    status, body = await post(http, dashboard, "/api/rollouts/web", {"to_version": "3.0"})
    assert status == 409 and "has no version '3.0'" in body["error"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"X_Discoverd_CSRF": ""}, 403),
        ({"X_Discoverd_CSRF": "stale"}, 403),
        ({"Origin": "http://attacker.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Content_Type": "text/plain"}, 415),
        ({"Cookie": ""}, 401),
    ],
)
async def test_a_write_without_the_pages_token_origin_or_cookie_is_refused_and_writes_nothing(
    dashboard: Dashboard,
    http: aiohttp.ClientSession,
    raw_etcd: RawEtcd,
    prefix: str,
    change: dict[str, str],
    expected: int,
) -> None:
    status, _ = await post(http, dashboard, "/api/rollouts/web", {"to_version": "2.0"}, **change)
    assert status == expected
    assert rollout_config(raw_etcd, prefix) is None


async def test_read_only_refuses_every_write(
    read_only: Dashboard, http: aiohttp.ClientSession, raw_etcd: RawEtcd, prefix: str
) -> None:
    status, body = await post(http, read_only, "/api/rollouts/web", {"to_version": "2.0"})
    assert status == 403 and "--read-only" in body["error"]
    assert rollout_config(raw_etcd, prefix) is None
    async with http.get(f"{read_only.base}/", headers={"Cookie": read_only.cookie}) as answer:
        assert 'name="discoverd-read-only" content="1"' in await answer.text()


async def test_a_bad_start_request_names_the_field(
    dashboard: Dashboard, http: aiohttp.ClientSession, raw_etcd: RawEtcd, prefix: str
) -> None:
    status, body = await post(http, dashboard, "/api/rollouts/web", {"to_version": "2.0", "max_unavailable": "200%"})
    assert status == 400 and "max_unavailable" in body["error"]
    status, body = await post(http, dashboard, "/api/rollouts/web", {"to_version": "2.0", "command": "rm"})
    assert status == 400 and "unknown fields: command" in body["error"]
    assert rollout_config(raw_etcd, prefix) is None


async def test_the_event_stream_sends_a_new_view_when_etcd_changes(
    dashboard: Dashboard, http: aiohttp.ClientSession, raw_etcd: RawEtcd, prefix: str
) -> None:
    url = f"{dashboard.base}/api/events?view=service&service=web"
    async with http.get(url, headers={"Cookie": dashboard.cookie}) as answer:
        assert answer.headers["Content-Type"] == "text/event-stream"
        first = await next_view(answer)
        assert [v["version"] for v in first["versions"]] == ["1.0", "2.0"]
        raw_etcd.put(f"{prefix}/services/web/versions/{HOSTILE}/config/details", json.dumps({"name": "web"}))
        second = await next_view(answer)
        assert [v["version"] for v in second["versions"]] == ["1.0", "2.0", HOSTILE]
        assert second["revision"] > first["revision"]


async def test_an_unknown_view_or_a_bad_name_is_a_clear_error(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    for path, reason in (
        ("events?view=nope", "view must be"),
        ("events?view=service&service=..", "must not be '..'"),
        ("logs?server=node-1&service=web", "instance: must not be empty"),
        ("logs?server=node-1&service=web&instance=..", "instance: must not be '..'"),
    ):
        async with http.get(f"{dashboard.base}/api/{path}", headers={"Cookie": dashboard.cookie}) as answer:
            assert answer.status == 400 and reason in await answer.text()


async def next_view(answer: aiohttp.ClientResponse, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        line = (await asyncio.wait_for(answer.content.readline(), timeout)).decode()
        if line.startswith("data: "):
            return dict(json.loads(line.removeprefix("data: ")))


async def test_a_lost_etcd_is_shown_on_the_page_and_the_view_catches_up_when_it_is_back(
    private_etcd: embedded_etcd.EtcdServer, prefix: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    etcd = RawEtcd(private_etcd.endpoint)
    seed(etcd, prefix)
    board = Dashboard(private_etcd.endpoint, prefix, tmp_path / "dashboard.log", ("--etcd-timeout", "1")).start()
    try:
        url = f"{board.base}/api/events?view=fleet"
        async with http.get(url, headers={"Cookie": board.cookie}) as answer:
            assert (await next_view(answer))["etcd_error"] == ""
            private_etcd.stop()
            while not (view := await next_view(answer))["etcd_error"]:
                pass
            assert "etcd" in view["etcd_error"]
            assert [s["name"] for s in view["services"]] == ["web"]  # the last state seen stays on the page
            private_etcd.start()
            etcd.put(f"{prefix}/services/api/versions/1.0/config/details", json.dumps({"name": "api"}))
            while (view := await next_view(answer))["etcd_error"] or len(view["services"]) < 2:
                pass
            assert [s["name"] for s in view["services"]] == ["api", "web"]
    finally:
        board.stop()


def test_an_unreachable_etcd_or_a_bad_address_is_one_line_and_no_url(tmp_path: Path) -> None:
    result = discoverd("--etcd-endpoints", "http://127.0.0.1:9", "--etcd-timeout", "1", "dashboard")
    assert result.returncode == 1 and "http" not in result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    result = discoverd("dashboard", "--address", "nowhere")
    assert result.returncode == 2 and "'nowhere' is not HOST:PORT" in result.stderr
