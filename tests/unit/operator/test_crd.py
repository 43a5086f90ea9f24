"""The CRDs are generated from the models, structural, and crds/ is up to date."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from discoverd.operator import reconciler
from discoverd.schema import crd, keys

REPO = Path(__file__).resolve().parents[3]


def test_crds_directory_matches_the_models() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-crds.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _walk(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    found = [node]
    for value in node.values():
        if isinstance(value, dict):
            found += _walk(value)
    return found


@pytest.mark.parametrize("kind", ["Server", "ServiceVersion", "ServiceInstance"])
def test_schema_is_structural(kind: str) -> None:
    schema = crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "default" not in node
        assert not ("properties" in node and "additionalProperties" in node)


@pytest.mark.parametrize("value", ["web", "1.0", "a.b", "..x", ".x", "x..", "UPPER_case", "ünï", "a b", "-"])
def test_segment_pattern_accepts_what_keys_accepts(value: str) -> None:
    assert keys.segment_error(value) is None
    assert re.match(crd.SEGMENT_PATTERN, value)


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a\nb", "a\x7fb"])
def test_segment_pattern_refuses_what_keys_refuses(value: str) -> None:
    assert keys.segment_error(value) is not None
    assert not re.match(crd.SEGMENT_PATTERN, value)


def test_prune_drops_unknown_fields_like_the_api_server() -> None:
    schema = crd.spec_schema("ServiceVersion")
    spec = {"service": "s", "version": "v", "x": 1, "runScript": {"command": "c", "y": 2, "env": {"A": "1"}}}
    assert crd.prune(spec, schema) == {"service": "s", "version": "v", "runScript": {"command": "c", "env": {"A": "1"}}}


def test_merge_patch_removes_fields_gone_from_the_new_value() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1]}
    new = {"b": {"c": 2}, "l": [2], "e": 4}
    assert reconciler.merge_patch(old, new) == {"a": None, "b": {"d": None}, "l": [2], "e": 4}
