"""Mutually authenticated TLS between MPC parties, with a fresh identity per protocol run.

MPyC's `--ssl` mode expects, in `.config/` of its working directory, the party's certificate
and key and a CA file, and checks that party j's certificate names `MPyC party j`. Tessera gives
each party a fresh P-256 key and a self-signed certificate with that name for every run
(`new_identity`); the node sends only the certificate to the coordinator with its acceptance,
and gets back every party's certificate with the start signal. The CA file a party trusts is
exactly the set of certificates of this run's parties, so a connection succeeds only with the
holders of those keys, and a key is worthless after its run. The coordinator, which relays the
certificates over its authenticated API, is trusted not to substitute them (honest-but-curious).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel


class PartyTLS(BaseModel):
    """One party's TLS material for one run: its own key, and every party's certificate."""

    key_pem: str
    certificates: list[str]  # by party id, this party's own included


def subject_name(party_id: int) -> str:
    return f"MPyC party {party_id}"


def new_identity(party_id: int) -> tuple[str, str]:
    """(private key PEM, self-signed certificate PEM) named for `party_id`, valid one day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_name(party_id))])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def certificate_name(cert_pem: str) -> str:
    """The common name a certificate carries (to check a peer's is the one for its party id)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def install(tls: PartyTLS, party_id: int, folder: Path) -> None:
    """Write the files MPyC's `--ssl` reads, under `folder/.config` (private: mode 0700/0600)."""
    for i, cert in enumerate(tls.certificates):
        if certificate_name(cert) != subject_name(i):
            raise ValueError(f"the certificate of party {i} is not named {subject_name(i)!r}")
    config = folder / ".config"
    config.mkdir(mode=0o700, exist_ok=True)
    key_path = config / f"party_{party_id}.key"
    key_path.touch(mode=0o600)
    key_path.write_text(tls.key_pem)
    (config / f"party_{party_id}.crt").write_text(tls.certificates[party_id])
    (config / "mpyc_ca.crt").write_text("".join(tls.certificates))
