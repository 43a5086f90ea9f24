"""The agent's own TLS certificate for its log API: made at every start, never written to disk.

No CA: the agent publishes the certificate's SHA-256 in its own status key
(which only it may write), and readers pin exactly that certificate
(`discoverd.logaccess`). A new agent process makes a new key and
certificate, and publishes the new digest; readers read the status again when
they reconnect. The key lives in this process's memory only (loaded into the
SSL context through an anonymous memfd).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Certificate", "make"]

_VALIDITY = dt.timedelta(days=3650)
"""Pinned, not verified against a clock or a CA: the dates only need to satisfy TLS libraries."""


@dataclass(frozen=True)
class Certificate:
    context: ssl.SSLContext
    """A server context holding the key and the certificate."""
    sha256: str
    """SHA-256 (hex) of the certificate in DER: what readers pin."""


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make(server_id: str, names: list[str]) -> Certificate:
    """A new P-256 key and a self-signed certificate naming `server_id` (and `names` as SANs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"discoverd agent {server_id}"[:64])])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
    sans = [_san(n) for n in dict.fromkeys(n for n in names if n)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    fd = os.memfd_create("discoverd-agent-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return Certificate(context, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest())
