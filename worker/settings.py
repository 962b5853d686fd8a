"""Settings: one frozen object, built once at start-up.

Sources, lowest to highest precedence:

1. defaults (below; ``config.example.toml`` documents every key);
2. a TOML file: ``--config PATH``, else ``$POSITION_WORKER_CONFIG``, else ``./config.toml``
   when it exists (the file is optional);
3. the environment: ``DATABASE_URL`` and ``REDIS_URL`` (as Heroku-style platforms set them),
   and ``POSITION_WORKER__SECTION__KEY`` for any other key
   (e.g. ``POSITION_WORKER__PIPELINE__BATCH_SIZE=200``).

An unknown key or a bad value raises :class:`SettingsError` with a one-line message that
names the key, e.g. ``config: pipeline.batch_size must be an integer >= 1, got 'abc'``.

Over 300 lines on purpose: every key, its default and its validation in one place, in step
with config.example.toml (a test checks that they agree).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from worker.errors import SettingsError
from worker.redact import mask_secrets

ENV_PREFIX: Final = "POSITION_WORKER__"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # The LISTEN connection must reach PostgreSQL directly (not a transaction pooler such as
    # Supabase's port 6543). Empty = use ``url``.
    listen_url: str = ""
    pool_min_size: int = 2
    pool_max_size: int = 20
    connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    # Redis Cluster (a managed Redis in cluster mode): ``url`` names any one node; the client
    # discovers the others. The URL must use database 0 (or name none), and a stream name
    # must have no braces, or a non-empty hash tag ``{...}``.
    cluster: bool = False


@dataclass(frozen=True, slots=True)
class StreamSettings:
    events: str = "positions:events"
    ai_monitoring: str = "positions:ai-monitoring"
    notifications: str = "positions:notifications"
    maxlen: int = 1_000_000  # approximate trim (MAXLEN ~) per stream
    dedupe_ttl_seconds: int = 7 * 24 * 3600  # how long a published event id is remembered


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    batch_size: int = 500  # events claimed per round trip
    concurrency: int = 2  # batches in flight at once per process (overlaps DB and Redis)
    # positions handled at once per process (at most database.pool_max_size - 2), and of
    # those at most this many of one user's: one user's flood cannot take every slot
    position_concurrency: int = 16
    user_concurrency: int = 4
    # handlers that take many events at once do (a claim's entries, its requests: one
    # transaction for all); false: every event is handled one by one
    batch_handlers: bool = True
    # after this long (from the start of the batch's handlers) a batch starts none of a
    # user's positions beyond their first user_concurrency, nor a position's later event
    # with a slow handler (0: no limit): those go back to the outbox at its commit, and the
    # next claim takes them in turn with other users' events
    batch_budget_seconds: float = 0.1
    lease_seconds: float = 30.0  # a claim idle this long (hung worker) is ended by PostgreSQL
    poll_interval: float = 2.0  # drain even without a wake-up, every this many seconds
    linger_seconds: float = 0.005  # under a steady stream, claim at most this often (0: off)
    probe_after: float = 15.0  # probe a listener that has been quiet this long
    max_attempts: int = 5  # handler failures before an event is parked as dead
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    reconnect_max_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    enabled: bool = True  # drive positions through the exchanges (off: pipeline only)
    reconcile_interval: float = 2.0  # seconds between passes over orders in flight
    reconcile_grace_seconds: float = 10.0  # leave a fresh order to the actor sending it
    missing_lookups_before_resend: int = 3  # an order must be missing this often to re-send
    lost_order_seconds: float = 300.0  # an acknowledged order unknown this long is lost
    open_orders_interval: float = 10.0  # seconds between listings of an account's open orders


@dataclass(frozen=True, slots=True)
class PaperSettings:
    feed: str = "synthetic"  # synthetic | binance (public market data)
    seed: int = 7  # synthetic feed: same seed, same prices
    tick_seconds: float = 1.0  # synthetic feed: one random-walk step this often
    taker_fee: Decimal = Decimal("0.001")  # fraction of the fill value
    maker_fee: Decimal = Decimal("0.001")
    fee_asset: str = "quote"  # quote | base | BNB: which asset pays the fee
    slippage_bps: Decimal = Decimal("5")  # market orders fill this much worse
    partial_fills: int = 1  # split each fill into this many parts
    # -- symbols, book and feed (README: Paper trading) --
    bnb_discount: Decimal = Decimal("0.25")  # fee_asset BNB: this fraction off (Binance's)
    spread_bps: Decimal = Decimal("2")  # synthetic feed: bid and ask this far apart
    depth_quote: Decimal = Decimal("0")  # quote value per book level; 0 = unlimited
    stale_after_seconds: float = 30.0  # no price this long: new orders wait; 0 = never
    stream_url: str = "wss://stream.binance.com:9443"  # feed binance: public market streams
    rest_refresh_seconds: float = 1.0  # feed binance, stream silent: re-read REST this often
    symbols: str = "auto"  # auto (cache, Binance, snapshot) | snapshot (shipped only)
    symbols_cache_ttl_seconds: float = 86400.0  # refetch exchangeInfo after this long
    symbols_cache_dir: str = ""  # "" = $XDG_CACHE_HOME/position-worker (~/.cache/...)
    # every user's paper balances when they first trade on paper (asset -> amount)
    starting_balances: dict[str, Decimal] = field(
        default_factory=lambda: {"USDT": Decimal("10000")}
    )


@dataclass(frozen=True, slots=True)
class BinanceSettings:
    # Users' accounts say which of the two they trade: exchange 'binance' or 'binance_testnet'.
    base_url: str = "https://api.binance.com"
    testnet_base_url: str = "https://testnet.binance.vision"
    recv_window_ms: int = 5000
    timeout_seconds: float = 10.0
    # The WebSocket API (web-socket-api.md "General API Information"): the user data stream
    # pushes each account's order updates; its fills are recorded as they arrive.
    ws_api_url: str = "wss://ws-api.binance.com:443/ws-api/v3"
    testnet_ws_api_url: str = "wss://ws-api.testnet.binance.vision/ws-api/v3"
    user_stream: bool = True  # off: fills are found by the reconcile pass only
    stream_reconnect_max_seconds: float = 30.0  # backoff ceiling between reconnects


@dataclass(frozen=True, slots=True)
class AccountSettings:
    # Single-tenant deployments only: live positions with no account trade the account of the
    # environment's keys (BINANCE_API_KEY + BINANCE_API_SECRET or BINANCE_PRIVATE_KEY_FILE).
    operator_account: bool = False
    idle_close_seconds: float = 600.0  # close an account's HTTP client unused this long
    recheck_invalid_seconds: float = 300.0  # check an invalid account's key again this often
    check_interval: float = 2.0  # seal new secrets and check new keys this often


@dataclass(frozen=True, slots=True)
class RiskSettings:
    # Defaults for every user; an operator overrides them per user in user_risk_limits.
    # Notional is in the symbol's quote asset. 0 = no limit.
    max_position_notional: Decimal = Decimal("10000")
    max_open_positions: int = 20
    max_open_notional: Decimal = Decimal("50000")
    allowed_symbols: tuple[str, ...] = ()  # empty: every symbol the exchange lists
    # off | holdings (sell only base asset already held) | any (the exchange decides)
    short_selling: str = "holdings"


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto (colour on a terminal, JSON otherwise) | json | console


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int = 0  # Prometheus endpoint port; 0 = off
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    paper: PaperSettings = field(default_factory=PaperSettings)
    binance: BinanceSettings = field(default_factory=BinanceSettings)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @property
    def listen_url(self) -> str:
        return self.database.listen_url or self.database.url


_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("auto", "json", "console"),
    "paper.feed": ("synthetic", "binance"),
    "paper.fee_asset": ("quote", "base", "BNB"),
    "paper.symbols": ("auto", "snapshot"),
    "risk.short_selling": ("off", "holdings", "any"),
}
_URL_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    "database.url": ("postgresql://", "postgres://"),
    "database.listen_url": ("postgresql://", "postgres://"),
    "redis.url": ("redis://", "rediss://", "unix://"),
    "binance.base_url": ("https://", "http://"),
    "binance.testnet_base_url": ("https://", "http://"),
    "paper.stream_url": ("wss://", "ws://"),
    "binance.ws_api_url": ("wss://", "ws://"),
    "binance.testnet_ws_api_url": ("wss://", "ws://"),
}
_SYMBOL: Final = re.compile(r"^[A-Z0-9]{2,20}$")
_ASSET: Final = re.compile(r"^[A-Z0-9]{1,20}$")  # the schema's paper_balances.asset


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the optional TOML file and the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    config_path = _config_path(path, env)
    if config_path is not None:
        raw = _read_toml(config_path)
    _apply_env(raw, env)
    return _build(raw)


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get("POSITION_WORKER_CONFIG"):
        return Path(env["POSITION_WORKER_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config: {path} is not valid TOML: {exc}") from None
    for section, values in data.items():
        if not isinstance(values, dict):
            raise SettingsError(f"config: [{section}] must be a table, got {values!r}")
    return data


def _apply_env(raw: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    if env.get("DATABASE_URL"):
        raw.setdefault("database", {})["url"] = env["DATABASE_URL"]
    if env.get("REDIS_URL"):
        raw.setdefault("redis", {})["url"] = env["REDIS_URL"]
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2:
            raise SettingsError(f"config: {name} must look like {ENV_PREFIX}SECTION__KEY")
        raw.setdefault(parts[0], {})[parts[1]] = value


def _build(raw: dict[str, dict[str, Any]]) -> Settings:
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    built: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in sections:
            raise SettingsError(f"config: unknown section [{name}] (known: {', '.join(sections)})")
        cls = sections[name].default_factory
        built[name] = _build_section(name, cls, values)
    settings = Settings(**built)
    if settings.redis.cluster:
        _check_cluster(settings)
    return settings


def _build_section(section: str, cls: Any, values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(fields)
            raise SettingsError(f"config: unknown key {section}.{key} (known: {known})")
        default = getattr(cls(), key)
        kwargs[key] = _coerce(f"{section}.{key}", value, default)
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, dict):
        return _coerce_balances(key, value)
    if isinstance(default, tuple):
        return _coerce_symbols(key, value)
    if isinstance(default, bool):
        return _coerce_bool(key, value)
    if isinstance(default, Decimal):
        return _coerce_decimal(key, value)
    if isinstance(default, int):
        return _coerce_number(key, value, int, "an integer")
    if isinstance(default, float):
        return _coerce_number(key, value, float, "a number")
    if not isinstance(value, str):
        raise SettingsError(f"config: {key} must be a string, got {value!r}")
    _check_string(key, value)
    return value


def _coerce_symbols(key: str, value: Any) -> tuple[str, ...]:
    """A list of symbols: a TOML array of strings, or one comma-separated string (env)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise SettingsError(f'config: {key} must be a list of symbols such as ["BTCUSDT"]')
    symbols = tuple(i.strip() for i in items if i.strip())
    for symbol in symbols:
        if not _SYMBOL.match(symbol):
            raise SettingsError(f"config: {key}: {symbol!r} is not a symbol such as BTCUSDT")
    return symbols


def _coerce_balances(key: str, value: Any) -> dict[str, Decimal]:
    """Amounts per asset: a TOML table ``{USDT = "10000"}``, or ``USDT=10000,BNB=1`` (env)."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise SettingsError(f"config: {key} must look like USDT=10000,BNB=1")
        value = {asset.strip(): amount.strip() for asset, _, amount in pairs}
    if not isinstance(value, dict):
        raise SettingsError(f'config: {key} must be a table such as {{USDT = "10000"}}')
    balances = {}
    for asset, amount in value.items():
        if not isinstance(asset, str) or not _ASSET.match(asset):
            raise SettingsError(f"config: {key}: {asset!r} is not an asset such as USDT")
        balances[asset] = _coerce_decimal(f"{key}.{asset}", amount)
    return balances


def _coerce_decimal(key: str, value: Any) -> Decimal:
    """Money-like settings: written as strings or integers, never through a float."""
    if isinstance(value, float | bool):
        raise SettingsError(
            f'config: {key} must be a decimal string such as "0.001", got {value!r}'
        )
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise SettingsError(f"config: {key} must be a decimal number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise SettingsError(f"config: {key} must be a decimal number >= 0, got {value!r}")
    return number


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"config: {key} must be true or false, got {value!r}")


_AT_LEAST_ONE: Final = (
    "batch_size",
    "concurrency",
    "max_attempts",
    "pool_max_size",
    "maxlen",
    "lease_seconds",
)


def _coerce_number(key: str, value: Any, kind: type, label: str) -> Any:
    minimum = 1 if key.endswith(_AT_LEAST_ONE) else 0
    problem = f"config: {key} must be {label} >= {minimum}, got {value!r}"
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise SettingsError(problem)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SettingsError(problem) from None
    if number < minimum:
        raise SettingsError(problem)
    return number


def _check_string(key: str, value: str) -> None:
    choices = _CHOICES.get(key)
    if choices is not None and value not in choices:
        raise SettingsError(f"config: {key} must be one of {', '.join(choices)}, got {value!r}")
    schemes = _URL_SCHEMES.get(key)
    if schemes is not None and value and not value.startswith(schemes):
        shown = mask_secrets(value)
        raise SettingsError(f"config: {key} must start with {' or '.join(schemes)}, got {shown!r}")


def _check_cluster(settings: Settings) -> None:
    """What Redis Cluster needs of the URL and of the stream names."""
    url = settings.redis.url
    if not url.startswith(("redis://", "rediss://")):
        shown = mask_secrets(url)
        raise SettingsError(
            f"config: redis.url must start with redis:// or rediss:// when redis.cluster is"
            f" true, got {shown!r}"
        )
    path = urlsplit(url).path.strip("/")
    if path not in ("", "0"):
        shown = mask_secrets(url)
        raise SettingsError(
            f"config: redis.url must name database 0 (or none) when redis.cluster is true,"
            f" got {shown!r}"
        )
    streams = settings.streams
    for key in ("events", "notifications", "ai_monitoring"):
        name = getattr(streams, key)
        if ("{" in name or "}" in name) and not has_hash_tag(name):
            raise SettingsError(
                f"config: streams.{key} must have no braces, or a non-empty hash tag {{...}},"
                f" when redis.cluster is true, got {name!r}"
            )


def has_hash_tag(key: str) -> bool:
    """Whether Redis Cluster hashes only a part of ``key``: the text between its first
    ``{`` and the first ``}`` after it, when that text is not empty."""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1
