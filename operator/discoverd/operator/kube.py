"""The operator's own calls to the Kubernetes API: our custom resources in one namespace, and Events.

Kopf watches the objects; the mirror also needs to list, create, patch and
delete them itself (from the etcd watch, and inside handlers so annotations
land before the next etcd event is looked at). The `kubernetes` client is
synchronous, so each call runs in a thread of our own pool of `CONCURRENCY`
threads, each with its own connection (asyncio's default pool has only
cpu + 4 threads, and the client's connection pool 5 x cpu). Every write is
counted in `writes`, which the tests use to show a quiet mirror writes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from discoverd import metrics
from discoverd.schema import keys, resources

__all__ = ["CONCURRENCY", "PAGE", "Api", "NotFound", "load_config"]

logger = logging.getLogger(__name__)

CONCURRENCY = 16
"""API calls in flight at once. Measured with bench/operator_mirror.py: a plain client's create
rate on the test kube-apiserver stops growing past about this many (2 cores)."""


PAGE = 500
"""Objects per page of a list (`limit`): the operator never holds one response of every object."""


class NotFound(Exception):
    """The object is gone (404)."""


def load_config() -> client.ApiClient:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENCY
    return client.ApiClient(configuration)


class Api:
    """Custom resources of one namespace, plus Events about them."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, metrics_: metrics.OperatorMetrics | None = None
    ) -> None:
        self.metrics = metrics_ or metrics.OperatorMetrics()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.writes = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kube-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))
        except ApiException as error:
            if error.status == 404:
                raise NotFound(str(error.reason)) from None
            raise
        finally:
            self.metrics.api_seconds.labels(getattr(function, "__name__", "call")).observe(time.monotonic() - began)

    def _where(self, kind: keys.Kind) -> tuple[str, str, str, str]:
        return resources.GROUP, resources.VERSION, self.namespace, resources.resource(kind).plural

    async def pages(self, kind: keys.Kind, limit: int = PAGE) -> AsyncIterator[tuple[list[dict[str, Any]], int | None]]:
        """Every object of `kind` in pages of `limit` (one consistent list, as `kubectl get --chunk-size`),
        each with the list's resourceVersion (None if not a number), so a caller keeps one page at a time."""
        token = ""
        while True:
            extra = {"_continue": token} if token else {}
            result = await self._call(
                self.custom.list_namespaced_custom_object, *self._where(kind), limit=limit, **extra
            )
            metadata = result.get("metadata") or {}
            try:
                revision: int | None = int(metadata.get("resourceVersion", ""))
            except ValueError:
                revision = None
            yield result.get("items", []), revision
            token = metadata.get("continue") or ""
            if not token:
                return

    async def get(self, kind: keys.Kind, name: str) -> dict[str, Any]:
        """One object (NotFound when it is gone), by a list of its name: the Role grants `list`, not `get`."""
        result = await self._call(
            self.custom.list_namespaced_custom_object, *self._where(kind), field_selector=f"metadata.name={name}"
        )
        for body in result.get("items", []):
            body.setdefault("kind", resources.resource(kind).name)
            body.setdefault("apiVersion", resources.API_VERSION)
            return cast(dict[str, Any], body)
        raise NotFound(f"{kind.value} {name}")

    async def create(self, kind: keys.Kind, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        created: dict[str, Any] = await self._call(
            self.custom.create_namespaced_custom_object, *self._where(kind), body
        )
        return created

    async def patch(self, kind: keys.Kind, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (None deletes a field)."""
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            self.custom.patch_namespaced_custom_object,
            *self._where(kind),
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        return patched

    async def patch_json(self, kind: keys.Kind, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902): replaces a whole field without knowing its old value."""
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            self.custom.patch_namespaced_custom_object,
            *self._where(kind),
            name,
            operations,
            _content_type="application/json-patch+json",
        )
        return patched

    async def patch_status(self, kind: keys.Kind, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            self.custom.patch_namespaced_custom_object_status,
            *self._where(kind),
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
        return patched

    async def delete(self, kind: keys.Kind, name: str) -> dict[str, Any] | None:
        """The object as left by the delete (held by its finalizer), or None when it is gone."""
        self.writes += 1
        with contextlib.suppress(NotFound):
            left: dict[str, Any] = await self._call(
                self.custom.delete_namespaced_custom_object, *self._where(kind), name
            )
            if left.get("kind") != "Status" and left.get("metadata", {}).get("deletionTimestamp"):
                return left
        return None

    async def warn(self, body: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event about the object (kubectl describe shows it); failures are logged, not raised."""
        metadata = body.get("metadata", {})
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{metadata.get('name', 'discoverd')}.", namespace=self.namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version=resources.API_VERSION,
                kind=body.get("kind"),
                name=metadata.get("name"),
                namespace=self.namespace,
                uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion"),
            ),
            type="Warning",
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="discoverd-operator"),
            reporting_component="discoverd-operator",
        )
        self.writes += 1
        try:
            await self._call(self.core.create_namespaced_event, self.namespace, event)
        except (ApiException, NotFound) as error:
            logger.warning("Failed to post event reason=%s: %s", reason, error)
