"""Node-identity flags of `discoverd agent` and `discoverd operator`: wrong combinations fail at once with a
one-line reason, before anything connects."""

from __future__ import annotations

import pytest

from support.cli import discoverd


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--etcd-user", "u", "--etcd-password", "p", "agent", "--server-id", "n1", "--identity-url", "https://op:9466"],
            "give no --etcd-user/--etcd-password",
        ),
        (["agent", "--server-id", "n1", "--identity-url", "http://op:9466"], "is not an https://HOST:PORT URL"),
        (
            ["operator", "--namespace", "ns", "--identity-address", "0.0.0.0:9466"],
            "--identity-address needs --identity-cert, --identity-key",
        ),
        (
            [
                "operator", "--namespace", "ns", "--identity-address", "0.0.0.0:9466", "--identity-cert", "c",
                "--identity-key", "k", "--agent-service-account", "agent", "--agent-selector", "app",
            ],
            "give KEY=VALUE pairs",
        ),
    ],
)  # fmt: skip
def test_wrong_node_identity_flags_fail_with_the_reason(args: list[str], reason: str) -> None:
    result = discoverd(*args, env={"DISCOVERD_ETCD_ENDPOINTS": "http://127.0.0.1:9"}, timeout=30)
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
