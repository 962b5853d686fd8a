"""What the wheel carries, checked against the checkout without building it.

pyproject.toml lists the packages one by one (the migrations' package, ``worker.schema``, is
the top-level ``schema/``, which setuptools' finder cannot discover under that name), so a
package added under ``worker/`` must be added there too, and a data file must match a
``package-data`` pattern. ``.ci/run`` builds the wheel, compares its contents with the
checkout and runs it from a fresh venv; this test catches the omission in seconds.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def setuptools_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["setuptools"]
    return config


def test_every_package_under_worker_and_the_schema_are_listed() -> None:
    config = setuptools_config()
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [ROOT / "worker", *(ROOT / "worker").rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    assert set(config["packages"]) == on_disk | {"worker.schema"}
    assert config["package-dir"] == {"worker.schema": "schema"}
    assert (ROOT / "schema" / "__init__.py").is_file()  # an importable package, editable too


def test_every_data_file_matches_a_package_data_pattern() -> None:
    patterns: dict[str, list[str]] = setuptools_config()["package-data"]
    roots = {"worker": ROOT / "worker", "worker.schema": ROOT / "schema"}
    for package, root in roots.items():
        data = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
        ]
        unmatched = [
            name
            for name in data
            if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns[package])
        ]
        assert unmatched == [], f"{package}: not in the wheel: {unmatched}"
    assert any(
        fnmatch.fnmatch("R__privileges.sql", p) for p in patterns["worker.schema"]
    )  # the repeatable files ship with the numbered ones
