"""No secret reaches a log line: mask_secrets and the structlog/stdlib pipeline."""

from __future__ import annotations

import io
import json
import logging
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

import worker.logs
from worker.events import Event
from worker.logs import configure_logging, get_logger
from worker.pipeline.handlers.audit_log import make_audit_log
from worker.redact import mask_secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql://app:hunter2@db.example:5432/app",
            "postgresql://app:***@db.example:5432/app",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:pa/ss?w#rd@cache:6380", "rediss://default:***@cache:6380"),
        (
            "connect failed: postgres://u:p1@h1/db then postgres://v:p2@h2/db",
            "connect failed: postgres://u:***@h1/db then postgres://v:***@h2/db",
        ),
        ("host=db user=app password=hunter2 dbname=app",
         "host=db user=app password=*** dbname=app"),
        ("GET /api/v3/order?symbol=BTCUSDT&signature=abc123&x=1",
         "GET /api/v3/order?symbol=BTCUSDT&signature=***&x=1"),
        ("api_key=AKIA1 apiKey: AKIA2 API-secret? no", "api_key=*** apiKey: *** API-secret? no"),
        ("token = t0k3n&secret=xyz", "token = ***&secret=***"),
    ],
)  # fmt: skip
def test_mask_secrets(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app@db.example:5432/app",
        "redis://127.0.0.1:6379/0",
        "position 7c1f opened at 27000.5 by user@example.com",
        "",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "host=db user=app password='hunter2' dbname=app",
        str({"password": "hunter2"}),
        '{"api_key": "hunter2"}',
    ],
    ids=["libpq-quoted", "dict-repr", "json"],
)
def test_quoted_secrets_are_masked(text: str) -> None:
    assert "hunter2" not in mask_secrets(text)


_PASSWORD_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:/?#[]"


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "redis", "rediss", "amqp"]),
    # (A user name that is itself a secret key word, e.g. "apisecret", is masked with what
    # follows it: more than needed, never less.)
    user=st.sampled_from(["", "app", "postgres", "default", "svc_worker1"]),
    password=st.text(alphabet=_PASSWORD_CHARS, min_size=1, max_size=30),
)
def test_any_url_password_is_masked(scheme: str, user: str, password: str) -> None:
    secret = "Zq9" + password  # distinctive, so "not in" means what it says
    url = f"{scheme}://{user}:{secret}@db.internal:5432/app"
    masked = mask_secrets(f"cannot connect to {url}: timeout")
    assert secret not in masked
    assert masked == f"cannot connect to {scheme}://{user}:***@db.internal:5432/app: timeout"
    assert mask_secrets(masked) == masked  # idempotent


# The logging pipeline -------------------------------------------------------------------------


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """configure_logging() into a buffer; restore the global logging state afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    drivers = [
        logging.getLogger(n) for n in ("psycopg", "psycopg.pool", "redis", "httpx", "httpcore")
    ]
    saved_driver_levels = [d.level for d in drivers]
    buffer = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for driver, driver_level in zip(drivers, saved_driver_levels, strict=True):
            driver.setLevel(driver_level)
        structlog.reset_defaults()


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_structlog_event_is_json_without_secrets(log_output: io.StringIO) -> None:
    get_logger("worker.test").info(
        "connecting",
        url="postgresql://app:hunter2@db.example:5432/app",
        dsn="host=db password=pgpass1 dbname=app",
        api_key="AKIAXYZ123",
        api_secret="SECRETXYZ",
        position_id="p-1",
        attempt=3,
    )
    text = log_output.getvalue()
    for secret in ("hunter2", "pgpass1", "AKIAXYZ123", "SECRETXYZ"):
        assert secret not in text
    [line] = _lines(log_output)
    assert line["event"] == "connecting"
    assert line["level"] == "info"
    assert line["url"] == "postgresql://app:***@db.example:5432/app"
    assert line["dsn"] == "host=db password=*** dbname=app"
    assert line["api_key"] == "***"
    assert line["api_secret"] == "***"
    assert line["position_id"] == "p-1"
    assert line["attempt"] == 3
    assert line["timestamp"].endswith("Z")


def test_secret_in_the_event_text_and_in_an_exception_is_masked(log_output: io.StringIO) -> None:
    log = get_logger("worker.test")
    log.warning("retrying postgresql://app:hunter2@db/app")
    try:
        raise ConnectionError("could not connect to redis://:redispw@cache:6379/0")
    except ConnectionError:
        log.exception("redis down")
    text = log_output.getvalue()
    assert "hunter2" not in text
    assert "redispw" not in text
    first, second = _lines(log_output)
    assert first["event"] == "retrying postgresql://app:***@db/app"
    assert second["event"] == "redis down"
    assert second["level"] == "error"
    assert "ConnectionError: could not connect to redis://:***@cache:6379/0" in second["exception"]


def test_stdlib_logger_is_rendered_as_json_and_masked(log_output: io.StringIO) -> None:
    logging.getLogger("some.library").warning(
        "connection to %s lost", "postgresql://app:hunter2@db/app"
    )
    try:
        raise RuntimeError("password=pw123 rejected")
    except RuntimeError:
        logging.getLogger("psycopg").error("driver failed", exc_info=True)
    # Drivers are held at WARNING: their INFO lines are dropped.
    logging.getLogger("psycopg").info("chatty")
    text = log_output.getvalue()
    assert "hunter2" not in text
    assert "pw123" not in text
    assert "chatty" not in text
    first, second = _lines(log_output)
    assert first["event"] == "connection to postgresql://app:***@db/app lost"
    assert (first["level"], second["level"]) == ("warning", "error")
    assert "RuntimeError: password=*** rejected" in second["exception"]


def test_level_filters_lines(log_output: io.StringIO) -> None:
    log = get_logger("worker.test")
    log.debug("hidden")
    log.info("shown")
    assert [line["event"] for line in _lines(log_output)] == ["shown"]


def test_audit_lines_written_directly_match_structlog_and_are_masked(
    log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit handler bypasses structlog's chain for speed: same keys, same masking."""
    log = get_logger("worker").bind(worker="w1")
    event = Event(
        event_id=7,
        kind="position",
        position_id="p-1",
        user_id="u-1",
        symbol="BTCUSDT",
        occurred_at=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        old_status="closing",
        new_status="failed",
        data={"failure_reason": "proxy http://bot:hunter2@proxy:3128 refused", "side": "long"},
    )
    audit_log = make_audit_log(log)
    anyio.run(audit_log, event)  # written directly
    monkeypatch.setattr(worker.logs, "_direct", None)
    anyio.run(audit_log, event)  # through structlog's processor chain
    direct, via_structlog = _lines(log_output)
    assert "hunter2" not in log_output.getvalue()
    assert direct["failure_reason"] == "proxy http://bot:***@proxy:3128 refused"
    assert direct.keys() == via_structlog.keys()
    assert {k: v for k, v in direct.items() if k != "timestamp"} == {
        k: v for k, v in via_structlog.items() if k != "timestamp"
    }
    assert direct["event"] == "position_transitioned"
    assert (direct["event_id"], direct["worker"], direct["logger"]) == (7, "w1", "worker")
    assert direct["occurred_at"] == "2026-11-29T12:00:00+00:00"
    assert direct["timestamp"].endswith("Z")


def test_lines_held_for_a_batch_are_written_together_at_its_end(log_output: io.StringIO) -> None:
    with worker.logs.lines_held():
        assert worker.logs.write_info({"logger": "worker"}, "fill_recorded", {"event_id": 1})
        assert worker.logs.write_info({"logger": "worker"}, "fill_recorded", {"event_id": 2})
        assert log_output.getvalue() == ""  # not yet: one write at the end of the batch
    assert [line["event_id"] for line in _lines(log_output)] == [1, 2]
