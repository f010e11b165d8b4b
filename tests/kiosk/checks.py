"""The kiosk-ux.md rules as measurements in the page (getBoundingClientRect,
getComputedStyle, axe-core), each returning a list of violations (empty = the rule holds).

Used on every screen by tests/kiosk/test_rules.py and by the end-to-end run, so a screen
that only the full batch reaches is measured too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
CONTROLS = "button, a[href], input:not([type=hidden]), select, textarea, [role=button], [tabindex]"
DEFAULT_PPI, DEFAULT_DPR = 141, 1


def min_target_px(ppi: int = DEFAULT_PPI, dpr: int = DEFAULT_DPR) -> int:
    """kiosk-ux.md rule 1: ceil(20 mm × ppi / 25.4 / dpr) CSS px (111 at the defaults)."""
    return math.ceil(20 * ppi / 25.4 / dpr)


def min_gap_px(ppi: int = DEFAULT_PPI, dpr: int = DEFAULT_DPR) -> float:
    """2 mm in CSS px on the configured panel."""
    return 2 * ppi / 25.4 / dpr


# Visible: laid out, not hidden by CSS or by a [hidden]/closed ancestor, inside the document.
_VISIBLE = """
const visible = (el) => {
  if (!el.isConnected) return false;
  if (el.checkVisibility && !el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) return false;
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0;
};
"""

TARGETS_JS = _VISIBLE + """
([selector, minPx, gapPx]) => {
  const els = [...document.querySelectorAll(selector)].filter(visible);
  const out = [];
  const name = (el) => (el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.dataset.action ? '[data-action=' + el.dataset.action + ']' : '') +
      (el.dataset.key ? '[data-key=' + el.dataset.key + ']' : '') +
      ' "' + (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 30) + '"');
  const rects = els.map(el => el.getBoundingClientRect());
  els.forEach((el, i) => {
    const r = rects[i];
    const shorter = Math.min(r.width, r.height);
    if (shorter + 0.01 < minPx)
      out.push(`${name(el)} is ${r.width.toFixed(1)}x${r.height.toFixed(1)} px; shorter side must be >= ${minPx} px`);
  });
  for (let i = 0; i < els.length; i++) for (let j = i + 1; j < els.length; j++) {
    if (els[i].contains(els[j]) || els[j].contains(els[i])) continue;
    const a = rects[i], b = rects[j];
    const dx = Math.max(0, Math.max(a.left - b.right, b.left - a.right));
    const dy = Math.max(0, Math.max(a.top - b.bottom, b.top - a.bottom));
    const gap = Math.hypot(dx, dy);
    if (gap + 0.01 < gapPx)
      out.push(`${name(els[i])} and ${name(els[j])} are ${gap.toFixed(1)} px apart; need >= ${gapPx.toFixed(1)} px (2 mm)`);
  }
  return {count: els.length, violations: out};
}
"""

TEXT_JS = _VISIBLE + """
([body, value, weight]) => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.textContent.trim()) continue;
    const el = node.parentElement;
    if (!el || seen.has(el) || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(el.tagName)) continue;
    seen.add(el);
    if (!visible(el)) continue;
    const range = document.createRange(); range.selectNodeContents(node);
    const rr = range.getBoundingClientRect();
    if (rr.width < 2 || rr.height < 2) continue;  // visually hidden (screen-reader only) text
    const size = parseFloat(getComputedStyle(el).fontSize);
    let need = body, kind = 'body text';
    if (el.closest('#live-weight [data-field=value]')) { need = weight; kind = 'the live weight'; }
    else if (el.closest('[data-field=instruction], [data-field=entry], [data-field=scanned], [data-field=value]')) {
      need = value; kind = 'a value or instruction';
    }
    if (size + 0.01 < need)
      out.push(`${kind} "${node.textContent.trim().slice(0, 40)}" (${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}) `
               + `is ${size} px; need >= ${need} px`);
  }
  for (const sel of ['#live-weight [data-field=value]']) {
    for (const el of document.querySelectorAll(sel)) {
      if (visible(el) && parseFloat(getComputedStyle(el).fontSize) + 0.01 < weight)
        out.push(`${sel} is ${getComputedStyle(el).fontSize}; need >= ${weight} px`);
    }
  }
  return out;
}
"""

# ISA-101: alarm hues are saturated red, amber and magenta. A colour counts as an alarm colour
# when it is opaque enough to be seen, saturated (HSL S >= 0.5), neither near-black nor
# near-white (0.2 < L < 0.8) and its hue is red (<= 15 or >= 345), amber (25-50) or magenta (285-335).
COLOUR_JS = _VISIBLE + """
() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const hsl = ({r, g, b}) => { r /= 255; g /= 255; b /= 255; const mx = Math.max(r, g, b), mn = Math.min(r, g, b);
    const l = (mx + mn) / 2; if (mx === mn) return {h: 0, s: 0, l};
    const d = mx - mn; const s = l > 0.5 ? d / (2 - mx - mn) : d / (mx + mn); let h;
    if (mx === r) h = ((g - b) / d + (g < b ? 6 : 0)); else if (mx === g) h = (b - r) / d + 2; else h = (r - g) / d + 4;
    return {h: h * 60, s, l}; };
  const alarm = (c) => { const p = parse(c); if (!p || p.a < 0.3) return null; const {h, s, l} = hsl(p);
    if (s < 0.5 || l <= 0.2 || l >= 0.8) return null;
    if (h <= 15 || h >= 345) return 'red'; if (h >= 25 && h <= 50) return 'amber';
    if (h >= 285 && h <= 335) return 'magenta'; return null; };
  const found = [];
  for (const el of document.querySelectorAll('body *')) {
    if (!visible(el)) continue;
    const cs = getComputedStyle(el);
    const props = [['background-color', cs.backgroundColor],
                   ['border-top-color', cs.borderTopWidth !== '0px' && cs.borderTopStyle !== 'none' ? cs.borderTopColor : ''],
                   ['border-left-color', cs.borderLeftWidth !== '0px' && cs.borderLeftStyle !== 'none' ? cs.borderLeftColor : ''],
                   ['outline-color', cs.outlineStyle !== 'none' && cs.outlineWidth !== '0px' ? cs.outlineColor : ''],
                   ['fill', el instanceof SVGElement ? cs.fill : '']];
    const hasText = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (hasText) props.push(['color', cs.color]);
    for (const [prop, value] of props) {
      const hue = value && alarm(value);
      if (!hue) continue;
      // text + icon: the element or an ancestor (up to 4 levels) holds readable text and an icon
      let ctx = el, ok = false;
      for (let i = 0; i < 5 && ctx && ctx !== document.body; i++, ctx = ctx.parentElement) {
        const txt = (ctx.innerText || '').trim();
        const icon = ctx.matches('svg, img, [data-icon], .icon') || ctx.querySelector('svg, img, [data-icon], .icon');
        if (txt && icon) { ok = true; break; }
      }
      found.push({el: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
                      + (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : ''),
                  prop, value, hue, labelled: ok, text: (el.innerText || '').trim().slice(0, 40)});
    }
  }
  return found;
}
"""

HOVER_RULES_JS = """
() => {
  const out = [];
  const reveal = /(^|;)\\s*(display|visibility|opacity|content|max-height|height|width|clip|clip-path|transform)\\s*:/i;
  const walk = (rules, href) => { for (const r of rules) {
    if (r.cssRules && !r.selectorText) { walk(r.cssRules, href); continue; }
    if (r.selectorText && /:hover/.test(r.selectorText) && reveal.test(r.style.cssText))
      out.push(`${href}: ${r.selectorText} { ${r.style.cssText} }`);
    if (r.cssRules) walk(r.cssRules, href);
  } };
  for (const sheet of document.styleSheets) {
    try { walk(sheet.cssRules, sheet.href || 'inline'); } catch (e) { out.push('unreadable stylesheet ' + sheet.href); }
  }
  for (const el of document.querySelectorAll('[ondblclick], [onmouseover], [onmouseenter]'))
    out.push('inline hover/dblclick handler on ' + el.tagName);
  return out;
}
"""

# Records every addEventListener call (installed before any page script runs).
LISTENER_SPY = """
(() => {
  const seen = window.__mesListeners = [];
  const orig = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, fn, opts) {
    try { seen.push({type: String(type), target: this === window ? 'window' : this === document ? 'document' :
      (this.tagName ? this.tagName.toLowerCase() + (this.id ? '#' + this.id : '') : String(this))}); } catch (e) {}
    return orig.call(this, type, fn, opts);
  };
})();
"""

VISIBLE_SET_JS = _VISIBLE + """
() => [...document.querySelectorAll('body *')].filter(visible).length
"""

POSITION_JS = _VISIBLE + """
([selector]) => {
  const field = (f) => { const el = document.querySelector(`#batch-header [data-field=${f}]`);
    return el && visible(el) ? el.innerText.trim() : null; };
  const anywhere = (f) => [...document.querySelectorAll(`[data-field=${f}]`)].filter(visible).map(e => e.innerText.trim()).filter(Boolean);
  const controls = [...document.querySelectorAll(selector)].filter(visible);
  const primaries = [...document.querySelectorAll('.primary')].filter(visible);
  const area = (el) => { const r = el.getBoundingClientRect(); return r.width * r.height; };
  const biggest = controls.reduce((m, el) => Math.max(m, area(el)), 0);
  return {
    screen: document.body.dataset.screen,
    header: !!document.querySelector('#batch-header'),
    step_position: field('step-position'), batch: field('batch'), product: field('product'),
    operator: field('operator'), terminal: field('terminal'),
    operator_anywhere: anywhere('operator'), terminal_anywhere: anywhere('terminal'),
    primaries: primaries.map(e => (e.innerText || '').trim()),
    primary_is_largest: primaries.length === 1 ? area(primaries[0]) + 0.5 >= biggest : null,
    panel: {ppi: document.body.dataset.panelPpi, dpr: document.body.dataset.panelDpr, idle: document.body.dataset.idleSeconds},
  };
}
"""


# Rule 8: at the top of the page (never scrolled), every control a person may need is inside
# the viewport and inside the visible part of any scrolling box around it (a dialog's own
# scroll too); the batch header stays whole on screen. A modal dialog hides the page behind it.
FOLD_JS = _VISIBLE + """
([selector]) => {
  window.scrollTo(0, 0);
  const vw = document.documentElement.clientWidth, vh = window.innerHeight;
  const open = [...document.querySelectorAll('dialog[open]')].filter(d => d.matches(':modal'));
  const scope = open.length ? open[open.length - 1] : document;
  const out = [];
  const name = (el) => (el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.dataset.action ? '[data-action=' + el.dataset.action + ']' : '') +
      (el.dataset.key ? '[data-key=' + el.dataset.key + ']' : '') +
      ' "' + (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 30) + '"');
  const clip = (el) => {  // the visible box: the viewport cut by every scrolling or clipping ancestor
    let box = {left: 0, top: 0, right: vw, bottom: vh};
    for (let a = el.parentElement; a; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (/(auto|scroll|hidden|clip)/.test(cs.overflowX + cs.overflowY)) {
        const r = a.getBoundingClientRect();
        box = {left: Math.max(box.left, r.left), top: Math.max(box.top, r.top),
               right: Math.min(box.right, r.right), bottom: Math.min(box.bottom, r.bottom)};
      }
    }
    return box;
  };
  // a list (batches, a summary) scrolls in its own box: the box is on screen, and its first
  // control is; the rest are reached by scrolling the list, never the page
  const firstOfList = new Set([...scope.querySelectorAll('[data-list]')].map(l =>
      [...l.querySelectorAll(selector)].find(visible)).filter(Boolean));
  for (const list of scope.querySelectorAll('[data-list]')) {
    const r = list.getBoundingClientRect();
    if (visible(list) && (r.top < -0.5 || r.bottom > vh + 0.5 || r.left < -0.5 || r.right > vw + 0.5))
      out.push(`the list ${list.tagName.toLowerCase()}.${list.className} `
               + `(${r.top.toFixed(0)}-${r.bottom.toFixed(0)}) is not inside the viewport`);
  }
  for (const el of scope.querySelectorAll(selector)) {
    if (!visible(el) || el.closest('template')) continue;
    if (el.closest('[data-list]') && !firstOfList.has(el)) continue;
    if (getComputedStyle(el).visibility === 'hidden') continue;
    if (el.matches('input[type=radio], input[type=checkbox]') && el.closest('label')) continue;  // its label is the target
    const r = el.getBoundingClientRect(), b = clip(el);
    if (r.left < b.left - 0.5 || r.top < b.top - 0.5 || r.right > b.right + 0.5 || r.bottom > b.bottom + 0.5)
      out.push(`${name(el)} at ${r.left.toFixed(0)},${r.top.toFixed(0)}-${r.right.toFixed(0)},${r.bottom.toFixed(0)} `
               + `is outside the visible ${b.left.toFixed(0)},${b.top.toFixed(0)}-${b.right.toFixed(0)},${b.bottom.toFixed(0)} `
               + `(viewport ${vw}x${vh}, page ${document.documentElement.scrollHeight} px high)`);
  }
  const header = document.querySelector('#batch-header');
  if (header && visible(header) && !open.length) {
    const r = header.getBoundingClientRect();
    if (r.top < -0.5 || r.bottom > vh + 0.5) out.push(`#batch-header is not whole on screen (${r.top}-${r.bottom})`);
  }
  return out;
}
"""


FONT_ICONS_JS = """
() => [...document.querySelectorAll('.icon, [data-icon]')]
  .filter(el => !el.closest('template'))
  .filter(el => !el.querySelector('svg') || el.textContent.trim() !== '')
  .map(el => el.outerHTML.slice(0, 120))
"""


def font_icons(page: Any) -> list[str]:
    """Rule 3's icons render everywhere: every ``.icon`` is an inline SVG, none a font glyph
    (which shows as an empty box on a kiosk without a symbol or emoji font)."""
    return list(page.evaluate(FONT_ICONS_JS))


def targets(page: Any, ppi: int = DEFAULT_PPI, dpr: int = DEFAULT_DPR) -> list[str]:
    """Rule 1: every visible control is big enough and far enough from the next one."""
    found = page.evaluate(TARGETS_JS, [CONTROLS, min_target_px(ppi, dpr), min_gap_px(ppi, dpr)])
    return list(found["violations"])


def text_sizes(page: Any, body: float = 24, value: float = 32, weight: float = 96) -> list[str]:
    """Rule 2: body text >= 24 px, values and instructions >= 32 px, the live weight >= 96 px."""
    return list(page.evaluate(TEXT_JS, [body, value, weight]))


def alarm_colours(page: Any) -> list[dict[str, Any]]:
    """Rule 3: every use of an alarm hue on the page (with whether text and an icon go with it)."""
    return list(page.evaluate(COLOUR_JS))


def hover_rules(page: Any) -> list[str]:
    """Rule 4: CSS that reveals or changes layout only on :hover; inline hover/dblclick handlers."""
    return list(page.evaluate(HOVER_RULES_JS))


def listeners(page: Any) -> list[dict[str, str]]:
    return list(page.evaluate("window.__mesListeners || []"))


def position(page: Any) -> dict[str, Any]:
    """Rule 8: the header fields, the operator and terminal, the primary action."""
    return dict(page.evaluate(POSITION_JS, [CONTROLS]))


IN_VIEW_JS = """
(selectors) => {
  window.scrollTo(0, 0);
  const out = {};
  for (const sel of selectors) {
    const el = [...document.querySelectorAll(sel)].find(e => e.getClientRects().length);
    if (!el) { out[sel] = 'missing or not shown'; continue; }
    const r = el.getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight + 0.5 || r.right > window.innerWidth + 0.5)
      out[sel] = `top ${r.top.toFixed(0)}, bottom ${r.bottom.toFixed(0)} px; the viewport is ${window.innerWidth}x${window.innerHeight}`;
  }
  return out;
}
"""


def not_in_view(page: Any, selectors: list[str]) -> dict[str, str]:
    """Rule 8 for chosen elements: each selector's first shown element that is not inside the
    viewport at the top of the page, without scrolling (with where it is), or missing."""
    return dict(page.evaluate(IN_VIEW_JS, selectors))


def fold(page: Any) -> list[str]:
    """Rule 8: every control of the screen (or of its open dialog) and the batch header are
    inside the viewport at the top of the page, without scrolling."""
    return list(page.evaluate(FOLD_JS, [CONTROLS]))


def axe(page: Any) -> list[dict[str, Any]]:
    """Rule 12: axe-core with the WCAG 2.2 A/AA tags; the violations, shortened."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
                           AXE_TAGS)
    return [{"id": v["id"], "impact": v.get("impact"), "help": v["help"],
             "nodes": [n.get("target") for n in v["nodes"]][:5],
             "summary": (v["nodes"][0].get("failureSummary") or "")[:300] if v["nodes"] else ""}
            for v in result["violations"]]


def generic(page: Any, *, normal: bool = True) -> dict[str, Any]:
    """Rules 1, 2, 3, 8 and 12 on the current screen: {rule: violations}; empty lists = all hold."""
    colours = alarm_colours(page)
    pos = position(page)
    out: dict[str, Any] = {
        "targets": targets(page),
        "text": text_sizes(page),
        "colour": [c for c in colours if normal or not c["labelled"]],
        "axe": axe(page),
        "primary": [] if len(pos["primaries"]) == 1 and pos["primary_is_largest"] else
                   [f"expected one .primary that is the largest control, found {pos['primaries']} "
                    f"(largest: {pos['primary_is_largest']})"],
        "operator_terminal": [] if pos["screen"] in ("login", "error") or (pos["operator_anywhere"] and pos["terminal_anywhere"])
                             else [f"operator {pos['operator_anywhere']} / terminal {pos['terminal_anywhere']} not visible"],
    }
    if pos["screen"] == "login":
        out["operator_terminal"] = [] if pos["terminal_anywhere"] else ["the terminal is not shown on the login screen"]
    return out


def settled(page: Any) -> None:
    """Return once the page has run every task queued so far (a macrotask round trip): what a
    tap or key set going synchronously is done, so its absence can be asserted without a sleep."""
    page.evaluate("() => new Promise(resolve => setTimeout(resolve, 0))")


def rendered(page: Any) -> None:
    """Return once the page's fonts are loaded and two frames have been drawn since: what it
    shows now is what a person sees (for screenshots and layout measurements)."""
    page.evaluate("() => document.fonts.ready.then(() => new Promise(resolve => "
                  "requestAnimationFrame(() => requestAnimationFrame(resolve))))")


def live(page: Any, timeout: float = 10_000) -> None:
    """Return once the kiosk script is ready and its connection check has been answered since
    (it pings every 0.4 s): the banners show what the page knows about the server."""
    until(page, "() => window.__kioskReady === true", timeout=timeout)
    with page.expect_response(lambda r: "/kiosk/ping" in r.url, timeout=timeout):
        pass
    rendered(page)


def until(page: Any, js: str, arg: Any = None, timeout: float = 10_000, interval_ms: float = 50) -> Any:
    """Poll ``js`` in the page until it is truthy (Playwright's wait_for_function compiles its
    predicate with eval, which the kiosk's strict CSP rightly refuses; evaluate does not)."""
    import time

    deadline = time.monotonic() + timeout / 1000
    last: Any = None
    while True:
        try:
            last = page.evaluate(js, arg) if arg is not None else page.evaluate(js)
        except Exception as exc:  # noqa: BLE001 - a navigation in between: try again
            if "Execution context was destroyed" not in str(exc) and "navigat" not in str(exc):
                raise
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} ms waiting for {js.strip()[:200]} (arg {arg!r})")
        page.wait_for_timeout(interval_ms)
