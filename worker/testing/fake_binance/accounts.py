"""The accounts of the fake Binance: keys (HMAC, RSA, Ed25519), and each one's own book.

faqs/api_key_types.md: an HMAC key comes with a secret key; for RSA and Ed25519 the user
uploads a public key and signs with the private one (rest-api.md "RSA Keys": PKCS#8 only).
Each account has its own balances, orders, trades and ORDERS rate-limit counters; the
market (prices, symbols, ids) is shared.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from worker.testing.fake_binance.book import Book
from worker.testing.fake_binance.orders import ApiError

KeyType = Literal["hmac", "ed25519", "rsa"]
# The docs do not define the key format; real keys are 64 letters and digits. The fake
# calls a key malformed (-2014) when it is empty or has other characters than these.
_KEY_FORMAT = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def random_key(length: int = 64) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


@dataclass(eq=False)
class FakeAccount:
    """One account. ``api_key`` goes in ``X-MBX-APIKEY``; sign with ``api_secret`` (HMAC)
    or ``private_key_pem`` (RSA, Ed25519; PKCS#8, unencrypted, as ccxt's ``secret``)."""

    name: str
    key_type: KeyType
    api_key: str
    book: Book
    api_secret: str | None = None
    private_key_pem: str | None = None
    public_key: Ed25519PublicKey | RSAPublicKey | None = None
    enabled: bool = True
    order_times: list[float] = field(default_factory=list)  # clock s of counted orders

    def __repr__(self) -> str:  # keys stay out of test output
        return f"FakeAccount({self.name!r}, {self.key_type})"

    @property
    def public_key_pem(self) -> str | None:
        if self.public_key is None:
            return None
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def set_balances(
        self, balances: Mapping[str, Decimal | str] | None, *, lock: bool = True
    ) -> None:
        """Enforce (and move) balances; None means unlimited funds (see FakeBinance)."""
        self.book.balances = (
            None if balances is None else {k: Decimal(v) for k, v in balances.items()}
        )
        self.book.lock_balances = lock

    def orders(self, client_order_id: str | None = None) -> list[dict[str, Any]]:
        return [o.json() for o in self.book.orders if client_order_id in (None, o.client_id)]


def make_keys(
    key_type: KeyType,
    api_secret: str | None,
    public_key_pem: str | None,
    private_key_pem: str | None = None,
) -> tuple[str | None, str | None, Ed25519PublicKey | RSAPublicKey | None]:
    """(api_secret, private_key_pem, public_key): given ones kept, missing ones generated."""
    if key_type == "hmac":
        return api_secret or random_key(), None, None
    if public_key_pem is not None:
        loaded = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(loaded, Ed25519PublicKey | RSAPublicKey):
            raise ValueError("a public key for an RSA or Ed25519 account")
        return None, private_key_pem, loaded
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if key_type == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return None, pem, private.public_key()


def identify(accounts: Mapping[str, FakeAccount], key: str | None) -> FakeAccount:
    """errors.md -2014 BAD_API_KEY_FMT for a missing or malformed key, -2015
    REJECTED_MBX_KEY for one that is unknown, disabled or revoked."""
    if not key or not _KEY_FORMAT.match(key):
        raise ApiError(401, -2014, "API-key format invalid.")
    account = accounts.get(key)
    if account is None or not account.enabled:
        raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
    return account
