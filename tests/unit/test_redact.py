"""No secret reaches a log line: mask_secrets and the structlog/stdlib pipeline."""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import string
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

import worker.logs
from worker.events import Event
from worker.logs import configure_logging, get_logger
from worker.pipeline.handlers.audit_log import make_audit_log
from worker.redact import SECRET_KEYS, is_secret_key, mask_secrets


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
    ("text", "expected"),
    [
        pytest.param("postgresql://app:p@ss:w@rd@db.example:5432/app",
                     "postgresql://app:***@db.example:5432/app", id="at-and-colon"),
        pytest.param("redis://:a@b@cache:6379/0", "redis://:***@cache:6379/0",
                     id="no-user"),
        pytest.param("postgresql://svc@tenant:pw@db/app", "postgresql://svc@tenant:***@db/app",
                     id="at-in-user"),
        pytest.param("amqp://u:a/b#c?d@e@mq:5672/%2f", "amqp://u:***@mq:5672/%2f",
                     id="slash-hash-query-at"),
        pytest.param("retry 2: postgres://u:x@y@h1/db, then postgres://v:z@w@h2/db failed",
                     "retry 2: postgres://u:***@h1/db, then postgres://v:***@h2/db failed",
                     id="two-urls"),
        pytest.param("dsn='postgresql://app:it's@db/app'", "dsn='postgresql://app:***@db/app'",
                     id="quoted-url"),
    ],
)  # fmt: skip
def test_url_password_runs_to_the_last_at(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("PGPASSWORD=hunter2 psql -h db app", "PGPASSWORD=*** psql -h db app",
                     id="pgpassword"),
        pytest.param("export PGPASSWORD=p@ss:w#rd&x; psql", "export PGPASSWORD=*** psql",
                     id="export"),
        pytest.param("PGPASSWORD='x y' pg_dump app", "PGPASSWORD=*** pg_dump app",
                     id="single-quoted"),
        pytest.param('PGPASSWORD="x \\"y\\" z" pg_dump app', "PGPASSWORD=*** pg_dump app",
                     id="double-quoted"),
        pytest.param("PGPASSWORD='it'\\''s a pw' psql", "PGPASSWORD=*** psql",
                     id="shell-quote-idiom"),
        pytest.param("PGPASSWORD='it'\"'\"'s a pw' psql", "PGPASSWORD=*** psql",
                     id="shlex-quote"),
        pytest.param("PGPASSWORD=it\\'s\\ a\\ pw psql", "PGPASSWORD=*** psql",
                     id="printf-q"),
        pytest.param("BINANCE_API_SECRET=s3cr3t BINANCE_API_KEY=k3y up",
                     "BINANCE_API_SECRET=*** BINANCE_API_KEY=*** up", id="binance"),
        pytest.param("POSITION_WORKER_SECRETS_KEY=Zm9v+YmFy/= loaded",
                     "POSITION_WORKER_SECRETS_KEY=*** loaded", id="secrets-key"),
        pytest.param("DB_PASSWORD=a GITHUB_TOKEN=b my.apikey=c X_API_KEY=d Db_Secret=e",
                     "DB_PASSWORD=*** GITHUB_TOKEN=*** my.apikey=*** X_API_KEY=*** Db_Secret=***",
                     id="any-name-ending-in-a-secret-word"),
        pytest.param("--password=hunter2 --verbose", "--password=*** --verbose", id="option"),
        pytest.param("access_token=abc&refresh_token=def", "access_token=***&refresh_token=***",
                     id="two-pairs"),
    ],
)  # fmt: skip
def test_environment_style_secrets_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("host=db password='a b\\'c' dbname=x", "host=db password=*** dbname=x",
                     id="quoted-escaped-quote"),
        pytest.param("host=db password = 'x y' dbname=x", "host=db password = *** dbname=x",
                     id="spaces-around-equals"),
        pytest.param("host=db password=it\\'s dbname=x", "host=db password=*** dbname=x",
                     id="unquoted-escaped-quote"),
        pytest.param("host=db password='a\\\\' dbname=x", "host=db password=*** dbname=x",
                     id="escaped-backslash"),
        pytest.param("password=p&ss:w@rd host=db", "password=*** host=db", id="ampersand"),
        pytest.param("host=db password='open quote dbname=x", "host=db password=***",
                     id="unterminated"),
        pytest.param("sslpassword='k p' sslmode=verify-full",
                     "sslpassword=*** sslmode=verify-full", id="sslpassword"),
    ],
)  # fmt: skip
def test_conninfo_passwords_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln",
                     "Authorization: Bearer ***", id="bearer"),
        pytest.param("authorization: basic dXNlcjpwYXNz then retried",
                     "authorization: basic *** then retried", id="basic"),
        pytest.param("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: Basic ***",
                     id="proxy"),
        pytest.param("AUTHORIZATION: s3cr3t-key", "AUTHORIZATION: ***", id="no-scheme"),
        pytest.param('Authorization: Digest username="u", response="6629fae4"',
                     "Authorization: Digest ***", id="digest"),
        pytest.param("POST /api/v3/order HTTP/1.1\r\nHost: api.binance.com\r\n"
                     "X-MBX-APIKEY: vmPUZE6mv9SD5V\r\nAuthorization: Bearer t0k\r\n"
                     "Accept: */*\r\n",
                     "POST /api/v3/order HTTP/1.1\r\nHost: api.binance.com\r\n"
                     "X-MBX-APIKEY: ***\r\nAuthorization: Bearer ***\r\n"
                     "Accept: */*\r\n", id="header-dump"),
        pytest.param("{'X-MBX-APIKEY': 'abc', 'Accept': 'application/json'}",
                     "{'X-MBX-APIKEY': '***', 'Accept': 'application/json'}", id="dict"),
        pytest.param('{"authorization": "Bearer x.y.z", "accept": "*/*"}',
                     '{"authorization": "Bearer ***", "accept": "*/*"}', id="json"),
        pytest.param("Headers({'authorization': \"Basic it's\", 'x-mbx-apikey': 'k\\'ey'})",
                     "Headers({'authorization': \"Basic ***\", 'x-mbx-apikey': '***'})",
                     id="httpx-headers-repr"),
    ],
)  # fmt: skip
def test_http_credentials_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app@db.example:5432/app",
        "redis://127.0.0.1:6379/0",
        "position 7c1f opened at 27000.5 by user@example.com",
        "postgresql://app@db/x",
        "redis://cache:6379/0 paged ops@example.com",
        "tokens=5 password_file=/run/secrets/pg PWD=/srv/app idempotency_key=k1 monkey: 3",
        "Authorization header missing",
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


# What a password may hold in a URL, unencoded: '@', ':', '/', '#' and "'" included.
_PASSWORD_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:/?#[]@"
# ... and where it is quoted: also spaces, '"' and '\'.
_QUOTABLE_CHARS = _PASSWORD_CHARS + ' "\\'


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "redis", "rediss", "amqp"]),
    # (A user name that is itself a secret key word, e.g. "apisecret", is masked with what
    # follows it: more than needed, never less.)
    user=st.sampled_from(["", "app", "postgres", "default", "svc_worker1", "svc@tenant"]),
    password=st.text(alphabet=_PASSWORD_CHARS, min_size=1, max_size=30),
)
def test_any_url_password_is_masked(scheme: str, user: str, password: str) -> None:
    secret = "Zq9" + password  # distinctive, so "not in" means what it says
    url = f"{scheme}://{user}:{secret}@db.internal:5432/app"
    masked = mask_secrets(f"cannot connect to {url}: timeout")
    assert secret not in masked
    assert masked == f"cannot connect to {scheme}://{user}:***@db.internal:5432/app: timeout"
    assert mask_secrets(masked) == masked  # idempotent


def _bash_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _printf_q(value: str) -> str:
    return re.sub(r"(\W)", r"\\\1", value)


def _double_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(
    name=st.sampled_from(
        ["PGPASSWORD", "BINANCE_API_SECRET", "BINANCE_API_KEY", "POSITION_WORKER_SECRETS_KEY",
         "db_password", "Access_Token", "x.apikey"]
    ),
    shell_quote=st.sampled_from([shlex.quote, _bash_quote, _printf_q, _double_quote]),
    password=st.text(alphabet=_QUOTABLE_CHARS, max_size=30),
)  # fmt: skip
def test_any_shell_quoted_secret_is_masked(
    name: str, shell_quote: Callable[[str], str], password: str
) -> None:
    secret = "Zq9" + password
    masked = mask_secrets(f"export {name}={shell_quote(secret)} && psql -h db")
    assert "Zq9" not in masked
    assert masked == f"export {name}=*** && psql -h db"


@given(password=st.text(alphabet=_QUOTABLE_CHARS, max_size=30))
def test_any_conninfo_password_is_masked(password: str) -> None:
    secret = "Zq9" + password
    conninfo = make_conninfo("", host="db", password=secret, dbname="app")
    masked = mask_secrets(f"connection failed: {conninfo}")
    assert "Zq9" not in masked
    assert masked == "connection failed: host=db password=*** dbname=app"


_TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/='\"\\"


@given(
    header=st.sampled_from(
        [("Authorization", "Bearer "), ("authorization", "Basic "), ("AUTHORIZATION", ""),
         ("X-MBX-APIKEY", ""), ("x-mbx-apikey", ""), ("X-Api-Key", "")]
    ),
    token=st.text(alphabet=_TOKEN_CHARS, max_size=40),
)  # fmt: skip
def test_any_credential_header_is_masked(header: tuple[str, str], token: str) -> None:
    name, scheme = header
    secret = "Zq9" + token
    headers = {"Accept": "*/*", name: scheme + secret, "Host": "api.binance.com"}

    raw = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    assert mask_secrets(raw) == raw.replace(scheme + secret, scheme + "***")

    for render in (repr, json.dumps):  # a dict's repr (httpx's Headers), a JSON body
        text, value = render(headers), render(scheme + secret)
        masked_value = value[0] + scheme + "***" + value[0]
        assert mask_secrets(text) == text.replace(value, masked_value)


@given(
    name=st.sampled_from(["signature", "api_key", "apiKey", "access_token", "password"]),
    token=st.text(alphabet=_QUOTABLE_CHARS, min_size=1, max_size=30),
)
def test_any_query_string_secret_is_masked(name: str, token: str) -> None:
    secret = quote("Zq9" + token, safe="")
    url = f"https://api.binance.com/api/v3/order?symbol=BTCUSDT&{name}={secret}&timestamp=1"
    assert mask_secrets(f"GET {url} 401") == f"GET {url.replace(secret, '***')} 401"


# Each pattern is linear in the length of the text: a line takes milliseconds. A pattern
# that backtracks takes from half a minute ("a" * 200_000 with a scheme pattern not
# anchored at a word start) to hours on one of these; pytest-timeout stops the test.
@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "line",
    [
        "a:" * 100_000,
        "a" * 200_000,
        "x" * 200_000 + "=",
        "://a:" * 40_000,
        "://:@ " * 33_000,
        "password= " * 20_000,
        "password: '" * 18_000,
        "password='a\\'b' " * 12_000,
        "PGPASSWORD='x\\'\\'' " * 10_000,
        "PGPASSWORD=a'b" * 14_000,
        "&token" * 33_000,
        ("&" + "a" * 50) * 4_000,
        "Authorization: '" * 12_000,
        "'" * 200_000,
        "\\" * 200_000,
    ],
    ids=lambda line: repr(line[:16]),
)
def test_long_adversarial_line(line: str) -> None:
    masked = mask_secrets(line)
    assert "***" in masked or masked == line


@pytest.mark.timeout(10)
def test_long_line_without_secrets_is_unchanged() -> None:
    line = " ".join(
        f"position p-{i} BTCUSDT 27000.{i} filled key_count={i} at 12:00:{i % 60:02d}"
        for i in range(1_500)
    )
    assert len(line) > 100_000
    assert mask_secrets(line) == line


@pytest.mark.parametrize(
    "name",
    ["password", "PASSWORD", "passwd", "pgpassword", "PGPASSWORD", "secret", "api_secret",
     "secrets_key", "POSITION_WORKER_SECRETS_KEY", "token", "access_token", "api_key", "apikey",
     "X-MBX-APIKEY", "x-api-key", "signature", "Authorization", "proxy-authorization"],
)  # fmt: skip
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["tokens", "key", "idempotency_key", "password_file", "secret_name", "event", "pwd"]
)
def test_other_key_names(name: str) -> None:
    assert not is_secret_key(name)


def test_secret_keys_cover_header_and_environment_names() -> None:
    assert {"authorization", "x-mbx-apikey", "pgpassword", "secrets_key"} <= SECRET_KEYS
    assert all(name == name.lower() for name in SECRET_KEYS)  # matched after .lower()


# The logging pipeline -------------------------------------------------------------------------


@pytest.fixture
def log_output() -> io.StringIO:
    """configure_logging() into a buffer (tests/conftest.py restores the global logging
    state after the test)."""
    buffer = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buffer)
    return buffer


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


def test_structlog_masks_new_secret_shapes_and_key_names(log_output: io.StringIO) -> None:
    get_logger("worker.test").warning(
        "request failed",
        cmd="PGPASSWORD='pg pw1' pg_dump app",
        headers="{'X-MBX-APIKEY': 'mbxkey1', 'authorization': 'Bearer jwt1'}",
        dsn="postgresql://app:p@ss1@db:5432/app",
        **{"Authorization": "Bearer jwt2", "X-MBX-APIKEY": "mbxkey2"},
        PGPASSWORD="pgpw2",
        secrets_key="fernet1",
        db_password="dbpw1",
        position_id="p-1",
    )
    text = log_output.getvalue()
    for secret in ("pg pw1", "mbxkey1", "jwt1", "ss1", "jwt2", "mbxkey2", "pgpw2", "fernet1",
                   "dbpw1"):  # fmt: skip
        assert secret not in text
    [line] = _lines(log_output)
    assert line["cmd"] == "PGPASSWORD=*** pg_dump app"
    assert line["headers"] == "{'X-MBX-APIKEY': '***', 'authorization': 'Bearer ***'}"
    assert line["dsn"] == "postgresql://app:***@db:5432/app"
    for key in ("Authorization", "X-MBX-APIKEY", "PGPASSWORD", "secrets_key", "db_password"):
        assert line[key] == "***"
    assert line["position_id"] == "p-1"


def test_lines_written_directly_mask_values_under_secret_keys_in_any_case(
    log_output: io.StringIO,
) -> None:
    """Values that look harmless on their own, under secret names in context and fields."""
    context = {"logger": "worker", "Authorization": "abc123"}
    fields = {"X-MBX-APIKEY": "def456", "Secrets_Key": "ghi789", "event_id": 1}
    assert worker.logs.write_info(context, "fill_recorded", fields)
    [line] = _lines(log_output)
    assert (line["Authorization"], line["X-MBX-APIKEY"], line["Secrets_Key"]) == ("***",) * 3
    assert line["event_id"] == 1


def test_secrets_nested_in_a_log_value_are_masked(log_output: io.StringIO) -> None:
    get_logger("test").info(
        "request_sent",
        headers={"X-MBX-APIKEY": "k3y-abc", "Accept": "json"},
        urls=["postgresql://u:hunter2@db/x"],
        nested={"auth": {"Authorization": "Bearer tok.en"}},
    )
    out = log_output.getvalue()
    for secret in ("k3y-abc", "hunter2", "tok.en"):
        assert secret not in out
    [line] = _lines(log_output)
    assert line["headers"] == {"X-MBX-APIKEY": "***", "Accept": "json"}
