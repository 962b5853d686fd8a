"""``position-worker status``: what an operator looks at first."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import redis
from redis import exceptions as redis_errors

from worker.db.queries import q
from worker.settings import Settings


def collect_status(settings: Settings, dead_limit: int = 20) -> dict[str, Any]:
    """Positions by state, orders in flight, outbox lag, dead events, stream lengths."""
    report: dict[str, Any] = {}
    with psycopg.connect(settings.database.url) as conn:
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
    report["streams"] = _stream_info(settings)
    return report


def _scalar(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(q(name)).fetchone()
    return int(row[0]) if row else 0


def _stream_info(settings: Settings) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=5, decode_responses=True)
    info: dict[str, Any] = {}
    try:
        for stream in (
            settings.streams.events,
            settings.streams.notifications,
            settings.streams.ai_monitoring,
        ):
            groups = client.xinfo_groups(stream) if client.exists(stream) else []
            info[stream] = {
                "length": int(client.xlen(stream)),
                "groups": {
                    g["name"]: {"pending": int(g["pending"]), "lag": g.get("lag")} for g in groups
                },
            }
    except redis_errors.RedisError as exc:
        info["error"] = f"Redis unavailable: {exc}"
    finally:
        client.close()
    return info


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
        groups = ", ".join(f"{g} pending {v['pending']}" for g, v in stream["groups"].items())
        lines.append(
            f"stream {name}: {stream['length']} entries" + (f"; {groups}" if groups else "")
        )
    return "\n".join(lines)


def status_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
