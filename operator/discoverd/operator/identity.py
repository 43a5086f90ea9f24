"""Node identity: the operator's HTTPS endpoint that gives each agent its own server's etcd credentials.

An agent proves which pod it is with its projected ServiceAccount token (an
audience of its own, bound to the pod by the kubelet) and asks for the
credentials of one server ID. The operator, which holds the admin identity:

1. asks the API server about the token (TokenReview, with our audience): it
   must be valid, for our audience, of the agent's ServiceAccount, and bound to
   a pod (`authentication.kubernetes.io/pod-name` and `pod-uid` in its extra);
2. reads that pod: same uid (not a newer pod of the same name), not being
   deleted nor finished, the agent's labels and ServiceAccount, and bound to
   the node named like the server ID asked for;
3. reads that node (it exists; its uid matches the token's `node-uid` when
   the kubelet put one there);
4. answers with `store.auth.issue_server_credentials`: the role and user of
   `discoverd auth add-server`, with a new random password each time (the
   earlier one stops working), valid for `ttl` seconds. A sweep gives every
   password that was not renewed in time a random one nobody holds.

Everything else is refused with a one-line reason, sent to the agent and
logged here (and as a Warning event on the pod when there is one).
Passwords rather than client certificates: etcd checks a client certificate
only at the TLS handshake and has no revocation list, so a stolen certificate
works until it expires, while a rotated password stops working at once; and
etcd needs no CA of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3.exceptions
from aiohttp import web
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from discoverd import logs
from discoverd.errors import InvalidDocument, StoreUnavailable
from discoverd.schema import identity as wire
from discoverd.schema import keys
from discoverd.store import auth
from discoverd.store import client as etcd_client

__all__ = ["Refused", "Settings", "Verifier", "serve"]

log = logging.getLogger(__name__)

_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"
_NODE_NAME = "authentication.kubernetes.io/node-name"
_NODE_UID = "authentication.kubernetes.io/node-uid"
_MAX_BODY = 4096
_SWEEP_EVERY = 15.0
_MAX_IN_FLIGHT = 8
"""Requests checked at once; more are answered 503 at once (anyone who reaches the port can send a
token, and each costs a TokenReview and two reads of the API server)."""


@dataclass(frozen=True)
class Settings:
    """Who may ask, and what they get."""

    namespace: str
    """The release's namespace: the agent pods and their ServiceAccount live there."""
    service_account: str
    """The agents' ServiceAccount name."""
    labels: Mapping[str, str]
    """Labels every agent pod of this release carries (the DaemonSet's selector)."""
    audience: str = "discoverd"
    ttl: float = 3600.0
    """Seconds an issued password stays valid; the agent renews it after half."""
    min_interval: float = 5.0
    """Seconds between two issues for one server (each rotation makes every etcd client log in again)."""


class Refused(Exception):
    """The request is not from a live agent pod of this release on that server's node; `str` is why."""

    def __init__(self, reason: str, status: int = 403, pod: tuple[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.pod = pod
        """(namespace, name) of the pod the token names, once known (for the Warning event)."""


def _first(extra: Mapping[str, list[str]] | None, name: str) -> str | None:
    values = (extra or {}).get(name) or []
    return values[0] if values else None


@dataclass
class Verifier:
    """Checks a token and a server ID against the API server; issues credentials through etcd."""

    api: kclient.ApiClient
    etcd: etcd_client.Client
    settings: Settings
    _reviews: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_MAX_IN_FLIGHT))
    _deadlines: dict[str, float] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def _kube(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args, _request_timeout=10)
        except ApiException as error:
            if error.status == 404:
                return None
            raise Refused(f"the Kubernetes API answered {error.status} {error.reason}", 503) from None
        except (OSError, urllib3.exceptions.HTTPError) as error:  # the API server is unreachable
            raise Refused(f"the Kubernetes API is unreachable: {error}", 503) from None

    async def identify(self, token: str, server_id: str) -> str:
        """The agent pod `token` proves for `server_id`, as "namespace/name"; Refused otherwise."""
        s = self.settings
        reason = keys.segment_error(server_id)
        if reason is not None:
            raise Refused(f"server ID {server_id!r} {reason}", 400)
        review = kclient.V1TokenReview(spec=kclient.V1TokenReviewSpec(token=token, audiences=[s.audience]))
        result = await self._kube(kclient.AuthenticationV1Api(self.api).create_token_review, review)
        status = result.status if result is not None else None
        if status is None or not status.authenticated:
            error = (status.error if status is not None else None) or "not authenticated"
            raise Refused(f"the token is not valid for audience {s.audience!r}: {error}", 401)
        if s.audience not in (status.audiences or []):
            raise Refused(f"the token is not meant for audience {s.audience!r}", 401)
        user = status.user
        want = f"system:serviceaccount:{s.namespace}:{s.service_account}"
        if user is None or user.username != want:
            name = user.username if user is not None else None
            raise Refused(f"the token is of {name!r}, not of the agents' ServiceAccount {want!r}")
        pod_name, pod_uid = _first(user.extra, _POD_NAME), _first(user.extra, _POD_UID)
        if not pod_name or not pod_uid:
            raise Refused("the token is not bound to a pod: mount a projected serviceAccountToken volume")
        where = (s.namespace, pod_name)
        pod = await self._kube(kclient.CoreV1Api(self.api).read_namespaced_pod, pod_name, s.namespace)
        if pod is None or pod.metadata.uid != pod_uid:
            raise Refused(f"pod {s.namespace}/{pod_name} (uid {pod_uid}) no longer exists")
        if pod.metadata.deletion_timestamp is not None or (pod.status and pod.status.phase in ("Succeeded", "Failed")):
            raise Refused(f"pod {s.namespace}/{pod_name} is being deleted or has finished", pod=where)
        labels = pod.metadata.labels or {}
        missing = sorted(k for k, v in s.labels.items() if labels.get(k) != v)
        if missing or pod.spec.service_account_name != s.service_account:
            raise Refused(f"pod {s.namespace}/{pod_name} is not an agent pod of this release", pod=where)
        node_name = pod.spec.node_name
        if not node_name:
            raise Refused(f"pod {s.namespace}/{pod_name} is not bound to a node", pod=where)
        token_node = _first(user.extra, _NODE_NAME)
        if token_node is not None and token_node != node_name:
            raise Refused(f"the token names node {token_node!r}, pod {pod_name} runs on {node_name!r}", pod=where)
        if node_name != server_id:
            raise Refused(
                f"pod {s.namespace}/{pod_name} runs on node {node_name!r}, not on server {server_id!r}: "
                "an agent gets the credentials of its own node's server only (server ID = node name)",
                pod=where,
            )
        node = await self._kube(kclient.CoreV1Api(self.api).read_node, node_name)
        if node is None:
            raise Refused(f"node {node_name!r} does not exist", pod=where)
        node_uid = _first(user.extra, _NODE_UID)
        if node_uid is not None and node.metadata.uid != node_uid:
            raise Refused(f"node {node_name!r} is not the node the token was issued on (uid differs)", pod=where)
        return f"{s.namespace}/{pod_name}"

    async def issue(self, token: str, server_id: str) -> tuple[str, wire.Credentials]:
        """Identify the caller, then rotate and return its server's credentials."""
        if self._reviews.locked():
            raise Refused(f"{_MAX_IN_FLIGHT} requests are being checked already: retry later", 503)
        async with self._reviews:
            pod = await self.identify(token, server_id)
        lock = self._locks.setdefault(server_id, asyncio.Lock())
        async with lock:
            wait = self._last.get(server_id, -1e9) + self.settings.min_interval - time.monotonic()
            if wait > 0:
                raise Refused(f"credentials for server {server_id!r} were issued {wait:.1f} s too recently", 429)
            try:
                user, password = await auth.issue_server_credentials(
                    self.etcd, self.etcd.etcd_options.prefix, server_id
                )
            except StoreUnavailable as error:
                raise Refused(f"etcd is unavailable: {error}", 503) from None
            now = time.monotonic()
            self._last[server_id] = now
            self._deadlines[server_id] = now + self.settings.ttl
        ttl = self.settings.ttl
        return pod, wire.Credentials(user=user, password=password, ttl_seconds=ttl, renew_after_seconds=ttl / 2)

    async def sweep(self) -> None:
        """Give each password not renewed within its ttl a random one nobody holds."""
        now = time.monotonic()
        for server_id, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            async with self._locks.setdefault(server_id, asyncio.Lock()):
                if self._deadlines.get(server_id, now + 1) > now:
                    continue
                await auth.rotate_password(self.etcd, auth.server_role(self.etcd.etcd_options.prefix, server_id))
                del self._deadlines[server_id]
            log.info("Expired node credentials", extra=logs.kv(server=server_id))


def _event(api: kclient.ApiClient, namespace: str, pod: str, reason: str) -> None:
    now = dt.datetime.now(dt.UTC)
    body = kclient.CoreV1Event(
        metadata=kclient.V1ObjectMeta(generate_name=f"{pod}.", namespace=namespace),
        involved_object=kclient.V1ObjectReference(kind="Pod", namespace=namespace, name=pod, api_version="v1"),
        reason="CredentialsRefused",
        message=reason[:1024],
        type="Warning",
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=kclient.V1EventSource(component="discoverd-operator"),
    )
    kclient.CoreV1Api(api).create_namespaced_event(namespace, body, _request_timeout=10)


def _handler(verifier: Verifier) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def credentials(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        server_id = ""
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused("no bearer token: send the projected ServiceAccount token", 401)
            try:
                asked = wire.decode(wire.CredentialsRequest, await request.read(), "request")
            except InvalidDocument as error:
                raise Refused(f'the body is not {{"serverId": "<server ID>"}}: {error}', 400) from None
            server_id = asked.server_id
            pod, issued = await verifier.issue(token.strip(), server_id)
        except Refused as refused:
            log.warning(
                "Refused node credentials",
                extra=logs.kv(server=server_id, peer=request.remote or "", reason=str(refused)),
            )
            if refused.pod is not None:
                with contextlib.suppress(ApiException, OSError):
                    await asyncio.to_thread(_event, verifier.api, *refused.pod, str(refused))
            refusal = wire.Refusal(reason=str(refused)[:4096])
            return web.json_response(refusal.model_dump(by_alias=True), status=refused.status)
        log.info("Issued node credentials", extra=logs.kv(server=server_id, pod=pod, user=issued.user))
        return web.json_response(issued.model_dump(by_alias=True))

    return credentials


async def _sweep(verifier: Verifier) -> None:
    while True:
        await asyncio.sleep(_SWEEP_EVERY)
        try:
            await verifier.sweep()
        except StoreUnavailable as error:
            log.warning("Failed to expire node credentials", extra=logs.kv(reason=str(error)))


async def serve(address: str, cert_file: Path, key_file: Path, verifier: Verifier) -> None:
    """Serve `PATH` over HTTPS on `address` (host:port) until cancelled, and expire unrenewed passwords."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post(wire.PATH, _handler(verifier))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    host, _, port = address.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=context)
    try:
        await site.start()
        log.info("Serving node credentials", extra=logs.kv(address=address, audience=verifier.settings.audience))
        await _sweep(verifier)
    finally:
        await runner.cleanup()
