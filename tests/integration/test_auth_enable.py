"""`discoverd auth enable`: how the chart's bundled etcd gets its root user and authentication, once."""

from __future__ import annotations

from pathlib import Path

from discoverd.embedded_etcd import EtcdServer
from support.cli import discoverd


def test_enable_turns_authentication_on_once_with_the_given_root_password(
    private_etcd: EtcdServer, tmp_path: Path
) -> None:
    password_file = tmp_path / "root-password"
    password_file.write_text("r00t-from-a-secret\n")
    env = {"DISCOVERD_ETCD_ENDPOINTS": private_etcd.endpoint}
    first = discoverd("auth", "enable", "--root-password-file", str(password_file), env=env)
    assert first.returncode == 0, first.stderr
    assert "enabled" in first.stdout
    # Again (every start of the operator's init container): nothing changes, no error.
    again = discoverd("auth", "enable", "--root-password-file", str(password_file), env=env)
    assert again.returncode == 0, again.stderr
    assert "already enabled" in again.stdout
    anonymous = discoverd("get", "servers", env=env)
    assert anonymous.returncode != 0 and "authentication is enabled" in anonymous.stderr
    root = discoverd(
        "get",
        "servers",
        env={
            **env,
            "DISCOVERD_ETCD_USER": "root",
            "DISCOVERD_ETCD_PASSWORD": "r00t-from-a-secret",
            "DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true",
        },
    )
    assert root.returncode == 0, root.stderr


def test_enable_refuses_an_empty_password_file(private_etcd: EtcdServer, tmp_path: Path) -> None:
    password_file = tmp_path / "root-password"
    password_file.write_text("")
    env = {"DISCOVERD_ETCD_ENDPOINTS": private_etcd.endpoint}
    result = discoverd("auth", "enable", "--root-password-file", str(password_file), env=env)
    assert result.returncode != 0 and "is empty" in result.stderr
    assert discoverd("get", "servers", env=env).returncode == 0  # still open: nothing was changed
