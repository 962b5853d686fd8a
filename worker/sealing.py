"""Sealing exchange-account secrets with a key that is not in the database.

Where the database has no Supabase Vault, a user's API secret reaches the worker through a
table only the worker's role can read (``exchange_account_secret_inbox``, UNLOGGED: never in
the WAL, a replica or a backup); the worker seals it here and keeps only the ciphertext.

* **Key:** ``POSITION_WORKER_SECRETS_KEY``: 32 random bytes, base64 (``position-worker
  secrets-key`` prints a new one). Several keys, comma-separated, rotate keys: the first
  seals, any of them opens. Each ciphertext names its key by :func:`key_id`.
* **Cipher:** AES-256-GCM (``cryptography``), a fresh 96-bit nonce per seal, stored in front
  of the ciphertext. The associated data binds a ciphertext to its account and key version,
  so a ciphertext copied onto another account (or an older one put back) does not open.

Pure: no I/O. Errors never contain the plaintext or the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import WorkerError

ENV_KEY: Final = "POSITION_WORKER_SECRETS_KEY"
_NONCE_BYTES: Final = 12


class SealingError(WorkerError):
    """A key that cannot be used, or a ciphertext that does not open."""


def key_id(key: bytes) -> str:
    """A short public name of a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


def new_key() -> str:
    """A fresh key, as ``POSITION_WORKER_SECRETS_KEY`` takes it."""
    return base64.b64encode(os.urandom(32)).decode()


def associated_data(account_id: str, key_version: int) -> bytes:
    return f"position-worker exchange account {account_id} v{key_version}".encode()


@dataclass(frozen=True, slots=True)
class Keyring:
    """The worker's sealing keys, newest first. Empty: this worker cannot seal or open."""

    _keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Keyring:
        env = os.environ if env is None else env
        return cls.parse(env.get(ENV_KEY, ""))

    @classmethod
    def parse(cls, text: str) -> Keyring:
        keys = []
        for n, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
            try:
                raw = base64.b64decode(part, validate=True)
            except (binascii.Error, ValueError):
                raise SealingError(f"{ENV_KEY}: key {n + 1} is not base64") from None
            if len(raw) != 32:
                raise SealingError(
                    f"{ENV_KEY}: key {n + 1} is {len(raw)} bytes, must be 32"
                    " (make one with: position-worker secrets-key)"
                )
            keys.append((key_id(raw), raw))
        return cls(tuple(keys))

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self._keys)

    def seal(self, plaintext: str, aad: bytes) -> tuple[bytes, str]:
        """``(nonce + ciphertext, key id)`` under the newest key."""
        if not self._keys:
            raise SealingError(f"no sealing key: set {ENV_KEY}")
        kid, key = self._keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), aad), kid

    def open(self, sealed: bytes, kid: str, aad: bytes) -> str:
        """The plaintext of what :meth:`seal` returned."""
        key = next((k for i, k in self._keys if i == kid), None)
        if key is None:
            raise SealingError(
                f"the secret was sealed with key {kid}, which {ENV_KEY} does not hold"
            )
        try:
            plain = AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise SealingError("the sealed secret does not open (altered, or moved)") from None
        return plain.decode()
