"""A real 3-member etcd cluster on loopback, each member with a TLS certificate for its own address only.

Members listen on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (all of 127/8 is the
loopback interface on Linux), and each member's certificate carries only its
own address as an IP SAN: a client that checks member 2's certificate against
member 1's name fails the handshake. Peer traffic is plain HTTP on loopback.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import trustme
from aetcd import rpc

from discoverd.config import EtcdOptions
from discoverd.embedded_etcd import EtcdServer, TLSFiles
from discoverd.store import client
from support.wait import wait_until

__all__ = ["Cluster", "Pki", "make_pki"]

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass(frozen=True)
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    directory: Path
    authority: trustme.CA

    def server_files(self, name: str, *identities: str) -> TLSFiles:
        """A server certificate for `identities` (and nothing else), with client-certificate auth."""
        cert = self.authority.issue_cert(*identities)
        files = TLSFiles(cert=self.directory / f"{name}.pem", key=self.directory / f"{name}-key.pem", client_ca=self.ca)
        cert.cert_chain_pems[0].write_to_path(str(files.cert))
        cert.private_key_pem.write_to_path(str(files.key))
        return files


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    client_cert = ca.issue_cert("discoverd-client")
    pki = Pki(directory / "ca.pem", directory / "client.pem", directory / "client-key.pem", directory, ca)
    ca.cert_pem.write_to_path(str(pki.ca))
    client_cert.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client_cert.private_key_pem.write_to_path(str(pki.client_key))
    return pki


class Cluster:
    """Three etcd members; `kill(i)` SIGKILLs one, `start(i)` brings it back on its data dir."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.pki = pki
        self.members = [
            EtcdServer(
                directory / f"etcd-{i}",
                host=host,
                name=f"etcd-{i}",
                tls=pki.server_files(f"etcd-{i}", host),
            )
            for i, host in enumerate(HOSTS)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
            m.extra_args += ["--initial-cluster-state=new", "--initial-cluster-token=discoverd-test"]

    def start_all(self) -> Cluster:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_ready(60)
        return self

    def stop_all(self) -> None:
        for m in self.members:
            m.stop()

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def tls_args(self) -> list[str]:
        return [
            "--etcd-cacert",
            str(self.pki.ca),
            "--etcd-cert",
            str(self.pki.client_cert),
            "--etcd-key",
            str(self.pki.client_key),
        ]

    def options(self, *endpoints: str, prefix: str = "/discoverd", timeout: float = 2.0) -> EtcdOptions:
        return EtcdOptions(
            endpoints=list(endpoints or self.endpoints),
            prefix=prefix,
            ca_file=self.pki.ca,
            cert_file=self.pki.client_cert,
            key_file=self.pki.client_key,
            timeout=timeout,
        )

    def wait_leader(self, timeout: float = 30.0) -> int:
        """Index of the leader, once the live members agree on one."""
        found: list[int] = []

        def check() -> bool:
            leader = self.leader()
            if leader is not None:
                found.append(leader)
            return leader is not None

        wait_until(check, timeout, interval=0.1, what="the etcd members to agree on a leader")
        return found[-1]

    def leader(self) -> int | None:
        """Index of the member every live member names as leader, or None while there is none."""
        seen = {self.leader_seen_by(i) for i, m in enumerate(self.members) if m.process is not None}
        leader = seen.pop() if len(seen) == 1 else 0
        if leader <= 0:
            return None
        ids = {self.member_id(i): i for i, m in enumerate(self.members) if m.process is not None}
        return ids.get(leader)

    def leader_seen_by(self, index: int) -> int:
        """The member ID member `index` takes for the leader (0: none); -1 when it does not answer."""
        status = self._status(index)
        return -1 if status is None else int(status.leader)

    def member_id(self, index: int) -> int:
        status = self._status(index)
        return -1 if status is None else int(status.header.member_id)

    def _status(self, index: int) -> Any:
        """etcd's Status of one member, answered locally (no quorum needed); None if it does not answer."""
        host_port = self.members[index].endpoint.removeprefix("https://")
        credentials = grpc.ssl_channel_credentials(
            self.pki.ca.read_bytes(), self.pki.client_key.read_bytes(), self.pki.client_cert.read_bytes()
        )

        async def go() -> Any:
            async with grpc.aio.secure_channel(host_port, credentials) as channel:
                return await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=1.0)

        try:
            return asyncio.run(go())
        except grpc.aio.AioRpcError:
            return None


def read_key(cluster: Cluster, endpoints: list[str], key: str) -> int | None:
    """The lease of `key` (0 for none), None when the key is absent: read through discoverd's own client."""

    async def go() -> int | None:
        c = await client.connect(cluster.options(*endpoints))
        try:
            response = await client.call(
                c, lambda: c.kvstub.Range(rpc.RangeRequest(key=key.encode()), timeout=2.0, metadata=c.metadata)
            )
        finally:
            await c.close()
        return int(response.kvs[0].lease) if response.kvs else None

    return asyncio.run(go())
