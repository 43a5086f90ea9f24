"""Untrusted bytes and YAML trees -> plain JSON data within caps, or InvalidDocument.

The first stage of decoding any value, before a model sees it (`documents.parse`
for etcd values, `manifests.load` for `discoverd apply/validate` files). Every
key and value is untrusted input, whoever wrote it (DESIGN section 1), so this
checks what would otherwise blow up later or far away:

- size: a value over `MAX_VALUE_BYTES` is refused before it is decoded;
- depth: nesting deeper than `MAX_DEPTH` is refused *before* `json.loads`,
  which recurses (a few thousand `[` would raise RecursionError);
- text: UTF-8 only; no lone surrogates (`"\\ud800"`), which no UTF-8 stream
  or etcd write can carry; no NaN/Infinity (not JSON, and no sane setting);
- shape: only JSON types (YAML's dates, sets and binaries are refused), string
  keys, at most `MAX_NODES` values once YAML aliases are expanded.

The caps are documented in docs/configuration.md ("Limits").
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, NoReturn

from discoverd.errors import InvalidDocument

__all__ = ["MAX_DEPTH", "MAX_NODES", "MAX_VALUE_BYTES", "check_tree", "first_surrogate", "load_json", "too_deep"]

MAX_VALUE_BYTES = 1024 * 1024
"""Largest value accepted at a key (1 MiB; etcd's own request limit is 1.5 MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays in a document (the top-level object is depth 1)."""
MAX_NODES = MAX_VALUE_BYTES
"""Most values in one document: no JSON value within the size cap reaches it; YAML aliases can."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
"""A JSON string; an unterminated one runs to the end, so a match never fails (linear time)."""
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON `text` nests objects and arrays deeper than `limit`, found without recursion.

    Counts opening minus closing brackets outside strings; its running maximum is at least how
    deep `json.loads` would recurse before it parses or fails. Linear, and C-speed loops only.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def first_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (what no UTF-8 encoder accepts), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(key: str, raw: bytes) -> Any:
    """The JSON value of `raw` (UTF-8, within the caps); InvalidDocument naming `key` if it is not one."""
    if len(raw) > MAX_VALUE_BYTES:
        raise InvalidDocument(key, "", f"the value is {len(raw)} bytes, over the limit of {MAX_VALUE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidDocument(key, "", f"not valid UTF-8 (byte {error.start})") from None
    if too_deep(text):
        raise InvalidDocument(key, "", f"nests objects and arrays deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        raise InvalidDocument(key, "", f"not valid JSON: {error}") from None
    except ValueError as error:  # NaN/Infinity, or an integer of more digits than Python converts
        raise InvalidDocument(key, "", f"not valid JSON: {error}") from None
    check_tree(key, data)
    return data


def _path(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in parts)


def check_tree(key: str, data: Any, root: tuple[str | int, ...] = ()) -> None:
    """Check a decoded tree (JSON or YAML) against the caps; InvalidDocument names `key` and the field.

    Iterative, so a deep tree cannot exhaust the stack; it stops at the first problem.
    """
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(data, root, 0)]
    nodes = 0
    while stack:
        value, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise InvalidDocument(key, _path(root), f"holds more than {MAX_NODES} values (YAML aliases?)")
        if isinstance(value, str):
            at = first_surrogate(value)
            if at is not None:
                raise InvalidDocument(key, _path(path), f"holds a lone surrogate (\\u{ord(value[at]):04x}), not text")
        elif isinstance(value, bool | int | None):
            continue
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidDocument(key, _path(path), f"{value} is not a number JSON allows")
        elif isinstance(value, dict | list):
            if depth + 1 > MAX_DEPTH:
                raise InvalidDocument(key, _path(path), f"nests objects and arrays deeper than {MAX_DEPTH} levels")
            if isinstance(value, list):
                stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(value))
                continue
            for name, item in value.items():
                if not isinstance(name, str):
                    raise InvalidDocument(key, _path(path), f"has the key {name!r}, not a string")
                at = first_surrogate(name)
                if at is not None:
                    raise InvalidDocument(key, _path(path), f"has a key with a lone surrogate (\\u{ord(name[at]):04x})")
                stack.append((item, (*path, name), depth + 1))
        else:
            what = type(value).__name__
            raise InvalidDocument(key, _path(path), f"is a {what}, not a JSON value (quote it to make it a string)")
