"""``position-worker status``: what an operator looks at first.

The report is read from PostgreSQL and Redis only. The time of a worker's last reconnect is
not among it: only the worker process knows it (the ``listener_reconnecting`` log line and
the ``position_worker_reconnects`` metric carry it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import psycopg
import redis
from redis import exceptions as redis_errors

from worker.db.queries import q
from worker.errors import DatabaseUnavailable, WorkerError
from worker.redact import mask_secrets
from worker.settings import Settings

CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"  # cursor home, erase the screen


def collect_status(settings: Settings, dead_limit: int = 20) -> dict[str, Any]:
    """Positions by state, orders in flight, outbox lag, dead events, streams and groups."""
    report: dict[str, Any] = {"collected_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        report.update(_database_status(settings, dead_limit))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {str(exc).strip()}") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise WorkerError("the database has no schema yet: run position-worker migrate") from exc
    report["streams"] = _stream_info(settings)
    report["workers"] = _workers(settings)
    return report


def _workers(settings: Settings) -> list[dict[str, Any]]:
    """Live workers from their Redis heartbeats (``pw:worker:<name>``), with last reconnect."""
    client = _redis(settings)
    workers: list[dict[str, Any]] = []
    try:
        for key in sorted(client.scan_iter(match="pw:worker:*", count=100)):
            beat: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]
            workers.append(
                {
                    "name": key.removeprefix("pw:worker:"),
                    "started_at": _iso(beat.get("started_at")),
                    "last_reconnect": _iso(beat.get("last_reconnect")),
                    "processed": int(beat.get("processed") or 0),
                }
            )
    except redis.RedisError:
        return []
    finally:
        client.close()
    return workers


def _iso(epoch: str | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")


def _database_status(settings: Settings, dead_limit: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with psycopg.connect(settings.database.url, connect_timeout=10) as conn:
        report["positions"] = {s: int(n) for s, n in conn.execute(q("positions_by_status"))}
        report["orders_in_flight"] = _scalar(conn, "orders_in_flight")
        lag = conn.execute(q("outbox_lag")).fetchone()
        report["outbox"] = {
            "lag_seconds": round(float(lag[0]), 3) if lag else 0.0,
            "pending": int(lag[1]) if lag else 0,
            "dead": _scalar(conn, "dead_count"),
        }
        rows = conn.execute(q("dead_events"), {"limit": dead_limit}).fetchall()
        report["dead_events"] = [
            {
                "event_id": int(r[0]),
                "kind": r[1],
                "position_id": str(r[2]),
                "old_status": r[3],
                "new_status": r[4],
                "attempts": int(r[5]),
                "last_error": r[6],
                "dead_at": r[7].isoformat(),
            }
            for r in rows
        ]
    return report


def _scalar(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(q(name)).fetchone()
    return int(row[0]) if row else 0


def _redis(settings: Settings) -> redis.Redis | redis.RedisCluster:
    """A synchronous client: the whole cluster when ``redis.cluster`` is set (keys of other
    nodes' slots are reached through it), else the one server."""
    factory = redis.RedisCluster if settings.redis.cluster else redis.Redis
    return factory.from_url(settings.redis.url, socket_timeout=5, decode_responses=True)


def _stream_info(settings: Settings) -> dict[str, Any]:
    client = _redis(settings)
    info: dict[str, Any] = {}
    try:
        for stream in (
            settings.streams.events,
            settings.streams.notifications,
            settings.streams.ai_monitoring,
        ):
            info[stream] = _one_stream(client, stream)
    except redis_errors.RedisError as exc:
        info["error"] = f"Redis unavailable: {exc}"
    finally:
        client.close()
    return info


def _one_stream(client: redis.Redis | redis.RedisCluster, stream: str) -> dict[str, Any]:
    """Length, each consumer group's pending count, and the ``<stream>:dead`` length if any."""
    groups = client.xinfo_groups(stream) if client.exists(stream) else []
    dead_letter = f"{stream}:dead"
    return {
        "length": int(client.xlen(stream)),
        "groups": {
            g["name"]: {
                "pending": int(g["pending"]),
                "consumers": int(g["consumers"]),
                "lag": None if g.get("lag") is None else int(g["lag"]),
            }
            for g in groups
        },
        "dead_letter": (
            {"stream": dead_letter, "length": int(client.xlen(dead_letter))}
            if client.exists(dead_letter)
            else None
        ),
    }


def render_status(report: dict[str, Any]) -> str:
    lines = [
        "positions:  " + (", ".join(f"{k} {v}" for k, v in report["positions"].items()) or "none")
    ]
    lines.append(f"orders in flight: {report['orders_in_flight']}")
    box = report["outbox"]
    lines.append(
        f"outbox: {box['pending']} pending, oldest {box['lag_seconds']} s, {box['dead']} dead"
    )
    for dead in report["dead_events"]:
        lines.append(
            f"  dead event {dead['event_id']} ({dead['kind']} {dead['old_status']}"
            f" -> {dead['new_status']}, {dead['attempts']} attempts): "
            f"{dead['last_error']}"
        )
    for name, stream in report["streams"].items():
        if name == "error":
            lines.append(f"streams: {stream}")
            continue
        lines.append(f"stream {name}: {stream['length']} entries")
        for group, g in stream["groups"].items():
            lag = "" if g["lag"] is None else f", lag {g['lag']}"
            lines.append(
                f"  group {group}: {g['pending']} pending{lag}, {g['consumers']} consumer(s)"
            )
        if stream["dead_letter"]:
            dead = stream["dead_letter"]
            lines.append(f"  dead-letter stream {dead['stream']}: {dead['length']} entries")
    workers = report.get("workers", [])
    lines.append(f"workers: {len(workers)} running" if workers else "workers: none seen")
    for w in workers:
        reconnect = w["last_reconnect"] or "never"
        lines.append(
            f"  {w['name']}: since {w['started_at']}, {w['processed']} events,"
            f" last reconnect {reconnect}"
        )
    return "\n".join(lines)


def status_json(report: dict[str, Any], compact: bool = False) -> str:
    if compact:
        return json.dumps(report, sort_keys=True)
    return json.dumps(report, indent=2, sort_keys=True)


def watch_status(
    settings: Settings,
    interval: float,
    as_json: bool,
    out: TextIO,
    *,
    refreshes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the report every ``interval`` seconds until Ctrl-C (or ``refreshes`` times).

    On a terminal the screen is redrawn in place; elsewhere each report follows a separator
    line, and with ``as_json`` each report is one JSON line. A database that is down is
    shown as such and the watch goes on.
    """
    if interval <= 0:
        raise WorkerError("--interval must be a positive number of seconds")
    done = 0
    while refreshes is None or done < refreshes:
        out.write(_refresh(settings, interval, as_json, out.isatty(), first=done == 0))
        out.flush()
        done += 1
        if refreshes is None or done < refreshes:
            sleep(interval)


def _refresh(settings: Settings, interval: float, as_json: bool, tty: bool, first: bool) -> str:
    """One report as the watch prints it."""
    try:
        report = collect_status(settings)
    except WorkerError as exc:
        error = f"status unavailable: {mask_secrets(str(exc))}"
        report = {"collected_at": datetime.now(UTC).isoformat(timespec="seconds"), "error": error}
    if as_json:
        return status_json(report, compact=True) + "\n"
    body = report.get("error") or render_status(report)
    if tty:
        head = f"position-worker status every {interval:g} s, {report['collected_at']}"
        return f"{CLEAR_SCREEN}{head} (Ctrl-C to stop)\n\n{body}\n"
    separator = f"--- status at {report['collected_at']} ---"
    return ("" if first else "\n") + f"{separator}\n{body}\n"
