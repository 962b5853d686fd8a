"""SIGNED requests as rest-api.md "Request Security" describes them.

* "SIGNED Endpoint Examples for POST /api/v3/order": the signature payload is "the query
  string concatenated without separator to the HTTP body", taken as sent (percent-encoded),
  without the ``signature`` parameter itself, which may be "in the query string or request
  body" ("SIGNED Endpoint security"). The docs put it last; where it sits is not said to
  matter, so the fake removes it wherever it is.
* HMAC: HMAC-SHA-256 of the payload with the secret key, hex, "not case-sensitive".
  RSA: PKCS#1 v1.5 over SHA-256 with the private key (PKCS#8), base64, percent-encoded
  on the wire, case-sensitive. Ed25519: the signature of the payload, base64, percent-
  encoded, case-sensitive ("Signature Case Sensitivity").
* "Timing security": ``timestamp`` (milliseconds or microseconds, "General API
  Information") and ``recvWindow`` (default 5000, at most 60000, up to three decimals).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from worker.testing.fake_binance.orders import ApiError

MAX_RECV_WINDOW_MS = Decimal(60_000)
DEFAULT_RECV_WINDOW_MS = Decimal(5_000)
_MICROSECONDS_FROM = 10**14  # a timestamp this large is in microseconds (ms: ~1.7e12)

BAD_SIGNATURE = ApiError(400, -1022, "Signature for this request is not valid.")


def payload(query: str, body: str) -> str:
    """The signed payload: query string + body as sent, without ``signature=...``."""

    def strip(part: str) -> str:
        return "&".join(p for p in part.split("&") if p and not p.startswith("signature="))

    return strip(query) + strip(body)


def verify(
    key_type: str,
    secret: str | None,
    public_key: Ed25519PublicKey | RSAPublicKey | None,
    signed: str,
    signature: str,
) -> None:
    """Raise -1022 unless ``signature`` (decoded from the wire) signs ``signed``."""
    data = signed.encode()
    if key_type == "hmac":
        assert secret is not None
        expected = hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BAD_SIGNATURE
        return
    try:
        raw = base64.b64decode(signature, validate=True)
        if isinstance(public_key, RSAPublicKey):
            public_key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, Ed25519PublicKey):
            public_key.verify(raw, data)
        else:
            raise BAD_SIGNATURE
    except (InvalidSignature, binascii.Error, ValueError):
        raise BAD_SIGNATURE from None


def _decimal(params: Mapping[str, str], name: str) -> Decimal:
    try:
        value = Decimal(params[name])
    except (InvalidOperation, ValueError):
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None
    if not value.is_finite():
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.")
    return value


def check_timestamp(params: Mapping[str, str], now_ms: int) -> None:
    """rest-api.md "Timing security": reject unless
    ``timestamp < serverTime + 1 second and serverTime - timestamp <= recvWindow``."""
    if not params.get("timestamp"):
        raise ApiError(
            400,
            -1102,
            "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
        )
    window = DEFAULT_RECV_WINDOW_MS
    if "recvWindow" in params:
        window = _decimal(params, "recvWindow")
        if window > MAX_RECV_WINDOW_MS or window < 0 or window != round(window, 3):
            # the code is not documented: errors.md -1130 INVALID_PARAMETER
            raise ApiError(400, -1130, "Data sent for parameter 'recvWindow' is not valid.")
    sent = _decimal(params, "timestamp")
    if sent >= _MICROSECONDS_FROM:
        sent /= 1000
    if sent >= now_ms + 1000:
        raise ApiError(
            400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
        )
    if now_ms - sent > window:
        raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
