"""Connection settings shared by every command: etcd endpoints, TLS, auth, prefix.

Each has a flag and a `DISCOVERD_*` environment variable (the CLI wires them);
this module only holds their shape and checks them. A password is sent only
over TLS, unless `allow_plaintext_password` says the network is trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from discoverd.schema import keys

__all__ = ["DEFAULT_ENDPOINT", "Endpoint", "EtcdOptions"]

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


class Endpoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://h:p`, `https://h:p` or plain `h:p` (http)."""
        text = url.strip()
        parts = urlsplit(text if "://" in text else f"http://{text}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an etcd endpoint such as http://127.0.0.1:2379")
        try:
            port = parts.port or 2379
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "https")

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


class EtcdOptions(BaseModel):
    """How to reach etcd and where discoverd's keys live."""

    model_config = ConfigDict(frozen=True)

    endpoints: tuple[Endpoint, ...] = Field(default=(Endpoint.parse(DEFAULT_ENDPOINT),), min_length=1)
    prefix: str = keys.DEFAULT_PREFIX
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    user: str | None = None
    password: str | None = None
    allow_plaintext_password: bool = False
    """Send the password without TLS anyway: only where the network is trusted, such as loopback."""
    timeout: float = 5.0
    """Seconds for one request, and for connecting."""

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(Endpoint.parse(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return keys.normalize_prefix(value)

    @model_validator(mode="after")
    def _user_with_password(self) -> Self:
        if (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            raise ValueError(
                f"etcd authentication needs both a user and a password (--etcd-user, --etcd-password): "
                f"the {missing} is missing"
            )
        return self

    @model_validator(mode="after")
    def _password_only_over_tls(self) -> Self:
        if self.password is not None and not self.tls and not self.allow_plaintext_password:
            raise ValueError(
                f"refusing to send the etcd password in clear text to {self.describe()}: use https:// "
                "endpoints, or pass --etcd-allow-plaintext-password (DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD=true) "
                "where the network is trusted, such as loopback"
            )
        return self

    @property
    def tls(self) -> bool:
        return any(e.tls for e in self.endpoints) or self.ca_file is not None or self.cert_file is not None

    def describe(self) -> str:
        return ",".join(str(e) for e in self.endpoints)
