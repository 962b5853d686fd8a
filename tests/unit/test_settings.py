"""Settings: defaults, the TOML file, environment overrides, one-line errors naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.errors import SettingsError
from worker.settings import Settings, has_hash_tag, load_settings


@pytest.fixture(autouse=True)
def _no_config_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory: ./config.toml is read when it exists."""
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, text: str, name: str = "conf.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ=env or {})
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database.url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert settings.database.pool_min_size == 2
    assert settings.database.pool_max_size == 20
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.pipeline.batch_size == 500
    assert settings.pipeline.lease_seconds == 30.0
    assert settings.streams.events == "positions:events"
    assert settings.log.level == "info"
    assert settings.log.format == "auto"
    assert settings.metrics.port == 0
    # listen_url falls back to the main URL.
    assert settings.listen_url == settings.database.url


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.pipeline.batch_size = 1  # type: ignore[misc]  # frozen: the test is that it fails


def test_toml_file_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [database]
        url = "postgresql://app@db.example:5432/app"
        listen_url = "postgresql://app@direct.example:5432/app"
        pool_max_size = 20

        [pipeline]
        batch_size = 50
        lease_seconds = 5      # an integer is fine for a float setting

        [log]
        level = "debug"
        format = "json"
        """,
    )
    settings = load_settings(path, environ={})
    assert settings.database.url == "postgresql://app@db.example:5432/app"
    assert settings.listen_url == "postgresql://app@direct.example:5432/app"
    assert settings.database.pool_max_size == 20
    assert settings.database.pool_min_size == 2
    assert settings.pipeline.batch_size == 50
    assert settings.pipeline.lease_seconds == 5.0
    assert isinstance(settings.pipeline.lease_seconds, float)
    assert settings.pipeline.max_attempts == 5
    assert (settings.log.level, settings.log.format) == ("debug", "json")
    assert settings.redis.url == "redis://127.0.0.1:6379/0"


def test_config_path_from_environment_and_from_cwd(tmp_path: Path) -> None:
    path = _write(tmp_path, "[pipeline]\nbatch_size = 7\n", name="elsewhere.toml")
    settings = load_settings(environ={"POSITION_WORKER_CONFIG": str(path)})
    assert settings.pipeline.batch_size == 7
    # ./config.toml is picked up when no path is given.
    _write(tmp_path, "[pipeline]\nbatch_size = 9\n", name="config.toml")
    assert load_settings(environ={}).pipeline.batch_size == 9
    # An explicit path wins over both.
    explicit = _write(tmp_path, "[pipeline]\nbatch_size = 11\n", name="explicit.toml")
    env = {"POSITION_WORKER_CONFIG": str(path)}
    assert load_settings(explicit, environ=env).pipeline.batch_size == 11


def test_database_and_redis_url_from_environment_override_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[database]\nurl = "postgresql://file@h/db"\n[redis]\nurl = "redis://file:6379/0"\n',
    )
    env = {"DATABASE_URL": "postgres://env@h2:6543/app", "REDIS_URL": "rediss://env:6380/2"}
    settings = load_settings(path, environ=env)
    assert settings.database.url == "postgres://env@h2:6543/app"
    assert settings.redis.url == "rediss://env:6380/2"
    # An empty variable does not override.
    settings = load_settings(path, environ={"DATABASE_URL": "", "REDIS_URL": ""})
    assert settings.database.url == "postgresql://file@h/db"
    assert settings.redis.url == "redis://file:6379/0"


def test_section_key_variables_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[pipeline]\nbatch_size = 50\n")
    env = {
        "POSITION_WORKER__PIPELINE__BATCH_SIZE": "200",
        "POSITION_WORKER__PIPELINE__POLL_INTERVAL": "0.25",
        "POSITION_WORKER__LOG__LEVEL": "warning",
        "POSITION_WORKER__STREAMS__EVENTS": "custom:events",
        "UNRELATED": "ignored",
    }
    settings = load_settings(path, environ=env)
    assert settings.pipeline.batch_size == 200
    assert settings.pipeline.poll_interval == 0.25
    assert settings.log.level == "warning"
    assert settings.streams.events == "custom:events"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"POSITION_WORKER__PIPELINE__BATCH_SIZE": "abc"},
            "config: pipeline.batch_size must be an integer >= 1, got 'abc'",
        ),
        (
            {"POSITION_WORKER__PIPELINE__BATCH_SIZE": "0"},
            "config: pipeline.batch_size must be an integer >= 1, got '0'",
        ),
        (
            {"POSITION_WORKER__PIPELINE__LEASE_SECONDS": "-1.5"},
            "config: pipeline.lease_seconds must be a number >= 1, got '-1.5'",
        ),
        (
            {"POSITION_WORKER__METRICS__PORT": "80.5"},
            "config: metrics.port must be an integer >= 0, got '80.5'",
        ),
        (
            {"POSITION_WORKER__LOG__LEVEL": "loud"},
            "config: log.level must be one of debug, info, warning, error, got 'loud'",
        ),
        (
            {"POSITION_WORKER__LOG__FORMAT": "xml"},
            "config: log.format must be one of auto, json, console, got 'xml'",
        ),
        (
            {"REDIS_URL": "http://cache:6379"},
            "config: redis.url must start with redis:// or rediss:// or unix://, "
            "got 'http://cache:6379'",
        ),
    ],
    ids=["int-text", "int-zero", "float-negative", "int-float", "choice", "format", "scheme"],
)
def test_bad_environment_value_is_a_one_line_error_naming_the_key(
    env: dict[str, str], expected: str
) -> None:
    assert _error(env=env) == expected


def test_unknown_key_and_section_from_environment() -> None:
    message = _error(env={"POSITION_WORKER__PIPELINE__BATCHSIZE": "5"})
    assert message.startswith("config: unknown key pipeline.batchsize (known: batch_size, ")
    message = _error(env={"POSITION_WORKER__PIPELNE__BATCH_SIZE": "5"})
    assert message == (
        "config: unknown section [pipelne] "
        "(known: database, redis, streams, pipeline, execution, paper, binance, accounts, risk,"
        " log, metrics)"
    )
    message = _error(env={"POSITION_WORKER__BATCH_SIZE": "5"})
    assert message == (
        "config: POSITION_WORKER__BATCH_SIZE must look like POSITION_WORKER__SECTION__KEY"
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[pipeline]\nbatchsize = 5\n", "config: unknown key pipeline.batchsize (known: "),
        ("[pipelin]\nbatch_size = 5\n", "config: unknown section [pipelin] (known: "),
        ("[pipeline]\nbatch_size = 1.5\n", "config: pipeline.batch_size must be an integer"),
        ("[pipeline]\nbatch_size = true\n", "config: pipeline.batch_size must be an integer"),
        ("[log]\nlevel = 3\n", "config: log.level must be a string, got 3"),
        ("pipeline = 5\n", "config: [pipeline] must be a table, got 5"),
    ],
    ids=["unknown-key", "unknown-section", "float-for-int", "bool-for-int", "int-for-str", "flat"],
)
def test_bad_file_is_a_one_line_error_naming_the_key(
    tmp_path: Path, toml: str, expected: str
) -> None:
    assert _error(_write(tmp_path, toml)).startswith(expected)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[pipeline]\nbatch_size 5\n")
    assert _error(path).startswith(f"config: {path} is not valid TOML: ")
    missing = tmp_path / "nope.toml"
    assert _error(missing) == f"config: file not found: {missing}"
    assert _error(env={"POSITION_WORKER_CONFIG": str(missing)}) == (
        f"config: file not found: {missing}"
    )


def test_url_password_is_masked_in_the_error() -> None:
    message = _error(env={"DATABASE_URL": "mysql://app:hunter2@db.example/app"})
    assert "hunter2" not in message
    assert message == (
        "config: database.url must start with postgresql:// or postgres://, "
        "got 'mysql://app:***@db.example/app'"
    )


def test_redis_cluster_mode_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert load_settings(environ={}).redis.cluster is False
    path = _write(tmp_path, '[redis]\nurl = "rediss://user:pw@node-1.cache:6379"\ncluster = true\n')
    assert load_settings(path, environ={}).redis.cluster is True
    env = {"REDIS_URL": "redis://node-1:7000/0", "POSITION_WORKER__REDIS__CLUSTER": "true"}
    settings = load_settings(environ=env)
    assert (settings.redis.url, settings.redis.cluster) == ("redis://node-1:7000/0", True)
    env["POSITION_WORKER__REDIS__CLUSTER"] = "false"
    assert load_settings(environ=env).redis.cluster is False
    # a stream name with a hash tag of its own keeps it (its dedupe keys follow it)
    env = {"POSITION_WORKER__REDIS__CLUSTER": "1", "POSITION_WORKER__STREAMS__EVENTS": "{pw}:ev"}
    assert load_settings(environ=env).streams.events == "{pw}:ev"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"POSITION_WORKER__REDIS__CLUSTER": "maybe"},
            "config: redis.cluster must be true or false, got 'maybe'",
        ),
        (
            {"REDIS_URL": "unix:///run/redis.sock"},
            "config: redis.url must start with redis:// or rediss:// when redis.cluster is"
            " true, got 'unix:///run/redis.sock'",
        ),
        (
            {"REDIS_URL": "redis://:secret@node-1:6379/2"},
            "config: redis.url must name database 0 (or none) when redis.cluster is true,"
            " got 'redis://:***@node-1:6379/2'",
        ),
        (
            {"POSITION_WORKER__STREAMS__NOTIFICATIONS": "notes}"},
            "config: streams.notifications must have no braces, or a non-empty hash tag"
            " {...}, when redis.cluster is true, got 'notes}'",
        ),
        (
            {"POSITION_WORKER__STREAMS__AI_MONITORING": "{}ai"},
            "config: streams.ai_monitoring must have no braces, or a non-empty hash tag"
            " {...}, when redis.cluster is true, got '{}ai'",
        ),
    ],
    ids=["not-a-bool", "unix-socket", "database-2", "lone-brace", "empty-tag"],
)
def test_what_redis_cluster_mode_refuses(env: dict[str, str], expected: str) -> None:
    message = _error(env={"POSITION_WORKER__REDIS__CLUSTER": "true", **env})
    assert message == expected
    # the same values are fine on a single Redis (the bad boolean aside)
    if "POSITION_WORKER__REDIS__CLUSTER" not in env:
        load_settings(environ=env)


@pytest.mark.parametrize(
    ("key", "tagged"),
    [("a", False), ("{a}", True), ("x{a}y", True), ("{}a", False), ("a{", False), ("}{a}", True)],
)
def test_has_hash_tag_follows_the_cluster_spec(key: str, tagged: bool) -> None:
    assert has_hash_tag(key) is tagged


# The command line -----------------------------------------------------------------------------


def _run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POSITION_WORKER") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_config_typo_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "migrate", POSITION_WORKER__PIPELINE__BATCH_SIZE="abc")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "position-worker: config: pipeline.batch_size must be an integer >= 1, got 'abc'\n"
    )


def test_cli_masks_the_password_of_a_bad_url(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "migrate", DATABASE_URL="mysql://app:hunter2@db.example/app")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("position-worker: config: database.url must start with")
    assert "mysql://app:***@db.example/app" in result.stderr


def test_cli_bad_config_file_from_option(tmp_path: Path) -> None:
    _write(tmp_path, "[log]\nlevle = 'info'\n", name="bad.toml")
    result = _run_cli(tmp_path, "--config", "bad.toml", "migrate")
    assert result.returncode == 2
    assert result.stderr.startswith("position-worker: config: unknown key log.levle (known: ")
    assert result.stderr.count("\n") == 1


def test_cli_help_documents_the_configuration(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "--help")
    assert result.returncode == 0
    assert "migrate" in result.stdout
    for word in ("DATABASE_URL", "REDIS_URL", "POSITION_WORKER__SECTION__KEY", "--config"):
        assert word in result.stdout
