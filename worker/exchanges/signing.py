"""Signing Binance requests with the three key types the spot API accepts.

Binance spot API docs, rest-api.md, "SIGNED (TRADE and USER_DATA) Endpoint security":

* **HMAC** (``hmac``): HMAC-SHA256 of the payload with the API secret, as hex.
* **RSA** (``rsa``): RSASSA-PKCS1-v1_5 with SHA-256 of the payload with the private key,
  base64-encoded (then URL-encoded on the wire).
* **Ed25519** (``ed25519``): the Ed25519 signature of the payload, base64-encoded (then
  URL-encoded). The docs recommend Ed25519 keys; HMAC keys are the legacy kind.

The payload is the query string followed by the body (``totalParams``); the API key goes in
the ``X-MBX-APIKEY`` header. For RSA and Ed25519 the "API key" is the id Binance gives the
registered public key. Key material stays inside :class:`Credentials` (``repr`` shows
``***``); a key that cannot be read raises :class:`BadKey` with a message that never
contains it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from worker.errors import WorkerError
from worker.redact import Secret

KeyType = Literal["hmac", "ed25519", "rsa"]
KEY_TYPES: Final[tuple[str, ...]] = get_args(KeyType)


class BadKey(WorkerError):
    """Key material that cannot sign (its text is never part of the message)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """One exchange account's API key and the means to sign its requests."""

    api_key: Secret
    key_type: KeyType
    secret: Secret = field(repr=False)
    _private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def of(cls, api_key: str, secret: str, key_type: str = "hmac") -> Credentials:
        """Credentials from an API key and its secret: the HMAC secret, or the PEM text of
        the Ed25519 / RSA private key (unencrypted PKCS#8 or traditional)."""
        if key_type not in KEY_TYPES:
            raise BadKey(f"key type must be one of {', '.join(KEY_TYPES)}, got {key_type!r}")
        if not api_key or any(c.isspace() for c in api_key):
            raise BadKey("the API key must be non-empty, without whitespace")
        if not secret:
            raise BadKey(f"the {key_type} secret is empty")
        private = None if key_type == "hmac" else _private_key(key_type, secret)
        return cls(Secret(api_key), key_type, Secret(secret), private)  # type: ignore[arg-type]

    def sign(self, payload: str) -> str:
        """The ``signature`` parameter's value for ``payload`` (before URL-encoding)."""
        data = payload.encode()
        if self._private is None:
            digest = hmac.new(self.secret.reveal().encode(), data, hashlib.sha256)
            return digest.hexdigest()
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            return base64.b64encode(self._private.sign(data)).decode()
        signature = self._private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()


def _private_key(key_type: str, pem: str) -> ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadKey(f"the {key_type} private key is not an unencrypted PEM private key") from None
    if key_type == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if key_type == "rsa" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise BadKey("the RSA private key is shorter than 2048 bits")
        return key
    raise BadKey(f"the private key is not an {key_type} key")


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """The operator account's credentials from the environment, or None when unset:

    * ``BINANCE_API_KEY``, and
    * ``BINANCE_API_SECRET`` (HMAC), or ``BINANCE_PRIVATE_KEY_FILE`` (a PEM file: Ed25519 or
      RSA, told apart by the key itself), or ``BINANCE_API_SECRET_FILE`` (an HMAC secret in
      a file, e.g. a container secret). ``BINANCE_KEY_TYPE`` may name the type explicitly.
    """
    env = os.environ if env is None else env
    api_key = env.get("BINANCE_API_KEY", "").strip()
    if not api_key:
        return None
    key_type = env.get("BINANCE_KEY_TYPE", "").strip().lower()
    if env.get("BINANCE_PRIVATE_KEY_FILE"):
        pem = _read(env["BINANCE_PRIVATE_KEY_FILE"], "BINANCE_PRIVATE_KEY_FILE")
        return Credentials.of(api_key, pem, key_type or _pem_type(pem))
    if env.get("BINANCE_API_SECRET_FILE"):
        secret = _read(env["BINANCE_API_SECRET_FILE"], "BINANCE_API_SECRET_FILE").strip()
        return Credentials.of(api_key, secret, key_type or "hmac")
    secret = env.get("BINANCE_API_SECRET", "")
    if not secret:
        return None
    return Credentials.of(api_key, secret, key_type or "hmac")


def _read(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadKey(f"{name}: cannot read {path}: {exc.strerror}") from None


def _pem_type(pem: str) -> str:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadKey("BINANCE_PRIVATE_KEY_FILE is not an unencrypted PEM private key") from None
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
