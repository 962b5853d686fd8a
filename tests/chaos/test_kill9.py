"""kill -9 under continuous load: one worker killed 20 times at seeded random points, and
three workers of which one is killed and restarted over and over.

Each kill lands somewhere between claim, XADD, the handlers and the processed mark (the load
keeps every step busy). Leases are short (1.5 s) so that a dead worker's claim is taken over
quickly; the idempotent publish must then skip what the dead worker already appended.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.chaos.support import Fleet, Load, delivery, outbox_counts, pending
from tests.pipeline_support import assert_exactly_once_in_order, worker_env
from tests.test_helpers_sync import wait_until
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.slow

KILLS = 20


def test_kill_9_twenty_times_under_load_then_a_final_worker_drains_exactly_once(
    db_url: str, redis_url: str, fleet: Fleet, report: Callable[..., str]
) -> None:
    rng = random.Random(20251104)
    env = worker_env(db_url, redis_url, lease_seconds=1.5, batch_size=100)
    load = Load(db_url, rate=400, seed=1).start()
    for _ in range(KILLS):
        proc = fleet.start(env)
        time.sleep(rng.uniform(0.05, 0.8))  # seeded: the same kill points on every run
        proc.kill()
        assert proc.process is not None and proc.process.returncode == -signal.SIGKILL
    committed = load.stop()
    started = time.monotonic()
    final = fleet.start(env)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    recover_s = time.monotonic() - started
    d = delivery(db_url, redis_url)
    _, dead = outbox_counts(db_url)
    # Events whose audit line a killed worker wrote and a later one wrote again: kills that
    # landed between the handlers and the processed mark (the publish was skipped then).
    rehandled = sum(n > 1 for n in sum((_handled(p) for p in fleet.started), Counter()).values())
    report(
        f"kill9x{KILLS}",
        events=d.events,
        lost=d.lost,
        duplicated=d.duplicated,
        dead=dead,
        rehandled=rehandled,
        recover_s=f"{recover_s:.1f}",
    )
    assert (d.lost, d.duplicated, d.foreign, dead) == (0, 0, 0, 0)
    assert d.events >= committed > 0
    assert_exactly_once_in_order(db_url, redis_url)
    assert fleet.alive(final)


def _handled(proc: WorkerProcess) -> Counter[int]:
    """Event ids of this worker's audit-log lines (one line per handled event)."""
    seen: Counter[int] = Counter()
    for line in proc.lines:
        if '"event_id"' in line and (
            '"position_created"' in line or '"position_transitioned"' in line
        ):
            seen[int(json.loads(line)["event_id"])] += 1
    return seen


def test_three_workers_one_killed_and_restarted_repeatedly(
    db_url: str, redis_url: str, fleet: Fleet, report: Callable[..., str]
) -> None:
    rng = random.Random(3)
    env = worker_env(db_url, redis_url, lease_seconds=3.0, batch_size=50)
    steady = [fleet.start(env), fleet.start(env)]
    victim = fleet.start(env)
    load = Load(db_url, rate=500, seed=3).start()
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.2, 1.0))  # seeded random point of the kill
        victim.kill()
        kills += 1
        victim = fleet.start(env)
    committed = load.stop()
    started = time.monotonic()
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    recover_s = time.monotonic() - started
    for proc in [*steady, victim]:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    d = delivery(db_url, redis_url)
    _, dead = outbox_counts(db_url)
    # Two workers that were never killed never handle the same event twice (SKIP LOCKED +
    # leases); the victim's events may be handled again after its death (at-least-once
    # handlers), but never published twice.
    a, b = (_handled(p) for p in steady)
    twice = sum(n > 1 for n in (a + b).values())
    report(
        "3-workers-1-killed",
        events=d.events,
        lost=d.lost,
        duplicated=d.duplicated,
        kills=kills,
        handled_twice=twice,
        recover_s=f"{recover_s:.1f}",
    )
    assert (d.lost, d.duplicated, d.foreign, dead) == (0, 0, 0, 0)
    assert d.events >= committed > 0
    assert twice == 0
    assert a and b, "the steady workers did not share the work"
    assert_exactly_once_in_order(db_url, redis_url)
