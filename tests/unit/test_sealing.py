"""Sealing account secrets with POSITION_WORKER_SECRETS_KEY (worker/sealing.py)."""

from __future__ import annotations

import base64

import pytest

from worker.sealing import Keyring, SealingError, associated_data, key_id, new_key

SECRET = "the-users-binance-secret"


def test_a_sealed_secret_opens_with_its_key_and_hides_the_plaintext() -> None:
    ring = Keyring.parse(new_key())
    aad = associated_data("acct-1", 1)
    sealed, kid = ring.seal(SECRET, aad)
    assert SECRET.encode() not in sealed
    assert ring.open(sealed, kid, aad) == SECRET
    assert ring.seal(SECRET, aad)[0] != sealed  # a fresh nonce every time


def test_a_ciphertext_moved_to_another_account_or_version_does_not_open() -> None:
    ring = Keyring.parse(new_key())
    sealed, kid = ring.seal(SECRET, associated_data("acct-1", 1))
    for aad in (associated_data("acct-2", 1), associated_data("acct-1", 2)):
        with pytest.raises(SealingError, match="does not open"):
            ring.open(sealed, kid, aad)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealingError, match="does not open"):
        ring.open(tampered, kid, associated_data("acct-1", 1))


def test_key_rotation_first_key_seals_any_key_opens() -> None:
    old, new = new_key(), new_key()
    aad = associated_data("a", 1)
    sealed_old, old_id = Keyring.parse(old).seal(SECRET, aad)
    ring = Keyring.parse(f"{new}, {old}")
    assert ring.open(sealed_old, old_id, aad) == SECRET
    assert ring.seal(SECRET, aad)[1] == key_id(base64.b64decode(new))
    with pytest.raises(SealingError, match="does not hold"):
        Keyring.parse(new).open(sealed_old, old_id, aad)


@pytest.mark.parametrize(
    ("text", "message"),
    [("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "must be 32")],
)
def test_a_bad_key_is_refused_without_echoing_it(text: str, message: str) -> None:
    with pytest.raises(SealingError, match=message) as err:
        Keyring.parse(text)
    assert text not in str(err.value)


def test_no_key_cannot_seal() -> None:
    ring = Keyring.parse("")
    assert not ring
    with pytest.raises(SealingError, match="POSITION_WORKER_SECRETS_KEY"):
        ring.seal(SECRET, b"")
