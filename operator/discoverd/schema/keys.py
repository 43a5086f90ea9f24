"""The only code that knows etcd key strings: build them, parse them, validate a name segment.

Key layout (DESIGN section 1 and 2), relative to the prefix:

    servers/<server>/config/details
    services/<service>/versions/<version>/config/details
    services/<service>/instances/<instance>/config/details
    servers/<server>/status/agent
    servers/<server>/status/instances/<service>/<instance>
    services/<service>/rollout/config/details       (section 2b)
    services/<service>/rollout/status
    services/<service>/servers/<server>              (a listing: an index, see `listing`)
    controller/leader
    grants/<server>/<sha256 of a token, hex>         (log access, DESIGN section 3)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from discoverd.errors import InvalidDocument, printable

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_SEGMENT_BYTES",
    "Key",
    "Kind",
    "agent_status",
    "controller_leader",
    "instance_config",
    "instance_status",
    "instance_status_prefix",
    "listing",
    "listings_prefix",
    "log_grant",
    "log_grants_prefix",
    "normalize_prefix",
    "parse",
    "prefix_range_end",
    "rollout_config",
    "rollout_prefix",
    "rollout_status",
    "segment_error",
    "server_config",
    "server_prefix",
    "servers_prefix",
    "service_instances_prefix",
    "validate_segment",
    "version_config",
    "versions_prefix",
]

DEFAULT_PREFIX = "/discoverd"
MAX_SEGMENT_BYTES = 253
_CONFIG = "config/details"


class Kind(enum.StrEnum):
    SERVER = "Server"
    VERSION = "ServiceVersion"
    INSTANCE = "ServiceInstance"
    AGENT_STATUS = "AgentStatus"
    INSTANCE_STATUS = "InstanceStatus"
    ROLLOUT = "ServiceRollout"
    ROLLOUT_STATUS = "RolloutStatus"


@dataclass(frozen=True, order=True)
class Key:
    """A parsed key: which document it holds and the names in its path."""

    kind: Kind
    server: str = ""
    service: str = ""
    version: str = ""
    instance: str = ""

    def build(self, prefix: str) -> str:
        match self.kind:
            case Kind.SERVER:
                return server_config(prefix, self.server)
            case Kind.VERSION:
                return version_config(prefix, self.service, self.version)
            case Kind.INSTANCE:
                return instance_config(prefix, self.service, self.instance)
            case Kind.AGENT_STATUS:
                return agent_status(prefix, self.server)
            case Kind.INSTANCE_STATUS:
                return instance_status(prefix, self.server, self.service, self.instance)
            case Kind.ROLLOUT:
                return rollout_config(prefix, self.service)
            case Kind.ROLLOUT_STATUS:
                return rollout_status(prefix, self.service)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL (a regex: a segment is checked on every key built)."""


def segment_error(value: str) -> str | None:
    """Why `value` cannot be a name or ID (a path segment), or None when it can."""
    if not value:
        return "must not be empty"
    if "/" in value:
        return "must not contain '/'"
    if value in (".", ".."):
        return f"must not be {value!r}"
    if _CONTROL.search(value):
        return "must not contain control characters"
    if not _is_utf8(value):
        return "must be valid UTF-8 (it holds a byte that is not, or a lone surrogate)"
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_SEGMENT_BYTES:
        return f"must be at most {MAX_SEGMENT_BYTES} bytes"
    return None


def _is_utf8(text: str) -> bool:
    """False for a key decoded with surrogateescape from bytes that are not UTF-8 (or any lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_segment(value: str) -> str:
    """Return `value` if it is a valid name or ID; raise ValueError (for pydantic) if not."""
    reason = segment_error(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def normalize_prefix(prefix: str) -> str:
    """`/discoverd/` and `discoverd` both mean `/discoverd`."""
    stripped = prefix.strip("/")
    if not stripped:
        raise ValueError("the prefix must name at least one path segment, such as /discoverd")
    return "/" + stripped


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd range end that covers every key starting with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _join(prefix: str, *segments: str) -> str:
    for segment in segments:
        validate_segment(segment)
    return "/".join((normalize_prefix(prefix), *segments))


def servers_prefix(prefix: str) -> str:
    """Every server's keys: documents and status (a prefix to read or watch)."""
    return normalize_prefix(prefix) + "/servers/"


def server_prefix(prefix: str, server: str) -> str:
    """Every key of one server: its document and its status (ends with `/`)."""
    return _join(prefix, "servers", server) + "/"


def server_config(prefix: str, server: str) -> str:
    return f"{_join(prefix, 'servers', server)}/{_CONFIG}"


def version_config(prefix: str, service: str, version: str) -> str:
    return f"{_join(prefix, 'services', service, 'versions', version)}/{_CONFIG}"


def versions_prefix(prefix: str, service: str) -> str:
    """The prefix of every version document of `service` (ends with `/`)."""
    return _join(prefix, "services", service, "versions") + "/"


def instance_config(prefix: str, service: str, instance: str) -> str:
    return f"{_join(prefix, 'services', service, 'instances', instance)}/{_CONFIG}"


def agent_status(prefix: str, server: str) -> str:
    return _join(prefix, "servers", server, "status", "agent")


def instance_status_prefix(prefix: str, server: str) -> str:
    return _join(prefix, "servers", server, "status", "instances") + "/"


def instance_status(prefix: str, server: str, service: str, instance: str) -> str:
    return _join(prefix, "servers", server, "status", "instances", service, instance)


def service_instances_prefix(prefix: str, service: str) -> str:
    """Where the instance documents of `service` live (a prefix to read or watch)."""
    return _join(prefix, "services", service, "instances") + "/"


def rollout_prefix(prefix: str, service: str) -> str:
    """The rollout config and status of `service` (a prefix to read or watch)."""
    return _join(prefix, "services", service, "rollout") + "/"


def rollout_config(prefix: str, service: str) -> str:
    return f"{_join(prefix, 'services', service, 'rollout')}/{_CONFIG}"


def rollout_status(prefix: str, service: str) -> str:
    return _join(prefix, "services", service, "rollout", "status")


def listing(prefix: str, service: str, server: str) -> str:
    """The index key saying "`server`'s document lists instances of `service`" (written by its agent).

    Not a document: `parse` leaves it out (None), the value is the empty `documents.Listing`.
    The server document stays the truth; a listing only tells the controller which server
    documents to read when a rollout of `service` starts (docs/rollouts.md, "Finding the
    instances"), so that start does not read every server's keys.
    """
    return _join(prefix, "services", service, "servers", server)


def listings_prefix(prefix: str, service: str) -> str:
    """Every listing key of `service` (ends with `/`)."""
    return _join(prefix, "services", service, "servers") + "/"


def controller_leader(prefix: str) -> str:
    """The rollout controllers' election key (its value names the leader; held by its lease)."""
    return _join(prefix, "controller", "leader")


def log_grants_prefix(prefix: str, server: str) -> str:
    """Where the log-access grants for `server`'s agent live (its role reads them; ends with `/`)."""
    return _join(prefix, "grants", server) + "/"


def log_grant(prefix: str, server: str, token_sha256: str) -> str:
    """One reader's grant to read logs on `server`, named by the SHA-256 (hex) of the token it presents."""
    return _join(prefix, "grants", server, token_sha256)


def _checked(key: str, **names: str) -> dict[str, str]:
    for field, value in names.items():
        reason = segment_error(value)
        if reason is not None:
            shown = printable(value[:64]) + ("..." if len(value) > 64 else "")
            raise InvalidDocument(key, field, f"'{shown}' is not a valid name: {reason}")
    return names


def parse(prefix: str, key: str) -> Key | None:
    """Which document `key` holds.

    None for keys outside the schema (they are ignored, so other writers can
    share the prefix). A key that has the schema's shape but a bad name, a
    config key that fits no shape, or a key under the prefix that is not
    UTF-8 (etcd keys are bytes; callers decode them with surrogateescape),
    raises InvalidDocument naming it as best it can be printed.
    """
    root = normalize_prefix(prefix) + "/"
    if not key.startswith(root):
        return None
    parts = key[len(root) :].split("/")
    match parts:
        case ["servers", server, "config", "details"]:
            return Key(Kind.SERVER, **_checked(key, server=server))
        case ["services", service, "versions", version, "config", "details"]:
            return Key(Kind.VERSION, **_checked(key, service=service, version=version))
        case ["services", service, "instances", instance, "config", "details"]:
            return Key(Kind.INSTANCE, **_checked(key, service=service, instance=instance))
        case ["servers", server, "status", "agent"]:
            return Key(Kind.AGENT_STATUS, **_checked(key, server=server))
        case ["servers", server, "status", "instances", service, instance]:
            return Key(Kind.INSTANCE_STATUS, **_checked(key, server=server, service=service, instance=instance))
        case ["services", service, "rollout", "config", "details"]:
            return Key(Kind.ROLLOUT, **_checked(key, service=service))
        case ["services", service, "rollout", "status"]:
            return Key(Kind.ROLLOUT_STATUS, **_checked(key, service=service))
        case [("servers" | "services"), *_, "config", "details"]:
            raise InvalidDocument(key, "", "not a discoverd configuration key (a name with '/' in it?)")
    if not _is_utf8(key):
        raise InvalidDocument(key, "", "the key is not valid UTF-8")
    return None
