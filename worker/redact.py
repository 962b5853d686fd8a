"""Keep secrets out of every line the worker prints.

:func:`mask_secrets` replaces secret values in free text with ``***`` and keeps the rest:

* the password of a URL: ``postgresql://app:***@db:5432/app``;
* ``Authorization`` headers, raw or in a dict or JSON rendering; the scheme word stays:
  ``Authorization: Bearer ***``;
* the value after any name ending in a secret word (see ``_SECRET_NAME_END``), with ``=`` or
  ``:``: ``PGPASSWORD=***``, ``password=***`` in libpq conninfo, ``&signature=***`` in a
  query string, ``X-MBX-APIKEY: ***`` in a header dump, ``'api_key': '***'`` in a dict or
  JSON rendering. Quoted values are masked whole, quotes and escaped quotes included.

Where the end of a secret is ambiguous, more is masked rather than less. The work is linear
in the length of the text: no repeated group (``(...)*``, ``(...)+``) holds a quantifier of
its own, and the text masked for a value reaches as far as every scan made to find its end,
so no stretch of text is scanned again for the next value.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

# The end of a name whose value is a secret, case-insensitive: PGPASSWORD, db.passwd,
# BINANCE_API_SECRET, POSITION_WORKER_SECRETS_KEY, access_token, X-MBX-APIKEY, api-key,
# signature (of a signed exchange request).
_SECRET_NAME_END: Final = r"(?:passw(?:or)?d|secrets?[_-]?key|secret|token|api[_-]?key|signature)"

# Log fields and headers whose whole value worker.logs replaces with "***"; is_secret_key
# also takes any other name ending in a secret word.
SECRET_KEYS: Final = frozenset(
    {
        "password",
        "passwd",
        "pgpassword",
        "secret",
        "api_secret",
        "secrets_key",
        "token",
        "api_key",
        "apikey",
        "x-mbx-apikey",
        "signature",
        "authorization",
        "proxy-authorization",
    }
)
_SECRET_NAME: Final = re.compile(rf"(?:{_SECRET_NAME_END}|authorization)\Z", re.IGNORECASE)

# scheme://user:password@host. The user name runs to the first ':' and the password to the
# last '@' of the URL, which runs to the next whitespace: a password may hold unencoded '@',
# ':', '/', '?' or '#', and so may a user name ('@': user@tenant). A URL followed by more text
# without whitespace in between is masked up to the last '@' of that text.
_URL_USERINFO: Final = re.compile(r"(?P<head>://[^:/\s]*:)(?P<rest>\S*)")

# Authorization: <scheme> <credentials>. The credentials of Basic and Bearer are one word;
# those of the other schemes (Digest's key="value" list, AWS4's) and of an unknown or absent
# scheme run to the end of the line, or of the quoted string in a dict or JSON rendering.
_AUTHORIZATION: Final = re.compile(
    r"(?P<head>authorization['\"]?[ \t]*[=:][ \t]*(?P<q>['\"])?"
    r"(?:(?:(?P<word>Basic|Bearer)|Digest|DPoP|HOBA|Mutual|Negotiate|NTLM|OAuth|Token|Bot"
    r"|ApiKey|AWS4-HMAC-SHA256|SCRAM-SHA-1|SCRAM-SHA-256|vapid)[ \t]+)?)"
    r"(?P<value>(?(q)(?:(?!(?P=q))[^\\\r\n]|\\.)*\\?|(?(word)\S*|[^\r\n]*)))",
    re.IGNORECASE,
)

# name=value or name: value, the name ending in a secret word. After '?' or '&' it is a
# query-string parameter; the name may close a dict or JSON key ('api_key': ...).
_PAIR_HEAD: Final = re.compile(
    rf"(?:(?P<query>[?&])|(?<![\w.-]))(?P<name>[\w.-]*{_SECRET_NAME_END})['\"]?"
    r"[ \t]*(?:(?P<eq>=)|:)[ \t]*",
    re.IGNORECASE,
)
# libpq's conninfo keywords among those names: their values use backslash escapes.
_CONNINFO_NAMES: Final = frozenset({"password", "sslpassword"})
# '&' followed by another secret pair: the end of an unquoted value ("token=a&secret=b").
_NEXT_PAIR: Final = re.compile(rf"&[\w.-]*{_SECRET_NAME_END}['\"]?[=:]", re.IGNORECASE)
# A query-string value: to '&', whitespace, or the '"' closing a JSON string around the URL.
_QUERY_VALUE: Final = re.compile(r"[^\s&\"]*")
# An unquoted value: to whitespace or to '&' (see _NEXT_PAIR).
_UNQUOTED_RUN: Final = re.compile(r"[^\s&]*")
# A quoted value with backslash escapes (libpq's \', JSON's \", a repr's \'); one left open
# runs to the end of the line.
_QUOTED: Final = {q: re.compile(rf"{q}(?:[^{q}\\\r\n]|\\.)*\\?(?P<close>{q})?") for q in "'\""}
# A bare libpq value: to whitespace, backslash escapes included (it\'s\ a\ pw).
_ESCAPED_BARE: Final = re.compile(r"(?:[^\s\\]|\\.)*\\?")
# A shell word is made of unquoted runs, '...' (no escapes inside), "..." and \x: the quoting
# of shlex.quote ('it'"'"'s'), of printf %q (it\'s) and by hand ('it'\''s').
_SHELL_RUN: Final = re.compile(r"[^\s'\"\\&]*")
_SHELL_QUOTED: Final = {"'": re.compile(r"'[^'\r\n]*(?P<close>')?"), '"': _QUOTED['"']}


@lru_cache(maxsize=1024)
def is_secret_key(name: str) -> bool:
    """Whether a log field or header called ``name`` holds a secret (case-insensitive)."""
    return name.lower() in SECRET_KEYS or _SECRET_NAME.search(name) is not None


def mask_secrets(text: str) -> str:
    """Replace URL passwords, credentials and secret ``name=value`` values with ``***``."""
    text = _URL_USERINFO.sub(_mask_url, text)
    text = _AUTHORIZATION.sub(_mask_authorization, text)
    return _mask_pairs(text)


def _mask_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    at = rest.rfind("@")
    return match[0] if at < 0 else f"{match['head']}***{rest[at:]}"


def _mask_authorization(match: re.Match[str]) -> str:
    return f"{match['head']}***" if match["value"] else match[0]


def _mask_pairs(text: str) -> str:
    parts: list[str] = []
    done = pos = 0
    while (head := _PAIR_HEAD.search(text, pos)) is not None:
        start = pos = head.end()
        end = _value_end(text, head)
        if end == start:  # "password=" with nothing after it
            continue
        quote = text[start]
        if quote in ("'", '"') and head["eq"] is None and head["query"] is None:
            masked = f"{quote}***{quote}"  # "api_key": "***" stays a string
        else:
            masked = "***"
        parts += (text[done:start], masked)
        done = pos = end
    parts.append(text[done:])
    return "".join(parts)


def _value_end(text: str, head: re.Match[str]) -> int:
    start = head.end()
    if head["query"] is not None:
        return _end(_QUERY_VALUE, text, start)
    if head["eq"] is None:  # name: value (a header, a dict or JSON rendering)
        if text[start : start + 1] in ("'", '"'):
            return _escaped_value_end(text, start)[0]
        return _unquoted_end(text, start)
    # name=value: a libpq value (password='it\'s') or a shell word (PGPASSWORD='it'\''s'),
    # which read the same text differently. The name picks the reading tried first; when
    # that one does not end cleanly, the longer of the two is masked.
    readings = (_escaped_value_end, _shell_word_end)
    if head["name"].lower() not in _CONNINFO_NAMES:
        readings = (_shell_word_end, _escaped_value_end)
    end, clean = readings[0](text, start)
    return end if clean else max(end, readings[1](text, start)[0])


def _escaped_value_end(text: str, pos: int) -> tuple[int, bool]:
    """Where the value at ``pos`` ends, read as libpq, JSON and Python's repr write values
    (quoted or bare, with backslash escapes), and whether it ends cleanly: quotes closed,
    whitespace or the end of the text after it."""
    quoted = _QUOTED.get(text[pos : pos + 1])
    if quoted is None:
        return _end(_ESCAPED_BARE, text, pos), True
    end, closed = _quoted_end(quoted, text, pos)
    return end, closed and (end == len(text) or text[end].isspace())


def _shell_word_end(text: str, pos: int) -> tuple[int, bool]:
    """Where the shell word at ``pos`` ends, and whether all its quotes are closed."""
    clean = True
    while True:
        pos = _end(_SHELL_RUN, text, pos)
        char = text[pos : pos + 1]
        if char in ("'", '"'):
            pos, closed = _quoted_end(_SHELL_QUOTED[char], text, pos)
            clean = clean and closed
        elif char == "\\":
            pos += 1 if text[pos + 1 : pos + 2] in ("", "\n", "\r") else 2
        elif char == "&" and _NEXT_PAIR.match(text, pos) is None:
            pos += 1
        else:
            return pos, clean


def _unquoted_end(text: str, pos: int) -> int:
    end = _end(_UNQUOTED_RUN, text, pos)
    while text.startswith("&", end) and _NEXT_PAIR.match(text, end) is None:
        end = _end(_UNQUOTED_RUN, text, end + 1)
    return end


def _quoted_end(pattern: re.Pattern[str], text: str, pos: int) -> tuple[int, bool]:
    """Where the quoted string at ``pos`` ends, and whether its closing quote is there."""
    match = pattern.match(text, pos)
    if match is None:  # the patterns match any text starting with their quote
        return pos, False
    return match.end(), match["close"] is not None


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where a match of ``pattern`` at ``pos`` ends (``pos`` if there is none)."""
    match = pattern.match(text, pos)
    return pos if match is None else match.end()


class Secret:
    """A string that prints as ``***`` (repr, str, tracebacks with locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__
