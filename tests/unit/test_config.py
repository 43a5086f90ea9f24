"""`EtcdOptions`: a password travels only over TLS unless the user says the network is trusted."""

from __future__ import annotations

import pydantic
import pytest

from discoverd.config import EtcdOptions


def test_a_password_over_http_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="refusing to send the etcd password in clear text"):
        EtcdOptions(endpoints="http://10.0.0.1:2379", user="u", password="p")


@pytest.mark.parametrize(
    "options",
    [
        {"endpoints": "https://etcd:2379"},
        {"endpoints": "etcd:2379", "ca_file": "/ca.pem"},  # a CA makes every channel TLS
        {"endpoints": "http://127.0.0.1:2379", "allow_plaintext_password": True},
    ],
)
def test_a_password_over_tls_or_explicitly_allowed_is_accepted(options: dict[str, object]) -> None:
    assert EtcdOptions(**options, user="u", password="p").password == "p"  # type: ignore[arg-type]


def test_no_password_needs_no_tls() -> None:
    assert not EtcdOptions(endpoints="http://127.0.0.1:2379").tls
