"""The operator's own calls to the Kubernetes API: our custom resources in one namespace, and Events.

Kopf watches the objects; the mirror also needs to list, create, patch and
delete them itself (from the etcd watch, and inside handlers so annotations
land before the next etcd event is looked at). The calls are made on the
event loop with aiohttp (as Kopf's own), at most `CONCURRENCY` at once over
kept connections; the `kubernetes` package only reads the configuration
(in a pod the service account, else the kubeconfig) and names the errors
(`ApiException`, with the API server's status and body). Its synchronous
client, run in a pool of threads, spent most of the operator's CPU per
mirrored object in thread hand-offs and its own (de)serialization
(bench/README.md, Figure 4). Every write is counted in `writes`, which the
tests use to show a quiet mirror writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import aiohttp
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import should_bypass_proxies

from discoverd import metrics
from discoverd.schema import keys, resources

__all__ = ["CONCURRENCY", "PAGE", "TIMEOUT", "Api", "NotFound", "load_config"]

logger = logging.getLogger(__name__)

CONCURRENCY = 16
"""API calls in flight at once. Measured with bench/operator_mirror.py: a plain client's create
rate on the test kube-apiserver stops growing past about this many (2 cores)."""

PAGE = 500
"""Objects per page of a list (`limit`): the operator never holds one response of every object."""

TIMEOUT = 60.0
"""Seconds one API call may take (connect, send, read the whole answer) before it fails as unreachable."""


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


def ssl_context(configuration: client.Configuration) -> ssl.SSLContext:
    """TLS as the `kubernetes` client sets it up: the cluster's CA (file or data), a client
    certificate if the configuration has one, no verification only when it says so."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert, cadata=_text(configuration.ca_cert_data))
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _text(data: str | bytes | None) -> str | None:
    return data.decode() if isinstance(data, bytes) else data


def _failed(status: int, reason: str, body: str = "") -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = body
    return error


class Api:
    """Custom resources of one namespace, plus Events about them."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, metrics_: metrics.OperatorMetrics | None = None
    ) -> None:
        self.metrics = metrics_ or metrics.OperatorMetrics()
        self.configuration: client.Configuration = api_client.configuration
        self.namespace = namespace
        self.writes = 0
        self._base = str(self.configuration.host).rstrip("/")
        proxy = self.configuration.proxy
        self._proxy = (
            proxy if proxy and not should_bypass_proxies(self._base, self.configuration.no_proxy or "") else None
        )
        self._ssl = ssl_context(self.configuration) if self._base.startswith("https:") else None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=CONCURRENCY, ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                headers={"User-Agent": "discoverd-operator"},
            )
        return self._session

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        # The client's own auth settings: a bearer token read again when it rotates (its refresh hook).
        for setting in self.configuration.auth_settings().values():
            auth = cast(dict[str, Any], setting)
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    async def _call(
        self,
        name: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; its JSON answer. ApiException for an error status (NotFound for 404) and,
        with status 0, for an API server that cannot be reached or does not answer in `TIMEOUT`."""
        session = self._open()
        began = time.monotonic()
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with session.request(
                method,
                self._base + path,
                params=params,
                data=data,
                headers=self._headers(content_type if data is not None else None),
                proxy=self._proxy,
                server_hostname=self.configuration.tls_server_name or None,
            ) as response:
                text = await response.text()
                if response.status == 404:
                    raise NotFound(response.reason or "Not Found")
                if response.status >= 400:
                    raise _failed(response.status, response.reason or "", text)
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _failed(0, f"API server unreachable: {type(error).__name__}: {error}") from None
        finally:
            self.metrics.api_seconds.labels(name).observe(time.monotonic() - began)

    def _path(self, kind: keys.Kind, name: str = "", sub: str = "") -> str:
        plural = resources.resource(kind).plural
        path = f"/apis/{resources.GROUP}/{resources.VERSION}/namespaces/{self.namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def pages(self, kind: keys.Kind, limit: int = PAGE) -> AsyncIterator[tuple[list[dict[str, Any]], int | None]]:
        """Every object of `kind` in pages of `limit` (one consistent list, as `kubectl get --chunk-size`),
        each with the list's resourceVersion (None if not a number), so a caller keeps one page at a time."""
        token = ""
        while True:
            params: dict[str, str | int] = {"limit": limit}
            if token:
                params["continue"] = token
            result = await self._call("list_namespaced_custom_object", "GET", self._path(kind), params=params)
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
        params = {"fieldSelector": f"metadata.name={name}"}
        result = await self._call("list_namespaced_custom_object", "GET", self._path(kind), params=params)
        for body in result.get("items", []):
            body.setdefault("kind", resources.resource(kind).name)
            body.setdefault("apiVersion", resources.API_VERSION)
            return cast(dict[str, Any], body)
        raise NotFound(f"{kind.value} {name}")

    async def create(self, kind: keys.Kind, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        created: dict[str, Any] = await self._call(
            "create_namespaced_custom_object", "POST", self._path(kind), body=body
        )
        return created

    async def patch(self, kind: keys.Kind, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (None deletes a field)."""
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            "patch_namespaced_custom_object",
            "PATCH",
            self._path(kind, name),
            body=patch,
            content_type="application/merge-patch+json",
        )
        return patched

    async def patch_json(self, kind: keys.Kind, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902): replaces a whole field without knowing its old value."""
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            "patch_namespaced_custom_object",
            "PATCH",
            self._path(kind, name),
            body=operations,
            content_type="application/json-patch+json",
        )
        return patched

    async def patch_status(self, kind: keys.Kind, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        patched: dict[str, Any] = await self._call(
            "patch_namespaced_custom_object_status",
            "PATCH",
            self._path(kind, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return patched

    async def delete(self, kind: keys.Kind, name: str) -> dict[str, Any] | None:
        """The object as left by the delete (held by its finalizer), or None when it is gone."""
        self.writes += 1
        with contextlib.suppress(NotFound):
            left: dict[str, Any] = await self._call("delete_namespaced_custom_object", "DELETE", self._path(kind, name))
            if left.get("kind") != "Status" and left.get("metadata", {}).get("deletionTimestamp"):
                return left
        return None

    async def warn(self, body: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event about the object (kubectl describe shows it); failures are logged, not raised."""
        metadata = body.get("metadata", {})
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'discoverd')}.", "namespace": self.namespace},
            "involvedObject": {
                k: v
                for k, v in {
                    "apiVersion": resources.API_VERSION,
                    "kind": body.get("kind"),
                    "name": metadata.get("name"),
                    "namespace": self.namespace,
                    "uid": metadata.get("uid"),
                    "resourceVersion": metadata.get("resourceVersion"),
                }.items()
                if v is not None
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "discoverd-operator"},
            "reportingComponent": "discoverd-operator",
        }
        self.writes += 1
        try:
            await self._call(
                "create_namespaced_event", "POST", f"/api/v1/namespaces/{self.namespace}/events", body=event
            )
        except (ApiException, NotFound) as error:
            logger.warning("Failed to post event reason=%s: %s", reason, error)
