"""The node-identity exchange between an agent and the operator (operator/identity.py, agent/identity.py).

    POST /v1/credentials    Authorization: Bearer <projected ServiceAccount token>
    CredentialsRequest  ->  Credentials (200) | Refusal (4xx, 5xx)

camelCase on the wire, as Kubernetes APIs are. The answer is untrusted input
for the agent like any other: `decode` yields a model or an InvalidDocument.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from discoverd.errors import InvalidDocument

__all__ = ["PATH", "Credentials", "CredentialsRequest", "Refusal", "decode"]

PATH = "/v1/credentials"


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class CredentialsRequest(_Wire):
    server_id: str = Field(max_length=253)


class Credentials(_Wire):
    """One server's etcd user and a password valid for `ttl_seconds`; renew after `renew_after_seconds`."""

    user: str = Field(min_length=1, max_length=1024)
    password: str = Field(min_length=1, max_length=1024)
    ttl_seconds: float = Field(gt=0)
    renew_after_seconds: float = Field(gt=0)


class Refusal(_Wire):
    reason: str = Field(max_length=4096)


M = TypeVar("M", bound=_Wire)


def decode(model: type[M], body: bytes, what: str) -> M:
    """`body` (JSON) as `model`; InvalidDocument naming `what` and the field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidDocument(what, where, first["msg"]) from None
