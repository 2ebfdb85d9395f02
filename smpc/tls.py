"""Mutually authenticated TLS between MPC parties, bound to each node's long-term key.

Each node has a long-term *authority*: a P-256 key and a self-signed CA certificate naming the
node (`new_authority`; the node agent keeps it in `node_agent.identity`). For every protocol run
the node issues its party a fresh key and a certificate signed by that authority
(`issue_run_certificate`), named `MPyC party <party id>` (the name MPyC's `--ssl` mode checks
when it connects) and carrying the run's id. A party's CA file holds the authorities of this
run's parties only, so a TLS handshake succeeds only with a certificate one of them issued;
`check_run_certificate` checks more than the handshake can: that party j's certificate was
issued by *party j's* authority, for *this* run. `smpc.peers` applies it to every connection,
in both directions, before a byte of the protocol is sent.

Which authorities a node accepts is its own hospital's decision (`node_agent.identity.
TrustedPeers`): the coordinator relays certificates, but cannot substitute or add a party.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

RUN_LIFETIME = dt.timedelta(days=1)


class PartyTLS(BaseModel):
    """One party's TLS material for one run: its own key, and every party's run certificate
    and authority (the node's long-term CA certificate), by party id."""

    key_pem: str
    certificates: list[str]  # each party's run certificate, this party's own included
    authorities: list[str]  # each party's node certificate, which issued its run certificate
    run_id: str = Field(min_length=1, max_length=128)


def subject_name(party_id: int) -> str:
    return f"MPyC party {party_id}"


def run_tag(run_id: str) -> str:
    return f"tessera run {run_id}"


def _pem_key(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_certificate(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_authority(common_name: str, days: int = 3650) -> tuple[str, str]:
    """(private key PEM, self-signed CA certificate PEM): a node's long-term identity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _pem_key(key), _pem_certificate(cert)


def issue_run_certificate(
    authority_key_pem: str, authority_pem: str, party_id: int, run_id: str
) -> tuple[str, str]:
    """(fresh private key PEM, certificate PEM) for party `party_id` of run `run_id`, signed by
    the node's authority, valid one day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    authority_key = serialization.load_pem_private_key(authority_key_pem.encode(), password=None)
    if not isinstance(authority_key, ec.EllipticCurvePrivateKey):
        raise ValueError("a node's authority key must be an elliptic-curve key")
    authority = x509.load_pem_x509_certificate(authority_pem.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, subject_name(party_id)),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, run_tag(run_id)),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + RUN_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority_key, hashes.SHA256())
    )
    return _pem_key(key), _pem_certificate(cert)


def _load(cert: str | bytes) -> Any:
    from cryptography import x509

    if isinstance(cert, bytes):
        return x509.load_der_x509_certificate(cert)
    return x509.load_pem_x509_certificate(cert.encode())


def _attribute(name: Any, oid: Any) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


def certificate_name(cert: str | bytes) -> str | None:
    """The common name a certificate carries (None if it has not exactly one)."""
    from cryptography.x509.oid import NameOID

    return _attribute(_load(cert).subject, NameOID.COMMON_NAME)


def check_run_certificate(
    cert: str | bytes, party_id: int, authority_pem: str, run_id: str
) -> str | None:
    """Why `cert` (PEM text or DER bytes) is not party `party_id`'s certificate for run
    `run_id` issued by `authority_pem`; None when it is."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        leaf, authority = _load(cert), _load(authority_pem)
    except ValueError:
        return "not a certificate"
    if certificate_name(cert) != subject_name(party_id):
        return f"it is not named {subject_name(party_id)!r}"
    if _attribute(leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != run_tag(run_id):
        return "it was issued for another protocol run"
    public = authority.public_key()
    if leaf.issuer != authority.subject or not isinstance(public, ec.EllipticCurvePublicKey):
        return "it was not issued by this party's node key"
    algorithm = leaf.signature_hash_algorithm
    if algorithm is None:
        return "it was not issued by this party's node key"
    try:
        public.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        return "it was not issued by this party's node key"
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return "it is not valid now"
    return None


def check_material(tls: PartyTLS, party_id: int) -> None:
    """Every party's run certificate issued by its own authority for this run, and this
    party's key the one its certificate holds; `ValueError` naming the first problem."""
    from cryptography.hazmat.primitives import serialization

    if len(tls.certificates) != len(tls.authorities):
        raise ValueError("give one run certificate and one authority per party")
    for i, (cert, authority) in enumerate(zip(tls.certificates, tls.authorities, strict=True)):
        problem = check_run_certificate(cert, i, authority, tls.run_id)
        if problem is not None:
            raise ValueError(f"the certificate of party {i} is refused: {problem}")
    key = serialization.load_pem_private_key(tls.key_pem.encode(), password=None)
    own = _load(tls.certificates[party_id]).public_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != own.public_bytes(*spki):
        raise ValueError(f"party {party_id}'s key does not match its certificate")


def install(tls: PartyTLS, party_id: int, folder: Path) -> None:
    """Check the material (`check_material`) and write the files MPyC's `--ssl` reads, under
    `folder/.config` (private: mode 0700/0600). The CA file is this run's authorities only."""
    check_material(tls, party_id)
    config = folder / ".config"
    config.mkdir(mode=0o700, exist_ok=True)
    key_path = config / f"party_{party_id}.key"
    key_path.touch(mode=0o600)
    key_path.write_text(tls.key_pem)
    (config / f"party_{party_id}.crt").write_text(tls.certificates[party_id])
    (config / "mpyc_ca.crt").write_text("".join(dict.fromkeys(tls.authorities)))


def local_parties(count: int, run_id: str) -> list[PartyTLS]:
    """TLS material for `count` parties run on one machine (simulations, benchmarks, tests):
    an authority per party, and each party's run certificate issued by it."""
    authorities = [new_authority(f"Tessera simulated node {i}", days=1) for i in range(count)]
    issued = [
        issue_run_certificate(key, cert, i, run_id) for i, (key, cert) in enumerate(authorities)
    ]
    certificates = [cert for _, cert in issued]
    return [
        PartyTLS(
            key_pem=key,
            certificates=certificates,
            authorities=[cert for _, cert in authorities],
            run_id=run_id,
        )
        for key, _ in issued
    ]
