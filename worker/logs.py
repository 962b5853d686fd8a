"""Structured logging: structlog for our events, stdlib (psycopg, redis) through the same renderer.

JSON lines when stderr is not a terminal (what operators tail and ship), colour when it is.
Every string value passes through :func:`worker.redact.mask_secrets`, and values under
secret-looking keys are dropped, so no password or API key reaches a log line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog

from worker.redact import is_secret_key, mask_secrets

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    texts = [v for v in event_dict.values() if isinstance(v, str)]
    suspicious = _maybe_secret("\x00".join(texts))  # one scan per line
    for key, value in event_dict.items():
        if is_secret_key(key):
            event_dict[key] = "***"
        elif suspicious and isinstance(value, str):
            event_dict[key] = mask_secrets(value)
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _scrub(value)
    return event_dict


def _scrub(value: Any) -> Any:
    """A nested value with every secret in it masked (e.g. ``headers={...}``)."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(k, str) and is_secret_key(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


# Cheap pre-check: only strings that could hold a URL password, an Authorization header or a
# key=value secret are run through the full regexes (this runs for every value of every audit
# line; timestamps and ids, which hold ':' and '-', must not pay for it). Substring tests
# beat a regex here.
def _maybe_secret(text: str) -> bool:
    t = text.lower()
    return (
        "://" in t
        or "passw" in t
        or "secret" in t
        or "key" in t
        or "token" in t
        or "signature" in t
        or "authoriz" in t
    )


# The hot path: when our lines are JSON and INFO is enabled, write_info renders them here
# directly (same keys, order and redaction as the processor chain) instead of going through
# structlog, which costs several times more per line. The audit log uses it once per event.
_direct: tuple[Any, threading.Lock] | None = None
# the value types that are never redacted as a whole (strings are scanned as text) ...
_FLAT: frozenset[type] = frozenset({str, int, float, bool, type(None)})
# ... and the ones whose items _redact walks
_NESTED: tuple[type, ...] = (Mapping, list, tuple)


def write_info(context: Mapping[str, Any], event: str, fields: dict[str, Any]) -> bool:
    """Write one INFO line directly if logging is JSON; False if the caller must log it."""
    if _direct is None:
        return False
    line = {**context, **fields, "event": event, "level": "info", "timestamp": _utc_now_iso()}
    texts = [v for v in line.values() if v.__class__ is str]
    # the types of an audit line's values are a few plain ones: a set of them answers
    # "anything nested?" without an isinstance check (against an ABC) per value
    nested = not _FLAT.issuperset(map(type, line.values())) and any(
        isinstance(v, _NESTED) for v in line.values()
    )
    if _maybe_secret("\x00".join(texts)) or _has_secret_key(tuple(line)) or nested:  # rare
        _redact(None, "info", line)
    _emit(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE).decode())
    return True


# Whether a line with these field names (in this order) has one under which _redact hides
# the value: an audit line's names repeat from event to event, so one lookup answers.
_secret_key_seen: dict[tuple[str, ...], bool] = {}


def _has_secret_key(keys: tuple[str, ...]) -> bool:
    found = _secret_key_seen.get(keys)
    if found is None:
        if len(_secret_key_seen) >= 1024:  # arbitrary names: keep the table bounded
            _secret_key_seen.clear()
        found = _secret_key_seen[keys] = any(map(is_secret_key, keys))
    return found


def _emit(text: str) -> None:
    held = _held.get()
    if held is not None:
        held.append(text)
        return
    if _direct is not None:
        out, lock = _direct
        with lock:
            out.write(text)
            out.flush()


_second: tuple[int, str] = (-1, "")  # the current second and its ISO text up to the fraction


def _utc_now_iso() -> str:
    """``datetime.now(UTC).isoformat()`` with ``Z``, as structlog's TimeStamper writes it,
    in a fifth of the time: the text up to the second is rendered once per second."""
    global _second
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached, text = _second  # one read: another thread may replace it meanwhile
    if second != cached:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


_held: ContextVar[list[str] | None] = ContextVar("held_lines", default=None)


@contextmanager
def lines_held() -> Iterator[None]:
    """Collect the lines :func:`write_info` renders in this block; write them in one go
    at its end (one write per batch of events instead of one per event). The dispatcher
    wraps a batch's handlers in it, before the claim commits: a worker killed meanwhile
    loses the lines, and handles (and logs) those events again after its restart."""
    held: list[str] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        if held and _direct is not None:
            out, lock = _direct
            with lock:
                out.write("".join(held))
                out.flush()


DRIVER_LOGGERS: Final = ("psycopg", "psycopg.pool", "redis", "httpx", "httpcore")


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once, at start-up."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_stdlib_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if use_json else _noop,
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        # plain tracebacks: never a frame's local variables (a secret may be one), even
        # where rich or better_exceptions is installed and would show them
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    # Our own events are rendered and written directly (the hot path: one audit line per
    # event); stdlib records (psycopg, redis, ...) go through the same processors and
    # renderer via ProcessorFormatter below.
    global _direct
    info_on = _LEVELS.get(level, logging.INFO) <= logging.INFO
    _direct = (out, threading.Lock()) if use_json and info_on else None
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Drivers are chatty at INFO; keep their warnings.
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _add_stdlib_logger_name(
    logger: Any, _: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Name the logger of stdlib records (psycopg, redis, ...); ours bind ``logger``."""
    record = event_dict.get("_record")
    if record is not None and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


def _noop(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str = "worker") -> Any:
    """A structlog logger; bind context with ``.bind(position_id=...)``."""
    return structlog.get_logger().bind(logger=name)
