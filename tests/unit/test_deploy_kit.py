"""The operators' kit (deploy/): every metric its dashboard and alert rules name is one the
worker exposes, each file is well-formed, and the systemd unit has what it needs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.metrics import Metrics
from worker.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PREFIX = "position_worker_"
# Series that are not the worker's own: Prometheus writes `up` for every scrape target.
NOT_THE_WORKERS = {"up"}
# What prometheus_client exposes for a family of each type (a counter family's name has no
# `_total`; its samples do). `_created` is left out: nothing should chart a creation time.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip


def exposed() -> dict[str, set[str]]:
    """Each metric family of the registry the app builds (``Metrics()``), with the sample
    names /metrics carries for it. A labelled metric has no sample until a label set is
    used, so the names come from the family's type; the samples present are added too."""
    families: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        names = {family.name + suffix for suffix in SUFFIXES[family.type]}
        names.update(s.name for s in family.samples if not s.name.endswith("_created"))
        families[family.name] = names
    return families


EXPOSED = set().union(*exposed().values())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once string literals
    (label values), label matchers, ranges, grouping label lists, numbers, durations and
    Grafana variables are removed, that are neither keywords nor followed by ``(``
    (functions and aggregations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        if match.group().lower() in PROMQL_WORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def all_exprs() -> list[str]:
    return dashboard_exprs() + [str(rule["expr"]) for rule in alert_rules()]


def test_the_expression_parser_finds_metric_names_only() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(position_worker_publish_seconds_bucket"
        '{job=~"$job", instance=~"$instance"}[$__rate_interval]))) > 1e-3 unless on (job) '
        'absent(up{job="position-worker"}) or max(x:recorded{status!~"closed|failed"}) offset 5m'
    )
    assert metric_names(expr) == {"position_worker_publish_seconds_bucket", "up", "x:recorded"}


def test_exposed_names_are_what_prometheus_client_writes() -> None:
    for family, names in exposed().items():
        assert family.startswith(PREFIX)
        assert names, family
    # families that already carry samples: the names derived from the type are all there
    for metric in Metrics().registry.collect():
        written = {s.name for s in metric.samples}
        if written:
            assert {metric.name + s for s in SUFFIXES[metric.type]} <= written, metric.name
    assert "position_worker_events_dead_total" in EXPOSED  # a counter: _total
    assert "position_worker_positions" in EXPOSED  # labelled, no sample yet
    assert "position_worker_commit_to_stream_seconds_bucket" in EXPOSED


@pytest.mark.parametrize("expr", all_exprs())
def test_every_metric_an_expression_names_exists(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    assert names - EXPOSED - NOT_THE_WORKERS == set(), expr
    # and, however it is written, every name with the worker's prefix
    assert set(re.findall(rf"{PREFIX}[\w:]*", expr)) <= EXPOSED, expr


def test_the_dashboard_variables_name_existing_metrics() -> None:
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("definition", "")
        assert set(re.findall(rf"{PREFIX}[\w:]*", query)) <= EXPOSED, query


def test_the_dashboard_charts_every_metric_of_the_worker() -> None:
    charted = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for family, names in exposed().items():
        assert names & charted, f"{family} has no panel"


def test_the_dashboard_uses_a_templated_prometheus_data_source() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    ids = []
    for panel in panels(board):
        ids.append(panel["id"])
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|min|h|d)?", duration.strip())
    assert match, duration
    return float(match[1]) * units[match[2] or "s"]


def test_every_alert_rule_is_complete() -> None:
    rules = alert_rules()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert _seconds(rule["for"]) >= 0
        assert rule["labels"]["severity"] in {"warning", "critical"}
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        assert notes["runbook_url"].endswith("README.md#runbook")
    assert len({r["alert"] for r in rules}) == len(rules)


def test_the_alert_rules_cover_what_operators_must_hear_about() -> None:
    exprs = {rule["alert"]: " ".join(str(rule["expr"]).split()) for rule in alert_rules()}
    assert "position_worker_outbox_lag_seconds" in exprs["PositionWorkerOutboxLagHigh"]
    assert "increase(position_worker_events_dead_total" in exprs["PositionWorkerDeadEvents"]
    assert exprs["PositionWorkerDeadEvents"].endswith("> 0")
    assert re.fullmatch(r'up\{job="position-worker"\} == 0', exprs["PositionWorkerDown"])
    assert exprs["PositionWorkerMetricsAbsent"].startswith("absent(position_worker_")
    stalled = exprs["PositionWorkerPipelineStalled"]
    assert "position_worker_outbox_pending" in stalled
    assert "unless" in stalled and "position_worker_events_processed_total" in stalled
    assert "increase(position_worker_reconnects_total" in exprs["PositionWorkerReconnectStorm"]


def unit_file() -> dict[str, dict[str, list[str]]]:
    """Sections of the unit, each key with its values in order (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (DEPLOY / "position-worker.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, line
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_systemd_unit_runs_the_worker_and_stops_it_gracefully() -> None:
    unit = unit_file()
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "simple"
    assert service["ExecStart"].endswith("/position-worker run")
    assert service["EnvironmentFile"] == "/etc/position-worker/env"
    assert service["User"] == "position-worker"
    assert service["Restart"] == "on-failure"
    assert _seconds(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    # SIGTERM: the batch in hand gets the grace, then App.run closes within 5 s
    grace = Settings().pipeline.shutdown_grace_seconds
    assert grace + 5 < _seconds(service["TimeoutStopSec"]) <= grace + 30
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_systemd_unit_is_hardened() -> None:
    service = {key: values[-1] for key, values in unit_file()["Service"].items()}
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
