"""Request signatures for the three key types Binance spot accepts (rest-api.md, "SIGNED
(TRADE and USER_DATA) Endpoint security"), checked against the docs' worked HMAC example and
by verifying the asymmetric ones with the public key, as Binance does."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from worker.exchanges.signing import BadKey, Credentials, credentials_from_env

# rest-api.md, "SIGNED Endpoint Examples for POST /api/v3/order - HMAC Keys".
DOCS_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOCS_PAYLOAD = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)
DOCS_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def _pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_hmac_matches_the_docs_example() -> None:
    creds = Credentials.of("key", DOCS_SECRET)
    assert creds.sign(DOCS_PAYLOAD) == DOCS_SIGNATURE


def test_ed25519_signature_verifies_with_the_public_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    creds = Credentials.of("key-id", _pem(key), "ed25519")
    signature = base64.b64decode(creds.sign(DOCS_PAYLOAD))
    key.public_key().verify(signature, DOCS_PAYLOAD.encode())  # raises when wrong


def test_rsa_signature_is_pkcs1v15_sha256() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    creds = Credentials.of("key-id", _pem(key), "rsa")
    signature = base64.b64decode(creds.sign(DOCS_PAYLOAD))
    key.public_key().verify(signature, DOCS_PAYLOAD.encode(), padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(
    ("key_type", "secret", "message"),
    [
        ("ed25519", "not a pem at all", "not an unencrypted PEM private key"),
        ("hmac", "", "secret is empty"),
        ("dsa", "x", "key type must be one of"),
    ],
)
def test_bad_key_material_is_refused_without_echoing_it(
    key_type: str, secret: str, message: str
) -> None:
    with pytest.raises(BadKey, match=message) as err:
        Credentials.of("key", secret, key_type)
    if secret:
        assert secret not in str(err.value)


def test_a_key_of_the_other_type_is_refused() -> None:
    pem = _pem(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(BadKey, match="not an rsa key"):
        Credentials.of("key", pem, "rsa")


def test_credentials_never_print_their_secret() -> None:
    creds = Credentials.of("the-api-key", DOCS_SECRET)
    assert DOCS_SECRET not in repr(creds) and "the-api-key" not in repr(creds)


def test_operator_credentials_from_the_environment(tmp_path: Path) -> None:
    assert credentials_from_env({}) is None
    hmac_creds = credentials_from_env({"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})
    assert hmac_creds is not None and hmac_creds.key_type == "hmac"
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(_pem(ed25519.Ed25519PrivateKey.generate()))
    ed = credentials_from_env({"BINANCE_API_KEY": "k", "BINANCE_PRIVATE_KEY_FILE": str(pem_file)})
    assert ed is not None and ed.key_type == "ed25519"  # told by the key itself
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    from_file = credentials_from_env(
        {"BINANCE_API_KEY": "k", "BINANCE_API_SECRET_FILE": str(secret_file)}
    )
    assert from_file is not None and from_file.secret.reveal() == "s3cret"
    with pytest.raises(BadKey, match="cannot read"):
        credentials_from_env({"BINANCE_API_KEY": "k", "BINANCE_PRIVATE_KEY_FILE": "/nonexistent"})
