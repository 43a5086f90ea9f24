"""The node-identity answer is untrusted input for the agent: any bytes decode to a model or an InvalidDocument."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import identity as wire

GOOD = b'{"user": "/discoverd/server/n1", "password": "p", "ttlSeconds": 60, "renewAfterSeconds": 30, "new": 1}'


def test_credentials_decode_from_camel_case_and_keep_going_on_unknown_fields() -> None:
    credentials = wire.decode(wire.Credentials, GOOD, "answer")
    assert (credentials.user, credentials.password, credentials.renew_after_seconds) == (
        "/discoverd/server/n1",
        "p",
        30,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"[]", "body"),
        (b'{"user": "u", "password": "", "ttlSeconds": 60, "renewAfterSeconds": 30}', "password"),
        (b'{"user": "u", "password": "p", "ttlSeconds": -1, "renewAfterSeconds": 30}', "ttlSeconds"),
        (b'{"user": "u", "password": "p", "ttlSeconds": 60}', "renewAfterSeconds"),
    ],
)
def test_bad_answers_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        wire.decode(wire.Credentials, body, "answer")
    assert caught.value.field == field


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_invalid(body: bytes) -> None:
    for model in (wire.Credentials, wire.Refusal, wire.CredentialsRequest):
        with contextlib.suppress(InvalidDocument):
            wire.decode(model, body, "answer")
