"""Object names: valid DNS-1123 subdomains, and two etcd names never map to one object."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.schema import keys, names

K = keys.Key
V, INST, S = keys.Kind.VERSION, keys.Kind.INSTANCE, keys.Kind.SERVER


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (K(V, service="web", version="1.0"), "web.1.0"),
        (K(INST, service="web", instance="i1"), "web.i1"),
        (K(S, server="node-1"), "node-1"),
    ],
)
def test_lossless_names_are_readable(key: keys.Key, name: str) -> None:
    assert names.object_name(key) == name


@pytest.mark.parametrize(
    "key",
    [
        K(S, server="Node_1"),
        K(V, service="my.app", version="1"),
        K(INST, service="a--b", instance="c"),
        K(V, service="x" * 200, version="y" * 100),
    ],
)
def test_lossy_names_get_a_hash(key: keys.Key) -> None:
    name = names.object_name(key)
    assert "--" in name and names.is_valid(name)


segments = st.text(min_size=1, max_size=30).filter(lambda s: keys.segment_error(s) is None)
friendly = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,10}", fullmatch=True)


@given(a=st.tuples(segments | friendly, segments | friendly), b=st.tuples(segments | friendly, segments | friendly))
def test_two_different_etcd_names_never_share_an_object_name(a: tuple[str, str], b: tuple[str, str]) -> None:
    ka = K(V, service=a[0], version=a[1])
    kb = K(V, service=b[0], version=b[1])
    na, nb = names.object_name(ka), names.object_name(kb)
    assert names.is_valid(na) and names.is_valid(nb)
    if a != b:
        assert na != nb
