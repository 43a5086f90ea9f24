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


PLAINTEXT = "--etcd-allow-plaintext-password"
"""The test etcd listens on loopback without TLS: the one place a password may travel in clear text."""


def test_user_and_password_work(auth_etcd: EtcdServer) -> None:
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password", "s3cret", PLAINTEXT]
    assert discoverd(*args, "get", "servers").returncode == 0


def test_a_password_over_http_is_refused_unless_allowed(auth_etcd: EtcdServer) -> None:
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password", "s3cret"]
    refused = discoverd(*args, "get", "servers")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: refusing to send the etcd password in clear text to {auth_etcd.endpoint}: use https:// endpoints, "
        "or pass --etcd-allow-plaintext-password (DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD=true) where the network "
        "is trusted, such as loopback\n"
    )
    allowed = discoverd(*args, "get", "servers", env={"DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true"})
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610], ids=lambda m: f"{m:04o}")
def test_a_password_file_open_to_group_or_others_is_refused(auth_etcd: EtcdServer, tmp_path: Path, mode: int) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password-file", str(secret)]
    result = discoverd(*args, PLAINTEXT, "get", "servers")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: --etcd-password-file: {secret} is open to group or others (mode {mode:04o}): chmod 600 it, "
        "as ssh requires of a private key\n"
    )
    secret.chmod(0o400)
    link = tmp_path / "link"  # how a Kubernetes Secret volume presents its files: the file's mode counts
    link.symlink_to(secret)
    assert discoverd(*args[:-1], str(link), PLAINTEXT, "get", "servers").returncode == 0


def test_a_bad_password_is_named(auth_etcd: EtcdServer) -> None:
    args = ["--etcd-endpoints", auth_etcd.endpoint, "--etcd-user", "root", "--etcd-password", "wrong", PLAINTEXT]
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
