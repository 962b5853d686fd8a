"""`position-worker check` for health probes, and the Prometheus endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import replace

import anyio
import psycopg
import pytest

from tests.pipeline_support import burst, eventually, settings_for, wait_for_stream
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


async def test_metrics_endpoint_exposes_pipeline_counters(db_url: str, redis_url: str) -> None:
    port = free_port()
    base = settings_for(db_url, redis_url)
    settings = replace(base, metrics=MetricsSettings(port=port, host="127.0.0.1"))
    app = App(settings, handle_signals=False)
    async with anyio.create_task_group() as tg:
        await tg.start(app.run)
        committed = await anyio.to_thread.run_sync(burst, db_url, 40)
        await wait_for_stream(redis_url, committed, timeout=20)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        def processed(text: str) -> float:
            return sum(
                float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("position_worker_events_processed_total{")
            )  # fmt: skip

        def settled() -> str:
            text = scrape()
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT count(*) FROM position_events").fetchone()
            done = row is not None and processed(text) == row[0]
            return text if done and "position_worker_outbox_lag_seconds" in text else ""

        text = await eventually(settled, 10)
        app.stop()
    assert processed(text) >= committed
    for name in ("position_worker_handler_failures", "position_worker_reconnects",
                 "position_worker_publish_seconds_bucket",
                 "position_worker_commit_to_stream_seconds_bucket",
                 "position_worker_outbox_pending"):  # fmt: skip
        assert name in text
