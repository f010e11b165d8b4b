"""The eBR as a PDF/A-3b document (fpdf2), with the JSON eBR and the audit proof bundle
embedded as associated files.

Why fpdf2 and not WeasyPrint: measured on the 300-step case (docs/ebr.md). The font is the
plant's Noto Sans CJK (found with ``fc-match``, or ``MES_EBR_FONT``), subset per document to
the characters it prints (fontTools) so that Chinese, Japanese or Korean instructions render
and the file stays small; without such a font the eBR is refused with a sentence saying so.
Every page carries the batch id and "page x of y".
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

PROBE = "批"  # a CJK ideograph the font must have
BASE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "".join(chr(c) for c in range(0xA0, 0x180)) + \
    "–—‘’“”•…‰€≤≥±×÷°µ→←↑↓✓✗§·Ω"
RED, AMBER, GREEN, GREY = (190, 30, 30), (200, 120, 0), (20, 120, 40), (110, 110, 110)


class FontMissing(RuntimeError):
    """No font that can print the eBR's text (CJK included) was found."""


@functools.lru_cache(maxsize=8)
def find_font(configured: str | None = None) -> tuple[str, int]:
    """The CJK-capable font file (and face index in a collection) the eBR is printed in
    (looked up once per process and setting)."""
    if configured:
        path, _, index = configured.partition(":")
        if not Path(path).is_file():
            raise FontMissing(f"MES_EBR_FONT {path} does not exist")
        return path, int(index or 0)
    try:
        found = subprocess.run(["fc-match", "-f", "%{file}:%{index}", "Noto Sans CJK SC"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise FontMissing(f"fc-match could not be run ({exc}); install fontconfig and fonts-noto-cjk, "
                          "or set MES_EBR_FONT to a font file that covers CJK") from None
    path, _, index = found.rpartition(":")
    from fontTools import ttLib

    try:
        font = ttLib.TTFont(path, fontNumber=int(index or 0), lazy=True)
        covered = ord(PROBE) in font.getBestCmap()
    except Exception:  # noqa: BLE001 - any unreadable font is "no usable font"
        covered = False
    if not covered:
        raise FontMissing(f"no CJK font found (fc-match gave {path or 'nothing'}); install fonts-noto-cjk "
                          "or set MES_EBR_FONT to a font file that covers CJK")
    return path, int(index or 0)


_FONT_LOCK = threading.Lock()
_SUBSETS: dict[str, str] = {}
_FONT_DIR = Path(tempfile.gettempdir()) / f"mes-ebr-fonts-{os.getuid()}"


def subset_font(font: tuple[str, int], text: str) -> str:
    """A font file with just the glyphs of ``text`` (plus the Latin base set), cached by content."""
    from fontTools import subset, ttLib

    chars = "".join(sorted(set(text) | set(BASE_CHARS)))
    key = hashlib.sha256(f"{font[0]}:{font[1]}:{os.path.getmtime(font[0])}:{chars}".encode()).hexdigest()[:32]
    with _FONT_LOCK:
        if key in _SUBSETS and Path(_SUBSETS[key]).is_file():
            return _SUBSETS[key]
        _FONT_DIR.mkdir(mode=0o700, exist_ok=True)
        target = _FONT_DIR / f"{key}.otf"
        if not target.is_file():
            face = ttLib.TTFont(font[0], fontNumber=font[1], lazy=True, recalcTimestamp=False)
            options = subset.Options()
            options.layout_features, options.name_IDs, options.notdef_outline = [], ["*"], True
            options.recalc_timestamp = False
            subsetter = subset.Subsetter(options)
            subsetter.populate(text=chars)
            subsetter.subset(face)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            face.save(str(tmp))
            os.replace(tmp, target)
        _SUBSETS[key] = str(target)
        return str(target)


def _strings(value: Any) -> list[str]:
    """Every string in a JSON-like value (the characters the font must carry)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def _fpdf_class() -> type:
    from fpdf import FPDF

    class EbrPdf(FPDF):  # type: ignore[misc]
        batch_id = ""
        title_line = ""

        def header(self) -> None:
            self.set_font("ebr", size=8)
            self.set_text_color(*GREY)
            self.cell(0, 4, f"Electronic batch record · {self.title_line}", new_x="LMARGIN", new_y="NEXT")
            self.set_draw_color(180, 180, 180)
            self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
            self.ln(2)
            self.set_text_color(0, 0, 0)

        def footer(self) -> None:
            self.set_y(-10)
            self.set_font("ebr", size=8)
            self.set_text_color(*GREY)
            self.cell(0, 5, f"Batch {self.batch_id}", align="L")
            self.set_x(self.l_margin)
            self.cell(0, 5, f"page {self.page_no()} of {{nb}}", align="R")
            self.set_text_color(0, 0, 0)

    return EbrPdf


@dataclass(frozen=True)
class Span:
    """A full-width table row: text, background (None: none) and text colour."""

    text: str
    fill: tuple[int, int, int] | None = None
    colour: tuple[int, int, int] = (0, 0, 0)


class _Writer:
    """Table helpers over one fpdf2 document: fixed row heights, text fitted (not wrapped),
    drawn with ``text``/``rect`` (several times faster than ``cell`` for thousands of cells)."""

    def __init__(self, pdf: Any) -> None:
        self.pdf = pdf
        self.width = pdf.w - pdf.l_margin - pdf.r_margin
        self._widths: dict[tuple[float, str], float] = {}

    def heading(self, text: str) -> None:
        pdf = self.pdf
        if pdf.get_y() + 20 > pdf.page_break_trigger:
            pdf.add_page()
        pdf.ln(2)
        pdf.set_font("ebr", size=11)
        pdf.set_fill_color(225, 232, 240)
        pdf.cell(0, 6.5, text, fill=True, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("ebr", size=7)
        pdf.ln(1)

    def string_width(self, text: str) -> float:
        """Width of ``text`` at the current size from cached glyph widths (no kerning is applied)."""
        size, cache, pdf = self.pdf.font_size_pt, self._widths, self.pdf
        total = 0.0
        for ch in text:
            w = cache.get((size, ch))
            if w is None:
                w = cache[(size, ch)] = pdf.get_string_width(ch)
            total += w
        return total

    def fit(self, text: Any, width: float) -> str:
        text = "" if text is None else str(text).replace("\n", " ").replace("\r", " ")
        room = width - 1.2
        if self.string_width(text) <= room:
            return text
        while text and self.string_width(text + "…") > room:
            text = text[: max(1, int(len(text) * 0.85))] if len(text) > 12 else text[:-1]
        return text + "…"

    def row(self, cells: Sequence[Any], widths: Sequence[float], height: float,
            colours: Sequence[tuple[int, int, int] | None] | None = None, fill: bool = False) -> None:
        pdf = self.pdf
        x, y = pdf.l_margin, pdf.get_y()
        baseline = y + height / 2 + pdf.font_size * 0.35
        for j, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            pdf.rect(x, y, w, height, style="DF" if fill else "D")
            colour = colours[j] if colours else None
            if colour:
                pdf.set_text_color(*colour)
            text = self.fit(cell, w)
            if text:
                pdf.text(x + 0.6, baseline, text)
            if colour:
                pdf.set_text_color(0, 0, 0)
            x += w
        pdf.set_xy(pdf.l_margin, y + height)

    def table(self, columns: Sequence[tuple[str, float]], rows: Sequence[Sequence[Any] | Span],
              colours: Sequence[Sequence[tuple[int, int, int] | None] | None] | None = None,
              height: float = 4.2) -> None:
        pdf = self.pdf
        scale = self.width / sum(w for _, w in columns)
        widths = [w * scale for _, w in columns]
        pdf.set_draw_color(150, 150, 150)
        pdf.set_line_width(0.15)

        def head() -> None:
            pdf.set_fill_color(240, 240, 240)
            pdf.set_text_color(60, 60, 60)
            self.row([name for name, _ in columns], widths, height, fill=True)
            pdf.set_text_color(0, 0, 0)

        head()
        for i, row in enumerate(rows):
            # a step's heading is kept with at least two rows after it
            need = height * (3 if isinstance(row, Span) and row.fill else 1)
            if pdf.get_y() + need > pdf.page_break_trigger:
                pdf.add_page()
                head()
            if isinstance(row, Span):
                self.span(row, height)
            else:
                self.row(row, widths, height, colours[i] if colours else None)

    def span(self, row: Span, height: float) -> None:
        """One full-width row (a step's heading or its instruction)."""
        pdf = self.pdf
        y = pdf.get_y()
        if row.fill:
            pdf.set_fill_color(*row.fill)
            pdf.rect(pdf.l_margin, y, self.width, height, style="DF")
        else:
            pdf.rect(pdf.l_margin, y, self.width, height, style="D")
        pdf.set_text_color(*row.colour)
        pdf.text(pdf.l_margin + 0.6, y + height / 2 + pdf.font_size * 0.35, self.fit(row.text, self.width))
        pdf.set_text_color(0, 0, 0)
        pdf.set_xy(pdf.l_margin, y + height)

    def pairs(self, items: Sequence[tuple[str, Any]]) -> None:
        pdf = self.pdf
        for label, value in items:
            pdf.set_text_color(*GREY)
            pdf.cell(42, 4.2, label)
            pdf.set_text_color(0, 0, 0)
            pdf.cell(0, 4.2, self.fit(value, self.width - 42), new_x="LMARGIN", new_y="NEXT")

    def paragraph(self, text: str, size: float = 7) -> None:
        self.pdf.set_font("ebr", size=size)
        self.pdf.multi_cell(0, 3.6, text, new_x="LMARGIN", new_y="NEXT")


def _num(text: Any) -> Decimal | None:
    try:
        return Decimal(str(text)) if text not in (None, "") else None
    except InvalidOperation:
        return None


def _chart(w: _Writer, doc: Mapping[str, Any]) -> None:
    """Bars: each BOM line's actual as % of planned, inside its tolerance band; and the yield."""
    pdf = w.pdf
    bars = []
    for line in doc["bill_of_materials"]:
        planned, actual = _num(line["planned"]), _num(line["actual"])
        if planned and actual is not None:
            low, high = _num(line["low"]) or planned, _num(line["high"]) or planned
            bars.append((line["item"], actual / planned * 100, low / planned * 100, high / planned * 100))
    y = (doc["batch"].get("yield") or {})
    if _num(y.get("yield")) is not None:
        bars.append(("yield", _num(y["yield"]), _num(y.get("yield_low")) or Decimal(0),
                     _num(y.get("yield_high")) or Decimal(200)))
    if not bars:
        return
    w.heading("Weights and yield at a glance (% of planned; band: limits)")
    lo = min(min(b[1], b[2]) for b in bars) - 2
    hi = max(max(b[1], b[3]) for b in bars) + 2
    lo, hi = min(lo, Decimal(90)), max(hi, Decimal(110))
    x0, label_w, row_h = pdf.l_margin, 34, 4.6
    plot_w = w.width - label_w - 22
    if pdf.get_y() + row_h * (len(bars) + 2) > pdf.page_break_trigger:
        pdf.add_page()
    top = pdf.get_y()

    def xpos(v: Decimal) -> float:
        return x0 + label_w + float((v - lo) / (hi - lo)) * plot_w

    for i, (name, value, low, high) in enumerate(bars):
        yy = top + i * row_h
        pdf.set_text_color(0, 0, 0)
        pdf.set_xy(x0, yy)
        pdf.cell(label_w, row_h, w.fit(name, label_w))
        pdf.set_fill_color(215, 235, 215)
        pdf.rect(xpos(low), yy + 0.6, max(0.3, xpos(high) - xpos(low)), row_h - 1.2, style="F")
        ok = low <= value <= high
        pdf.set_fill_color(*(GREEN if ok else RED))
        pdf.rect(xpos(lo), yy + 1.4, max(0.3, xpos(value) - xpos(lo)), row_h - 2.8, style="F")
        pdf.set_xy(x0 + label_w + plot_w + 1, yy)
        pdf.set_text_color(*(GREEN if ok else RED))
        pdf.cell(20, row_h, f"{value:.2f} %" + ("" if ok else " !"))
    pdf.set_draw_color(80, 80, 80)
    hundred = xpos(Decimal(100))
    pdf.line(hundred, top, hundred, top + row_h * len(bars))
    pdf.set_text_color(*GREY)
    pdf.set_xy(hundred - 10, top + row_h * len(bars))
    pdf.cell(20, 4, "100 %", align="C")
    pdf.set_text_color(0, 0, 0)
    pdf.set_y(top + row_h * (len(bars) + 1.2))


def _flags(flags: Sequence[str]) -> tuple[str, tuple[int, int, int] | None]:
    short = {"out_of_limits": "OUT OF LIMITS", "correction": "CORRECTION", "corrected": "CORRECTED",
             "recomputed": "RECOMPUTED", "late": "LATE"}
    text = ", ".join(short.get(f, f) for f in flags)
    return text, (RED if "out_of_limits" in flags else AMBER) if flags else None


def _limits(limits: Mapping[str, Any]) -> str:
    parts = []
    for key in ("low", "high", "minimum", "maximum", "target", "yield_low", "yield_high"):
        if key in limits:
            parts.append(f"{key.replace('_', ' ')} {limits[key]}")
    tol = limits.get("tolerance")
    if isinstance(tol, Mapping):
        parts.append("tol " + ", ".join(f"{k} {v}" for k, v in tol.items()))
    return "; ".join(parts)


def render(doc: Mapping[str, Any], attachments: Mapping[str, tuple[bytes, str, str, str]], *,
           font: tuple[str, int], created: datetime) -> bytes:
    """The PDF/A-3b eBR of ``doc``. ``attachments``: name -> (bytes, MIME type, AFRelationship,
    description), embedded as associated files of the document."""
    text = "".join(_strings({k: v for k, v in doc.items() if k != "audit_trail"}))
    text += "".join(f"{e.get('action')}{(e.get('actor') or {}).get('name')}" for e in doc["audit_trail"])
    font_file = subset_font(font, text)
    pdf = _fpdf_class()(orientation="L", format="A4", enforce_compliance="PDF/A-3B")
    b = doc["batch"]
    product = b.get("product") or {}
    pdf.batch_id = b["id"]
    pdf.title_line = f"{b['id']} · {product.get('code', '')} {product.get('name', '')}"
    pdf.set_creation_date(created)
    pdf.set_title(f"Electronic batch record {b['id']}")
    pdf.set_author("MES")
    pdf.set_subject(f"{product.get('name', '')} batch {b['id']}")
    pdf.set_lang("en")
    pdf.add_font("ebr", "", font_file)
    pdf.set_auto_page_break(True, margin=14)
    pdf.alias_nb_pages()
    pdf.set_margins(10, 8, 10)
    pdf.add_page()
    w = _Writer(pdf)
    _body(w, doc)
    for name, (data, mime, relationship, description) in attachments.items():
        pdf.embed_file(bytes=data, basename=name, mime_type=mime, associated_file_relationship=relationship,
                       desc=description, modification_date=created, creation_date=created, compress=True)
    return bytes(pdf.output())


def _witness_sentence(witnesses: Mapping[str, Any] | None) -> str:
    """Which witnesses cosigned the printed checkpoint, and which did not in time."""
    if not witnesses:
        return ""
    text = f" Cosigned by witness(es): {', '.join(witnesses.get('cosigned') or []) or 'none'}."
    if witnesses.get("missing"):
        text += f" Not cosigned in time by: {', '.join(witnesses['missing'])}."
    return text


def _body(w: _Writer, doc: Mapping[str, Any]) -> None:
    pdf, b = w.pdf, doc["batch"]
    decision = b.get("decision") or {}
    y = b.get("yield") or {}
    pdf.set_font("ebr", size=15)
    pdf.cell(0, 9, f"Batch {b['id']} — {(b.get('product') or {}).get('name', '')}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("ebr", size=8)
    w.pairs([("Product", f"{(b.get('product') or {}).get('code', '')} {(b.get('product') or {}).get('name', '')}"),
             ("Work order", f"{b['work_order']}" + (f" (ERP {b['erp_ref']})" if b.get("erp_ref") else "")),
             ("Recipe version", b["recipe"]["version"]), ("Control recipe hash", b["recipe"]["hash"]),
             ("Line", b.get("line") or "—"),
             ("Batch size", f"{b['batch_size']['quantity']} {b['batch_size']['unit']}"),
             ("Started / completed", f"{b['created_at']} / {b.get('completed_at') or '—'}"),
             ("Decision", f"{decision.get('disposition') or b['status']} at {b.get('decided_at') or '—'} by "
                          f"{b.get('decided_by_name') or b.get('decided_by') or '—'}"
                          + (f"; conditions: {decision['conditions']}" if decision.get("conditions") else "")),
             ("Yield", f"{y.get('quantity')} {y.get('unit')} of {y.get('theoretical')} = {y.get('yield')} % "
                       f"(limits {y.get('yield_low')}–{y.get('yield_high')} %), lot {y.get('lot')}" if y else "—"),
             ("Generated", doc["generated_at"])])
    counts = [("Steps", len(doc["steps"])), ("Deviations", len(doc["deviations"])),
              ("Exceptions", len(doc["exceptions"]["items"])), ("Corrections", len(doc["corrections"])),
              ("Signatures", len(doc["signatures"])), ("Audit entries", len(doc["audit_trail"]))]
    w.pairs([("At a glance", " · ".join(f"{k}: {v}" for k, v in counts))])
    _chart(w, doc)

    w.heading("Bill of materials: planned against actual")
    rows, colours = [], []
    for line in doc["bill_of_materials"]:
        flag = "" if line["in_limits"] is None else ("in limits" if line["in_limits"] else "OUT OF LIMITS")
        rows.append([line["item"], line["name"], line["role"], f"{line['planned']} {line['unit']}",
                     f"{line['low']}–{line['high']}", f"{line['actual'] or '—'} {line['unit']}", flag])
        colours.append([None] * 6 + [None if line["in_limits"] in (None, True) else RED])
    w.table([("Item", 16), ("Name", 60), ("Role", 14), ("Planned", 18), ("Limits", 20), ("Actual", 18), ("Flag", 14)],
            rows, colours)
    containers = [c for line in doc["bill_of_materials"] for c in line["containers"]]
    if containers:
        pdf.ln(2)
        rows, colours = [], []
        for c in containers:
            ins = c.get("instrument") or {}
            cal = ins.get("calibration") or {}
            rows.append([c["item"], c["lot"], c["container"], c["tare"], c["gross"], c["net"], c["unit"],
                         f"{ins.get('equipment') or ''} {ins.get('make') or ''} {ins.get('model') or ''} "
                         f"s/n {ins.get('serial') or ''}", f"{cal.get('status')} (due {cal.get('due')})",
                         (ins.get("raw") or "").strip(), c["recorded_by"], c["recorded_at"]])
            colours.append([None] * 8 + [None if cal.get("status") == "calibrated" else RED] + [None] * 3)
        w.table([("Item", 12), ("Lot", 16), ("Container", 20), ("Tare", 9), ("Gross", 9), ("Net", 9), ("Unit", 6),
                 ("Instrument", 44), ("Calibration", 26), ("Raw reply", 22), ("By", 13), ("At", 26)], rows, colours)

    w.heading("Steps in order")
    rows, colours = [], []
    for s in doc["steps"]:
        rows.append(Span(f"{s['seq']}. {s['step']} — {s['title']}  [{s['kind']}, {s['state']}"
                         + (f", attempt {s['attempt']}" if s["attempt"] > 1 else "") + "]", (236, 240, 246)))
        colours.append(None)
        if s.get("instruction"):
            rows.append(Span(s["instruction"], None, GREY))
            colours.append(None)
        for r in s["records"]:
            flags, colour = _flags(r["flags"] + (["superseded"] if r["superseded_by"] else []))
            ins = r.get("instrument") or {}
            value = r.get("shown") or ("" if r["value"] is None else f"{r['value']} {r['unit'] or ''}")
            if r["kind"] == "signature":
                value = f"{r['data'].get('meaning')}: {r['data'].get('name')}"
            rows.append([r["kind"], value, _limits(s["limits"]) if r["kind"] in ("value", "measurement") else "",
                         f"{ins.get('equipment') or ''} {ins.get('serial') or ''}".strip(),
                         (ins.get("raw") or "").strip(), r.get("recorded_by_name") or r["recorded_by"],
                         r["recorded_at"], r.get("terminal") or "", flags])
            colours.append([None] * 8 + [colour])
    pdf.set_font("ebr", size=6.5)
    w.table([("Record", 11), ("Value", 22), ("Limits", 30), ("Instrument", 18), ("Raw reply", 18),
             ("Who", 18), ("When (UTC)", 26), ("Terminal", 12), ("Flags", 18)], rows, colours, height=3.8)
    pdf.set_font("ebr", size=7)

    w.heading("Signatures (21 CFR 11.50: printed name, date and time with time zone, meaning)")
    w.table([("Printed name", 24), ("User", 14), ("Role", 12), ("Meaning", 14), ("Date and time (plant)", 36),
             ("Record", 44), ("Terminal", 14), ("Audit seq", 10)],
            [[s["printed_name"], s["signer"], s["role"], s["meaning"], s["signed_at_plant"],
              f"{s['record'].get('type')} {s['record'].get('id')}", s["terminal"], s["seq"]] for s in doc["signatures"]])

    w.heading("Corrections (both values, with the reason)")
    if doc["corrections"]:
        w.table([("Step", 20), ("Was", 16), ("Now", 16), ("Unit", 8), ("Reason", 60), ("By", 18), ("At", 26)],
                [[c["step"], c["old_value"], c["new_value"], c["unit"], c["reason"], c["by_name"] or c["by"], c["at"]]
                 for c in doc["corrections"]], [[None, RED, GREEN] + [None] * 4 for _ in doc["corrections"]])
    else:
        w.paragraph("No value was changed after it was first entered.")

    w.heading("Deviations and their dispositions")
    if doc["deviations"]:
        w.table([("Id", 18), ("Step", 18), ("Severity", 12), ("Status", 12), ("Description", 70), ("Disposition", 16),
                 ("Reason", 50)],
                [[d.get("id"), d.get("step"), d.get("severity"), d.get("status"), d.get("description"),
                  d.get("disposition"), d.get("disposition_reason")] for d in doc["deviations"]],
                [[None, None, RED if d.get("severity") in ("major", "critical") else AMBER] + [None] * 4
                 for d in doc["deviations"]])
    else:
        w.paragraph("No deviation was raised.")

    w.heading("Exceptions reviewed")
    items = doc["exceptions"]["items"]
    if items:
        w.table([("Type", 18), ("Step", 20), ("Detail", 120), ("By", 16)],
                [[e.get("type"), e.get("step") or e.get("lot") or "",
                  e.get("text") or e.get("reason") or e.get("value") or "", e.get("by") or ""] for e in items])
    else:
        w.paragraph("No exceptions.")
    reviews = doc["exceptions"]["reviews"]
    if reviews:
        pdf.ln(1)
        w.table([("Review", 40), ("By", 40), ("At (plant)", 50), ("Audit seq", 12)],
                [[r["action"], f"{r['name']} ({r['by']})", r["at_plant"], r["seq"]] for r in reviews])

    w.heading("Genealogy")
    gen = doc["genealogy"]
    w.table([("Consumed lot", 20), ("Container", 24), ("Item", 14), ("Quantity", 16), ("Step", 20), ("Conditional", 10)],
            [[c["lot"], c["container"], c["item"], f"{c['quantity']} {c['unit']}", c["step"],
              "yes" if c["conditional"] else ""] for c in gen["consumed"]])
    if gen.get("produced"):
        pdf.ln(1)
        w.pairs([("Produced lot", f"{gen['produced'].get('lot')} ({gen['produced'].get('item')}), "
                                  f"{gen['produced'].get('quantity')} {gen['produced'].get('unit')}")])

    w.heading("Audit trail of the batch")
    w.table([("Seq", 8), ("At (UTC)", 26), ("Action", 30), ("Entity", 46), ("Who", 26), ("Terminal", 12),
             ("Reason", 40)],
            [[e["seq"], e["at"], e["action"], f"{(e.get('entity') or {}).get('type')} {(e.get('entity') or {}).get('id')}",
              f"{(e.get('actor') or {}).get('name')} ({(e.get('actor') or {}).get('role')})", e.get("terminal") or "",
              e.get("reason") or ""] for e in doc["audit_trail"]], height=3.6)

    lines = (doc.get("release_checkpoint") or "").count("\n") + 1
    if pdf.get_y() + 30 + 3.4 * lines > pdf.page_break_trigger:  # the checkpoint is printed whole, on the last page
        pdf.add_page()
    w.heading("Release checkpoint")
    w.paragraph("The audit log's signed checkpoint published at release; the embedded audit proof bundle "
                "(audit-bundle.zip) proves every entry above is in the log it signs. Verify with "
                "`mes ebr verify` or `python -m mes.audit.verify` on the extracted bundle."
                + _witness_sentence(doc.get("release_witnesses")))
    pdf.set_font("ebr", size=7)
    pdf.multi_cell(0, 3.4, doc.get("release_checkpoint") or "(none)", border=1, new_x="LMARGIN", new_y="NEXT")

