"""ccxt, as shipped, pointed at the fake Binance (tests/conformance)."""

from __future__ import annotations

from typing import Any

import ccxt

from worker.testing.fake_binance import FakeBinance

# ccxt's documented options: only the spot exchangeInfo in load_markets (no futures
# exchangeInfo, no sapi margin pairs), no sapi capital/config/getall for currencies.
SPOT_ONLY: dict[str, Any] = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}


def exchange(fake: FakeBinance, api_key: str, secret: str) -> ccxt.binance:
    """``ccxt.binance`` whose spot public and private APIs are the fake's ``/api/v3``.
    ``secret`` is an HMAC secret or a PEM private key (ccxt signs with RSA or Ed25519 when
    the secret holds "PRIVATE KEY")."""
    ex = ccxt.binance(
        {
            "apiKey": api_key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": 10_000,
            "options": dict(SPOT_ONLY),
        }
    )
    for api in ("public", "private"):
        ex.urls["api"][api] = f"{fake.base_url}/api/v3"
    return ex
