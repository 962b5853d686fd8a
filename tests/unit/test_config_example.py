"""config.example.toml documents every setting, with the real defaults."""

from __future__ import annotations

import dataclasses
import tomllib
from decimal import Decimal
from pathlib import Path

from worker.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_config_lists_every_key_with_its_default() -> None:
    documented = tomllib.loads(EXAMPLE.read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        values = getattr(defaults, section.name)
        keys = {f.name for f in dataclasses.fields(values)}
        assert set(documented[section.name]) == keys, section.name
        for key in keys:
            default = getattr(values, key)
            written = documented[section.name][key]
            if isinstance(default, Decimal):  # money-like values are written as strings
                written = Decimal(written)
            if isinstance(default, dict):  # amounts per asset: a table of decimal strings
                written = {k: Decimal(v) for k, v in written.items()}
            if isinstance(default, tuple):  # lists are TOML arrays
                written = tuple(written)
            assert written == default, f"{section.name}.{key}"


def test_example_config_loads() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings()
