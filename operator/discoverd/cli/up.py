"""`discoverd up`: an embedded etcd, one local agent, the rollout controller and a sample service, to try discoverd.

Starts a single-member etcd on loopback (data under the state directory),
writes the bundled sample (a tiny HTTP service in two versions, from
`discoverd/data/`; three instances on consecutive ports) through the store,
runs the agent and the rollout controller in this process and tells, in plain
words, what is downloading, installing and running, which URL to try and how
to roll the sample out to 2.0 (docs/rollouts.md walks through it). Ctrl-C
stops everything it started: the sample instances, the agent, the controller
and etcd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from discoverd import embedded_etcd, metrics
from discoverd.agent import loop, model, status
from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.controller import loop as controller_loop
from discoverd.schema import documents, keys
from discoverd.store import client
from discoverd.store.typed import Store, Write

__all__ = ["default_state_dir", "sample_documents", "up"]

SERVER_ID = "local"
SERVICE = "hello"
INSTANCE = "hello-1"
INSTANCES = ("hello-1", "hello-2", "hello-3")
"""Instance `hello-N` listens on the port given plus N - 1."""
DATA = Path(__file__).resolve().parent.parent / "data"


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/discoverd/up`, else `~/.local/state/discoverd/up`: nothing under /var/lib."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "discoverd" / "up"


def _version(version: str, state_dir: Path, port: int) -> documents.Version:
    python = sys.executable
    source = DATA / f"hello-{version}.py"
    installed = state_dir / "versions" / SERVICE / version / "hello.py"
    doc: dict[str, object] = {
        "name": SERVICE,
        "download_script": {
            "command": python,
            "argv": ["-c", "import shutil, sys; shutil.copyfile(sys.argv[1], 'hello.py')", str(source)],
            "timeout": 60,
        },
        "install_script": {"command": python, "argv": ["-m", "py_compile", "hello.py"], "timeout": 60},
        "run_script": {"command": python, "argv": [str(installed), "--port", str(port)]},
        "min_healthy_seconds": 2,
        "stop_timeout": 5,
    }
    if version == "2.0":
        # One health check for every instance: hello-N answers on the base port + N - 1.
        probe = (
            "import os, sys, urllib.request; n = int(os.environ['DISCOVERD_INSTANCE_ID'].rsplit('-', 1)[1]); "
            "urllib.request.urlopen(f'http://127.0.0.1:{int(sys.argv[1]) + n - 1}/healthz', timeout=2)"
        )
        doc["health_check"] = {
            "command": python,
            "argv": ["-c", probe, str(port)],
            "interval": 5,
            "timeout": 3,
        }
    return documents.Version.model_validate(doc)


def sample_documents(prefix: str, state_dir: Path, port: int) -> dict[str, documents.Document]:
    """The sample: versions 1.0 and 2.0 of `hello`, three instances on 1.0, this server running them."""
    docs: dict[str, documents.Document] = {
        keys.version_config(prefix, SERVICE, "1.0"): _version("1.0", state_dir, port),
        keys.version_config(prefix, SERVICE, "2.0"): _version("2.0", state_dir, port),
    }
    for n, instance in enumerate(INSTANCES):
        # An instance's argv is appended to the version's run script: the last --port wins.
        run = documents.Script(argv=["--port", str(port + n)]) if n else documents.Script()
        docs[keys.instance_config(prefix, SERVICE, instance)] = documents.Instance(
            name=SERVICE, service_version="1.0", **({"run_script": run} if n else {})
        )
    docs[keys.server_config(prefix, SERVER_ID)] = documents.Server(
        service_instances=[documents.InstanceRef(name=SERVICE, id=i) for i in INSTANCES]
    )
    return docs


_SAYS = {
    documents.Phase.PENDING: "waiting",
    documents.Phase.DOWNLOADING: "downloading",
    documents.Phase.INSTALLING: "installing",
    documents.Phase.STARTING: "starting",
    documents.Phase.RUNNING: "running",
    documents.Phase.UNHEALTHY: "unhealthy",
    documents.Phase.BACK_OFF: "waiting to restart",
    documents.Phase.FAILED: "failed",
    documents.Phase.ROLLED_BACK: "rolled back",
    documents.Phase.STOPPING: "stopping",
}


def _progress(
    url: str, endpoint: str, metrics_url: Callable[[], str | None]
) -> Callable[[model.Ref, status.Summary], None]:
    shown: dict[model.Ref, tuple[documents.Phase, str | None]] = {}
    running: set[str] = set()
    hinted = False

    def show(ref: model.Ref, summary: status.Summary) -> None:
        seen = (summary.phase, summary.version)
        if shown.get(ref) == seen:
            return
        shown[ref] = seen
        version = f" {summary.version}" if summary.version else ""
        line = f"  {ref}{version}: {_SAYS[summary.phase]}"
        if summary.phase in (documents.Phase.RUNNING, documents.Phase.STARTING) and summary.pid:
            line += f" (pid {summary.pid})"
        if summary.phase in (documents.Phase.FAILED, documents.Phase.ROLLED_BACK, documents.Phase.BACK_OFF):
            line += f": {summary.message}"
        click.echo(line)
        nonlocal hinted
        if summary.phase is documents.Phase.RUNNING:
            running.add(ref.instance)
        if running >= set(INSTANCES) and not hinted:  # once the whole sample is up
            hinted = True
            d = f"discoverd --etcd-endpoints {endpoint}"
            click.echo(f"\n  Try it:   curl {url}   (hello-2 and hello-3 on the next two ports)")
            click.echo(f"  Status:   {d} get instances")
            click.echo(f"  Logs:     {d} logs {SERVICE} --prefix -f")
            if (where := metrics_url()) is not None:
                click.echo(f"  Metrics:  curl {where}   (the agent's and the controller's; /healthz, /readyz)")
            click.echo(f"  Roll out: {d} rollout start {SERVICE} --to 2.0 --canary 1 --pause-after-canary")
            click.echo(f"            {d} rollout status {SERVICE} -w")
            click.echo(f"            {d} rollout resume {SERVICE}    (or: rollout undo {SERVICE})")
            click.echo(
                f"  One only: {d} apply -f - <<< "
                f"'{{kind: ServiceInstance, apiVersion: discoverd.io/v1alpha1, "
                f'spec: {{service: {SERVICE}, id: {INSTANCE}, serviceVersion: "2.0"}}}}\''
            )
            click.echo("  Stop:     Ctrl-C\n")

    return show


async def _apply_sample(options: EtcdOptions, state_dir: Path, port: int) -> None:
    store = Store(await client.connect(options))
    try:
        docs = sample_documents(options.prefix, state_dir, port)
        await store.apply(Write(key, documents.dumps(doc)) for key, doc in docs.items())
    finally:
        await store.close()


async def _run(options: EtcdOptions, state_dir: Path, port: int, metrics_address: str) -> None:
    await _apply_sample(options, state_dir, port)
    click.echo(
        f"Applied the sample: service {SERVICE!r} in versions 1.0 and 2.0, "
        f"instances {', '.join(INSTANCES)} on 1.0 (ports {port}-{port + len(INSTANCES) - 1})."
    )
    # One endpoint for the process, as `discoverd operator` serves its controller's: the agent's and the controller's.
    controller_metrics = metrics.ControllerMetrics(controller_loop.PHASES)
    agent_options = loop.Options(
        server_id=SERVER_ID,
        state_dir=state_dir,
        stop_instances_on_exit=True,
        metrics_address=metrics_address,
        more_metrics=(controller_metrics.registry,),
        api_address="127.0.0.1:0",  # `discoverd logs web/...` from this machine (docs/operating.md)
    )

    def metrics_url() -> str | None:
        return f"http://{metrics_address}/metrics" if agent.metrics_server is not None else None

    progress = _progress(f"http://127.0.0.1:{port}/", str(options.endpoints[0]), metrics_url)
    agent = loop.Agent(options, agent_options, on_status=progress)
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stop.set)
    click.echo(f"Started the agent for server {SERVER_ID!r} and the rollout controller:")
    controller = asyncio.create_task(
        controller_loop.run(options, stop, ttl=5, metrics_=controller_metrics), name="rollout controller"
    )
    try:
        await agent.run(stop)
    finally:
        stop.set()
        await controller
    click.echo("Stopped the sample instances, the agent and the controller.")


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where etcd's data, versions and instances live [default: ~/.local/state/discoverd/up].",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port of the sample.")
@click.option(
    "--metrics-address",
    default="127.0.0.1:9464",
    show_default=True,
    callback=main.metrics_address,
    help="HOST:PORT serving the agent's and the controller's /metrics, /healthz and /readyz (\"\" serves none).",
)
@click.pass_context
def up(ctx: click.Context, state_dir: Path | None, port: int, metrics_address: str) -> None:
    """Run etcd, an agent and a sample service on this machine, to try discoverd (Ctrl-C stops it all)."""
    state = (state_dir or default_state_dir()).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if not ctx.find_root().params.get("verbose"):
        logging.getLogger().setLevel(logging.WARNING)
    etcd = embedded_etcd.EtcdServer(state / "etcd" / "data")
    click.echo(f"Starting etcd (data in {etcd.data_dir}) ...")
    try:
        etcd.start()
    except RuntimeError as error:
        raise main.fail(str(error)) from None
    try:
        click.echo(f"etcd is serving at {etcd.endpoint}")
        options = EtcdOptions(endpoints=etcd.endpoint, prefix=ctx.find_root().params["prefix"])
        main.run_async(_run(options, state / "agent", port, metrics_address))
    finally:
        etcd.stop()
        click.echo("Stopped etcd.")
