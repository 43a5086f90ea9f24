"""`discoverd apply` with more documents than one etcd transaction may hold (`--max-txn-ops`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd.embedded_etcd import EtcdServer
from support.cli import discoverd
from support.etcd import RawEtcd

COUNT = 130  # etcd's default --max-txn-ops is 128


def many_instances(count: int) -> str:
    docs = [
        {
            "apiVersion": "discoverd.io/v1alpha1",
            "kind": "ServiceInstance",
            "spec": {"service": "web", "id": f"i{n}", "serviceVersion": "1.0"},
        }
        for n in range(count)
    ]
    return "".join("---\n" + json.dumps(d) + "\n" for d in docs)


def test_more_documents_than_max_txn_ops_is_one_line_and_writes_nothing(
    etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd
) -> None:
    env = {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    result = discoverd("apply", "-f", "-", input=many_instances(COUNT), env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {COUNT} documents to write in one transaction are more than etcd's --max-txn-ops allows "
        f"(128 unless set): start every etcd member with --max-txn-ops={COUNT} or more, or apply fewer "
        "documents at once; nothing was written\n"
    )
    assert raw_etcd.keys(prefix + "/") == {}


@pytest.fixture
def roomy_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    etcd = EtcdServer(tmp_path / "etcd", extra_args=[f"--max-txn-ops={COUNT}"]).start()
    try:
        yield etcd
    finally:
        etcd.stop()


def test_the_advice_works_an_etcd_with_a_higher_limit_takes_them_all(roomy_etcd: EtcdServer, prefix: str) -> None:
    env = {"DISCOVERD_ETCD_ENDPOINTS": roomy_etcd.endpoint, "DISCOVERD_PREFIX": prefix}
    result = discoverd("apply", "-f", "-", input=many_instances(COUNT), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" created") == COUNT
    assert len(RawEtcd(roomy_etcd.endpoint).keys(prefix + "/")) == COUNT
