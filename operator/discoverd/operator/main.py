"""The operator's main: Kopf and the etcd watch in one asyncio TaskGroup, one prefix into one namespace.

Kopf handles SIGTERM/SIGINT and returns; the etcd side is then cancelled.
etcd being down at start-up or later is waited out, never fatal.
"""

from __future__ import annotations

import asyncio
import logging

import kopf

from discoverd import logs
from discoverd.config import EtcdOptions
from discoverd.errors import StoreUnavailable
from discoverd.operator import etcd_to_k8s, handlers, kube, startup, sync
from discoverd.store import client, documents

__all__ = ["connect", "run"]

logger = logging.getLogger(__name__)
_ = handlers  # importing it registers the handlers on startup.registry


async def connect(options: EtcdOptions) -> documents.Store:
    """A store, once etcd answers (retrying with back-off while it does not)."""
    delay = 0.5
    while True:
        try:
            return documents.Store(await client.connect(options))
        except StoreUnavailable as error:
            logger.warning("etcd is unavailable, retrying", extra=logs.kv(reason=str(error), retry_in=delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def run(namespace: str, options: EtcdOptions) -> None:
    """Mirror `options.prefix` in etcd and `namespace` in Kubernetes both ways until signalled."""
    store = await connect(options)
    api = kube.Api(kube.load_config(), namespace)
    m = sync.Mirror(store, api)
    logger.info("Started operator", extra=logs.kv(namespace=namespace, prefix=options.prefix))
    try:
        async with asyncio.TaskGroup() as group:
            etcd_side = [
                group.create_task(etcd_to_k8s.run(m), name="etcd-to-k8s"),
                group.create_task(etcd_to_k8s.retry_keys(m), name="retry-keys"),
            ]
            await kopf.operator(
                registry=startup.registry,
                namespaces=[namespace],
                standalone=True,
                memo=kopf.Memo(mirror=m),
            )
            for task in etcd_side:
                task.cancel()
    finally:
        logger.info("Stopped operator", extra=logs.kv(api_writes=api.writes, etcd_writes=m.etcd_writes))
        await store.close()
        api.close()
