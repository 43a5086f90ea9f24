"""Keys: built and parsed in one place; names and IDs validated as path segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import keys

P = "/discoverd"


def test_seed_keys_are_built_as_the_design_gives_them() -> None:
    assert keys.server_config(P, "node-1") == "/discoverd/servers/node-1/config/details"
    assert keys.version_config(P, "web", "1.0") == "/discoverd/services/web/versions/1.0/config/details"
    assert keys.instance_config(P, "web", "i1") == "/discoverd/services/web/instances/i1/config/details"
    assert keys.agent_status(P, "node-1") == "/discoverd/servers/node-1/status/agent"
    assert keys.instance_status(P, "n", "web", "i1") == "/discoverd/servers/n/status/instances/web/i1"


@pytest.mark.parametrize("prefix", ["/discoverd", "/discoverd/", "discoverd"])
def test_prefix_spellings_mean_the_same(prefix: str) -> None:
    assert keys.server_config(prefix, "a") == "/discoverd/servers/a/config/details"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "must not be empty"),
        ("a/b", "must not contain '/'"),
        (".", "must not be '.'"),
        ("..", "must not be '..'"),
        ("a\nb", "control characters"),
        ("a\x00", "control characters"),
        ("a\x85", "control characters"),
        ("a\udcff", "valid UTF-8"),
        ("\ud800", "valid UTF-8"),
        ("x" * 254, "at most 253 bytes"),
        ("é" * 127, "at most 253 bytes"),
    ],
)
def test_invalid_segments_are_refused_with_the_reason(value: str, reason: str) -> None:
    assert reason in (keys.segment_error(value) or "")
    with pytest.raises(ValueError, match=reason.split("'")[0]):
        keys.server_config(P, value)


@pytest.mark.parametrize("value", ["node-1", "1.0", "Web_Service", "x" * 253, "..a", "a.."])
def test_valid_segments_pass(value: str) -> None:
    assert keys.segment_error(value) is None


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/discoverd/servers/n1/config/details", keys.Key(keys.Kind.SERVER, server="n1")),
        (
            "/discoverd/services/web/versions/1.0/config/details",
            keys.Key(keys.Kind.VERSION, service="web", version="1.0"),
        ),
        (
            "/discoverd/services/web/instances/i1/config/details",
            keys.Key(keys.Kind.INSTANCE, service="web", instance="i1"),
        ),
        ("/discoverd/servers/n1/status/agent", keys.Key(keys.Kind.AGENT_STATUS, server="n1")),
        (
            "/discoverd/servers/n1/status/instances/web/i1",
            keys.Key(keys.Kind.INSTANCE_STATUS, server="n1", service="web", instance="i1"),
        ),
        ("/discoverd/something/else", None),
        ("/other/servers/n1/config/details", None),
    ],
)
def test_parse(key: str, expected: keys.Key | None) -> None:
    assert keys.parse(P, key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "/discoverd/servers/../config/details",
        "/discoverd/servers//config/details",
        "/discoverd/services/a/b/versions/1/config/details",
    ],
)
def test_config_keys_with_bad_names_are_reported_naming_the_key(key: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        keys.parse(P, key)
    assert caught.value.key == key


segments = st.text(min_size=1, max_size=40).filter(lambda s: keys.segment_error(s) is None)


@given(service=segments, instance=segments)
def test_built_keys_parse_back_to_the_same_names(service: str, instance: str) -> None:
    built = keys.instance_config(P, service, instance)
    assert keys.parse(P, built) == keys.Key(keys.Kind.INSTANCE, service=service, instance=instance)


@given(st.text(max_size=300))
def test_segment_validation_never_crashes_and_valid_means_a_single_safe_segment(value: str) -> None:
    if keys.segment_error(value) is None:
        assert "/" not in value and value not in (".", "..") and value


@given(st.binary(min_size=1, max_size=20))
def test_prefix_range_end_covers_exactly_the_prefix(prefix: bytes) -> None:
    end = keys.prefix_range_end(prefix)
    assert prefix < end or end == b"\0"
    assert prefix + b"\xff" * 3 < end or end == b"\0"
