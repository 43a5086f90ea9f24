"""The operator's main: Kopf, the etcd watch and the reconciler's workers in one TaskGroup, one prefix into one namespace.

Kopf handles SIGTERM/SIGINT and returns; the etcd side is then cancelled.
etcd being down at start-up or later is waited out, never fatal. The etcd
watch and each worker run under `runtime.supervise`: an unexpected exception
is logged with its traceback and the task restarted with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import kopf
from prometheus_client import CollectorRegistry

from discoverd import logs, metrics, runtime
from discoverd.config import EtcdOptions
from discoverd.operator import etcd_to_k8s, handlers, identity, kube, reconciler, startup
from discoverd.store import connect

__all__ = ["IdentityServer", "run"]

logger = logging.getLogger(__name__)
_ = handlers  # importing it registers the handlers on startup.registry


@dataclass(frozen=True)
class IdentityServer:
    """Where and how the node-identity endpoint (operator/identity.py) is served."""

    address: str
    cert_file: Path
    key_file: Path
    settings: identity.Settings


async def run(
    namespace: str,
    options: EtcdOptions,
    metrics_address: str = "",
    also: list[CollectorRegistry] | None = None,
    identity_server: IdentityServer | None = None,
) -> None:
    """Mirror `options.prefix` in etcd and `namespace` in Kubernetes both ways until signalled.

    `metrics_address`: `host:port` of /metrics, /healthz and /readyz ("" serves none); `also`:
    more registries served there (the rollout controller's, when it runs in this process);
    `identity_server`: serve agents their own server's etcd credentials (node identity).
    """
    m = metrics.OperatorMetrics()
    running: list[reconciler.Reconciler] = []

    def ready() -> str | None:
        if not running:
            return "not connected to etcd yet"
        if not running[0].resync.current:
            return "no current etcd watch (etcd unreachable, or resyncing the prefix)"
        return None

    server = await metrics.serve(metrics_address, [m.registry, *(also or [])], ready)
    try:
        await _run(namespace, options, m, running, identity_server)
    finally:
        if server is not None:
            await server.close()


async def _run(
    namespace: str,
    options: EtcdOptions,
    m: metrics.OperatorMetrics,
    running: list[reconciler.Reconciler],
    identity_server: IdentityServer | None,
) -> None:
    store = await connect.retrying(options)
    api = kube.Api(kube.load_config(), namespace, m)
    r = reconciler.Reconciler(store, api, m)
    running.append(r)
    logger.info("Started operator", extra=logs.kv(namespace=namespace, prefix=options.prefix))
    try:
        async with asyncio.TaskGroup() as group:
            ours = [group.create_task(runtime.supervise("etcd-watch", lambda: etcd_to_k8s.run(r)), name="etcd-watch")]
            ours += [
                group.create_task(runtime.supervise(f"worker-{i}", r.work), name=f"worker-{i}")
                for i in range(kube.CONCURRENCY)
            ]
            if identity_server is not None:
                i = identity_server
                verifier = identity.Verifier(kube.load_config(), store.client, i.settings)
                serve = lambda: identity.serve(i.address, i.cert_file, i.key_file, verifier)  # noqa: E731
                ours.append(group.create_task(runtime.supervise("node-identity", serve), name="node-identity"))
            await kopf.operator(
                registry=startup.registry,
                namespaces=[namespace],
                standalone=True,
                memo=kopf.Memo(reconciler=r),
            )
            for task in ours:
                task.cancel()
    finally:
        r.queue.close()
        logger.info("Stopped operator", extra=logs.kv(api_writes=api.writes, etcd_writes=r.etcd_writes))
        await store.close()
        await api.close()
