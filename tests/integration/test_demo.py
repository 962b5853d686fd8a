"""The demo plays its session and its summary matches hand-computed figures."""

from __future__ import annotations

import io
from decimal import Decimal

from worker.ops.demo import run_demo

D = Decimal


def test_demo_summary_matches_hand_computed_figures(db_url: str, redis_url: str) -> None:
    out = io.StringIO()
    rows = {r["symbol"]: r for r in run_demo(False, out, db_url=db_url, redis_url=redis_url)}
    btc, eth, sol, bnb = rows["BTCUSDT"], rows["ETHUSDT"], rows["SOLUSDT"], rows["BNBUSDT"]
    # the accounting worked example: buy 0.5@100, buy 0.5@110, sell 0.4@120, sell 0.6@90
    assert (btc["status"], btc["entry_price"], btc["exit_price"]) == ("closed", D(105), D(102))
    assert (btc["realized_pnl"], btc["realized_pnl_percent"]) == (D("-3.207"), D("-3.0512"))
    assert btc["fees_paid"] == D("0.207")
    # short 2 @ 3000 (fee 6), take-profit: buy back 2 @ 2690 (fee 5.38)
    assert (eth["status"], eth["close_reason"]) == ("closed", "take_profit")
    assert (eth["realized_pnl"], eth["realized_pnl_percent"]) == (D("608.62"), D("10.1335"))
    # long 10 @ 150 (fee 1.5), stop-loss at 140 fires when the price is 138 (fee 1.38)
    assert (sol["status"], sol["close_reason"]) == ("closed", "stop_loss")
    assert (sol["realized_pnl"], sol["realized_pnl_percent"]) == (D("-122.88"), D("-8.1838"))
    # short 1 BNB the user does not hold: refused by the exchange as Binance refuses it
    assert bnb["status"] == "failed" and "-2010" in bnb["failure_reason"]
    assert "insufficient balance" in bnb["failure_reason"]
    text = out.getvalue()
    assert "Summary (USDT)" in text
    assert "[notifications] critical" not in text
    # the paper account: 10,000 USDT + the three PnLs (fees in USDT), its 2 ETH back
    assert "Paper balances of the demo user: 2 ETH, 10482.533 USDT" in text
    for shown in ("position.closed", "trade.recorded", "request.exit", "monitoring.start",
                  "-3.0512", "608.62", "-122.88"):  # fmt: skip
        assert shown in text


def _server_pids() -> set[int]:
    import subprocess

    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:]
            if ("pw-pg-" in line or "valkey-server" in line) and "defunct" not in line}  # fmt: skip


def test_ctrl_c_during_the_demo_exits_130_and_leaves_no_server_behind() -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.waits import wait_until

    before = _server_pids()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "demo"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt once the session is under way
        if "user opens" in line:
            break
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    wait_until(lambda: _server_pids() <= before, timeout=15)
