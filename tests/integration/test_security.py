"""TLS with client certificates, and user/password auth, against real etcd servers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from discoverd.embedded_etcd import EtcdServer, TLSFiles, find_binary
from support.cli import discoverd


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA that signs the server and a client, and another CA nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("discoverd-client")
    files = {
        "ca": d / "ca.pem",
        "stranger": d / "stranger.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server-key.pem",
        "client_cert": d / "client.pem",
        "client_key": d / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    stranger.cert_pem.write_to_path(str(files["stranger"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[EtcdServer]:
    tls = TLSFiles(cert=pki["server_cert"], key=pki["server_key"], client_ca=pki["ca"])
    etcd = EtcdServer(tmp_path_factory.mktemp("tls-etcd") / "data", tls=tls).start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    etcd = EtcdServer(tmp_path_factory.mktemp("auth-etcd") / "data").start()
    etcdctl = str(Path(find_binary()).with_name("etcdctl"))
    try:
        for args in (["user", "add", "root:s3cret"], ["auth", "enable"]):
            subprocess.run([etcdctl, f"--endpoints={etcd.endpoint}", *args], check=True, capture_output=True)
        yield etcd
    finally:
        etcd.stop()


def tls_args(etcd: EtcdServer, pki: dict[str, Path], ca: str = "ca", client: bool = True) -> list[str]:
    args = ["--etcd-endpoints", etcd.endpoint, "--etcd-cacert", str(pki[ca]), "--etcd-timeout", "2"]
    if client:
        args += ["--etcd-cert", str(pki["client_cert"]), "--etcd-key", str(pki["client_key"])]
    return args


def test_tls_with_a_client_certificate_works(tls_etcd: EtcdServer, pki: dict[str, Path]) -> None:
    result = discoverd(*tls_args(tls_etcd, pki), "get", "servers")
    assert result.returncode == 0, result.stderr


def test_tls_options_come_from_the_environment_too(tls_etcd: EtcdServer, pki: dict[str, Path]) -> None:
    env = {
        "DISCOVERD_ETCD_ENDPOINTS": tls_etcd.endpoint,
        "DISCOVERD_ETCD_CACERT": str(pki["ca"]),
        "DISCOVERD_ETCD_CERT": str(pki["client_cert"]),
        "DISCOVERD_ETCD_KEY": str(pki["client_key"]),
    }
    assert discoverd("get", "servers", env=env).returncode == 0


def test_an_unknown_ca_is_named(tls_etcd: EtcdServer, pki: dict[str, Path]) -> None:
    result = discoverd(*tls_args(tls_etcd, pki, ca="stranger"), "get", "servers", timeout=30)
    assert result.returncode == 1
    assert "TLS handshake failed" in result.stderr and "--etcd-cacert" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_missing_client_certificate_is_named(tls_etcd: EtcdServer, pki: dict[str, Path]) -> None:
    result = discoverd(*tls_args(tls_etcd, pki, client=False), "get", "servers", timeout=30)
    assert result.returncode == 1
    assert "client certificate" in result.stderr
    assert result.stderr.count("\n") == 1


def test_user_and_password_work(auth_etcd: EtcdServer) -> None:
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password", "s3cret"]
    assert discoverd(*args, "get", "servers").returncode == 0


def test_a_bad_password_is_named(auth_etcd: EtcdServer) -> None:
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password", "wrong"]
    result = discoverd(*args, "get", "servers")
    assert result.returncode == 1
    assert "authentication failed" in result.stderr and "--etcd-password" in result.stderr


def test_no_credentials_on_an_auth_etcd_is_named(auth_etcd: EtcdServer) -> None:
    result = discoverd("--etcd-endpoints", auth_etcd.endpoint, "get", "servers")
    assert result.returncode == 1
    assert "--etcd-user" in result.stderr


def test_a_password_without_a_user_is_named() -> None:
    result = discoverd("--etcd-password", "s3cret", "get", "servers")
    assert result.returncode == 1
    assert result.stderr == (
        "error: etcd authentication needs both a user and a password (--etcd-user, --etcd-password): "
        "the user is missing\n"
    )
