"""Node identity, the agent's side: get this server's etcd credentials from the operator, and renew them.

On Kubernetes the agent holds no etcd credentials of its own. It sends the
projected ServiceAccount token the kubelet keeps in `token_file` (bound to
its pod, for the operator's audience, renewed by the kubelet) to the
operator's HTTPS endpoint, checked against `ca_file`, and gets back its own
server's etcd user and a password valid for a while (operator/identity.py
says what is checked). `Renewer` asks again before that time runs out and
swaps the password in the running etcd client: watches, the lease and the
instances carry on. A refusal is logged with the operator's reason and asked
again with back-off, never fatal.

The request is one small POST: the standard library's HTTP client, in a
thread, keeps aiohttp out of the agent's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from discoverd import logs, runtime
from discoverd.errors import DiscoverdError, InvalidDocument
from discoverd.schema import identity as wire

__all__ = ["Refused", "Renewer", "Source", "Unreachable", "fetch", "fetch_with_retry"]

log = logging.getLogger(__name__)

_MAX_ANSWER = 64 * 1024
_FIRST_RETRY = 1.0
_MAX_RETRY = 60.0


class Refused(DiscoverdError):
    """The operator answered no; the message is its reason."""


class Unreachable(DiscoverdError):
    """The operator did not answer (or not over a certificate `ca_file` trusts)."""


@dataclass(frozen=True)
class Source:
    """Where to ask for this server's credentials, and with what."""

    url: str
    """The operator's endpoint, https://HOST:PORT."""
    server_id: str
    token_file: Path
    ca_file: Path | None = None
    timeout: float = 10.0

    def check(self) -> None:
        """ValueError unless `url` is an https:// URL with a host."""
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{self.url!r} is not an https://HOST:PORT URL")


def _post(source: Source) -> tuple[int, bytes]:
    try:
        token = source.token_file.read_text().strip()
    except OSError as error:
        raise Unreachable(f"cannot read the ServiceAccount token {source.token_file}: {error.strerror}") from None
    context = ssl.create_default_context(cafile=str(source.ca_file) if source.ca_file else None)
    parts = urlsplit(source.url)
    host = parts.hostname or ""
    body = wire.CredentialsRequest(server_id=source.server_id).model_dump_json(by_alias=True).encode()
    connection = http.client.HTTPSConnection(host, parts.port or 443, timeout=source.timeout, context=context)
    try:
        connection.request(
            "POST",
            wire.PATH,
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, response.read(_MAX_ANSWER)
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(f"the operator at {source.url} did not answer: {error}") from None
    finally:
        connection.close()


async def fetch(source: Source) -> wire.Credentials:
    """This server's credentials; Refused (with the operator's reason) or Unreachable otherwise."""
    status, body = await asyncio.wait_for(asyncio.to_thread(_post, source), source.timeout * 2)
    try:
        if status == 200:
            return wire.decode(wire.Credentials, body, f"the answer of {source.url}")
        reason = wire.decode(wire.Refusal, body, f"the answer of {source.url}").reason
    except InvalidDocument as error:
        raise Unreachable(f"the operator at {source.url} answered {status} with {error}") from None
    raise Refused(f"the operator refused credentials for server {source.server_id!r} ({status}): {reason}")


async def fetch_with_retry(source: Source) -> wire.Credentials:
    """`fetch` until it succeeds, with back-off (1 s doubling to 60 s, jittered), logging each failure."""
    backoff = runtime.Backoff(_FIRST_RETRY, _MAX_RETRY)
    while True:
        try:
            return await fetch(source)
        except (Refused, Unreachable, TimeoutError) as error:
            reason = str(error) or "no answer in time"
            delay = backoff.next()
            log.warning(
                "Failed to get node credentials",
                extra=logs.kv(server=source.server_id, reason=reason, retry_in=f"{delay:.3f}s"),
            )
        await asyncio.sleep(delay)


class Renewer:
    """Holds the current credentials and renews them after `renew_after_seconds`."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.current: wire.Credentials | None = None
        self.renew_at = 0.0
        self.renewals = 0
        self._refused = asyncio.Event()

    def refused(self) -> None:
        """etcd refused the current password (replaced meanwhile, or expired): renew now, not when due."""
        self._refused.set()

    async def first(self) -> wire.Credentials:
        return self._take(await fetch_with_retry(self.source))

    def _take(self, credentials: wire.Credentials) -> wire.Credentials:
        self.current = credentials
        self.renew_at = time.monotonic() + min(credentials.renew_after_seconds, credentials.ttl_seconds)
        return credentials

    async def next(self) -> wire.Credentials:
        """Wait until the current credentials are due or refused, then new ones (asked until given)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refused.wait(), max(0.0, self.renew_at - time.monotonic()))
        why = "refused" if self._refused.is_set() else "due"
        self._refused.clear()
        credentials = self._take(await fetch_with_retry(self.source))
        self.renewals += 1
        log.info(
            "Renewed node credentials",
            extra=logs.kv(server=self.source.server_id, user=credentials.user, because=why),
        )
        return credentials
