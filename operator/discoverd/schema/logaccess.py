"""Log access (DESIGN section 3): the grant a reader writes, and what a reader and an agent say over HTTPS.

    <prefix>/grants/<server>/<sha256(token)>   LogGrant, under the reader's short lease

A reader (the `discoverd logs` command, the dashboard) makes a random token,
writes a `LogGrant` under the key named by the token's SHA-256, under a lease
of its own, and sends the token to the agent (`Authorization: Bearer`). The
agent reads that key in etcd on every request: the key names the service and
the instance the token may read, on that server only. Only a `logs` role or
admin may write under `grants/` (store/auth.py).

The agent answers one request per connection (`GET PATH?query`) with one JSON
object per line (`LogMessage`): the log lines, then one `end` saying why the
stream ended. A refusal is an HTTP error status with one message carrying
`error`. Everything read from the other side is untrusted and goes through
these models.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from discoverd.schema import documents
from discoverd.schema.documents import NotBool, Segment

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_TAIL",
    "TOKEN_HEADER",
    "End",
    "LogGrant",
    "LogMessage",
    "LogQuery",
    "Step",
    "new_token",
    "path",
    "token_sha256",
]

TOKEN_HEADER = "authorization"
"""The request header carrying `Bearer <token>`."""
MAX_LINE_BYTES = 64 * 1024
"""A longer line is sent in pieces of this size (as the kubelet's CRI logs split long lines)."""
MAX_TAIL = 1_000_000
_TOKEN_BYTES = 32
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class Step(enum.StrEnum):
    """Which log of an instance: a step's output (download, install, run) or its health checks'."""

    DOWNLOAD = "download"
    INSTALL = "install"
    RUN = "run"
    HEALTH = "health"


class LogGrant(documents.Document):
    """The value of a grant key: which instance of this server the token may read."""

    keep_defaults = True

    service: Segment
    instance: Segment
    reader: Annotated[str, Field(max_length=256)] = ""
    """Who asked (the etcd user, or a name the reader gives), for the agent's log."""


class End(enum.StrEnum):
    """Why a stream ended."""

    DONE = "done"
    """Everything asked for was sent (no follow)."""
    REMOVED = "removed"
    """The instance is no longer on this server and its process is gone."""
    GRANT = "grant"
    """The grant is gone (its lease expired or it was deleted): ask again with a new one."""
    DEADLINE = "deadline"
    """The request's deadline passed before everything was sent."""
    SHUTDOWN = "shutdown"
    """The agent is stopping (a new one takes over: read its status and ask it again)."""


class LogQuery(BaseModel):
    """The query of a log request: what to send and from where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: Step = Step.RUN
    tail: Annotated[int, Field(ge=0, le=MAX_TAIL), NotBool] | None = None
    """Only the last `tail` lines (of the current log and its rotated copies); None: everything kept."""
    since: Annotated[float, Field(ge=0), NotBool] | None = None
    """Only lines the agent first saw at or after this time (Unix seconds)."""
    follow: bool = False
    resume: Annotated[str, Field(pattern=r"^[0-9]{1,20}:[0-9]{1,20}(:[0-9]{1,20})?$")] | None = None
    """`LogMessage.pos` of the last line a reader got: continue right after it."""

    def params(self) -> dict[str, str]:
        """The query as URL parameters (only those set)."""
        out: dict[str, str] = {"step": self.step.value}
        if self.tail is not None:
            out["tail"] = str(self.tail)
        if self.since is not None:
            out["since"] = repr(self.since)
        if self.follow:
            out["follow"] = "1"
        if self.resume is not None:
            out["resume"] = self.resume
        return out


class LogMessage(BaseModel):
    """One line of the response: a log line (`line`, `at`, `pos`), an `end`, or an `error`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    line: Annotated[str, Field(max_length=4 * MAX_LINE_BYTES)] | None = None
    """The line without its newline; bytes that are not UTF-8 as lone surrogates (surrogateescape)."""
    at: Annotated[float, Field(ge=0)] | None = None
    """When the agent first saw the line (Unix seconds), when it knows."""
    pos: Annotated[str, Field(max_length=62)] | None = None
    """Where the line ends in the live log (`<inode>:<offset>:<inode of the newest copy>`): resume from there."""
    end: End | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


def new_token() -> str:
    """A random token for one grant (256 bits)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def token_sha256(token: str) -> str | None:
    """The SHA-256 (hex) naming the token's grant key; None for something that is not a token."""
    if not _TOKEN.match(token):
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def path(service: str, instance: str) -> str:
    """The request path of an instance's logs."""
    return f"/v1/logs/{quote(service, safe='')}/{quote(instance, safe='')}"
