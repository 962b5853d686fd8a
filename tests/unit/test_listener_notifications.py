"""What the listener makes of a ``position_state_change`` payload: every notification is a
wake-up, and one of a position inserted (``old_status`` null, schema/0003's trigger) is
also told to the dispatcher as a new position, whose first event no claim holds yet. A
payload is the user's to write (hostile): a malformed one is only a wake-up."""

from __future__ import annotations

import orjson
import pytest
import structlog

from worker.metrics import Metrics
from worker.pipeline.listener import STATE_CHANNEL, WAKEUP_CHANNEL, Listener


def payload(old_status: str | None, new_status: str) -> str:
    doc = {
        "position_id": "9f0c1d2e-0000-4000-8000-000000000001",
        "old_status": old_status,
        "new_status": new_status,
        "user_id": "9f0c1d2e-0000-4000-8000-000000000002",
        "symbol": "BTCUSDT",
    }
    return orjson.dumps(doc).decode()


@pytest.mark.parametrize(
    ("channel", "body", "new"),
    [
        (STATE_CHANNEL, payload(None, "created"), True),
        (STATE_CHANNEL, payload("created", "submitting"), False),
        (STATE_CHANNEL, payload("monitoring", "closing"), False),
        (STATE_CHANNEL, '{"old_status": null}', False),  # malformed: the other keys lack
        (STATE_CHANNEL, "not json", False),
        (WAKEUP_CHANNEL, "", False),  # orders, trades, requests: no payload
    ],
)
def test_a_notification_wakes_and_only_a_new_positions_says_so(
    channel: str, body: str, new: bool
) -> None:
    calls: list[str] = []
    listener = Listener(
        "postgresql://unused",  # never connected: _handle reads the payload only
        lambda: calls.append("wake"),
        log=structlog.get_logger(),
        metrics=Metrics(),
        probe_after=1.0,
        reconnect_max=1.0,
        on_new_position=lambda: calls.append("new"),
    )
    listener._handle(channel, body)
    assert calls == (["new", "wake"] if new else ["wake"])
