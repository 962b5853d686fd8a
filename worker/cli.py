"""The ``position-worker`` command line. Each sub-command's --help has an example."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final

from worker.errors import WorkerError
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
  DATABASE_URL=postgresql://u@db/app position-worker migrate
"""


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.db.migrate import migrate

    applied = migrate(settings.database.url)
    if not applied:
        print("schema is up to date")
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
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
    _add(
        sub,
        "migrate",
        _cmd_migrate,
        "apply pending schema migrations (safe to re-run; concurrent runs are serialized)",
        "position-worker migrate\n  DATABASE_URL=postgresql://postgres@127.0.0.1/app "
        "position-worker migrate",
    )
    return parser


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Command,
    help_text: str,
    example: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


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
