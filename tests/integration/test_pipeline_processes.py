"""The pipeline as operators run it: real `position-worker run` processes, killed,
stopped, multiplied, and their servers restarted under them."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pipeline_support import (
    assert_exactly_once_in_order,
    burst,
    db_event_ids,
    pending,
    stream_entries,
    wait_for_stream,
    worker_env,
)
from tests.waits import wait_until
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        proc = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


class Burst:
    """Commit ``changes`` events from a background thread while the test goes on."""

    def __init__(self, db_url: str, changes: int, seed: int = 7) -> None:
        self.result: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(burst(db_url, changes, seed)), daemon=True
        )
        self.thread.start()

    def join(self, timeout: float = 120) -> int:
        self.thread.join(timeout)
        assert self.result, "the load generator did not finish"
        return self.result[0]


def handled_event_ids(procs: list[WorkerProcess]) -> Counter[int]:
    """Event ids in the audit-log lines of these workers (one line per handled event)."""
    names = ('"position_created"', '"position_transitioned"')
    seen: Counter[int] = Counter()
    for proc in procs:
        for line in proc.lines:
            if any(n in line for n in names):
                seen[int(json.loads(line)["event_id"])] += 1
    return seen


async def test_sigkill_mid_burst_then_restart_publishes_every_event_once(
    db_url: str, redis_url: str, workers: Callable[[dict[str, str]], WorkerProcess]
) -> None:
    env = worker_env(db_url, redis_url, lease_seconds=2.0, batch_size=100)
    first = workers(env)
    load = Burst(db_url, 5000)
    await wait_for_stream(redis_url, 1500, timeout=60)
    first.kill()  # SIGKILL, somewhere between claim, XADD and mark_processed
    assert first.process is not None and first.process.returncode == -signal.SIGKILL
    committed = load.join()
    workers(env)
    wait_until(lambda: pending(db_url) == 0, timeout=90)
    entries = assert_exactly_once_in_order(db_url, redis_url)
    assert len(entries) >= committed >= 5000


async def test_three_workers_share_the_work_and_handle_each_event_once(
    db_url: str, redis_url: str, workers: Callable[[dict[str, str]], WorkerProcess]
) -> None:
    env = worker_env(db_url, redis_url, batch_size=50)
    procs = [workers(env) for _ in range(3)]
    committed = Burst(db_url, 3000, seed=3).join()
    wait_until(lambda: pending(db_url) == 0, timeout=90)
    for proc in procs:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert_exactly_once_in_order(db_url, redis_url)
    handled = handled_event_ids(procs)
    position_events = [
        int(e["event_id"]) for e in stream_entries(redis_url) if e["kind"] == "position"
    ]
    assert len(position_events) >= committed
    assert [i for i, n in handled.items() if n > 1] == []
    assert set(handled) == set(position_events)
    busy = [p for p in procs if any('"position_transitioned"' in line for line in p.lines)]
    assert len(busy) >= 2, "the work was not shared"


async def test_sigterm_mid_burst_exits_zero_and_the_next_start_finishes(
    db_url: str, redis_url: str, workers: Callable[[dict[str, str]], WorkerProcess]
) -> None:
    env = worker_env(db_url, redis_url, batch_size=100)
    first = workers(env)
    load = Burst(db_url, 3000, seed=5)
    await wait_for_stream(redis_url, 500, timeout=60)
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert first.logged("worker_stopped") == 1
    load.join()
    assert pending(db_url) > 0, "the burst should outlast the first worker"
    workers(env)
    wait_until(lambda: pending(db_url) == 0, timeout=90)
    assert_exactly_once_in_order(db_url, redis_url)


async def test_worker_survives_postgres_restart(
    db_url: str,
    redis_url: str,
    workers: Callable[[dict[str, str]], WorkerProcess],
    restart_postgres: Callable[[], None],
) -> None:
    proc = workers(worker_env(db_url, redis_url))
    before = burst(db_url, 200)
    await wait_for_stream(redis_url, before, timeout=30)
    restart_postgres()
    after = burst(db_url, 200, seed=11)  # committed once the server is back
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    assert_exactly_once_in_order(db_url, redis_url)
    assert len(db_event_ids(db_url)) >= before + after
    assert proc.process is not None and proc.process.poll() is None, "the worker died"
    assert proc.logged("listener_reconnecting") >= 1


async def test_worker_survives_redis_restart(
    db_url: str,
    redis_url: str,
    workers: Callable[[dict[str, str]], WorkerProcess],
    restart_redis: Callable[[], None],
) -> None:
    proc = workers(worker_env(db_url, redis_url))
    before = burst(db_url, 200)
    await wait_for_stream(redis_url, before, timeout=30)
    restart_redis()  # keeps nothing on disk: the streams start empty again
    assert stream_entries(redis_url) == []
    first_after = max(db_event_ids(db_url)) + 1
    burst(db_url, 200, seed=13)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    ids = [int(e["event_id"]) for e in stream_entries(redis_url)]
    expected = [i for i in db_event_ids(db_url) if i >= first_after]
    assert len(ids) == len(set(ids))
    assert set(expected) <= set(ids)
    assert proc.process is not None and proc.process.poll() is None, "the worker died"


def test_a_worker_logging_to_a_file_is_started_only_once_it_says_so(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The benchmark's workers log straight to a file that earlier runs appended to: a
    start must wait for its own ``worker_started`` line, not find the previous one."""
    log = tmp_path / "worker.log"
    env = worker_env(db_url, redis_url)
    first = WorkerProcess(env, log, keep_lines=False).start()
    assert first.logged("worker_started") == 1
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    second = WorkerProcess(env, log, keep_lines=False).start()
    try:
        assert second.logged("worker_started") == 2
        burst(db_url, 20)
        # the AI-monitoring handler adds events of its own: wait for the outbox, the truth
        wait_until(lambda: pending(db_url) == 0, timeout=20)
    finally:
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    assert second.logged("worker_stopped") == 2  # both runs' lines, in the one file
    assert_exactly_once_in_order(db_url, redis_url)
