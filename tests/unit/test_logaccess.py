"""The log-access grant, query and messages (schema/logaccess.py), its keys, and `discoverd logs --since` durations."""

from __future__ import annotations

import hashlib

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.agent import logserver
from discoverd.cli import main as cli_main
from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys, logaccess


def test_a_grant_key_is_named_by_the_token_hash_under_its_server() -> None:
    token = logaccess.new_token()
    digest = logaccess.token_sha256(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert keys.log_grant("/p", "node-1", digest) == f"/p/grants/node-1/{digest}"
    assert keys.log_grants_prefix("/p", "node-1") == "/p/grants/node-1/"
    assert keys.parse("/p", f"/p/grants/node-1/{digest}") is None  # not a configuration key: others ignore it
    with pytest.raises(ValueError):
        keys.log_grant("/p", "../x", digest)


@pytest.mark.parametrize("text", ["", "short", "has space in it padding", "a/b" * 10, "x" * 129, "é" * 20])
def test_something_that_is_not_a_token_has_no_grant_key(text: str) -> None:
    assert logaccess.token_sha256(text) is None


def test_a_grant_is_an_untrusted_document() -> None:
    grant = documents.parse(logaccess.LogGrant, "k", b'{"service": "web", "instance": "i1", "future": 1}')
    assert (grant.service, grant.instance) == ("web", "i1")
    with pytest.raises(InvalidDocument, match="instance"):
        documents.parse(logaccess.LogGrant, "k", b'{"service": "web", "instance": ".."}')
    with pytest.raises(InvalidDocument):
        documents.parse(logaccess.LogGrant, "k", b'{"service": "web"}')


@pytest.mark.parametrize(
    "params",
    [{"tail": "-1"}, {"tail": "x"}, {"step": "shell"}, {"resume": "1:2; rm"}, {"since": "nan"}, {"other": "1"}],
)
def test_a_bad_query_is_refused(params: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        logaccess.LogQuery.model_validate(params)


def test_a_query_goes_to_url_parameters_and_back() -> None:
    query = logaccess.LogQuery(step=logaccess.Step.INSTALL, tail=5, since=12.5, follow=True, resume="1:2:3")
    params = query.params()
    assert params == {"step": "install", "tail": "5", "since": "12.5", "follow": "1", "resume": "1:2:3"}
    assert logaccess.LogQuery.model_validate({**params, "follow": True}) == query


def test_agent_status_carries_the_api_address_and_certificate_digest() -> None:
    base = {
        "hostname": "h",
        "agent_version": "0",
        "started_at": "2026-01-01T00:00:00Z",
        "heartbeat": "2026-01-01T00:00:00Z",
    }
    status = documents.AgentStatus.model_validate({**base, "api_address": "127.0.0.1:1", "api_cert_sha256": "a" * 64})
    assert status.api_cert_sha256 == "a" * 64
    assert documents.AgentStatus.model_validate(base).api_address is None  # an older agent: no log API
    with pytest.raises(pydantic.ValidationError):
        documents.AgentStatus.model_validate({**base, "api_cert_sha256": "A" * 64})


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1.5s", 1.5), ("250ms", 0.25)]
)
def test_since_takes_kubectl_durations(text: str, seconds: float) -> None:
    assert cli_main.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "-5m", "5y", "1h x"])
def test_since_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        cli_main.parse_duration(text)


@given(st.text(max_size=80))
def test_a_request_target_is_parsed_or_refused_with_a_reason(text: str) -> None:
    """Whatever a client sends as the request target, the agent answers 400/404, never fails otherwise."""
    for target in (text, "/v1/logs/" + text, "/v1/logs/web/" + text, "/v1/logs/web/i1?" + text):
        try:
            ref, _ = logserver._parse_target(target)  # the request parser, tested on its own
        except logserver._Refused as refused:
            assert refused.status in (400, 404)
        else:
            assert keys.segment_error(ref.service) is None and keys.segment_error(ref.instance) is None
