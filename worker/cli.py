"""The ``position-worker`` command line. Each sub-command's --help has an example."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from worker.errors import WorkerError
from worker.logs import configure_logging
from worker.redact import mask_secrets
from worker.settings import Settings, load_settings

DESCRIPTION: Final = """\
position-worker: the trade-execution back end of the trading platform.

It keeps positions, orders and fills in PostgreSQL (schema/), listens for position state
changes, publishes every event to Redis Streams and drives orders on the exchange.

Configuration comes from config.toml (or --config / $POSITION_WORKER_CONFIG), overridden by
DATABASE_URL, REDIS_URL and POSITION_WORKER__SECTION__KEY variables.
See config.example.toml for every key.
"""

EPILOG: Final = """\
examples:
  position-worker migrate                 create or upgrade the schema
  position-worker run                     the daemon (Procfile: worker)
  position-worker check                   health probe for supervisors
  position-worker status                  what an operator looks at first
  position-worker tail notifications      follow a stream as entries arrive
  position-worker replay --all-dead       re-queue parked events
  position-worker refresh-symbols         paper symbols' rules from Binance, cached
"""


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """apply pending schema migrations (safe to re-run; concurrent runs are serialized)

    example:
      position-worker migrate
      DATABASE_URL=postgresql://postgres@127.0.0.1/app position-worker migrate
    """
    from worker.db.migrate import migrate

    applied = migrate(settings.database.url)
    if not applied:
        print("schema is up to date")
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    return 0


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """run the worker: listen, publish every event to Redis Streams, run the handlers
    (SIGTERM/SIGINT stop it gracefully); a database whose schema is not the one this
    worker needs is refused with one line and exit 2

    example:
      position-worker run
      DATABASE_URL=postgresql://u@db:5432/app REDIS_URL=redis://cache position-worker run
    """
    import anyio

    from worker.app import App

    configure_logging(settings.log.level, settings.log.format)
    anyio.run(App(settings).run)
    return 0


def _cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """health probe: exit 0 only when the database, Redis and a LISTEN/NOTIFY round trip
    work; exit 2 with one line, as run, when the database's schema is not the one this
    worker needs (run migrate, or upgrade the worker)

    example:
      position-worker check && echo healthy
    """
    import anyio

    from worker.ops.check import run_checks

    results = anyio.run(run_checks, settings, args.timeout)
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {result.name}: {mask_secrets(result.detail)}")
    return 0 if all(r.ok for r in results) else 1


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """positions by state, orders in flight, outbox lag, dead events, streams and their
    consumer groups (pending entries, dead-letter streams)

    example:
      position-worker status
      position-worker status --json | jq .outbox
      position-worker status --watch --interval 5
    """
    from worker.ops.status import collect_status, render_status, status_json, watch_status

    if args.watch:
        watch_status(settings, args.interval, args.json, sys.stdout)
        return 0
    report = collect_status(settings)
    print(status_json(report) if args.json else render_status(report))
    return 0


def _cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    """follow a stream and print its entries as they arrive: one coloured line each on a
    terminal, JSON lines otherwise

    example:
      position-worker tail                      # positions:events, new entries only
      position-worker tail notifications --from-start
      position-worker tail events --json | jq -r .fields.type
      position-worker tail positions:events --from 1718000000000-0 --count 20
    """
    from worker.ops.tail import run_tail

    return run_tail(
        settings,
        args.stream,
        from_id=args.from_id,
        from_start=args.from_start,
        count=args.count,
        force_json=args.json,
    )


def _cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """re-queue parked (dead) events so the workers handle them again

    example:
      position-worker replay 1234
      position-worker replay --all-dead
    """
    import anyio

    from worker.ops.replay import replay_events

    if args.event_id is None and not args.all_dead:
        print("position-worker replay: give an EVENT_ID or --all-dead", file=sys.stderr)
        return 2
    ids = anyio.run(replay_events, settings, None if args.all_dead else args.event_id)
    print(f"re-queued {len(ids)} event(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return 0 if ids or args.all_dead else 1


def _cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """benchmark: NOTIFY ceiling vs a naive listener vs the worker (1 and 3 processes),
    throughput, latency at fixed rates, backlog drain; embedded servers unless
    DATABASE_URL/REDIS_URL are set (it creates its own databases and bench: streams);
    prints the report, and writes the results as JSON (and a plot, SVG) only with --out;
    --paper-only: 10,000 paper orders instead, memory and time per 1,000

    example:
      position-worker bench --quick
      position-worker bench --out bench-results.json
      position-worker bench --paper-only
      position-worker bench --binance-only   # protected positions, fills, on the fake Binance
      position-worker bench --execution-only
      position-worker bench --execution-only --worker-python ../baseline/.venv/bin/python
    """
    from pathlib import Path

    from worker.ops.bench import run_bench, run_paper_only, write_json
    from worker.ops.bench_plot import svg_path_for, write_svg
    from worker.ops.bench_report import render

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    if args.paper_only:
        print(run_paper_only(os.environ.get("DATABASE_URL"), say))
        return 0

    if args.binance_only:
        return _bench_binance(args.quick, say)

    execution = "only" if args.execution_only else "also" if args.execution else "off"
    if execution != "off":  # the reconciliation phase's worker runs in this process
        configure_logging("error", "console")  # the report, not every fill it records
    results = run_bench(
        os.environ.get("DATABASE_URL"),
        os.environ.get("REDIS_URL"),
        args.quick,
        say,
        execution=execution,
        worker_python=args.worker_python,
        keep_logs=args.keep_logs,
    )
    print(render(results))
    if args.out is not None:
        write_json(results, Path(args.out))
        if "fixed_rate" not in results:  # --execution-only: nothing the plot shows
            print(f"\nwritten to {args.out}")
            return 0
        plot = svg_path_for(Path(args.out))
        write_svg(results, plot)
        print(f"\nwritten to {args.out} (plot: {plot})")
    return 0


def _bench_binance(quick: bool, say: Callable[[str], None]) -> int:
    """The Binance phase alone: protected positions, then fills of resting orders, on the
    fake Binance (embedded servers unless DATABASE_URL/REDIS_URL are set; databases of its
    own either way)."""
    from worker.logs import configure_logging
    from worker.ops.bench_binance import run_binance_bench
    from worker.ops.demo import demo_servers

    configure_logging("error", "console")
    positions, steady_s, fills = (20, 30.0, 50) if quick else (50, 120.0, 200)
    env_db, env_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    with demo_servers(False, say, env_db, env_redis) as (db, rd):
        print(run_binance_bench(db, rd, positions, steady_s, say, fills).render())
    return 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """play a short session end to end on embedded PostgreSQL and Redis (no setup needed;
    uses DATABASE_URL/REDIS_URL instead when set)

    example:
      position-worker demo
      position-worker demo --keep   # leave the servers up, print URLs
    """
    from worker.ops.demo import run_demo

    run_demo(keep=args.keep)
    return 0


def _cmd_secrets_key(settings: Settings, args: argparse.Namespace) -> int:
    """print a new key for POSITION_WORKER_SECRETS_KEY (32 random bytes, base64), which
    seals users' exchange-account secrets where the database has no Supabase Vault; keep it
    in the worker's secret store, never in the database or the repository

    example:
      position-worker secrets-key
      # rotation: new key first, the old one after it, until every secret is sealed anew
      POSITION_WORKER_SECRETS_KEY="$(position-worker secrets-key),$OLD_KEY"
    """
    from worker.sealing import new_key

    print(new_key())
    return 0


def _cmd_refresh_symbols(settings: Settings, args: argparse.Namespace) -> int:
    """fetch every TRADING spot symbol's rules from Binance's public exchangeInfo (no key)
    into the paper exchange's cache, or with --out write a new snapshot file (maintainers:
    worker/exchanges/data/exchange_info.json.gz); offline: one line, exit 2, and the worker
    goes on with its cache or the shipped snapshot

    example:
      position-worker refresh-symbols
      position-worker refresh-symbols --out worker/exchanges/data/exchange_info.json.gz
    """
    from pathlib import Path

    import anyio

    from worker.exchanges.paper import symbols_from_settings
    from worker.exchanges.symbols import SymbolSource

    configured = symbols_from_settings(settings)
    source = SymbolSource(
        base_url=settings.binance.base_url,
        cache_dir=configured.cache_file.parent if configured.cache_file else None,
        timeout_s=settings.binance.timeout_seconds,
    )
    out = Path(args.out) if args.out else None
    table = anyio.run(source.refresh, out)
    where = out or source.cache_file
    print(f"{len(table)} TRADING symbols from {table.origin['url']} written to {where}")
    return 0


Command = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="position-worker",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="TOML settings file (optional)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add(sub, "migrate", _cmd_migrate)
    _add(sub, "run", _cmd_run)
    check = _add(sub, "check", _cmd_check)
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    status = _add(sub, "status", _cmd_status)
    _flag(status, "--json", "machine-readable output")
    _flag(
        status,
        "--watch",
        "refresh until Ctrl-C: in place on a terminal, reports one after the other "
        "elsewhere (one JSON line each with --json)",
    )
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    tail = _add(sub, "tail", _cmd_tail)
    tail.add_argument(
        "stream",
        nargs="?",
        metavar="STREAM",
        help="events (default), notifications, ai-monitoring, or a full stream key",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from", dest="from_id", metavar="ID", help="start at this entry id (default: now)"
    )
    _flag(start, "--from-start", "start at the first entry")
    tail.add_argument("--count", type=int, metavar="N", help="stop after N entries")
    _flag(tail, "--json", "JSON lines, even on a terminal")
    replay = _add(sub, "replay", _cmd_replay)
    replay.add_argument("event_id", nargs="?", type=int, help="the event id to re-queue")
    _flag(replay, "--all-dead", "re-queue every dead event")
    _add(sub, "secrets-key", _cmd_secrets_key)
    refresh = _add(sub, "refresh-symbols", _cmd_refresh_symbols)
    refresh.add_argument(
        "--out",
        metavar="PATH",
        help="write a snapshot to PATH (gzip when it ends in .gz) instead of the cache",
    )
    demo = _add(sub, "demo", _cmd_demo)
    _flag(demo, "--keep", "leave the servers running")
    bench = _add(sub, "bench", _cmd_bench)
    _flag(bench, "--quick", "small run (< 1 min), for CI")
    _flag(bench, "--paper-only", "only the paper orders bench: 10,000 orders, memory and time")
    _flag(
        bench,
        "--binance-only",
        "only the Binance phase: REST weight per protected position per minute and how many"
        " positions the exchange protects on one symbol, then the fill-to-database latency"
        " of resting orders over the user data stream and with it off, against the fake"
        " Binance",
    )
    _flag(bench, "--execution", "also measure execution: paper bursts, 1 and 3 workers, fairness")
    _flag(bench, "--execution-only", "measure the commit ceiling and execution only")
    bench.add_argument(
        "--worker-python",
        metavar="PATH",
        help="run the workers with this interpreter (another checkout's venv: a baseline);"
        " its own migrate makes the bench databases",
    )
    _flag(bench, "--keep-logs", "keep the workers' logs (their directory is printed at the end)")
    bench.add_argument(
        "--out",
        metavar="PATH",
        help="also write the results as JSON to PATH and their plot beside it as SVG "
        "(PATH with .svg; directories created; default: no file)",
    )
    return parser


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Command
) -> argparse.ArgumentParser:
    """The sub-command ``name``, run by ``func``: its docstring is the help (first
    paragraph) and the examples (after ``example:``)."""
    help_text, _, example = inspect.cleandoc(func.__doc__ or "").partition("\n\nexample:\n")
    parser = sub.add_parser(
        name,
        help=" ".join(help_text.split()),
        description=" ".join(help_text.split()),
        epilog="example:\n" + "".join(f"{line}\n" for line in example.splitlines()).rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _flag(parser: argparse._ActionsContainer, name: str, help_text: str) -> None:
    """An option that is off unless given."""
    parser.add_argument(name, action="store_true", help=help_text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        result: int = args.func(settings, args)
        return result
    except WorkerError as exc:
        print(f"position-worker: {mask_secrets(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
