"""RS256 signing of registry bearer tokens, as Docker Hub's auth service does.

distribution (`registry/auth/token`) trusts the public keys of the certificates in
`rootcertbundle` and finds the one that signed a token by the JWT header `kid`,
which must equal libtrust's key id of that public key. The claims it checks are
iss, aud (a single string in 2.8), exp and nbf (60 s leeway each) and `access`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOKEN_LIFETIME = 300  # seconds, what Docker Hub issues


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """libtrust KeyID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits,
    base32 (48 characters), in 12 groups of 4 joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


@dataclass(frozen=True)
class Access:
    """One `access` claim entry: actions granted on one resource."""

    name: str
    actions: tuple[str, ...]
    type: str = "repository"

    def claim(self) -> dict:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


class TokenSigner:
    """A fresh RSA key, its self-signed certificate (the registry's rootcertbundle)
    and the minting of tokens for one issuer/service pair."""

    def __init__(self, issuer: str, service: str) -> None:
        self.issuer = issuer
        self.service = service
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = libtrust_key_id(self._key.public_key())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )

    def write_cert_bundle(self, path: Path) -> Path:
        path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        return path

    def mint(self, subject: str, access: list[Access], *, lifetime: int = TOKEN_LIFETIME,
             now: float | None = None) -> str:
        """A signed JWT granting `access` to `subject` for `lifetime` seconds."""
        issued = int(time.time() if now is None else now)
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": issued + lifetime,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": [a.claim() for a in access],
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"
