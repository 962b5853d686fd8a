"""`position-worker check` for health probes, and the Prometheus endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.chaos.support import terminate_backends, with_app_name
from tests.pipeline_support import burst, eventually, settings_for, stream_entries
from worker.app import App
from worker.settings import MetricsSettings
from worker.testing.servers import free_port

pytestmark = pytest.mark.anyio


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "check", "--timeout", "3"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_check_passes_when_database_redis_and_listen_notify_work(
    db_url: str, redis_url: str
) -> None:
    result = check({"DATABASE_URL": db_url, "REDIS_URL": redis_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "ok   database", "ok   redis", "ok   listen_notify"]  # fmt: skip


def test_check_fails_when_redis_is_unreachable_and_names_it(db_url: str) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = check({"DATABASE_URL": db_url, "REDIS_URL": dead})
    assert result.returncode == 1
    assert "FAIL redis" in result.stdout
    assert "ok   database" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_check_fails_on_an_unmigrated_database(pg_admin_url: str, empty_db_url: str) -> None:
    result = check({"DATABASE_URL": empty_db_url, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert "run position-worker migrate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


PROCESSED = "position_worker_events_processed_total"
PENDING = "position_worker_outbox_pending"
LAG = "position_worker_outbox_lag_seconds"
RECONNECTS = "position_worker_reconnects_total"
PUBLISH_COUNT = "position_worker_publish_seconds_count"
TO_STREAM_COUNT = "position_worker_commit_to_stream_seconds_count"
TO_STREAM_SUM = "position_worker_commit_to_stream_seconds_sum"
FAILURES = "position_worker_handler_failures_total"
LISTENER = "pw-metrics-listener"  # the application_name of the worker's LISTEN connection


@dataclass(frozen=True)
class Scrape:
    """One scrape of ``/metrics``, parsed by prometheus_client's text parser."""

    samples: tuple[Sample, ...]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` that carry ``labels`` (0 when there is none: a
        labelled counter is exported from its first increment on)."""
        return sum(
            s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()
        )


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return Scrape(tuple(s for f in text_string_to_metric_families(text) for s in f.samples))


async def scraped(port: int, ready: Callable[[Scrape], bool], what: str) -> Scrape:
    """The first scrape for which ``ready`` holds; after 15 s, fails with ``what`` and the
    values it last read."""
    last: list[Scrape] = []

    def check() -> Scrape | None:
        last[:] = [scrape(port)]
        return last[0] if ready(last[0]) else None

    try:
        return await eventually(check, 15)
    except TimeoutError:
        names = (PROCESSED, PENDING, RECONNECTS, TO_STREAM_COUNT)
        read = {n.removeprefix("position_worker_"): last[0].value(n) for n in names if last}
        raise AssertionError(f"{what}: not within 15 s; last scrape {read}") from None


def outbox(db_url: str) -> tuple[int, int]:
    """(events, of which pending) in position_events: the truth the metrics must report."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE processed_at IS NULL) FROM position_events"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def settled(db_url: str, metrics: Scrape) -> bool:
    """Every event is processed, and the metrics say so."""
    events, pending = outbox(db_url)
    return pending == 0 and metrics.value(PROCESSED) == events and metrics.value(PENDING) == 0


def listener_backends(pg_admin_url: str, db_url: str) -> int:
    with psycopg.connect(pg_admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db_url.rsplit("/", 1)[1], LISTENER),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_metrics_report_the_outbox_the_events_processed_and_a_reconnect(
    db_url: str, redis_url: str, pg_admin_url: str
) -> None:
    """The values, not just the names: events held pending are counted as pending and not
    processed; once released, every event is counted processed exactly once (the database's
    count) and pending goes back to 0; cutting the LISTEN connection counts one reconnect."""
    port = free_port()
    base = settings_for(db_url, redis_url)
    settings = replace(
        base,
        metrics=MetricsSettings(port=port, host="127.0.0.1"),
        database=replace(base.database, listen_url=with_app_name(db_url, LISTENER)),
    )
    committed = await anyio.to_thread.run_sync(burst, db_url, 40)
    # Row locks, as a worker's claim takes them: the worker's claims skip these events, so
    # they stay pending (and unpublished) until this transaction ends.
    held = psycopg.connect(db_url)
    app = App(settings, handle_signals=False)
    try:
        locked = held.execute("SELECT id FROM position_events FOR UPDATE").fetchall()
        held_since = time.time()
        assert len(locked) == committed
        async with anyio.create_task_group() as tg:
            await tg.start(app.run)
            try:
                before = await scraped(
                    port, lambda m: m.value(PENDING) == committed, "the held events as pending"
                )
                assert before.value(PROCESSED) == 0
                assert before.value(LAG) > 0
                assert stream_entries(redis_url) == []

                held.rollback()  # released: the worker's next claim takes them
                waited = time.time() - held_since
                after = await scraped(port, lambda m: settled(db_url, m), "all processed")
                events, _ = outbox(db_url)  # the 40, and the handlers' open -> monitoring
                assert after.value(PROCESSED) == events >= committed
                assert after.value(TO_STREAM_COUNT) == events  # one observation per event
                assert after.value(TO_STREAM_SUM) >= committed * waited  # each waited that long
                assert after.value(PUBLISH_COUNT) >= 1
                assert after.value(FAILURES) == 0
                assert after.value(RECONNECTS) == 0

                # The LISTEN connection cut under the worker: it reconnects, and says so once.
                await eventually(lambda: listener_backends(pg_admin_url, db_url) == 1, 10)
                cut = terminate_backends(pg_admin_url, db_url, [LISTENER])
                assert cut[LISTENER] == 1
                reconnected = await scraped(
                    port, lambda m: m.value(RECONNECTS) >= 1, "a reconnect after the cut"
                )
                assert reconnected.value(RECONNECTS, target="listener") == 1
                assert reconnected.value(RECONNECTS) == 1  # nothing else reconnected
                await eventually(lambda: listener_backends(pg_admin_url, db_url) == 1, 10)

                more = await anyio.to_thread.run_sync(burst, db_url, 10, 2)
                final = await scraped(port, lambda m: settled(db_url, m), "all processed again")
                events, _ = outbox(db_url)
                assert final.value(PROCESSED) == events >= committed + more
            finally:
                app.stop()
    finally:
        held.close()
