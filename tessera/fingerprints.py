"""Fingerprints of node identities: what hospitals compare out of band before they trust a peer.

A fingerprint is `sha256:` and the 64 hex digits of the SHA-256 of a certificate's public key
(its SubjectPublicKeyInfo, DER): it names the key, whatever certificate carries it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tessera.errors import InvalidRequest

PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def of_key(public_key: Any) -> str:
    """`sha256:<hex>` of a public key object's SubjectPublicKeyInfo (DER): the one form of
    every key's fingerprint (node, coordinator and steward keys)."""
    from cryptography.hazmat.primitives import serialization

    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def fingerprint(certificate_pem: str) -> str:
    """The fingerprint of a certificate's public key; `ValueError` if it is no certificate."""
    from cryptography import x509

    return of_key(x509.load_pem_x509_certificate(certificate_pem.encode()).public_key())


def normalise(text: str) -> str:
    """Accept `sha256:` + hex in either case, with or without `:`/space separators."""
    body = re.sub(r"[\s:]", "", text.strip().lower().removeprefix("sha256:"))
    value = f"sha256:{body}"
    if not PATTERN.match(value):
        raise InvalidRequest(
            f"{text!r} is not a node fingerprint (sha256: followed by 64 hex digits, as "
            "`tessera node fingerprint` prints it)"
        )
    return value


def grouped(fp: str) -> str:
    """A fingerprint as people read it aloud: groups of four hex digits."""
    body = fp.removeprefix("sha256:")
    return "sha256:" + " ".join(body[i : i + 4] for i in range(0, len(body), 4))
