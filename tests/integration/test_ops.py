"""Operator commands against real PostgreSQL and Redis: status, replay, tail.

The commands run as an operator runs them (``python -m worker ...`` in a subprocess with
DATABASE_URL/REDIS_URL); the worker that produces what they show runs in-process.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import redis
from psycopg_pool import AsyncConnectionPool

from tests.pipeline_support import burst, eventually, settings_for
from tests.stream_reads import xadd_fields
from tests.support import insert_position, seed_owner
from worker.app import App, ExtraHandlers
from worker.db import migrate as migrations
from worker.errors import MigrationError
from worker.events import Event, stream_fields
from worker.ops.check import run_checks
from worker.ops.status import CLEAR_SCREEN, collect_status, watch_status
from worker.ops.tail import (
    Entry,
    TailError,
    as_json,
    as_text,
    follow,
    id_before,
    resolve_stream,
    start_after,
)
from worker.pipeline.handlers import Registry
from worker.settings import Settings, StreamSettings

EVENTS = "positions:events"


# -- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def running(settings: Settings, extra: ExtraHandlers | None = None) -> AsyncIterator[App]:
    app = App(settings, extra_handlers=extra, handle_signals=False)
    async with app.serving():
        yield app


def failing_for(position_ids: set[str]) -> ExtraHandlers:
    def install(registry: Registry, pool: AsyncConnectionPool[Any]) -> None:
        async def broken(event: Event) -> None:
            raise RuntimeError("downstream is broken")

        registry.add("broken", lambda e: e.position_id in position_ids, broken)

    return install


def counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE processed_at IS NULL AND dead_at IS NULL),"
            " count(*) FILTER (WHERE dead_at IS NOT NULL AND processed_at IS NULL),"
            " count(*) FROM position_events"
        ).fetchone()
    assert row is not None
    return {"pending": int(row[0]), "dead": int(row[1]), "events": int(row[2])}


def cli(db_url: str, redis_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` as an operator runs it (no config file, env URLs)."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=cli_env(db_url, redis_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_env(db_url: str, redis_url: str) -> dict[str, str]:
    """The environment minus any worker settings, plus the URLs (no database: "")."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POSITION_WORKER") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**env, "REDIS_URL": redis_url, **({"DATABASE_URL": db_url} if db_url else {})}


@contextmanager
def cli_process(
    db_url: str, redis_url: str, *args: str, cwd: Path
) -> Iterator[tuple[subprocess.Popen[str], Callable[[float], str]]]:
    """A long-running command, and ``next_line(timeout)`` to read its output without sleeps."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=cli_env(db_url, redis_url),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: a test run started in the background inherits SIGINT ignored,
        # and a child that ignores it never stops (as in test_demo.py)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield proc, lambda timeout: lines.get(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def interrupted(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C, then the exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # a loaded 2-core CI machine can take seconds to schedule it
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read()


# -- status -------------------------------------------------------------------------------


@pytest.fixture
async def after_a_burst(db_url: str, redis_url: str) -> dict[str, Any]:
    """A worker handled a small burst; one position's events are dead; a downstream group
    has read three entries without acknowledging them; a dead-letter stream holds two."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        bad = insert_position(conn, seed_owner(conn))
    settings = settings_for(db_url, redis_url, max_attempts=2)
    async with running(settings, failing_for({str(bad)})):
        await anyio.to_thread.run_sync(burst, db_url, 30)
        await eventually(lambda: counts(db_url)["pending"] == 0, timeout=30)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.xgroup_create(EVENTS, "billing", id="0")
        client.xreadgroup("billing", "b1", {EVENTS: ">"}, count=3)
        client.xgroup_create(EVENTS, "analytics", id="$")
        for n in (1, 2):
            client.xadd(f"{EVENTS}:dead", {"event_id": str(n), "dead_reason": "poison"})
    finally:
        client.close()
    with psycopg.connect(db_url) as conn:
        by_state: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM positions GROUP BY 1")
        )
    return {"positions": by_state, **counts(db_url)}


@pytest.mark.anyio
async def test_status_json_shows_positions_outbox_streams_and_groups(
    db_url: str, redis_url: str, after_a_burst: dict[str, Any], tmp_path: Path
) -> None:
    done = await anyio.to_thread.run_sync(
        lambda: cli(db_url, redis_url, "status", "--json", cwd=tmp_path)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["positions"] == after_a_burst["positions"]
    assert after_a_burst["dead"] >= 1
    assert report["outbox"] == {"pending": 0, "dead": after_a_burst["dead"], "lag_seconds": 0.0}
    assert {d["last_error"] for d in report["dead_events"]} == {
        "broken: RuntimeError: downstream is broken"
    }
    events = report["streams"][EVENTS]
    assert events["length"] == after_a_burst["events"]  # every event published once
    lag = after_a_burst["events"] - 3
    assert events["groups"]["billing"] == {"pending": 3, "consumers": 1, "lag": lag}
    assert events["groups"]["analytics"]["pending"] == 0
    assert events["dead_letter"] == {"stream": f"{EVENTS}:dead", "length": 2}
    assert report["streams"]["positions:notifications"]["dead_letter"] is None
    assert datetime.fromisoformat(report["collected_at"]).tzinfo is not None


@pytest.mark.anyio
async def test_status_text_is_what_an_operator_reads(
    db_url: str, redis_url: str, after_a_burst: dict[str, Any], tmp_path: Path
) -> None:
    done = await anyio.to_thread.run_sync(lambda: cli(db_url, redis_url, "status", cwd=tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    positions = ", ".join(f"{k} {v}" for k, v in sorted(after_a_burst["positions"].items()))
    assert lines[0] == f"positions:  {positions}"
    assert f"outbox: 0 pending, oldest 0.0 s, {after_a_burst['dead']} dead" in lines
    assert any(
        line.startswith("  dead event ") and "downstream is broken" in line for line in lines
    )
    assert f"stream {EVENTS}: {after_a_burst['events']} entries" in lines
    assert any(line.startswith("  group billing: 3 pending") for line in lines)
    assert any(line.startswith("  group analytics: 0 pending") for line in lines)
    assert f"  dead-letter stream {EVENTS}:dead: 2 entries" in lines


@pytest.mark.anyio
async def test_status_watch_redraws_or_separates_and_survives_a_database_outage(
    db_url: str, redis_url: str
) -> None:
    settings = settings_for(db_url, redis_url)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def watch(out: io.StringIO, as_json: bool = False, s: Settings = settings) -> str:
        watch_status(s, 0.5, as_json, out, refreshes=2, sleep=lambda _: None)
        return out.getvalue()

    piped = await anyio.to_thread.run_sync(watch, io.StringIO())
    assert piped.count("--- status at ") == 2
    assert piped.count("outbox: 0 pending") == 2
    on_screen = await anyio.to_thread.run_sync(watch, Terminal())
    assert on_screen.count(CLEAR_SCREEN) == 2
    assert "position-worker status every 0.5 s" in on_screen
    json_lines = (await anyio.to_thread.run_sync(watch, io.StringIO(), True)).splitlines()
    assert [json.loads(line)["outbox"]["pending"] for line in json_lines] == [0, 0]

    down = settings_for("postgresql://pw:s3cret@127.0.0.1:1/nowhere", redis_url)
    outage = await anyio.to_thread.run_sync(watch, io.StringIO(), False, down)
    assert outage.count("status unavailable: database unavailable") == 2
    assert "s3cret" not in outage


@pytest.mark.anyio
async def test_status_watch_stops_on_ctrl_c(db_url: str, redis_url: str, tmp_path: Path) -> None:
    def run() -> tuple[int, str, list[str]]:
        with cli_process(
            db_url, redis_url, "status", "--watch", "--interval", "0.2", cwd=tmp_path
        ) as (proc, next_line):
            seen = [next_line(20) for _ in range(3)]
            while not next_line(20).startswith("--- status at"):  # the second refresh
                pass
            code, err = interrupted(proc)
        return code, err, seen

    code, err, seen = await anyio.to_thread.run_sync(run)
    assert seen[0].startswith("--- status at ")
    assert seen[1].startswith("positions:")
    assert code == 130
    assert "Traceback" not in err


# -- the schema guard of run and check -----------------------------------------------------


def write_migrations(directory: Path, items: list[migrations.Migration]) -> Path:
    directory.mkdir()
    for m in items:
        (directory / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    return directory


def needs() -> str:
    newest = migrations.discover()[-1]
    return f"this worker needs {newest.version:04d}_{newest.name}: run position-worker migrate"


def never_migrated(db_url: str, tmp_path: Path) -> str:
    return f"the database has no schema yet, {needs()}"


def behind(db_url: str, tmp_path: Path) -> str:
    """A deploy that skipped ``migrate``: the newest migration is missing."""
    *older, _ = migrations.discover()
    migrations.migrate(db_url, write_migrations(tmp_path / "older", older))
    return f"the database schema is at version {older[-1].version:04d}, {needs()}"


def with_a_gap(db_url: str, tmp_path: Path) -> str:
    """Every version but one in the middle (a migration merged after a later one ran)."""
    known = migrations.discover()
    migrations.migrate(db_url)
    gap = known[len(known) // 2]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (gap.version,))
    return (
        f"the database schema is at version {known[-1].version:04d} but lacks "
        f"{gap.version:04d}_{gap.name}, which this worker needs: run position-worker migrate"
    )


def newer(db_url: str, tmp_path: Path) -> str:
    """Migrated by a later release: an older worker must not run on it."""
    known = migrations.discover()
    future = migrations.Migration(known[-1].version + 2, "from_the_future", "SELECT 1;")
    migrations.migrate(db_url, write_migrations(tmp_path / "newer", [*known, future]))
    return (
        f"the database schema is newer than this worker ({future.version:04d} > "
        f"{known[-1].version:04d}): upgrade the worker"
    )


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("state", [never_migrated, behind, with_a_gap, newer])
def test_run_and_check_refuse_a_schema_that_is_not_this_workers_in_one_line(
    empty_db_url: str,
    redis_url: str,
    tmp_path: Path,
    command: str,
    state: Callable[[str, Path], str],
) -> None:
    """One line that says what to do and exit 2: no traceback, no log, no health report."""
    expected = state(empty_db_url, tmp_path)
    done = cli(empty_db_url, redis_url, command, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (
        2,
        "",
        [f"position-worker: {expected}"],
    )


def test_check_names_the_schema_it_found(db_url: str, redis_url: str, tmp_path: Path) -> None:
    newest = migrations.discover()[-1]
    done = cli(db_url, redis_url, "check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == (
        f"ok   database: connected, schema at {newest.version:04d}_{newest.name}"
    )


@pytest.mark.anyio
async def test_run_and_check_refuse_when_the_package_has_no_migrations(
    db_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installation without its migrations cannot vouch for any database: fail closed."""
    monkeypatch.setattr(migrations, "default_schema_dir", lambda: tmp_path)
    settings = settings_for(db_url, redis_url)
    refusal = f"no migrations found in {re.escape(str(tmp_path))}$"
    with pytest.raises(MigrationError, match=refusal):
        await App(settings, handle_signals=False).run()
    with pytest.raises(MigrationError, match=refusal):
        await run_checks(settings, 5.0)


# -- replay -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_replay_all_dead_requeues_parked_events(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        bad = insert_position(conn, seed_owner(conn))
    settings = settings_for(db_url, redis_url, max_attempts=2)
    async with running(settings, failing_for({str(bad)})):
        await eventually(lambda: counts(db_url)["dead"] == 1, timeout=20)
    with psycopg.connect(db_url) as conn:
        [(dead_id,)] = conn.execute("SELECT id FROM position_events WHERE dead_at IS NOT NULL")

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(db_url, redis_url, "replay", *args, cwd=tmp_path)

    done = await anyio.to_thread.run_sync(replay, "--all-dead")
    assert (done.returncode, done.stdout.strip()) == (0, f"re-queued 1 event(s): {dead_id}")
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT dead_at, processed_at, attempts, last_error FROM position_events WHERE id = %s",
            (dead_id,),
        ).fetchone()
    assert row == (None, None, 0, None)
    again = await anyio.to_thread.run_sync(replay, "--all-dead")
    assert (again.returncode, again.stdout.strip()) == (0, "re-queued 0 event(s)")
    not_dead = await anyio.to_thread.run_sync(replay, str(dead_id))
    assert not_dead.returncode == 1
    async with running(settings):  # downstream repaired: the replayed event is handled
        await eventually(lambda: counts(db_url) == {"pending": 0, "dead": 0, "events": 1}, 20)


# -- tail ---------------------------------------------------------------------------------


def add_events(redis_url: str, *event_ids: int, stream: str = EVENTS) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [str(client.xadd(stream, xadd_fields(stream_fields(event(n))))) for n in event_ids]
    finally:
        client.close()


def event(event_id: int, new_status: str = "open") -> Event:
    return Event(
        event_id=event_id,
        kind="position",
        position_id="00000000-0000-0000-0000-000000000042",
        user_id="00000000-0000-0000-0000-000000000001",
        symbol="BTCUSDT",
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        old_status="submitting",
        new_status=new_status,
        data={"entry_price": "105.50000000", "failure_reason": "bad\nline \x1b[31m"},
    )


def test_tail_from_start_prints_json_lines(redis_url: str, tmp_path: Path) -> None:
    ids = add_events(redis_url, 11, 12, 13, 14, 15)
    done = cli("", redis_url, "tail", "--count", "3", "--json", "--from-start", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["stream"], e["id"]) for e in lines] == [(EVENTS, i) for i in ids[:3]]
    assert [e["fields"]["event_id"] for e in lines] == ["11", "12", "13"]
    assert lines[0]["fields"]["type"] == "position.open"

    at = cli("", redis_url, "tail", "events", "--from", ids[3], "--count", "2", cwd=tmp_path)
    assert [json.loads(line)["id"] for line in at.stdout.splitlines()] == ids[3:]  # piped: JSON


def test_tail_short_names_and_bad_ids(redis_url: str, tmp_path: Path) -> None:
    [note] = add_events(redis_url, 7, stream="positions:notifications")
    done = cli("", redis_url, "tail", "notifications", "--from-start", "--count", "1", cwd=tmp_path)
    assert json.loads(done.stdout)["id"] == note
    bad = cli("", redis_url, "tail", "--from", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "position-worker: --from: 'yesterday' is not a stream id (like 1718000000000-0)"
    )


def test_tail_stops_on_ctrl_c(redis_url: str, tmp_path: Path) -> None:
    add_events(redis_url, 1, 2)
    with cli_process("", redis_url, "tail", "--from-start", cwd=tmp_path) as (proc, next_line):
        assert [json.loads(next_line(20))["fields"]["event_id"] for _ in range(2)] == ["1", "2"]
        code, err = interrupted(proc)  # while it blocks in XREAD
    assert code == 130
    assert "Traceback" not in err


def test_following_from_now_skips_what_was_there_and_misses_nothing_after(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert start_after(client, EVENTS) == "0-0"  # an empty stream: everything to come
        add_events(redis_url, 1, 2)
        after = start_after(client, EVENTS)  # "now"
        later = add_events(redis_url, 3, 4, 5)
        seen = list(follow(client, EVENTS, after, count=3, block_ms=100))
        assert [e.id for e in seen] == later
        assert [e.fields["event_id"] for e in seen] == ["3", "4", "5"]
    finally:
        client.close()


def test_stream_names_and_ids() -> None:
    streams = StreamSettings()
    assert resolve_stream(None, streams) == "positions:events"
    assert resolve_stream("ai-monitoring", streams) == "positions:ai-monitoring"
    assert resolve_stream("notifications", streams) == "positions:notifications"
    assert resolve_stream("bench:events", streams) == "bench:events"
    assert id_before("1718000000000-5") == "1718000000000-4"
    assert id_before("1718000000000-0") == f"1717999999999-{2**64 - 1}"
    assert id_before("1718000000000") == f"1717999999999-{2**64 - 1}"
    assert id_before("0-0") == "0-0"
    with pytest.raises(TailError):
        id_before("1-x")


def test_a_readable_line_per_entry() -> None:
    entry = Entry(EVENTS, "1718000000000-0", stream_fields(event(42, "failed")))
    plain = as_text(entry, colour=False)
    assert "events #42 position.failed BTCUSDT submitting -> failed" in plain
    assert "entry_price=105.50000000" in plain
    assert "\x1b" not in plain and "\n" not in plain  # a field cannot drive the terminal
    assert r'failure_reason="bad\nline \x1b[31m"' in plain
    coloured = as_text(entry, colour=True)
    assert "\x1b[31mfailed\x1b[0m" in coloured
    note = Entry("positions:notifications", "1718000000000-1", {
        "event_id": "9", "type": "position.failed", "severity": "critical",
        "title": "Exit failed", "message": "BTCUSDT: rejected"})  # fmt: skip
    assert "\x1b[1;31mcritical\x1b[0m Exit failed: BTCUSDT: rejected" in as_text(note, True)
    assert json.loads(as_json(note)) == {
        "stream": "positions:notifications",
        "id": "1718000000000-1",
        "fields": note.fields,
    }


def test_collect_status_on_an_empty_database(db_url: str, redis_url: str) -> None:
    report = collect_status(settings_for(db_url, redis_url))
    assert report["positions"] == {}
    assert report["streams"][EVENTS] == {"length": 0, "groups": {}, "dead_letter": None}


def test_status_on_a_database_without_the_schema_says_what_to_do(
    empty_db_url: str, redis_url: str, tmp_path: Path
) -> None:
    done = cli(empty_db_url, redis_url, "status", cwd=tmp_path)
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "position-worker: the database has no schema yet: run position-worker migrate",
    )


@pytest.mark.anyio
async def test_status_lists_running_workers_and_their_last_reconnect(
    db_url: str, redis_url: str
) -> None:
    from worker.settings import load_settings

    settings = load_settings(environ={"DATABASE_URL": db_url, "REDIS_URL": redis_url})
    app = App(settings_for(db_url, redis_url), handle_signals=False)
    async with anyio.create_task_group() as tg:
        await tg.start(app.run)
        [worker] = await eventually(lambda: collect_status(settings)["workers"], 10)
        assert worker["name"] == app.name and worker["last_reconnect"] is None
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
            )
        reconnected = await eventually(
            lambda: [w for w in collect_status(settings)["workers"] if w["last_reconnect"]], 15
        )
        app.stop()
    assert reconnected[0]["name"] == app.name
