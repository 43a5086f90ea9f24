"""Figure 4: operator mirror throughput, footprint and quiet writes.

One run, side by side, on the test control plane (a real kube-apiserver):

1. raw: a plain Python client (the `kubernetes` package, `--concurrency`
   threads) creates N ServiceInstance objects, built exactly as the operator
   builds them, in namespace `bench-raw`; the create rate is the baseline;
2. operator: `discoverd operator` runs as a real process (its own etcd, prefix
   `/bench`, namespace `bench-mirror`); N instance documents are written to
   etcd in one transaction (the bench etcd runs with a larger --max-txn-ops);
   the time until the N objects exist (ADDED events on a watch of the
   namespace) gives the operator's rate;
3. the operator's peak RSS with N objects, then a quiet period (`--quiet`
   seconds, 60 by default) in which every watch event on the three kinds and
   on Events counts as an API write (there should be none);
4. memory per object: the operator's RSS with N objects minus its RSS just
   before the batch (no object yet), over N; and the same for a second
   operator started with the N objects already there (`--restart`, on by
   default): what a restarted operator keeps, without the mirror's transients.

    .venv/bin/python bench/operator_mirror.py            # 5,000 objects, 60 s quiet
    .venv/bin/python bench/operator_mirror.py --quick    # 500 objects, 10 s quiet
    .venv/bin/python bench/operator_mirror.py --pin      # the control plane on CPU 0, the rest on CPU 1

With two cores the API server and the client (the raw one or the operator)
share both, so a client's CPU slows the API server's creates: with the
operator, the API server's own functions took about 1.5 times the CPU per
create that they took in the raw half (pprof, 20,000 objects; bench/README.md
Figure 4). `--pin` keeps them on different cores, as a control plane and an
operator are on different machines in a cluster.

JSON lines on stdout, a summary on stderr. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from discoverd.config import EtcdOptions
from discoverd.operator import decision, kube, startup
from discoverd.schema import documents, keys, names, resources
from discoverd.store import client as etcd_client
from discoverd.store import typed

BENCH = "operator_mirror"
PREFIX = "/bench"
RAW_NS = "bench-raw"
RAW_AGAIN_NS = "bench-raw-again"
MIRROR_NS = "bench-mirror"
WARMUP_NS = "bench-warmup"
KINDS = [keys.Kind.SERVER, keys.Kind.VERSION, keys.Kind.INSTANCE]


def instance_documents(count: int) -> dict[keys.Key, documents.Instance]:
    """`count` instances spread over 50 services, each with a small run-script override."""
    docs: dict[keys.Key, documents.Instance] = {}
    for i in range(count):
        service = f"svc{i % 50}"
        doc = documents.Instance(
            name=service,
            service_version="1.0",
            run_script=documents.Script(command="", argv=["--port", str(10000 + i)]),
        )
        docs[keys.Key(keys.Kind.INSTANCE, service=service, instance=f"i{i}")] = doc
    return docs


def object_body(key: keys.Key, doc: documents.Document, revision: int) -> dict[str, Any]:
    """The object the operator would create for `key` (same spec, annotations and finalizer)."""
    spec = decision.spec_of(key, doc)
    return startup.as_handled(
        {
            "apiVersion": resources.API_VERSION,
            "kind": resources.resource(key.kind).name,
            "metadata": {
                "name": names.object_name(key),
                "annotations": {
                    decision.ANNOTATION_KEY: key.build(PREFIX),
                    decision.ANNOTATION_REVISION: str(revision),
                    decision.ANNOTATION_DIGEST: decision.digest(key.kind, spec),
                },
            },
            "spec": spec,
        }
    )


def pin_all_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` to `cpus` (threads it starts later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def api_client(cp: common.ControlPlane, concurrency: int) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = max(concurrency, 4)
    return client.ApiClient(configuration)


def raw_creates(
    cp: common.ControlPlane, bodies: list[dict[str, Any]], concurrency: int, namespace: str = "bench-raw"
) -> float:
    """Create `bodies` in `namespace` with `concurrency` threads; seconds taken."""
    custom = client.CustomObjectsApi(api_client(cp, concurrency))
    plural = resources.resource(keys.Kind.INSTANCE).plural

    def create(body: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(resources.GROUP, resources.VERSION, namespace, plural, body)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(create, b) for b in bodies]:
            future.result()
    return time.monotonic() - started


class Watcher:
    """Watch events on the three kinds and on Events in one namespace, with arrival times."""

    def __init__(self, cp: common.ControlPlane, namespace: str) -> None:
        self.namespace = namespace
        self.api = api_client(cp, 8)
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, str, str]] = []  # (time, what, type, name)
        self.added: dict[str, float] = {}
        self._stop = threading.Event()
        self._rv: dict[str, str] = {}
        self.expired = 0
        """Watches restarted after their resourceVersion was compacted (events meanwhile are not counted)."""
        self._threads = [
            threading.Thread(target=self._run, args=(what,), daemon=True, name=f"watch-{what}")
            for what in [*(resources.resource(k).plural for k in KINDS), "events"]
        ]

    def _list(self, what: str) -> tuple[Any, str]:
        if what == "events":
            core = client.CoreV1Api(self.api)

            def events(**kw: Any) -> Any:
                return core.list_namespaced_event(self.namespace, **kw)

            return events, str(events().metadata.resource_version)
        custom = client.CustomObjectsApi(self.api)

        def lister(**kw: Any) -> Any:
            return custom.list_namespaced_custom_object(resources.GROUP, resources.VERSION, self.namespace, what, **kw)

        return lister, lister()["metadata"]["resourceVersion"]

    def _run(self, what: str) -> None:
        lister, rv = self._list(what)
        while not self._stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                self._stream(w, what, lister, rv)
            except ApiException as error:
                if error.status != 410:
                    raise
                # a quiet watch's resourceVersion got compacted (after ~5 min): start again from now
                self.expired += 1
                lister, rv = self._list(what)
                continue
            rv = self._rv.get(what, rv)

    def _stream(self, w: Any, what: str, lister: Any, rv: str) -> None:
        for event in w.stream(  # type: ignore[no-untyped-call]
            lister, resource_version=rv, timeout_seconds=2, allow_watch_bookmarks=False
        ):
            obj = event["object"]
            meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
            rv = meta.get("resource_version") or meta.get("resourceVersion") or rv
            self._rv[what] = rv
            now = time.monotonic()
            with self.lock:
                self.events.append((now, what, event["type"], meta["name"]))
                if event["type"] == "ADDED" and what != "events":
                    self.added.setdefault(meta["name"], now)
            if self._stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]

    def start(self) -> Watcher:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def since(self, t: float) -> list[tuple[float, str, str, str]]:
        with self.lock:
            return [e for e in self.events if e[0] >= t]

    def last_event(self) -> float:
        with self.lock:
            return self.events[-1][0] if self.events else 0.0


async def write_batch(endpoint: str, docs: dict[keys.Key, documents.Instance]) -> tuple[float, int]:
    """All documents in one etcd transaction; (time just before it was sent, revision)."""
    # one transaction of N puts: at 100,000 it takes longer than the default 5 s to answer
    options = EtcdOptions(endpoints=[endpoint], prefix=PREFIX, timeout=120.0)
    store = typed.Store(await etcd_client.connect(options))
    try:
        writes = [typed.Write(k.build(PREFIX), documents.dumps(d)) for k, d in docs.items()]
        sent = time.monotonic()
        revision = await store.apply(writes)
        return sent, revision
    finally:
        await store.close()


def wait_idle(pid: int, timeout: float, window: float = 2.0) -> None:
    """Until `pid` used under 5 % of a core over `window` seconds (its queue drained)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = common.cpu_seconds(pid)
        time.sleep(window)
        if common.cpu_seconds(pid) - before < 0.05 * window:
            return
    raise TimeoutError(f"pid {pid} still busy after {timeout:g} s")


def api_writes(log: str) -> int:
    """The API writes an operator counted (its stop line), -1 without one."""
    found = re.findall(r"api_writes=(\d+)", log)
    return int(found[-1]) if found else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="documents in the batch (default 5000)")
    parser.add_argument("--quiet", type=float, default=60.0, help="quiet period in seconds (default 60)")
    parser.add_argument("--quick", action="store_true", help="500 documents and a 10 s quiet period")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=getattr(kube, "CONCURRENCY", 1),
        help="threads of the raw client: the operator's API concurrency (default: kube.CONCURRENCY)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for the mirror after this")
    parser.add_argument(
        "--profile",
        choices=["py-spy"],
        help="record the operator with py-spy (collapsed stacks, in the kept scratch directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, profile)")
    parser.add_argument(
        "--no-raw-again",
        dest="raw_again",
        action="store_false",
        help="skip the second raw half after the operator's (the API server then holds 2N objects)",
    )
    parser.add_argument(
        "--no-restart", dest="restart", action="store_false", help="skip the restart with N objects (step 4)"
    )
    parser.add_argument(
        "--raw-watchers",
        type=int,
        default=1,
        help="watches of the raw namespace during the raw half (default 1, the bench's observer; the "
        "operator's half has two: the observer and Kopf's): 2 shows what a second watcher costs the API server",
    )
    parser.add_argument("--no-operator", dest="operator", action="store_false", help="only the raw half")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="kube-apiserver and its etcd on CPU 0, everything else (this bench, its etcd, the operator) on "
        "CPU 1, as the control plane and the operator are on different machines in a cluster",
    )
    args = parser.parse_args()
    if args.quick:
        args.count, args.quiet = 500, 10.0
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        parser.error(f"--pin needs CPUs 0 and 1; this process may use {sorted(os.sched_getaffinity(0))}")

    docs = instance_documents(args.count)
    notes: list[str] = []
    if args.pin:
        os.sched_setaffinity(0, {1})  # inherited by the threads and processes started from here
    with common.scratch_dir(keep=args.keep or bool(args.profile)) as tmp:
        txn_ops = ["--max-txn-ops", str(args.count + 16), "--max-request-bytes", str(64 * 2**20)]
        with common.etcd_server(tmp, txn_ops) as etcd, common.control_plane(tmp / "cp") as cp:
            common.log(f"control plane at {cp.server}, bench etcd at {etcd.endpoint}")
            if args.pin:
                for name in ("kube-apiserver", "etcd"):
                    pin_all_threads(cp.pid(name), {0})
                notes.append("pinned: kube-apiserver and its etcd on CPU 0, the rest on CPU 1")
            cp.kubectl("apply", "-f", str(common.REPO / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
            for ns in (WARMUP_NS, RAW_NS, MIRROR_NS, RAW_AGAIN_NS):
                cp.kubectl("create", "namespace", ns)

            # 1. the baseline: raw creates with the same concurrency (after a warm-up, as the
            #    operator's run comes second and finds the API server warm)
            warm = [object_body(k, d, 1) for k, d in instance_documents(min(200, args.count)).items()]
            raw_creates(cp, warm, args.concurrency, WARMUP_NS)
            bodies = [object_body(k, d, 1) for k, d in docs.items()]
            common.log(f"raw: creating {len(bodies)} objects with {args.concurrency} threads")
            apiserver = cp.pid("kube-apiserver")
            # the same observer as for the operator, and any extra watchers asked for
            raw_watchers = [Watcher(cp, RAW_NS).start() for _ in range(max(1, args.raw_watchers))]
            api_cpu0, client_cpu0 = common.cpu_seconds(apiserver), common.cpu_seconds(os.getpid())
            try:
                raw_seconds = raw_creates(cp, bodies, args.concurrency)
                raw_api_cpu = common.cpu_seconds(apiserver) - api_cpu0
                raw_client_cpu = common.cpu_seconds(os.getpid()) - client_cpu0
            finally:
                for raw_watcher in raw_watchers:
                    raw_watcher.stop()
            raw_rate = args.count / raw_seconds
            common.log(f"raw: {raw_seconds:.1f} s, {raw_rate:.0f} objects/s")
            if not args.operator:
                note = f"{len(raw_watchers)} watcher(s)"
                common.emit(BENCH, "raw_create_rate", raw_rate, "objects/s", note=f"{args.count} objects, {note}")
                common.emit(BENCH, "apiserver_cpu_raw", raw_api_cpu, "s", note=note)
                common.emit(BENCH, "apiserver_cpu_raw_per_object", 1000 * raw_api_cpu / args.count, "ms", note=note)
                common.emit(BENCH, "raw_client_cpu", raw_client_cpu, "s", note="the raw client's and its watchers'")
                common.summary(f"raw creates only, {args.count} objects", [])
                return 0

            # 2. the operator
            env = {**cp.env(), "KUBECONFIG": str(cp.kubeconfig)}
            argv = [str(common.DISCOVERD), "--etcd-endpoints", etcd.endpoint, "--prefix", PREFIX]
            argv += ["operator", "--namespace", MIRROR_NS]
            op_argv = argv
            op = common.Child(op_argv, tmp / "operator.log", env=env).start()
            profiler: common.Child | None = None
            watcher = Watcher(cp, MIRROR_NS).start()
            try:
                op.wait_for_log("Resynced etcd and Kubernetes", timeout=120)
                op_pid = op.pid
                if args.profile:
                    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                    out = str(tmp / "operator.folded")  # collapsed stacks: speedscope, inferno, flamegraph.pl
                    argv = [spy, "record", "--pid", str(op_pid), "--format", "raw", "-o", out]
                    profiler = common.Child(argv, tmp / "py-spy.log")
                    profiler.start()
                    time.sleep(1)  # attached
                wait_idle(op_pid, args.timeout)
                rss_idle = common.rss_mib(op_pid)
                with common.Sampler(op_pid) as rss:
                    cpu0 = common.cpu_seconds(op_pid)
                    api_cpu0 = common.cpu_seconds(apiserver)
                    sent, _revision = asyncio.run(write_batch(etcd.endpoint, docs))
                    common.log(f"operator: {args.count} documents written in one transaction")
                    try:
                        common.wait_until(
                            lambda: len(watcher.added) >= args.count,
                            args.timeout,
                            f"{args.count} objects",
                            interval=0.2,
                        )
                        all_added = max(watcher.added.values())
                        op_seconds: float | None = all_added - sent
                        op_api_cpu: float | None = common.cpu_seconds(apiserver) - api_cpu0
                        op_cpu: float | None = common.cpu_seconds(op_pid) - cpu0
                    except TimeoutError:
                        op_seconds = op_api_cpu = op_cpu = None
                        notes.append(f"only {len(watcher.added)} of {args.count} objects after {args.timeout:g} s")
                    # settled: no watch event for 5 s (Kopf's finalizers and annotations are done)
                    common.wait_until(
                        lambda: time.monotonic() - watcher.last_event() > 5, args.timeout, "the mirror to settle", 0.5
                    )
                    settled = watcher.last_event() - sent
                    writes = Counter((what, kind) for _, what, kind, _ in watcher.since(sent))
                    # status writes the API server took before the last object existed (they compete with the creates)
                    early_status = None
                    if op_seconds is not None:
                        early_status = sum(
                            1
                            for t, what, kind, _ in watcher.since(sent)
                            if kind == "MODIFIED" and t <= sent + op_seconds
                        )
                    cpu_mirror = common.cpu_seconds(op_pid) - cpu0
                    rss_with = rss.last
                    common.log(f"operator: settled after {settled:.1f} s; watch events {dict(writes)}")
                    if profiler is not None:
                        profiler.stop(signal.SIGINT)  # py-spy writes its output on SIGINT

                    # 3. the quiet period
                    quiet_start = time.monotonic()
                    cpu1 = common.cpu_seconds(op_pid)
                    time.sleep(args.quiet)
                    quiet_events = watcher.since(quiet_start)
                    quiet_cpu = common.cpu_seconds(op_pid) - cpu1
                    peak = rss.peak
            finally:
                if profiler is not None:
                    profiler.stop(signal.SIGINT)
                watcher.stop()
                op.stop()
            stopped = re.findall(r"Stopped operator.*", op.log_text())
            notes.append(f"operator: {stopped[-1] if stopped else 'no stop line'}")

            # 3b. the baseline again, now that the API server holds the 2N objects of both halves (the
            #     operator's half ran with N to 2N there, the first raw half with 0 to N)
            raw_again: tuple[float, float] | None = None
            if args.raw_again:
                api_cpu0 = common.cpu_seconds(apiserver)
                seconds = raw_creates(cp, bodies, args.concurrency, RAW_AGAIN_NS)
                raw_again = (args.count / seconds, common.cpu_seconds(apiserver) - api_cpu0)
                common.log(f"raw again: {seconds:.1f} s, {raw_again[0]:.0f} objects/s")

            # 4. a restarted operator with the N objects there: its start-up and what it keeps
            restart: tuple[float, float, float, int] | None = None
            if args.restart:
                again = common.Child(op_argv, tmp / "operator-restart.log", env=env).start()
                try:
                    with common.Sampler(again.pid) as rss2:
                        began = time.monotonic()
                        again.wait_for_log("Resynced etcd and Kubernetes", timeout=args.timeout)
                        wait_idle(again.pid, args.timeout)
                        restart = (rss2.last, rss2.peak, time.monotonic() - began, 0)
                finally:
                    again.stop()
                restart = (*restart[:3], api_writes(again.log_text())) if restart else None

    op_rate = args.count / op_seconds if op_seconds else None
    n = args.count
    common.emit(BENCH, "raw_create_rate", raw_rate, "objects/s", note=f"{n} objects, {args.concurrency} threads")
    common.emit(
        BENCH,
        "operator_mirror_rate",
        op_rate,
        "objects/s",
        raw_rate,
        target=">= 70 % of raw",
        note=f"{n} documents in one etcd txn -> {n} objects exist",
    )
    common.emit(BENCH, "operator_vs_raw", None if op_rate is None else 100 * op_rate / raw_rate, "%", 100)
    if raw_again is not None:
        note = f"{n} more objects after the operator's half, {2 * n} already there"
        common.emit(BENCH, "raw_again_create_rate", raw_again[0], "objects/s", raw_rate, note=note)
        common.emit(BENCH, "apiserver_cpu_raw_again", raw_again[1], "s", raw_api_cpu)
        mean = (raw_rate + raw_again[0]) / 2
        common.emit(
            BENCH,
            "operator_vs_raw_mean",
            None if op_rate is None else 100 * op_rate / mean,
            "%",
            100,
            note="against the mean of both raw halves (0 to N and 2N to 3N objects there; the operator's: N to 2N)",
        )
    common.emit(BENCH, "operator_time_to_all_objects", op_seconds, "s", raw_seconds)
    common.emit(
        BENCH,
        "operator_cpu_to_all_objects",
        op_cpu,
        "s",
        note="the operator's CPU until all objects exist (its event loop holds the GIL: 1 core at most)",
    )
    common.emit(BENCH, "raw_client_cpu", raw_client_cpu, "s", note="the raw client's (and its watch's) CPU")
    common.emit(BENCH, "apiserver_cpu_operator", op_api_cpu, "s", raw_api_cpu, note="kube-apiserver CPU, each phase")
    common.emit(BENCH, "operator_time_to_settle", settled, "s", note="until no watch event for 5 s")
    common.emit(BENCH, "operator_api_writes_per_object", sum(writes.values()) / n, "writes", 1)
    common.emit(
        BENCH,
        "operator_status_writes_before_all_objects",
        early_status,
        "writes",
        note="MODIFIED events seen before the last object was ADDED",
    )
    common.emit(BENCH, "operator_cpu_during_mirror", cpu_mirror, "s")
    rss_target = "<= 300 MiB" if n <= 5000 else "<= 1 GiB at 100,000 objects"  # issue 22's, for fleets
    common.emit(BENCH, "operator_rss", rss_with, "MiB", target=rss_target, note=f"with {n} objects")
    common.emit(BENCH, "operator_rss_peak", peak, "MiB")
    common.emit(BENCH, "operator_rss_idle", rss_idle, "MiB", note="just before the batch: no object yet")
    per_object = (rss_with - rss_idle) * 1024 / n
    common.emit(BENCH, "operator_kib_per_object", per_object, "KiB", note="(RSS with N - RSS before) / N")
    if restart is not None:
        rss_restart, peak_restart, seconds_restart, writes_restart = restart
        common.emit(BENCH, "restart_rss", rss_restart, "MiB", note=f"a new operator, {n} objects there, idle")
        common.emit(BENCH, "restart_rss_peak", peak_restart, "MiB")
        common.emit(
            BENCH, "restart_kib_per_object", (rss_restart - rss_idle) * 1024 / n, "KiB", note="(restart RSS - idle) / N"
        )
        common.emit(BENCH, "restart_time_to_idle", seconds_restart, "s", note="start -> resynced and CPU idle")
        common.emit(BENCH, "restart_api_writes", writes_restart, "writes", 0, target="0")
    common.emit(BENCH, "quiet_api_writes", len(quiet_events), "writes", 0, target="0", note=f"{args.quiet:g} s quiet")
    common.emit(BENCH, "quiet_cpu", 100 * quiet_cpu / args.quiet, "% of one core")
    if args.profile:
        notes.append(f"profile: {tmp / 'operator.folded'}")
    common.summary(f"operator mirror, {n} objects", [*notes, f"watch events during the mirror: {dict(writes)}"])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
