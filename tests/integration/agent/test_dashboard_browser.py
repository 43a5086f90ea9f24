"""The dashboard in a real browser: Debian's headless Chromium, a real agent, controller and etcd.

A person opens the printed URL, sees the server and its instances, starts a
rollout from the page, pauses and resumes it; the etcd rollout config
reflects each click and the page follows every change live, without a
reload. A read-only dashboard shows the same with its buttons off. Screenshots
of each page are kept under $DISCOVERD_TEST_ARTIFACTS (default: a new
temporary directory, printed).

Chromium is part of `make deps` (hack/deps.sh); without it the tests skip
before starting anything, except in CI (`CI` set), where they fail instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.agent.conftest import DISCOVERD, Agent, Node
from support import chromium
from support.dashboard import Dashboard
from support.wait import wait_until

SERVE = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: time.sleep(3600)"
HOSTILE = "<img src=x onerror=window.__xss=1>"
IDS = ("a", "b", "c")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: DISCOVERD_TEST_ARTIFACTS, or pytest's own temporary directory
    (kept for the last three runs, then removed by pytest, not left in /tmp for ever)."""
    where = os.environ.get("DISCOVERD_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots")
    path = Path(where) / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser_needed() -> None:
    reason = chromium.missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture
async def browser(browser_needed: None, tmp_path: Path) -> AsyncIterator[chromium.Browser]:
    b = chromium.Browser(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield await b.start()
    finally:
        await b.stop()


@pytest.fixture
def fleet(node: Node) -> Iterator[Node]:
    """Service web: 1.0 and 2.0, instances a, b, c Running 1.0 on node-1; a controller acting."""
    for version in ("1.0", "2.0"):
        node.version("web", version, run_script=node.py(SERVE), min_healthy_seconds=0.3, stop_timeout=5)
    for instance in IDS:
        node.instance("web", instance, "1.0")
    node.server(*(("web", i) for i in IDS))
    node.agent()
    argv = [DISCOVERD, "--etcd-endpoints", node.endpoint, "--prefix", node.prefix, "--etcd-timeout", "2"]
    controller = Agent([*argv, "controller", "--metrics-address", ""], node.state_dir.parent / "controller.log")
    node.agents.append(controller.start())  # ended by the node fixture, by pid
    for instance in IDS:
        node.wait_phase("web", instance, "Running")
    yield node


def dashboard(node: Node, *args: str) -> Dashboard:
    return Dashboard(node.endpoint, node.prefix, node.state_dir.parent / f"dashboard{len(args)}.log", args).start()


def config(node: Node) -> dict[str, Any]:
    raw = node.etcd.get(f"{node.prefix}/services/web/rollout/config/details")
    return {} if raw is None else dict(json.loads(raw))


def enabled(button: str) -> str:
    """JavaScript: whether the button with this id exists and is on."""
    return f"((b) => !!b && !b.disabled)(document.getElementById({json.dumps(button)}))"


def text(selector: str) -> str:
    """JavaScript: the text of the first element matching `selector` ('' if none)."""
    return f"(document.querySelector({json.dumps(selector)}) || {{textContent: ''}}).textContent"


async def test_rollout_started_paused_and_resumed_from_the_page_follows_etcd_live(
    browser: chromium.Browser, fleet: Node, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(f"\ndashboard screenshots: {artifacts}")
    # A hostile version name: shown as text everywhere, never as markup.
    fleet.version("web", HOSTILE, run_script=fleet.py(SERVE))
    board = dashboard(fleet)
    try:
        page = await browser.page()
        await page.goto(board.url)

        # the fleet page: the server online, three instances Running on 1.0
        await page.wait_for(f"{text('[data-server=node-1] .state')} === 'online'", what="node-1 online")
        on_1_0 = text('[data-service=web] [data-version="1.0"]')
        await page.wait_for(f"{on_1_0}.includes('Running 3')", what="3 instances Running 1.0")
        await page.screenshot(artifacts / "fleet.png")
        await page.evaluate("window.__marker = 'no reload'")

        # the service page, through its link
        await page.click("[data-service=web] a")
        await page.wait_for("location.pathname === '/services/web'")
        await page.wait_for(f"{text('[data-instance=a] .phase')} === 'Running'")
        assert HOSTILE in await page.evaluate(text("main"))
        assert await page.evaluate("document.querySelectorAll('main img').length") == 0
        await page.screenshot(artifacts / "service.png")

        # the rollout page: start a rollout to 2.0 from the form
        await page.goto(f"{board.base}/services/web/rollout")
        await page.evaluate("window.__marker = 'no reload'")
        await page.wait_for(enabled("btn-start"), what="the start button on")
        assert await page.evaluate("document.getElementById('btn-pause').disabled") is True
        await page.evaluate(
            "(() => { document.getElementById('start-version').value = '2.0';"
            " document.getElementById('start-canary').value = '1';"
            " document.getElementById('start-min-healthy-seconds').value = '3'; })()"
        )
        await page.click("#btn-start")
        await page.wait_for(f"{text('#action-result')}.startsWith('Started a rollout')", what="the start answer")
        started = config(fleet)
        assert (started["to_version"], started["canary"], started["min_healthy_seconds"]) == ("2.0", 1, 3)
        await page.wait_for(f"{text('#rollout-phase')} === 'Progressing'", what="Progressing shown")
        await page.wait_for(f"{text('#canary')} === 'a'", what="the canary shown")

        # pause: the config says so, the controller stops, the page shows it
        await page.wait_for(enabled("btn-pause"))
        await page.click("#btn-pause")
        await page.wait_for(f"{text('#action-result')}.startsWith('Asked the controller to pause')")
        assert config(fleet)["paused"] is True
        await page.wait_for(f"{text('#rollout-phase')} === 'Paused'", timeout=30, what="Paused shown")
        await page.wait_for(enabled("btn-resume"))
        updated = int(await page.evaluate("document.getElementById('progress').dataset.updated"))
        assert updated < len(IDS), "the pause came after the last batch"
        await page.screenshot(artifacts / "rollout-paused.png")

        # resume: the rollout goes on to the end, shown live
        await page.click("#btn-resume")
        await page.wait_for(f"{text('#action-result')}.startsWith('Asked the controller to resume')")
        assert config(fleet)["paused"] is False
        await page.wait_for(f"{text('#rollout-phase')} === 'Succeeded'", timeout=60, what="Succeeded shown")
        assert await page.evaluate(text("#rollout-counts")) == "healthy 3/3, updated 3/3"
        assert await page.evaluate("document.querySelectorAll('#batches li').length") >= 2
        await page.screenshot(artifacts / "rollout.png")
        assert await page.evaluate("window.__marker") == "no reload"

        # the instance page: what the agent reports, with the last phase changes
        await page.click("[data-instance=a] a")
        await page.wait_for(f"{text('[data-field=version]')} === '2.0'")
        assert await page.evaluate(text("[data-field=phase]")) == "Running"
        history = await page.evaluate("[...document.querySelectorAll('table tbody tr')].map((r) => r.textContent)")
        assert any("2.0" in row for row in history) and any("1.0" in row for row in history), history
        await page.screenshot(artifacts / "instance.png")

        assert await page.evaluate("window.__xss === undefined") is True
        assert page.errors == [], page.errors
    finally:
        board.stop()


async def test_a_read_only_dashboard_shows_the_fleet_with_every_button_off(
    browser: chromium.Browser, fleet: Node, artifacts: Path
) -> None:
    board = dashboard(fleet, "--read-only")
    try:
        page = await browser.page()
        await page.goto(board.url)
        await page.wait_for(f"{text('#mode')} === 'read-only'")
        await page.goto(f"{board.base}/services/web/rollout")
        await page.wait_for("document.getElementById('btn-start') !== null")
        for button in ("start", "pause", "resume", "undo"):
            assert await page.evaluate(f"document.getElementById('btn-{button}').disabled") is True
        # The page's own request, with its token, is refused by the server too.
        answer = await page.evaluate(
            "fetch('/api/rollouts/web', {method: 'POST', headers: {'Content-Type': 'application/json',"
            " 'X-Discoverd-CSRF': document.querySelector('meta[name=discoverd-csrf]').content},"
            " body: JSON.stringify({to_version: '2.0'})}).then((r) => r.status)"
        )
        assert answer == 403
        assert config(fleet) == {}
        await page.screenshot(artifacts / "read-only.png")
    finally:
        board.stop()


# Prints `line <n>` every 0.2 s, forever.
COUNTER = (
    "import itertools,time\nfor i in itertools.count():\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n"
)


async def test_the_instance_page_tails_its_log_live_through_the_agent(
    browser: chromium.Browser, node: Node, artifacts: Path
) -> None:
    node.version("web", "1.0", run_script=node.py(COUNTER), min_healthy_seconds=0.3)
    node.instance("web", "a", "1.0")
    node.server(("web", "a"))
    node.agent()  # serves its logs over HTTPS on a free loopback port, published in its status
    node.wait_phase("web", "a", "Running")
    board = dashboard(node, "--read-only")  # reading a log changes nothing: allowed read-only too
    try:
        page = await browser.page()
        await page.goto(board.url)
        await page.goto(f"{board.base}/instances/web/a")
        await page.evaluate("window.__marker = 'no reload'")
        log = "[...document.querySelectorAll('pre.log[data-server=node-1] span')].map((s) => s.textContent)"
        first = await page.wait_for(f"(({log}).filter((l) => l.startsWith('line ')).length >= 2) && {log}")
        last = int(first[-1].split()[1])
        # New lines keep coming into the same page, without a reload.
        later = await page.wait_for(f"(({log}).includes('line {last + 5}\\n')) && {log}", timeout=20)
        numbers = [int(line.split()[1]) for line in later if line.startswith("line ")]
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), "lines lost or repeated"
        assert "live" in await page.evaluate(text(".log-state"))
        assert await page.evaluate("window.__marker") == "no reload"
        await page.screenshot(artifacts / "instance-log.png")
        grants = node.etcd.keys(f"{node.prefix}/grants/")
        assert len(grants) == 1, grants  # the tail's own lease-bound grant
        await page.goto("about:blank")  # the tab leaves: the dashboard ends the tail and revokes its lease
        wait_until(lambda: not node.etcd.keys(f"{node.prefix}/grants/"), 20, what="the grant gone with the tab")
    finally:
        board.stop()
