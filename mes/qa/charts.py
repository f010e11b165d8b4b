"""In-process control charts for QA: for each numeric in-process check of a product, the
values of its last batches on an individuals chart (centre line, natural process limits
from the mean moving range) with the recipe's limits, drawn as SVG on the server (no script,
no CDN; presentation attributes only, so the pages' CSP holds)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import select

from mes.db import db
from mes.execution import operations as ex
from mes.execution.models import Batch, BatchStep, WorkOrder
from mes.quantities import to_text
from mes.steps import registry as step_kinds

E2 = Decimal("2.66")  # individuals chart: natural process limits = mean ± 2.66 × mean moving range
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 960, 280, 70, 20, 20, 50


@dataclass
class Chart:
    """One check's chart: the points (batch, value), the statistics and the SVG."""

    step: str
    title: str
    unit: str | None
    low: Decimal | None
    high: Decimal | None
    points: list[tuple[str, Decimal]]
    mean: Decimal
    ucl: Decimal | None
    lcl: Decimal | None
    svg: Markup


def _last_batches(product: str, last: int) -> list[Batch]:
    rows = db.session.execute(select(Batch).join(WorkOrder, WorkOrder.id == Batch.work_order_id).where(
        WorkOrder.item == product).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(last)).scalars().all()
    return list(reversed(rows))


def _fmt(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.1")))


def render_svg(title: str, unit: str | None, points: list[tuple[str, Decimal]], mean: Decimal,
               limits: dict[str, Decimal | None]) -> Markup:
    """An individuals chart as an inline SVG with a title and description for screen readers."""
    values = [v for _, v in points] + [v for v in limits.values() if v is not None] + [mean]
    lo, hi = min(values), max(values)
    span = (hi - lo) or Decimal(1)
    lo, hi = lo - span / 10, hi + span / 10
    plot_w, plot_h = Decimal(WIDTH - LEFT - RIGHT), Decimal(HEIGHT - TOP - BOTTOM)

    def y(v: Decimal) -> str:
        return _fmt(Decimal(TOP) + (hi - v) / (hi - lo) * plot_h)

    def x(i: int) -> str:
        n = max(len(points) - 1, 1)
        return _fmt(Decimal(LEFT) + plot_w * i / n if len(points) > 1 else Decimal(LEFT) + plot_w / 2)

    label = f"{title}: {len(points)} batches, mean {to_text(mean)} {unit or ''}".strip()
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img" aria-label="{escape(label)}" class="chart">',
             f"<title>{escape(label)}</title>",
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#555555"/>']
    styles = {"low": ("#b00020", "6 4", "recipe low"), "high": ("#b00020", "6 4", "recipe high"),
              "ucl": ("#1a5fb4", "2 3", "UCL"), "lcl": ("#1a5fb4", "2 3", "LCL")}
    for name, value in limits.items():
        if value is None:
            continue
        color, dash, text = styles[name]
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value)}" y2="{y(value)}" stroke="{color}" '
                     f'stroke-dasharray="{dash}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - RIGHT - 4}" y="{y(value)}" dy="-4" text-anchor="end" font-size="13" '
                     f'fill="{color}">{escape(text)} {escape(to_text(value))}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(mean)}" y2="{y(mean)}" stroke="#1d6b1d" '
                 f'stroke-width="2"/><text x="{LEFT + 4}" y="{y(mean)}" dy="-4" font-size="13" fill="#1d6b1d">'
                 f'mean {escape(to_text(mean))}</text>')
    coords = " ".join(f"{x(i)},{y(v)}" for i, (_, v) in enumerate(points))
    parts.append(f'<polyline points="{coords}" fill="none" stroke="#222222" stroke-width="2"/>')
    for i, (batch, v) in enumerate(points):
        outside = any(limit is not None and ((name in ("low", "lcl") and v < limit) or
                                             (name in ("high", "ucl") and v > limit))
                      for name, limit in limits.items())
        fill = "#b00020" if outside else "#222222"
        parts.append(f'<circle cx="{x(i)}" cy="{y(v)}" r="{6 if outside else 4}" fill="{fill}">'
                     f"<title>{escape(batch)}: {escape(to_text(v))} {escape(unit or '')}</title></circle>")
        parts.append(f'<text x="{x(i)}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" font-size="11" '
                     f'fill="#222222">{i + 1}</text>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="13" fill="#222222">batches, oldest to newest'
                 f"{' (' + escape(unit) + ')' if unit else ''}</text>")
    for v in (hi - span / 10, lo + span / 10):
        parts.append(f'<text x="{LEFT - 6}" y="{y(v)}" text-anchor="end" font-size="12" fill="#222222">'
                     f"{escape(to_text(v.quantize(Decimal('0.01')).normalize()))}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def product_charts(product: str, last: int = 20) -> list[Chart]:
    """One chart per numeric in-process check of ``product`` over its last ``last`` batches."""
    batches = _last_batches(product, last)
    charted = [k.name for k in step_kinds.kinds() if k.charted]
    series: dict[str, list[tuple[str, Decimal]]] = {}
    spec: dict[str, Any] = {}
    for b in batches:
        numeric = list(db.session.execute(select(BatchStep.step_id).where(
            BatchStep.batch_id == b.id, BatchStep.kind.in_(charted)).order_by(BatchStep.seq)).scalars())
        if not numeric:
            continue
        values = ex.values_of(b.id)
        recipe = ex.control_recipe(b)
        for step_id in numeric:
            if step_id in values:
                series.setdefault(step_id, []).append((b.id, values[step_id]))
                spec[step_id] = recipe.step(step_id)
    charts = []
    for step_id, points in series.items():
        s = spec[step_id]
        mean = sum((v for _, v in points), Decimal(0)) / len(points)
        ranges = [abs(points[i][1] - points[i - 1][1]) for i in range(1, len(points))]
        mr = sum(ranges, Decimal(0)) / len(ranges) if ranges else None
        ucl = mean + E2 * mr if mr is not None else None
        lcl = mean - E2 * mr if mr is not None else None
        low, high = getattr(s, "low", None), getattr(s, "high", None)
        limits = {"low": low, "high": high, "ucl": ucl, "lcl": lcl}
        charts.append(Chart(step_id, s.title, getattr(s, "unit", None), low, high, points,
                            mean.quantize(Decimal("0.001")).normalize(), ucl, lcl,
                            render_svg(s.title, getattr(s, "unit", None), points, mean.quantize(Decimal("0.001")),
                                       limits)))
    return charts
