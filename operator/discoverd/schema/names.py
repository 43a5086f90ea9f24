"""Kubernetes object names for etcd names: DNS-1123 subdomains, never two etcd names to one object.

The service (or server) comes first, then the version or instance ID after a
dot: `web` version `1.0` is `web.1.0`, instance `i1` of `web` is `web.i1`,
server `node-1` is `node-1`. When a name does not fit (upper case, `_`, a dot
in the service, too long), the conversion is lossy: the name is folded to the
allowed characters and `--` plus a hash of the exact etcd names is appended.
A lossless name never contains `--`, so lossy and lossless names never meet,
and lossless names can be read back unambiguously. The exact etcd names
always live in the object's `spec`.
"""

from __future__ import annotations

import hashlib
import re

from discoverd.schema import keys, resources

__all__ = ["MAX_LENGTH", "is_valid", "object_name"]

MAX_LENGTH = 253
_HASH_LENGTH = 10
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_FIRST = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_valid(name: str) -> bool:
    """A DNS-1123 subdomain, as Kubernetes requires of object names."""
    return len(name) <= MAX_LENGTH and bool(_SUBDOMAIN.match(name))


def _fold(text: str) -> str:
    folded = re.sub(r"[^a-z0-9.]+", "-", text.lower())
    folded = re.sub(r"\.{2,}", ".", folded)
    folded = re.sub(r"-*\.-*", ".", folded)
    return folded.strip("-.")


def object_name(key: keys.Key) -> str:
    """The object name for the document at `key` (any kind in `resources.RESOURCES`)."""
    parts = resources.key_names(key)
    lossless = ".".join(parts)
    if _FIRST.match(parts[0]) and "--" not in lossless and is_valid(lossless):
        return lossless
    digest = hashlib.sha256("\0".join((key.kind.value, *parts)).encode()).hexdigest()[:_HASH_LENGTH]
    stem = ".".join(p for p in (_fold(part) for part in parts) if p).replace("--", "-")
    stem = stem[: MAX_LENGTH - _HASH_LENGTH - 2].strip("-.")
    return f"{stem}--{digest}" if stem else f"x--{digest}"
