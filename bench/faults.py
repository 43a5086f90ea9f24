"""Figure 5: the fault table. Each scenario disturbs a real agent (or operator) and counts the damage.

Every agent scenario runs on its own etcd with `--bystanders` valid instances
whose run script appends a line to `starts` and then execs `sleep`; their
identity (pid + process start time) is taken before the fault. Columns:

- disturbed: valid bystanders whose run process changed, or that are not
  `Running` with their old identity once the scenario has converged;
- restarted: run-process starts of bystanders beyond the first (lines in
  their `starts` files);
- double starts: an instance seen with two live run processes at once (a
  /proc sampler every 0.2 s, plus the start/stop stamps of the churned
  instance, plus the processes left once everything is stopped);
- lost: configuration writes not applied at the end, or status keys missing
  for desired instances (operator: objects missing or not matching etcd);
- outside: files created or changed outside the state directory (a listing
  of the scratch directory, where `../` and absolute-path IDs would land);
- survivors: processes carrying this run's token (every descendant of every
  script inherits it, daemons too) still alive after the server document is
  emptied and the agent has stopped everything;
- converge: seconds from the end of the fault until everything is as desired.

Scenarios: agent SIGKILL x10 in a loop of changes; etcd stopped; etcd paused
(SIGSTOP); compaction past the agent; operator SIGKILL during a 1,000-object
mirror (needs `make tools`: the test control plane); 1,000 malformed documents
and hostile IDs from a hypothesis fuzzer among valid ones; a run script that
double-forks a daemon, then is stopped.

    .venv/bin/python bench/faults.py            # 60 s outages
    .venv/bin/python bench/faults.py --quick    # 10 s stop, 20 s pause: a few minutes
    .venv/bin/python bench/faults.py --only daemon,fuzz

One JSON line per scenario and column on stdout, the table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import agent_world
import common

BENCH = "faults"
STARTS = 'date +"%s.%N $$" >> starts; exec sleep 1000000'
CHURN = (
    "trap 'date +\"$DISCOVERD_VERSION %s.%N $$ stop\" >> stamps; exit 0' TERM; "
    'date +"$DISCOVERD_VERSION %s.%N $$ start" >> stamps; sleep 1000000 & wait'
)


@dataclass
class Row:
    scenario: str
    disturbed: int | None = None
    restarted: int | None = None
    double_starts: int | None = None
    lost: int | None = None
    outside: int | None = None
    survivors: int | None = None
    converge: float | None = None
    notes: list[str] = field(default_factory=list)

    COLUMNS = ("disturbed", "restarted", "double_starts", "lost", "outside", "survivors")


class Scene:
    """One agent scenario: bystanders, a sampler, and the checks every row makes."""

    def __init__(self, w: agent_world.World, bystanders: int) -> None:
        self.w = w
        self.refs = [("steady", f"s{i}") for i in range(bystanders)]
        self.extra: list[tuple[str, str]] = []
        self.before: dict[tuple[str, str], tuple[int, int] | None] = {}
        self.max_live: dict[str, int] = {}
        self.status: agent_world.StatusWatch | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._files: dict[str, float] = {}

    def files(self) -> dict[str, float]:
        """Every file under the scratch directory except the state directory, etcd's data and logs."""
        out: dict[str, float] = {}
        skip = {self.w.state_dir, self.w.tmp / "etcd"}
        for root, dirs, names in os.walk(self.w.tmp):
            dirs[:] = [d for d in dirs if Path(root, d) not in skip]
            for name in names:
                if name.endswith(".log"):
                    continue
                path = Path(root, name)
                try:
                    out[str(path)] = path.lstat().st_mtime
                except OSError:
                    continue
        return out

    async def start(self, *agent_args: str, extra: list[tuple[str, str]] | None = None) -> None:
        w = self.w
        await w.version("steady", "1.0", run_script=agent_world.sh_run(STARTS), min_healthy_seconds=0)
        await w.put_many(
            (f"services/{s}/instances/{i}/config/details", {"name": s, "service_version": "1.0"}) for s, i in self.refs
        )
        self.extra = extra or []
        await w.server([*self.refs, *self.extra])
        self.status = await w.status_watch()
        w.start_agent("--lease-ttl", "5", *agent_args)
        await agent_world.wait_for(
            lambda: all(self.status and self.status.phase(s, i) == "Running" for s, i in self.refs),
            120,
            "bystanders Running",
            0.05,
        )
        self.before = {ref: w.identity(*ref) for ref in self.refs}
        self._files = self.files()
        self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            groups: dict[str, set[str]] = {}
            for env in (await asyncio.to_thread(self.w.marked)).values():
                ident = f"{env.get('DISCOVERD_SERVICE')}/{env.get('DISCOVERD_INSTANCE_ID')}"
                groups.setdefault(ident, set()).add(env["pgid"])
            for ident, g in groups.items():  # a run script and its children share a process group
                self.max_live[ident] = max(self.max_live.get(ident, 0), len(g))
            await asyncio.sleep(0.2)

    def steady_ok(self) -> bool:
        assert self.status is not None
        return all(
            self.status.phase(s, i) == "Running" and self.w.identity(s, i) == self.before[(s, i)] for s, i in self.refs
        )

    async def converge(
        self, since: float, extra: Callable[[], bool] = lambda: True, timeout: float = 120
    ) -> float | None:
        try:
            await agent_world.wait_for(lambda: self.steady_ok() and extra(), timeout, "convergence", 0.05)
        except TimeoutError:
            return None
        return time.time() - since

    async def finish(self, row: Row) -> Row:
        """Fill the common columns; then empty the server document and count what survives."""
        w, status = self.w, self.status
        assert status is not None
        row.disturbed = sum(
            1 for ref in self.refs if w.identity(*ref) != self.before[ref] or status.phase(*ref) != "Running"
        )
        starts = 0
        for s, i in self.refs:
            path = w.state_dir / "instances" / s / i / "starts"
            starts += max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0
        row.restarted = starts
        if self._sampler is not None:
            self._sampler.cancel()
        doubles = [ident for ident, n in self.max_live.items() if n > 1 and not ident.startswith("daemon/")]
        row.double_starts = (row.double_starts or 0) + len(doubles)
        if doubles:
            row.notes.append(f"two live run processes seen for {sorted(doubles)[:5]}")
        row.lost = row.lost or 0
        row.lost += sum(1 for ref in [*self.refs, *self.extra] if status.phase(*ref) is None)
        after = self.files()
        changed = [p for p, m in after.items() if self._files.get(p) != m]
        row.outside = len(changed)
        if changed:
            row.notes.append(f"outside the state dir: {changed[:3]}")
        # stop everything through the agent, then count what is left
        agent = w.agents[-1]
        if agent.proc is None or agent.proc.poll() is not None:
            row.notes.append("the agent had exited")
            w.start_agent("--lease-ttl", "5")
        await w.server([])
        try:
            await agent_world.wait_for(lambda: not status.status, 60, "every instance stopped", 0.1)
            await asyncio.sleep(1.0)
        except TimeoutError:
            row.notes.append(f"{len(status.status)} status keys left after emptying the server")
        left = w.marked()
        row.survivors = len(left)
        if left:
            names = sorted({f"{e.get('DISCOVERD_SERVICE')}/{e.get('DISCOVERD_INSTANCE_ID')}" for e in left.values()})
            row.notes.append(f"survivors of {names[:5]}")
        await status.stop()
        return row


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def churn_unstopped(path: Path) -> int:
    """Runs of the churned instance that never logged their TERM trap (killed outright, e.g. an orphan swept)."""
    started: set[str] = set()
    stopped: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            _version, _ts, pid, what = line.split()
            (started if what == "start" else stopped).add(pid)
    return len(started - stopped) - 1  # the one running at the end has not stopped yet


async def with_scene(
    args: argparse.Namespace,
    tmp: Path,
    name: str,
    body: Callable[[Scene, Row], Awaitable[None]],
    etcd_args: list[str] | None = None,
) -> Row:
    row = Row(name)
    d = tmp / "".join(c if c.isalnum() else "-" for c in name)[:60]
    d.mkdir(parents=True, exist_ok=True)
    with common.etcd_server(d, etcd_args or []) as etcd:
        async with agent_world.world(d, etcd) as w:
            scene = Scene(w, args.bystanders)
            try:
                await body(scene, row)
                await scene.finish(row)
            except Exception as error:  # a row that breaks is reported as broken, the others still run
                row.notes.append(f"scenario failed: {type(error).__name__}: {error}")
                common.log(f"{name}: {error!r}")
    return row


# --- the scenarios ---------------------------------------------------------------------------------


async def agent_kills(scene: Scene, row: Row) -> None:
    w = scene.w
    versions = 30
    for v in range(versions):
        await w.version("churn", f"v{v}", run_script=agent_world.sh_run(CHURN), min_healthy_seconds=0, stop_timeout=5)
    await w.instance("churn", "c1", "v0")
    await scene.start(extra=[("churn", "c1")])
    rng = random.Random(7)
    last = "v0"
    written = 0
    for _kill in range(10):
        for _ in range(rng.randint(1, 3)):
            last = f"v{rng.randrange(1, versions)}"
            await w.instance("churn", "c1", last)
            written += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        agent = w.agents[-1]
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(10)
        t = time.time()
        log_path = w.start_agent("--lease-ttl", "5").log_path
        await agent_world.wait_for(
            functools.partial(agent_world.agent_events, log_path, "Read configuration"), 30, "the agent up", 0.02
        )
    status = scene.status
    assert status is not None

    def applied() -> bool:
        s = status.status.get(("churn", "c1"), {})
        fresh = "updated_at" in s and _epoch(str(s["updated_at"])) >= t  # written by the last agent
        return fresh and s.get("phase") == "Running" and s.get("version") == last and churn_live() == 1

    def churn_live() -> int:
        return len({e["pgid"] for e in w.marked().values() if e.get("DISCOVERD_INSTANCE_ID") == "c1"})

    row.converge = await scene.converge(t, applied)
    if not applied():
        row.lost = 1
        row.notes.append(f"churn/c1 shows {status.status.get(('churn', 'c1'))} instead of {last}")
    live = {e["pgid"] for e in w.marked().values() if e.get("DISCOVERD_INSTANCE_ID") == "c1"}
    unstopped = churn_unstopped(w.state_dir / "instances" / "churn" / "c1" / "stamps")
    row.double_starts = max(0, len(live) - 1)
    swept = sum(len(agent_world.agent_events(a.log_path, "Killed leftover processes")) for a in w.agents)
    found = sum(len(agent_world.agent_events(a.log_path, "Found unrecorded run")) for a in w.agents)
    row.notes.append(
        f"churn/c1: {unstopped} run(s) ended without their TERM trap; {swept} leftover(s) killed by the agent's sweep;"
        f" {found} unrecorded run(s) adopted"
    )
    row.notes.append(f"{written} version changes, 10 SIGKILLs, {len(live)} churn run process(es) alive at the end")


async def etcd_stopped(scene: Scene, row: Row, seconds: float) -> None:
    w = scene.w
    await scene.start()
    w.etcd.stop()
    await asyncio.sleep(seconds)
    w.etcd.start()
    t = time.time()
    await new_instance_after(scene, row, t)
    row.notes.append(f"etcd stopped {seconds:g} s (agent lease TTL 5 s)")


async def etcd_paused(scene: Scene, row: Row, seconds: float) -> None:
    w = scene.w
    await scene.start()
    w.etcd.pause()
    await asyncio.sleep(seconds)
    w.etcd.resume()
    await new_instance_after(scene, row, time.time())
    stalls = len(
        agent_world.agent_events(
            w.agents[-1].log_path, "Lost the etcd watch; reading everything again once etcd answers"
        )
    )
    row.notes.append(f"etcd SIGSTOPped {seconds:g} s; the agent logged {stalls} lost watch(es)")


async def retrying(write: Callable[[], Awaitable[int]], timeout: float = 30) -> int:
    """A write retried while etcd is coming back (the client's channel reconnects with back-off)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await write()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def new_instance_after(scene: Scene, row: Row, t: float) -> None:
    """Add an instance right after the fault: it must be applied (else a lost write)."""
    w, status = scene.w, scene.status
    assert status is not None
    await retrying(lambda: w.instance("steady", "late", "1.0"))
    scene.extra = [("steady", "late")]
    await retrying(lambda: w.server([*scene.refs, *scene.extra]))
    row.converge = await scene.converge(t, lambda: status.phase("steady", "late") == "Running")
    if status.phase("steady", "late") != "Running":
        row.lost = 1


async def compaction(scene: Scene, row: Row) -> None:
    w = scene.w
    await scene.start()
    agent = w.agents[-1]
    assert agent.proc is not None
    w.etcd.stop()
    agent.proc.send_signal(signal.SIGSTOP)  # it cannot reconnect before the compaction
    try:
        w.etcd.start()
        await retrying(lambda: w.put("unrelated/0", {"n": 0}))
        for n in range(1, 20):
            await w.put(f"unrelated/{n}", {"n": n})
        await w.instance("steady", "late", "1.0")
        scene.extra = [("steady", "late")]
        revision = await w.server([*scene.refs, *scene.extra])
        await w.client.compact(revision)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    t = time.time()
    status = scene.status
    assert status is not None
    row.converge = await scene.converge(t, lambda: status.phase("steady", "late") == "Running")
    if status.phase("steady", "late") != "Running":
        row.lost = 1
    row.notes.append(f"compacted at revision {revision} while the agent was stopped and etcd restarted")


async def fuzz(scene: Scene, row: Row, count: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    w = scene.w
    canary = w.tmp / "canary"
    canary.mkdir()
    hostile = st.one_of(
        st.sampled_from(["..", ".", "../..", "../../etc", "/etc/passwd", "a/b", "", "x\0y", "\n", "a" * 300]),
        st.builds(lambda s: f"../{s}", st.text(min_size=1, max_size=8)),
        st.builds(lambda s: f"{canary}/{s}", st.text(alphabet="abc", min_size=1, max_size=5)),
        st.text(min_size=0, max_size=300),
        st.binary(min_size=0, max_size=40).map(lambda b: b.decode("latin-1")),
    )
    script = st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=20),
        st.fixed_dictionaries(
            {
                "command": st.one_of(st.text(max_size=20), st.integers()),
                "argv": st.one_of(st.lists(st.text(max_size=5), max_size=3), st.text(max_size=5)),
            }
        ),
    )
    value = st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ).map(lambda v: __import__("json").dumps(v).encode()),
        st.fixed_dictionaries({"name": hostile, "service_version": hostile, "run_script": script}).map(
            lambda v: __import__("json").dumps(v).encode()
        ),
        st.fixed_dictionaries(
            {"service_instances": st.lists(st.fixed_dictionaries({"name": hostile, "id": hostile}), max_size=3)}
        ).map(lambda v: __import__("json").dumps(v).encode()),
        st.fixed_dictionaries(
            {"name": hostile, "download_script": script, "install_script": script, "run_script": script}
        ).map(lambda v: __import__("json").dumps(v).encode()),
    )
    places = st.sampled_from(["server", "version", "instance", "victim", "victim-version", "other-server"])
    items: list[tuple[str, str, str, bytes]] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(where=places, a=hostile, b=hostile, value=value)
    def collect(where: str, a: str, b: str, value: bytes) -> None:
        items.append((where, a, b, value))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    # victims: valid IDs the server lists, whose documents the fuzzer overwrites (not counted as valid)
    victims = [("victim", f"v{i}") for i in range(5)]
    await w.version("victim", "1.0", run_script=agent_world.sh_run(STARTS), min_healthy_seconds=0)
    for s, i in victims:
        await w.instance(s, i, "1.0")
    await scene.start(extra=victims)
    from discoverd.errors import InvalidDocument
    from discoverd.schema import documents

    rng = random.Random(3)
    written = skipped = 0
    for where, a, b, data in items:
        if where == "server":
            try:  # a valid server document is a real instruction (stop what it omits), not a malformed one
                documents.parse(documents.Server, "server", data)
                skipped += 1
                continue
            except InvalidDocument:
                pass
        s, i = victims[rng.randrange(len(victims))]
        key = {
            "server": f"servers/{w.server_id}/config/details",
            "version": f"services/{a}/versions/{b}/config/details",
            "instance": f"services/{a}/instances/{b}/config/details",
            "victim": f"services/{s}/instances/{i}/config/details",
            "victim-version": "services/victim/versions/1.0/config/details",
            "other-server": f"servers/{a}/config/details",
        }[where]
        try:
            await w.client.put(w.key(key), data)
            written += 1
        except Exception as error:  # etcd itself refuses some keys (too long): counted, not fatal
            row.notes.append(f"etcd refused one write: {type(error).__name__}") if written == 0 else None
    await w.server([*scene.refs, *victims])  # a valid server document last
    t = time.time()
    row.converge = await scene.converge(t, lambda: w.agents[-1].proc is not None and w.agents[-1].proc.poll() is None)
    agent_alive = w.agents[-1].proc is not None and w.agents[-1].proc.poll() is None
    row.notes.append(
        f"{written} fuzzed writes ({count} generated, {skipped} valid server documents left out); agent {'alive' if agent_alive else 'DEAD'}"
    )
    row.notes.append(f"canary dir entries: {len(list(canary.iterdir()))}")
    scene.extra = []  # victims may fairly show Failed or nothing; they are not valid instances


async def daemon(scene: Scene, row: Row) -> None:
    w = scene.w
    run = '(setsid sh -c "exec sleep 1000000" < /dev/null > /dev/null 2>&1 &); exec sleep 1000000'
    await w.version("daemon", "1.0", run_script=agent_world.sh_run(run), min_healthy_seconds=0, stop_timeout=2)
    await w.instance("daemon", "d1", "1.0")
    await scene.start(extra=[("daemon", "d1")])
    status = scene.status
    assert status is not None
    await agent_world.wait_for(lambda: status.phase("daemon", "d1") == "Running", 30, "daemon Running", 0.05)
    await agent_world.wait_for(
        lambda: sum(1 for e in w.marked().values() if e.get("DISCOVERD_INSTANCE_ID") == "d1") >= 2,
        10,
        "the daemon",
        0.05,
    )
    t = time.time()
    scene.extra = []
    await w.server(scene.refs)  # stop it
    await agent_world.wait_for(lambda: status.phase("daemon", "d1") is None, 30, "daemon removed", 0.05)
    row.converge = await scene.converge(t)
    left = [pid for pid, e in w.marked().items() if e.get("DISCOVERD_INSTANCE_ID") == "d1"]
    row.notes.append(f"{len(left)} process(es) of the stopped instance alive after its removal")


async def operator_kill(args: argparse.Namespace, tmp: Path) -> Row:
    import operator_mirror as om
    from kubernetes import client as kclient

    row = Row("operator SIGKILL during a 1,000-object mirror")
    count = 1000
    d = tmp / "operator"
    d.mkdir(parents=True, exist_ok=True)
    docs = om.instance_documents(count)
    txn = ["--max-txn-ops", str(count + 16), "--max-request-bytes", str(64 * 2**20)]
    try:
        with common.etcd_server(d, txn) as etcd, common.control_plane(d / "cp") as cp:
            cp.kubectl("apply", "-f", str(common.REPO / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
            cp.kubectl("create", "namespace", om.MIRROR_NS)
            env = {**cp.env(), "KUBECONFIG": str(cp.kubeconfig)}
            argv = [str(common.DISCOVERD), "--etcd-endpoints", etcd.endpoint, "--prefix", om.PREFIX]
            argv += ["operator", "--namespace", om.MIRROR_NS]
            op = common.Child(argv, d / "operator-0.log", env=env).start()
            watcher = om.Watcher(cp, om.MIRROR_NS).start()
            try:
                op.wait_for_log("Resynced etcd and Kubernetes", timeout=120)
                await om.write_batch(etcd.endpoint, docs)
                await agent_world.wait_for(lambda: len(watcher.added) >= count // 5, 300, "a fifth mirrored", 0.02)
                killed_at = len(watcher.added)
                assert op.proc is not None
                os.kill(op.proc.pid, signal.SIGKILL)
                op.proc.wait(10)
                op = common.Child(argv, d / "operator-1.log", env=env).start()
                t = time.time()
                t_mono = time.monotonic()
                try:
                    await agent_world.wait_for(
                        lambda: len(watcher.added) >= count, args.operator_timeout, "all objects", 0.1
                    )
                    row.converge = time.time() - t
                except TimeoutError:
                    row.notes.append(f"only {len(watcher.added)} of {count} objects after {args.operator_timeout:g} s")
                await agent_world.wait_for(
                    lambda: time.monotonic() - watcher.last_event() > 5, 300, "the mirror to settle", 0.5
                )
                events = watcher.since(0)
                settled = watcher.last_event() - t_mono
            finally:
                watcher.stop()
                op.stop()
            # compare what exists with etcd
            api = kclient.CustomObjectsApi(om.api_client(cp, 4))
            from discoverd.schema import keys as skeys
            from discoverd.schema import names, resources

            listed = cast(
                dict[str, Any],
                api.list_namespaced_custom_object(
                    resources.GROUP, resources.VERSION, om.MIRROR_NS, resources.resource(skeys.Kind.INSTANCE).plural
                ),
            )
            objs: list[dict[str, Any]] = listed["items"]
            by_name = {o["metadata"]["name"]: o for o in objs}
            missing = mismatched = 0
            from discoverd.operator import decision

            for key, doc in docs.items():
                o = by_name.get(names.object_name(key))
                if o is None:
                    missing += 1
                elif o["spec"] != decision.spec_of(key, doc):
                    mismatched += 1
            import aetcd

            host, port = etcd.endpoint.removeprefix("http://").rsplit(":", 1)
            async with aetcd.Client(host=host, port=int(port)) as c:
                stored = {kv.key.decode(): bytes(kv.value) for kv in await c.get_prefix(f"{om.PREFIX}/".encode())}
            from discoverd.schema import documents

            changed_in_etcd = sum(
                1 for k, doc in docs.items() if stored.get(k.build(om.PREFIX)) != documents.dumps(doc)
            )
            added: dict[str, int] = {}
            deleted = 0
            for _, what, kind, name in events:
                if what == "events":
                    continue
                if kind == "ADDED":
                    added[name] = added.get(name, 0) + 1
                if kind == "DELETED":
                    deleted += 1
            row.lost = missing + mismatched + changed_in_etcd
            row.double_starts = sum(1 for n in added.values() if n > 1)
            row.disturbed = deleted
            row.notes.append(
                f"killed with {killed_at} of {count} objects; after restart: {len(by_name)} objects, {missing} missing, "
                f"{mismatched} not matching etcd, {changed_in_etcd} etcd documents changed, {deleted} deletions; "
                f"settled {settled:.1f} s after restart"
            )
            row.notes.append(
                "columns: disturbed = objects deleted, double starts = objects created twice (watch ADDED)"
            )
    except Exception as error:
        row.notes.append(f"scenario failed: {type(error).__name__}: {error}")
        common.log(f"operator: {error!r}")
    return row


# --- main ------------------------------------------------------------------------------------------

SCENARIOS = ["kill", "etcd-stop", "etcd-pause", "compaction", "operator", "fuzz", "daemon"]


async def run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    outage = 10.0 if args.quick else 60.0
    pause = 20.0 if args.quick else 60.0
    chosen = args.only.split(",") if args.only else SCENARIOS
    rows: list[Row] = []
    for name in chosen:
        common.log(f"scenario {name}")
        if name == "kill":
            rows.append(await with_scene(args, tmp, "agent SIGKILL x10 in a loop of changes", agent_kills))
        elif name == "etcd-stop":
            rows.append(
                await with_scene(args, tmp, f"etcd stopped {outage:g} s", lambda s, r: etcd_stopped(s, r, outage))
            )
        elif name == "etcd-pause":
            rows.append(
                await with_scene(args, tmp, f"etcd paused (SIGSTOP) {pause:g} s", lambda s, r: etcd_paused(s, r, pause))
            )
        elif name == "compaction":
            rows.append(await with_scene(args, tmp, "etcd compaction past the agent", compaction))
        elif name == "operator":
            rows.append(await operator_kill(args, tmp))
        elif name == "fuzz":
            rows.append(
                await with_scene(
                    args,
                    tmp,
                    f"{args.fuzz} fuzzed malformed documents and hostile IDs",
                    lambda s, r: fuzz(s, r, args.fuzz),
                )
            )
        elif name == "daemon":
            rows.append(await with_scene(args, tmp, "run script double-forks a daemon, then is stopped", daemon))
        else:
            raise SystemExit(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
        row = rows[-1]
        emit_row(row)
    return rows


def emit_row(row: Row) -> None:
    for column in Row.COLUMNS:
        common.emit(BENCH, f"{row.scenario}: {column}", getattr(row, column), "count", 0, target="0")
    common.emit(BENCH, f"{row.scenario}: converge", row.converge, "s", note="; ".join(row.notes) or None)


def table(rows: list[Row]) -> list[str]:
    def cell(v: object) -> str:
        return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))

    head = f"{'scenario':<52} {'disturbed':>9} {'restarted':>9} {'double':>6} {'lost':>4} {'outside':>7} {'surviv.':>7} {'converge s':>10}"
    out = [head]
    for r in rows:
        out.append(
            f"{r.scenario[:52]:<52} {cell(r.disturbed):>9} {cell(r.restarted):>9} {cell(r.double_starts):>6} "
            f"{cell(r.lost):>4} {cell(r.outside):>7} {cell(r.survivors):>7} {cell(r.converge):>10}"
        )
        out.extend(f"    {n}" for n in r.notes)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s etcd stop, 20 s pause (default 60 s each)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--bystanders", type=int, default=20, help="valid instances that must not be disturbed")
    parser.add_argument("--fuzz", type=int, default=1000, help="fuzzed documents (default 1000)")
    parser.add_argument("--operator-timeout", type=float, default=600.0, help="seconds to wait for the mirror")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    with common.scratch_dir(keep=args.keep) as tmp:
        rows = asyncio.run(run(args, tmp))
    print("\n".join(["", f"== fault table ({common.machine()}) ==", *table(rows)]), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
