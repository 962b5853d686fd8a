"""Keep secrets out of every line the worker prints."""

from __future__ import annotations

import re
from typing import Final

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD: Final = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
# password=... / secret=... in libpq key-value strings and query strings, quoted or not,
# and "password": "..." in dict and JSON renderings
_KV_SECRET: Final = re.compile(
    r"(?P<head>\b(?:password|passwd|secret|api_?secret|api_?key|signature|token)['\"]?"
    r"\s*[=:]\s*['\"]?)[^\s&'\",}]+",
    re.IGNORECASE,
)
SECRET_KEYS: Final = frozenset(
    {"password", "passwd", "secret", "api_key", "api_secret", "signature", "token", "apikey"}
)


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs and ``key=value`` secrets with ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _KV_SECRET.sub(r"\g<head>***", text)
