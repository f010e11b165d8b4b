/* Kiosk parts that stand on their own, used by kiosk.js (loaded before it):
 *
 * - scanDecoder: tells a barcode scanner's keys (a keyboard wedge) from a person's typing;
 * - timer: a process timer's elapsed time and countdown, on the server's clock.
 */
(function () {
  "use strict";

  // A scanner types fast: every key less than 60 ms after the previous one by the key
  // events' own timestamps (a busy page handles them late, but they were typed in time),
  // then its suffix (Enter unless configured), after its prefix if one is configured.
  // Slower keys are a person typing and are never taken as a scan. A burst that lost its
  // start (a key that came late in the middle), lacks the prefix or is shorter than the
  // minimum is a partial scan: never taken as a code, and said (onPartial). The caller
  // ignores the same code scanned again within 2 s. config() gives {prefix, suffix, min}.
  // Returns onKey(key, at, ev), to be called for every key in the order typed.
  var SCAN_GAP_MS = 60, BROKEN_MS = 500;
  function scanDecoder(config, onCode, onPartial) {
    var buffer = "", lastKeyAt = 0, broken = false;
    return function onKey(key, at, ev) {
      var target = ev ? ev.target : null;
      var typing = target && (target.tagName === "TEXTAREA" ||
        (target.tagName === "INPUT" && /^(text|password|search)?$/.test(target.type || "")));
      var cfg = config();
      if (key === cfg.suffix) {
        var fast = buffer.length > 0 && at - lastKeyAt < SCAN_GAP_MS;
        var raw = buffer, code = raw, partial = broken;
        buffer = ""; broken = false;
        if (!fast) { return; }
        if (cfg.prefix) {
          if (code.indexOf(cfg.prefix) !== 0) { partial = true; } else { code = code.slice(cfg.prefix.length); }
        }
        if (code.length < cfg.min) { partial = true; }
        if (partial) {
          if (!typing) { if (ev) { ev.preventDefault(); } onPartial(); }
          return;
        }
        if (ev) { ev.preventDefault(); }
        if (typing) { target.value = target.value.slice(0, Math.max(0, target.value.length - raw.length)); }
        onCode(code);
        return;
      }
      if (key === "Enter" || key === "Tab") { buffer = ""; broken = false; return; } // not this scanner's suffix
      if (key.length !== 1) { return; } // Shift and the like, inside a scan of capitals
      if (buffer && at - lastKeyAt >= SCAN_GAP_MS) {
        broken = at - lastKeyAt < BROKEN_MS; // a lagging key inside a burst: what follows is a fragment
        buffer = "";
      }
      buffer += key;
      lastKeyAt = at;
      if (ev && !typing) { ev.preventDefault(); }
    };
  }

  // The timer box shows the elapsed time and what is left to the minimum (or that the
  // maximum is passed), on the server's clock (data-server-now), twice a second; the Stop
  // button is not the primary action before the minimum, and its confirmation says why.
  function timer(timerBox, i18n, iconEl) {
    var $ = function (sel, root) { return (root || document).querySelector(sel); };
    var started = Date.parse(timerBox.dataset.started);
    var skew = Date.parse(timerBox.dataset.serverNow) - Date.now(); // show the server clock, not this one
    var min = timerBox.dataset.minimum ? Number(timerBox.dataset.minimum) : null;
    var max = timerBox.dataset.maximum ? Number(timerBox.dataset.maximum) : null;
    var fmt = function (s) {
      s = Math.max(0, Math.floor(s));
      var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
      return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(sec).padStart(2, "0");
    };
    var tick = function () {
      var elapsed = (Date.now() + skew - started) / 1000;
      $("[data-field=elapsed]", timerBox).textContent = i18n.elapsed + " " + fmt(elapsed);
      var cd = $("[data-field=countdown]", timerBox);
      var over = max !== null && elapsed > max;
      var text = over ? i18n.over : (min !== null && elapsed < min ? i18n.remaining + " " + fmt(min - elapsed) : i18n.done);
      cd.className = over ? "value abnormal" : "value";
      var stop = $("[data-stop-timer]");
      if (stop) { // before the minimum: not the primary action, and its confirmation says why
        var early = min !== null && elapsed < min;
        stop.className = early ? "secondary" : "primary";
        stop.textContent = early ? stop.dataset.labelEarly : stop.dataset.labelStop;
        if (early) { stop.dataset.consequence = stop.dataset.earlyConsequence; } else { delete stop.dataset.consequence; }
      }
      cd.innerHTML = "";
      cd.appendChild(iconEl(over ? "warning" : (min !== null && elapsed < min ? "timer" : "check")));
      cd.appendChild(document.createTextNode(" " + text));
    };
    tick();
    setInterval(tick, 500);
  }

  window.KioskParts = { scanDecoder: scanDecoder, timer: timer };
})();
