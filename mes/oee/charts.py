"""Server-rendered SVG charts for the OEE page: shapes computed here, drawn by the template.

No script and no inline style (the CSP forbids both): everything is SVG geometry and
presentation attributes. Coordinates are Decimals rounded to a tenth of a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

PX = Decimal("0.1")
SERIES = (("availability", "A", "#1f5fa8"), ("performance", "P", "#d9822b"), ("quality", "Q", "#2e8b57"))
OEE_COLOUR = "#222222"


def _px(value: Decimal | int) -> str:
    return str(Decimal(value).quantize(PX, rounding=ROUND_HALF_EVEN))


@dataclass
class Chart:
    """One SVG: its size, bars, text labels, polylines with their points, and grid lines."""

    width: int
    height: int
    title: str
    rects: list[dict[str, str]] = field(default_factory=list)
    texts: list[dict[str, str]] = field(default_factory=list)
    lines: list[dict[str, str]] = field(default_factory=list)
    polylines: list[dict[str, str]] = field(default_factory=list)
    dots: list[dict[str, str]] = field(default_factory=list)
    legend: list[dict[str, str]] = field(default_factory=list)


def _axis(chart: Chart, left: int, top: int, plot_h: int, plot_w: int, top_value: Decimal, unit: str,
          right: bool = False) -> None:
    """Horizontal grid lines with labels at 0, 25, 50, 75, 100 % of ``top_value``."""
    for i in range(5):
        value = top_value * i / 4
        y = Decimal(top + plot_h) - Decimal(plot_h) * i / 4
        if not right:
            chart.lines.append({"x1": _px(left), "y1": _px(y), "x2": _px(left + plot_w), "y2": _px(y),
                                "stroke": "#bbbbbb"})
        x = left + plot_w + 6 if right else left - 6
        chart.texts.append({"x": _px(x), "y": _px(y + 4), "anchor": "start" if right else "end",
                            "text": f"{value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)}{unit}", "size": "12"})


TARGET_COLOUR = "#7a1f1f"


def _target(chart: Chart, left: int, plot_w: int, y: Decimal, target: Decimal) -> None:
    """A horizontal line at the OEE target, labelled."""
    chart.lines.append({"x1": _px(left), "y1": _px(y), "x2": _px(left + plot_w), "y2": _px(y), "stroke": TARGET_COLOUR,
                        "dash": "6 4"})
    chart.texts.append({"x": _px(left + plot_w), "y": _px(y - 4), "anchor": "end",
                        "text": f"target {(target * 100).quantize(Decimal('0.1'))} %", "size": "12"})


def shift_chart(groups: list[dict[str, Any]], target: str | None = None, what: str = "shift") -> Chart:
    """Bars for availability, performance and quality per group (shift, product or week), OEE as
    a line over them, and the line's OEE target. A 0 % figure is drawn at 0, never left out."""
    n = max(len(groups), 1)
    left, top, bottom, slot = 56, 36, 64, 96
    plot_w, plot_h = max(n * slot, 4 * 110), 200  # at least as wide as the legend
    chart = Chart(width=left + plot_w + 24, height=top + plot_h + bottom,
                  title=f"Availability, performance and quality per {what} (bars) and OEE (line), in %")
    values = [Decimal(g[k]) for g in groups for k in ("availability", "performance", "quality", "oee") if g.get(k)]
    top_value = max([Decimal(1)] + values).min(Decimal("1.5"))
    top_pct = (top_value * 100).quantize(Decimal(1))
    _axis(chart, left, top, plot_h, plot_w, top_pct, " %")
    base = Decimal(top + plot_h)

    def y_of(ratio: Decimal) -> Decimal:
        return base - Decimal(plot_h) * ratio.min(top_value) / top_value

    points = []
    bar_w = Decimal(18)
    for i, g in enumerate(groups):
        x0 = Decimal(left + i * slot + 12)
        for j, (key, letter, colour) in enumerate(SERIES):
            x = x0 + j * (bar_w + 2)
            if g.get(key) is None:
                chart.texts.append({"x": _px(x + bar_w / 2), "y": _px(base - 4), "anchor": "middle", "text": "–",
                                    "size": "12"})
                continue
            ratio = Decimal(g[key])
            y = y_of(ratio)
            if ratio == 0:  # a zero is a figure: say it, a bar of no height shows nothing
                chart.texts.append({"x": _px(x + bar_w / 2), "y": _px(base - 4), "anchor": "middle", "text": "0",
                                    "size": "12"})
            chart.rects.append({"x": _px(x), "y": _px(y), "width": _px(bar_w), "height": _px(base - y), "fill": colour,
                                "title": f"{g['label']}: {letter} {(ratio * 100).quantize(Decimal('0.1'))} %"})
        cx = x0 + (bar_w * 3 + 4) / 2
        if g.get("oee") is not None:
            ratio = Decimal(g["oee"])
            points.append(f"{_px(cx)},{_px(y_of(ratio))}")
            chart.dots.append({"cx": _px(cx), "cy": _px(y_of(ratio)), "r": "4", "fill": OEE_COLOUR,
                               "title": f"{g['label']}: OEE {(ratio * 100).quantize(Decimal('0.1'))} %"})
        shift = g.get("shift") or {}
        chart.texts.append({"x": _px(cx), "y": _px(base + 18), "anchor": "middle",
                            "text": shift.get("date", g["label"])[5:] if shift else g["label"], "size": "12"})
        chart.texts.append({"x": _px(cx), "y": _px(base + 34), "anchor": "middle",
                            "text": shift.get("name", ""), "size": "12"})
    if len(points) > 1:
        chart.polylines.append({"points": " ".join(points), "stroke": OEE_COLOUR, "fill": "none"})
    if target is not None:
        _target(chart, left, plot_w, y_of(Decimal(target)), Decimal(target))
    lx = left
    for key, _letter, colour in SERIES:
        chart.legend.append({"x": _px(lx), "y": "8", "fill": colour, "tx": _px(lx + 16), "ty": "18",
                             "text": key.capitalize()})
        lx += 110
    chart.legend.append({"x": _px(lx), "y": "8", "fill": OEE_COLOUR, "tx": _px(lx + 16), "ty": "18", "text": "OEE"})
    return chart


def pareto_chart(reasons: list[dict[str, Any]], by: str = "duration") -> Chart:
    """Unplanned downtime by reason, largest first, by ``duration`` (bars, minutes) or by
    ``frequency`` (bars, stops), with the cumulative share (line, %)."""
    rows = [r for r in reasons if not r["planned"]]
    if by == "frequency":
        rows = [r for r in rows if r["stops"]]
        rows.sort(key=lambda r: (-r["stops"], r["reason"]))
    n = max(len(rows), 1)
    left, top, bottom, slot = 120, 28, 150, 64
    plot_w, plot_h = max(n * slot, 320), 200
    unit = " stops" if by == "frequency" else " min"
    chart = Chart(width=left + plot_w + 56, height=top + plot_h + bottom,
                  title=f"Downtime Pareto by {by}: unplanned stops by reason in{unit} (bars), cumulative share in % (line)")
    minutes = [Decimal(r["stops"]) if by == "frequency" else Decimal(r["seconds"]) / 60 for r in rows]
    total = sum(minutes, Decimal(0))
    top_min = max(minutes + [Decimal(1)])
    _axis(chart, left, top, plot_h, plot_w, top_min, unit)
    _axis(chart, left, top, plot_h, plot_w, Decimal(100), " %", right=True)
    base = Decimal(top + plot_h)
    points, running = [], Decimal(0)
    for i, (r, m) in enumerate(zip(rows, minutes, strict=True)):
        x = Decimal(left + i * slot + 14)
        y = base - Decimal(plot_h) * m / top_min
        chart.rects.append({"x": _px(x), "y": _px(y), "width": _px(slot - 28), "height": _px(base - y),
                            "fill": "#b03a2e", "title": f"{r['reason']}: {m.quantize(Decimal('0.1'))}{unit}"})
        running += m
        share = running / total if total else Decimal(0)
        cx = x + Decimal(slot - 28) / 2
        cy = base - Decimal(plot_h) * share
        points.append(f"{_px(cx)},{_px(cy)}")
        chart.dots.append({"cx": _px(cx), "cy": _px(cy), "r": "3", "fill": OEE_COLOUR,
                           "title": f"cumulative {(share * 100).quantize(Decimal('0.1'))} %"})
        label = r["reason"] if len(r["reason"]) <= 30 else r["reason"][:29] + "…"
        chart.texts.append({"x": _px(cx), "y": _px(base + 14), "anchor": "end", "text": label, "size": "11",
                            "rotate": f"rotate(-35 {_px(cx)} {_px(base + 14)})"})
    if len(points) > 1:
        chart.polylines.append({"points": " ".join(points), "stroke": OEE_COLOUR, "fill": "none"})
    return chart


def lines_chart(rows: list[dict[str, Any]]) -> Chart:
    """OEE per line side by side (bars) with each line's target (a mark across its bar)."""
    n = max(len(rows), 1)
    left, top, bottom, slot = 56, 28, 64, 72
    plot_w, plot_h = max(n * slot, 320), 200
    chart = Chart(width=left + plot_w + 24, height=top + plot_h + bottom,
                  title="OEE per line (bars) and each line's target (mark), in %")
    _axis(chart, left, top, plot_h, plot_w, Decimal(100), " %")
    base = Decimal(top + plot_h)
    for i, r in enumerate(rows):
        x = Decimal(left + i * slot + 14)
        w = Decimal(slot - 28)
        if r.get("oee") is None:
            chart.texts.append({"x": _px(x + w / 2), "y": _px(base - 4), "anchor": "middle", "text": "–", "size": "12"})
        else:
            ratio = Decimal(r["oee"]).min(Decimal(1))
            y = base - Decimal(plot_h) * ratio
            chart.rects.append({"x": _px(x), "y": _px(y), "width": _px(w), "height": _px(base - y), "fill": OEE_COLOUR,
                                "title": f"{r['line']}: OEE {(Decimal(r['oee']) * 100).quantize(Decimal('0.1'))} %"})
        if r.get("oee_target") is not None:
            ty = base - Decimal(plot_h) * Decimal(r["oee_target"])
            chart.lines.append({"x1": _px(x - 6), "y1": _px(ty), "x2": _px(x + w + 6), "y2": _px(ty),
                                "stroke": TARGET_COLOUR, "dash": "4 2"})
        chart.texts.append({"x": _px(x + w / 2), "y": _px(base + 18), "anchor": "middle", "text": r["line"],
                            "size": "12"})
    return chart
