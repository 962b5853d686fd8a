"""The benchmark's plot: its figures as an SVG, written beside the JSON (``bench --out``).

Pure Python: the SVG is written as text, no plotting library. Three panels of bars:

* throughput at saturation per system (ceiling, naive, worker-1, worker-3; the median run);
* commit-to-stream p99 at each fixed offered rate, the naive listener beside the worker;
* the backlog drain, the worker beside the bare prototype (the median run of each).

Every bar carries its figure as a label and as a ``<title>`` (a tooltip in a browser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from worker.ops.bench_report import median_runs

WIDTH: Final = 760
PANEL_HEIGHT: Final = 250
HEADER_HEIGHT: Final = 56
LEFT: Final = 78  # room for the y-axis labels
RIGHT: Final = 24
PLOT_TOP: Final = 48  # below the panel's title and legend
PLOT_BOTTOM: Final = 42  # room for the group labels
GRID_LINES: Final = 4
COLOURS: Final = {
    "ceiling": "#9e9e9e",
    "naive": "#f08c2e",
    "worker-1": "#2f6fb5",
    "worker-3": "#45a89a",
    "prototype": "#8a6bbf",
}
OTHER_COLOUR: Final = "#607d8b"
FONT: Final = "font-family='Helvetica, Arial, sans-serif'"


@dataclass(frozen=True, slots=True)
class Bar:
    name: str
    value: float | None  # None (or NaN in the JSON): not measured, no bar


@dataclass(frozen=True, slots=True)
class Group:
    label: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    unit: str
    digits: int  # decimals of the value labels
    groups: tuple[Group, ...]
    legend: bool  # groups of several bars: name them in a legend


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def panels(results: dict[str, Any]) -> list[Panel]:
    """What the plot shows, read from the results ``bench`` returns (and writes as JSON)."""
    saturation = median_runs(results.get("saturation", []))
    throughput = tuple(
        Group(name, (Bar(name, _number(run.get("events_per_s"))),))
        for name, run in saturation.items()
    )
    rates: dict[float, dict[str, float | None]] = {}
    for run in results.get("fixed_rate", []):
        rate = _number(run.get("rate"))
        if rate is not None:
            rates.setdefault(rate, {})[str(run["system"])] = _number(run.get("p99_ms"))
    latency = tuple(
        Group(f"{rate:,.0f} events/s", tuple(Bar(name, p99) for name, p99 in by_system.items()))
        for rate, by_system in sorted(rates.items())
    )
    drains = median_runs(results.get("backlog_runs", []))
    if not drains and results.get("backlog"):
        drains = {"worker-1": results["backlog"]}
    drain = tuple(
        Group(name, (Bar(name, _number(run.get("events_per_s"))),)) for name, run in drains.items()
    )
    backlog = _number(next(iter(drains.values()), {}).get("events"))
    of = f" of {backlog:,.0f} events" if backlog else ""
    return [
        Panel("Throughput at saturation (median run)", "events/s", 0, throughput, legend=False),
        Panel("Commit-to-stream p99 at fixed offered rates", "ms", 1, latency, legend=True),
        Panel(f"Backlog drain{of} (median run)", "events/s", 0, drain, legend=False),
    ]


def nice_step(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(
        (step * power for step in (1.0, 2.0, 2.5, 5.0) if value <= step * power * (1 + 1e-9)),
        10.0 * power,
    )


def axis_ticks(largest: float) -> tuple[float, int]:
    """The grid for values up to ``largest``: (step, number of steps), about GRID_LINES."""
    step = nice_step(largest / GRID_LINES)
    return step, max(1, math.ceil(largest / step - 1e-9))


def _text(
    x: float, y: float, content: str, *, size: int = 12, anchor: str = "middle", extra: str = ""
) -> str:
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' {FONT}"
        f"{' ' + extra if extra else ''}>{escape(content)}</text>"
    )


def _axis(
    panel: Panel, top: float, ticks: tuple[float, int], plot_top: float, plot_bottom: float
) -> list[str]:
    step, count = ticks
    digits = next((d for d in range(3) if abs(step * 10**d - round(step * 10**d)) < 1e-9), 3)
    out = []
    for i in range(count + 1):
        y = plot_bottom - (plot_bottom - plot_top) * i / count
        out.append(
            f"<line x1='{LEFT}' y1='{y:.1f}' x2='{WIDTH - RIGHT}' y2='{y:.1f}' "
            f"stroke='{'#444' if i == 0 else '#ddd'}' stroke-width='1'/>"
        )
        out.append(_text(LEFT - 6, y + 4, _fmt(step * i, digits), size=11, anchor="end"))
    out.append(
        _text(
            14,
            (plot_top + plot_bottom) / 2,
            panel.unit,
            size=11,
            extra=f"transform='rotate(-90 14 {(plot_top + plot_bottom) / 2:.1f})'",
        )
    )
    out.append(
        _text(LEFT, top + 20, panel.title, size=14, anchor="start", extra="font-weight='bold'")
    )
    return out


def _legend(panel: Panel, top: float) -> list[str]:
    names = list(dict.fromkeys(bar.name for group in panel.groups for bar in group.bars))
    out, x = [], float(WIDTH - RIGHT)
    for name in reversed(names):
        x -= 8 + 7 * len(name)
        out.append(
            f"<rect x='{x - 16:.1f}' y='{top + 11:.1f}' width='11' height='11' "
            f"fill='{COLOURS.get(name, OTHER_COLOUR)}'/>"
        )
        out.append(_text(x - 2, top + 21, name, size=12, anchor="start"))
        x -= 24
    return out


def _panel_svg(panel: Panel, top: float) -> list[str]:
    plot_top, plot_bottom = top + PLOT_TOP, top + PANEL_HEIGHT - PLOT_BOTTOM
    values = [b.value for g in panel.groups for b in g.bars if b.value is not None]
    ticks = axis_ticks(max(values, default=0.0))
    scale = ticks[0] * ticks[1]
    out = ["<g class='panel'>", *_axis(panel, top, ticks, plot_top, plot_bottom)]
    if panel.legend:
        out += _legend(panel, top)
    if not panel.groups:
        out.append(_text((LEFT + WIDTH - RIGHT) / 2, (plot_top + plot_bottom) / 2, "not measured"))
    slot = (WIDTH - RIGHT - LEFT) / max(1, len(panel.groups))
    for index, group in enumerate(panel.groups):
        left = LEFT + index * slot
        width = min(64.0, slot * 0.7 / max(1, len(group.bars)))
        start = left + (slot - width * len(group.bars)) / 2
        for n, bar in enumerate(group.bars):
            x = start + n * width
            label = _fmt(bar.value, panel.digits)
            height = 0.0 if bar.value is None else (plot_bottom - plot_top) * bar.value / scale
            tip = f"{bar.name}, {group.label}: {label} {panel.unit}"
            out.append(
                f"<rect class='bar' x='{x + 2:.1f}' y='{plot_bottom - height:.1f}' "
                f"width='{width - 4:.1f}' height='{height:.1f}' "
                f"fill='{COLOURS.get(bar.name, OTHER_COLOUR)}'><title>{escape(tip)}</title></rect>"
            )
            out.append(_text(x + width / 2, plot_bottom - height - 5, label, size=11))
        out.append(_text(left + slot / 2, plot_bottom + 18, group.label, size=12))
    out.append("</g>")
    return out


def render_svg(results: dict[str, Any]) -> str:
    """The plot as an SVG document (UTF-8 text)."""
    shown = panels(results)
    height = HEADER_HEIGHT + PANEL_HEIGHT * len(shown)
    servers = results.get("servers", {})
    rounds = len({r.get("round", 1) for r in results.get("saturation", [])})
    about = [
        f"PostgreSQL {servers['postgresql']}" if servers.get("postgresql") else "",
        f"Redis-compatible {servers['redis']}" if servers.get("redis") else "",
        f"{servers['cpus']} CPUs" if servers.get("cpus") else "",
        f"{rounds} interleaved saturation rounds" if rounds > 1 else "",
    ]
    title = "position-worker bench"
    lines = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
        f"viewBox='0 0 {WIDTH} {height}' role='img' aria-label={quoteattr(title)}>",
        f"<title>{escape(title)}</title>",
        f"<rect x='0' y='0' width='{WIDTH}' height='{height}' fill='#ffffff'/>",
        _text(LEFT, 26, title, size=17, anchor="start", extra="font-weight='bold'"),
        _text(
            LEFT, 45, "; ".join(a for a in about if a), size=12, anchor="start", extra="fill='#555'"
        ),
    ]
    for index, panel in enumerate(shown):
        lines += _panel_svg(panel, HEADER_HEIGHT + index * PANEL_HEIGHT)
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def svg_path_for(json_path: Path) -> Path:
    """Where the plot of ``bench --out PATH`` goes: beside it, ``results.json`` ->
    ``results.svg`` (``plot.svg`` -> ``plot.svg.svg``, never over the JSON)."""
    if json_path.suffix.lower() == ".svg":
        return json_path.with_name(json_path.name + ".svg")
    return json_path.with_suffix(".svg")


def write_svg(results: dict[str, Any], path: Path) -> None:
    """The plot at ``path``, its directory created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_svg(results), encoding="utf-8")
