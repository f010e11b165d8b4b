/* Kiosk behaviour: keypad, scanner, confirm-before-commit, live weight, banners, idle logout.
 *
 * No inline script anywhere (the CSP forbids it): everything hangs off data attributes of
 * the server-rendered page. Values typed here are only shown and sent; the server checks
 * every one of them. Nothing is recorded without the confirm dialog's Confirm.
 */
(function () {
  "use strict";

  var body = document.body;
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
  var i18n = ($("#i18n") || {}).dataset || {};
  var csrf = ($('meta[name="csrf-token"]') || {}).content || "";
  var state = { online: true, deviceOk: true, deviceNeeded: false, weightOk: false, pendingForm: null, pendingButton: null };

  // icons are inline SVG (they render without any symbol font): cloned from <template id="icons">
  function iconEl(name) {
    var t = $("#icons");
    var src = t && t.content ? t.content.querySelector('[data-icon="' + name + '"]') : null;
    if (src) { return src.cloneNode(true); }
    var s = document.createElement("span");
    s.className = "icon"; s.setAttribute("aria-hidden", "true"); s.dataset.icon = name;
    return s;
  }
  function setIcon(holder, name) {
    var old = $(".icon", holder);
    if (old && old.dataset.icon === name) { return; }
    var fresh = iconEl(name);
    if (old) { old.parentNode.replaceChild(fresh, old); } else { holder.insertBefore(fresh, holder.firstChild); }
  }

  function showMessage(text) {
    var box = $("#message");
    if (!box) { return; }
    $(".text", box).textContent = text;
    box.hidden = !text;
  }

  // ------------------------------------------------------------ commit controls
  function refreshCommits() {
    var allowed = state.online && (!state.deviceNeeded || state.deviceOk);
    $$("[data-commit]").forEach(function (b) {
      var own = b.dataset.ownDisabled === "true";
      b.disabled = !allowed || own;
    });
  }
  function setOwnDisabled(button, disabled) {
    if (!button) { return; }
    button.dataset.ownDisabled = disabled ? "true" : "false";
    refreshCommits();
  }
  // buttons rendered disabled by the server stay disabled until the page says otherwise
  $$("[data-commit]").forEach(function (b) { b.dataset.ownDisabled = b.disabled ? "true" : "false"; });

  // ------------------------------------------------------------ drafts (idle, reconnect)
  var draftKey = body.dataset.step ? ["draft", body.dataset.user, body.dataset.batch, body.dataset.step, body.dataset.attempt].join(":") : null;
  var lastScanned = null; // the code the step last took from the scanner (not a badge)
  function snapshot() {
    // everything entered on the step but the PIN: entries, ticks, the scan, the container, the badge
    var draft = {};
    $$("input[data-bind=entry], input[data-bind=results]").forEach(function (i) { if (i.value && i.name) { draft[i.name] = i.value; } });
    // ticked label states (not the e-signature acknowledgement: that is given at signing)
    var ticked = $$("#step-form input[type=checkbox][data-label]:checked").map(function (i) { return i.name + "=" + i.value; });
    if (ticked.length) { draft["ticked:"] = ticked.join("\n"); }
    if (lastScanned) { draft["scan:"] = lastScanned; }
    var pick = $('input[name="container_pick"]:checked');
    if (pick) { draft["pick:"] = pick.value; }
    var badge = boundInput("badge");
    if (badge && badge.value) { draft["badge:"] = badge.value; }
    return draft;
  }
  function saveDraft() {
    if (!draftKey) { return; }
    var draft = snapshot();
    try {
      if (Object.keys(draft).length) { sessionStorage.setItem(draftKey, JSON.stringify(draft)); }
      else { sessionStorage.removeItem(draftKey); }
    } catch (e) { /* storage full or off: the draft is only a convenience */ }
  }
  function clearDraft() { try { if (draftKey) { sessionStorage.removeItem(draftKey); } } catch (e) { /* ignore */ } }
  // what a confirmed form sent: put back if the server refuses it (rule 14), dropped otherwise
  var sentKey = draftKey ? draftKey + ":sent" : null;
  function keepSent() { try { if (sentKey) { sessionStorage.setItem(sentKey, JSON.stringify(snapshot())); } } catch (e) { /* ignore */ } }

  // ------------------------------------------------------------ keypad and entry fields
  var activeTarget = null; // "entry" | "badge" | "pin"
  function boundInput(name, root) { return $('input[data-bind="' + name + '"]', root || document); }
  function renderField(name, root) {
    var input = boundInput(name, root);
    // a step's entry may be shown beside the form (the sample check's results column)
    var out = name === "entry" ? ($("[data-field=entry]", root) || $("[data-field=entry]")) : $('[data-field-of="' + name + '"]', root);
    if (!input || !out) { return; }
    var field = $('.field[data-entry-target="' + name + '"]', root);
    var secret = name === "pin" || (field && field.dataset.secret === "true");
    out.textContent = secret ? input.value.replace(/./g, "●") : input.value;
  }
  function scopeOf(el) { return el.closest("form") || document; }
  function keypadInput(scope) {
    if ($("input[data-bind=entry]", scope)) { return "entry"; }
    var active = $(".field.active", scope);
    return active ? active.dataset.entryTarget : null;
  }
  function press(key, scope) {
    var name = keypadInput(scope);
    var input = name && boundInput(name, scope);
    if (!input) { return; }
    var v = input.value;
    if (key === "back") { v = v.slice(0, -1); }
    else if (key === "clear") { v = ""; }
    else if (key === ".") { if (name === "entry" && v.indexOf(".") < 0) { v = (v || "0") + "."; } }
    else if (/^[0-9]$/.test(key)) { if (v.length < 18) { v = v + key; } }
    input.value = v;
    renderField(name, scope);
    if (name === "entry") { saveDraft(); }
  }
  $$(".keypad").forEach(function (pad) {
    // click fires on release; one tap, one key (no double-tap, no hover)
    pad.addEventListener("click", function (ev) {
      var b = ev.target.closest("button[data-key]");
      if (b) { press(b.dataset.key, scopeOf(pad)); }
    });
  });
  $$(".field[data-entry-target]").forEach(function (f) {
    f.addEventListener("click", function () {
      $$(".field", scopeOf(f)).forEach(function (o) { o.classList.toggle("active", o === f); });
    });
  });
  // move from badge to PIN once a badge is there
  function advanceToPin(scope) {
    var pinField = $('.field[data-entry-target="pin"]', scope);
    if (pinField) { $$(".field", scope).forEach(function (o) { o.classList.toggle("active", o === pinField); }); }
  }

  // sample checks: several results through one entry
  var resultsInput = $("input[data-bind=results]");
  function renderResults() {
    if (!resultsInput) { return; }
    var list = resultsInput.value ? resultsInput.value.split(";") : [];
    var ol = $("#results-list");
    ol.innerHTML = "";
    list.forEach(function (r) { var li = document.createElement("li"); li.textContent = r; ol.appendChild(li); });
    var count = $("[data-field=sample-count]");
    if (count) { count.textContent = String(Math.min(list.length + 1, Number(resultsInput.dataset.samples))); }
  }
  if (resultsInput) {
    $("[data-action=add-result]").addEventListener("click", function () {
      var entry = boundInput("entry");
      var list = resultsInput.value ? resultsInput.value.split(";") : [];
      if (!entry.value) { showMessage(i18n.enterFirst); return; }
      if (list.length >= Number(resultsInput.dataset.samples)) { return; }
      list.push(entry.value);
      resultsInput.value = list.join(";");
      entry.value = "";
      renderField("entry");
      renderResults();
      saveDraft();
    });
    $("[data-action=remove-result]").addEventListener("click", function () {
      var list = resultsInput.value ? resultsInput.value.split(";") : [];
      list.pop();
      resultsInput.value = list.join(";");
      renderResults();
      saveDraft();
    });
  }

  // a second-person verification: what it covers is read first, then the badge and PIN
  function reviewed() {
    var review = $("[data-review]"), panel = $(".sign-panel[hidden]");
    if (!review || !panel) { return; }
    review.hidden = true; panel.hidden = false;
  }
  $$("[data-action=reviewed]").forEach(function (b) { b.addEventListener("click", reviewed); });
  function restore(kept) {
    Object.keys(kept).forEach(function (name) {
      if (name === "ticked:") {
        kept[name].split("\n").forEach(function (pair) {
          $$("#step-form input[type=checkbox][data-label]").forEach(function (c) {
            if (c.name + "=" + c.value === pair) { c.checked = true; }
          });
        });
        return;
      }
      if (/:$/.test(name)) { return; }
      var i = $('input[name="' + name + '"]');
      if (i) { i.value = kept[name]; }
    });
    renderField("entry");
    renderResults();
    var badge = boundInput("badge");
    if (badge && kept["badge:"]) { reviewed(); badge.value = kept["badge:"]; renderField("badge", scopeOf(badge)); advanceToPin(scopeOf(badge)); }
    if (kept["scan:"]) { takeScan(kept["scan:"], kept["pick:"]); }
  }
  // restore a draft kept across an idle logout or a reload (never recorded by itself), or
  // what was sent when the server refused it (the refusal's sentence says what happened)
  var sent = null;
  try { if (sentKey) { sent = JSON.parse(sessionStorage.getItem(sentKey) || "null"); sessionStorage.removeItem(sentKey); } }
  catch (e) { sent = null; }
  if (sent && body.dataset.refused === "true") {
    restore(sent);
    saveDraft();
  } else if (draftKey) {
    try {
      var kept = JSON.parse(sessionStorage.getItem(draftKey) || "null");
      if (kept) {
        restore(kept);
        var notice = $("#notice");
        if (!notice) {
          notice = document.createElement("p");
          notice.id = "notice"; notice.className = "notice"; notice.setAttribute("role", "status");
          $("#main").insertBefore(notice, $("#main").children[1] || null);
        }
        notice.textContent = i18n.restored;
      }
    } catch (e) { /* ignore a broken draft */ }
  }

  // ------------------------------------------------------------ scanner (keyboard wedge)
  // The keyboard wedge's bursts are told from a person's typing by KioskParts.scanDecoder
  // (kiosk-parts.js): a whole code goes to onScan, a partial scan is said, never taken.
  var lastScan = { code: "", at: 0 };
  var DUPLICATE_MS = 2000;
  var onKey = window.KioskParts.scanDecoder(function () {
    var d = body.dataset;
    return { prefix: d.scanPrefix || "", suffix: d.scanSuffix || "Enter", min: Number(d.scanMin || 3) };
  }, function (code) { onScan(code); }, function () { showMessage(i18n.partialScan); });
  document.addEventListener("keydown", function (ev) { onKey(ev.key, ev.timeStamp || performance.now(), ev); }, true);

  function scanTarget() {
    var open = $("dialog[open] [data-expects-scan]");
    if (open) { return open; }
    var targets = $$("[data-expects-scan]");
    return targets.length ? targets[targets.length - 1] : null;
  }
  function onScan(code) {
    var t = performance.now();
    if (code === lastScan.code && t - lastScan.at < DUPLICATE_MS) { return; } // the same label, twice
    lastScan = { code: code, at: t };
    if (!scanTarget()) { return; }
    showMessage(""); // a new scan is a new action: the last one's message no longer applies
    takeScan(code);
    saveDraft();
  }
  function takeScan(code, pick) {
    var target = scanTarget();
    if (!target) { return; }
    var kind = target.dataset.expectsScan;
    var scope = scopeOf(target);
    body.dispatchEvent(new CustomEvent("kiosk:scan", { detail: { code: code, kind: kind } }));
    if (kind === "badge") {
      var badge = boundInput("badge", scope);
      if (badge) { reviewed(); badge.value = code; renderField("badge", scope); advanceToPin(scope); }
      return;
    }
    lastScanned = code;
    if (kind === "lot") {
      lookUpLot(code, target.dataset.item || "", pick);
    } else {
      var input = boundInput("scan", scope);
      if (input) { input.value = code; }
      $$("[data-field=scanned]", scope).forEach(function (s) { s.textContent = code; });
    }
  }

  function lookUpLot(code, item, pick) {
    var box = $("#lot-info");
    var lot = boundInput("lot"), container = boundInput("container");
    if (lot) { lot.value = ""; }
    if (container) { container.value = ""; }
    $$("[data-field=scanned]").forEach(function (s) { s.textContent = code; });
    var url = "/kiosk/lots/" + encodeURIComponent(code) + "?item=" + encodeURIComponent(item);
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" }).then(function (r) {
      return r.text().then(function (html) { return { ok: r.ok, html: html }; });
    }).then(function (res) {
      if (!res.ok) { showMessage(i18n.scanFirst); return; }
      box.innerHTML = res.html;
      if (window.htmx) { window.htmx.process(box); }
      var info = $(".lot-info", box);
      if (info && info.dataset.lotOk === "true") {
        if (lot) { lot.value = info.dataset.lotId; }
        if (container) { container.value = info.dataset.containerId || ""; }
      } else if (lot && !container) {
        // an identify step sends what was scanned: the server refuses it with the reason
        lot.value = info ? (info.dataset.lotId || code) : code;
      }
      var lotCommit = $("[data-lot-commit]");
      if (lotCommit) { lotCommit.className = info && info.dataset.lotOk === "true" ? "primary" : "secondary"; }
      $$('input[name="container_pick"]', box).forEach(function (r) {
        r.addEventListener("change", function () { if (container) { container.value = r.value; } updateWeigh(); saveDraft(); });
        if (pick && r.value === pick) { r.checked = true; if (container) { container.value = r.value; } }
      });
      updateWeigh();
    }).catch(function () { showMessage(i18n.scanFirst); });
  }

  // ------------------------------------------------------------ confirm before commit
  var dialog = $("#confirm-dialog");
  function showDialog(d, full) {
    body.classList.add("dialog-open");
    body.classList.toggle("dialog-full", !!full);
    d.showModal();
  }
  $$("dialog").forEach(function (d) {
    d.addEventListener("close", function () {
      if (!$("dialog[open]")) { body.classList.remove("dialog-open", "dialog-full"); }
    });
  });
  function summaryFor(form, button) {
    var rows = [];
    $$("input[data-label], select[data-label], textarea[data-label]", form).forEach(function (i) {
      if ((i.type === "radio" || i.type === "checkbox") && !i.checked) { return; }
      if (i.type === "checkbox") {
        var prev = rows.filter(function (r) { return r[0] === i.dataset.label; })[0];
        var text = i.closest("label") ? i.closest("label").textContent.trim() : i.value;
        if (prev) { prev[1] += ", " + text; return; }
        rows.push([i.dataset.label, text]);
        return;
      }
      var value = i.dataset.display || i.value; // a scale by its name, not its id
      if (i.type === "radio" && i.closest("label")) { value = i.closest("label").textContent.trim(); }
      if (i.tagName === "SELECT") { value = i.options[i.selectedIndex].textContent; }
      if (!value) { return; }
      if (i.dataset.bind === "results") { value = value.split(";").join("  ·  "); }
      rows.push([i.dataset.label, value + (i.dataset.unit ? " " + i.dataset.unit : "")]);
    });
    if (button && button.dataset.summary) { rows.push(["", button.dataset.summary]); }
    return rows;
  }
  function openConfirm(form, button, extra) {
    state.pendingForm = form; state.pendingButton = button;
    if (weigh && form.contains(weigh)) { freezeReading(form, button); }
    $(".confirm-lead", dialog).textContent = form.dataset.confirmLead || "";
    var dl = $("#confirm-summary", dialog);
    dl.innerHTML = "";
    summaryFor(form, button).concat(extra || []).forEach(function (r) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = r[0]; dd.textContent = r[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    var consequence = $(".consequence", dialog); // what confirming this does beyond recording it
    consequence.hidden = !(button && button.dataset.consequence);
    $(".text", consequence).textContent = consequence.hidden ? "" : button.dataset.consequence;
    var openDlg = $("dialog[open]:not(#confirm-dialog)");
    if (openDlg) { openDlg.close(); }
    showDialog(dialog);
    refreshCommits();
  }
  function precheck(form, button) {
    // every input still missing, said at once before Confirm (rule 14), where the operator looks
    var missing = $$("fieldset[data-choose]", form).filter(function (f) { return !$("input:checked", f); })
      .map(function (f) { return f.dataset.choose; });
    var has = function (attr) { return button && button.hasAttribute(attr); };
    if (has("data-needs-scan")) {
      var s = boundInput("lot", form) || boundInput("scan", form);
      if (s && !s.value) { missing.push(i18n.scanFirst); }
    }
    $$("fieldset[data-tick-all]", form).forEach(function (f) {
      var open = $$("input[type=checkbox]", f).filter(function (c) { return !c.checked; })
        .map(function (c) { return c.closest("label").textContent.trim(); });
      if (open.length) { missing.push(f.dataset.tickAll.replace("{states}", open.join(", "))); }
    });
    var e = boundInput("entry", form), r = boundInput("results", form);
    if (has("data-needs-entry") && e && !e.value) { missing.push(i18n.enterFirst); }
    if (has("data-needs-results") && r && !r.value && e && !e.value) { missing.push(i18n.enterFirst); }
    if (has("data-needs-pin")) {
      var b = boundInput("badge", form), p = boundInput("pin", form);
      if (b && !b.value) { missing.push(i18n.badgeFirst); }
      if (p && !p.value) { missing.push(i18n.pinFirst); }
    }
    var box = $(".form-message", form);
    if (box) { box.hidden = !missing.length; $(".text", box).textContent = missing.join(" "); }
    if (!box) { showMessage(missing.join(" ")); } // or none: the last check's sentence no longer applies
    if (missing.length) { return false; }
    if (has("data-needs-results") && r && e && e.value) { // a last result typed but not added yet
      r.value = r.value ? r.value + ";" + e.value : e.value; e.value = ""; renderField("entry", form); renderResults();
    }
    return true;
  }
  function nameSigner(form, button) {
    // the dialog names who signs (rule 5): the badge and PIN are checked first, as at log-in
    var data = new FormData();
    data.append("csrf_token", $('input[name="csrf_token"]', form).value);
    data.append("badge", boundInput("badge", form).value);
    data.append("pin", boundInput("pin", form).value);
    var panel = $("[data-signer-own]", form);
    data.append("own", panel && panel.dataset.signerOwn === "true" ? "1" : "0");
    fetch("/kiosk/signer", { method: "POST", body: data, credentials: "same-origin",
                             headers: { "Accept": "application/json" } }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, body: j }; });
    }).then(function (res) {
      if (res.ok) { showMessage(""); openConfirm(form, button, [[i18n.signer, res.body.name]]); return; }
      var pin = boundInput("pin", form);
      pin.value = ""; renderField("pin", form); // the badge stays; the PIN is typed again
      showMessage(res.body.detail || i18n.enterFirst);
    }).catch(function () { showMessage(i18n.offline); });
  }
  $$("form.confirm-form").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      var button = ev.submitter || $("button[type=submit]", form);
      var confirmed = $('input[name="confirmed"]', form);
      if (confirmed && confirmed.value === "1") { keepSent(); clearDraft(); return; }
      ev.preventDefault();
      if (!precheck(form, button)) { return; }
      if (button && button.hasAttribute("data-needs-pin") && boundInput("badge", form)) { nameSigner(form, button); return; }
      openConfirm(form, button);
    });
  });
  if (dialog) {
    $("[data-action=cancel]", dialog).addEventListener("click", function () {
      dialog.close(); state.pendingForm = null;
    });
    $("[data-action=confirm]", dialog).addEventListener("click", function () {
      var form = state.pendingForm, button = state.pendingButton;
      if (!form || !state.online) { return; }
      $('input[name="confirmed"]', form).value = "1";
      dialog.close();
      if (form.requestSubmit) { form.requestSubmit(button && button.form === form && !button.disabled ? button : undefined); }
      else { form.submit(); }
      $$("[data-commit]").forEach(function (b) { b.dataset.ownDisabled = "true"; });
      refreshCommits(); // one tap, one record: nothing can be sent twice while this one travels
    });
    dialog.addEventListener("cancel", function () { state.pendingForm = null; });
  }
  $$("[data-action=raise-deviation]").forEach(function (b) {
    b.addEventListener("click", function () { var d = $("#deviation-dialog"); if (d) { showDialog(d, true); } });
  });
  $$("[data-action=close-dialog]").forEach(function (b) {
    b.addEventListener("click", function () { var d = b.closest("dialog"); if (d) { d.close(); } });
  });

  // ------------------------------------------------------------ text that does not fit its box
  // A step's text never scrolls the page: a box too small for it shows "Read all", which opens
  // the whole text in a dialog (one tap, Close to go back).
  $$("[data-clip]").forEach(function (box) {
    var more = $("[data-action=read-all]", box);
    if (!more) { return; }
    var fit = function () { more.hidden = true; more.hidden = box.scrollHeight <= box.clientHeight + 2; };
    fit();
    window.addEventListener("resize", fit);
    if (document.fonts && document.fonts.ready) { document.fonts.ready.then(fit); }
    more.addEventListener("click", function () {
      var d = $("#read-dialog");
      if (!d) { return; }
      var copy = box.cloneNode(true);
      $$("button, [id]", copy).forEach(function (el) { if (el.tagName === "BUTTON") { el.remove(); } else { el.removeAttribute("id"); } });
      copy.removeAttribute("id"); copy.removeAttribute("data-clip"); copy.removeAttribute("aria-labelledby");
      $$("[data-field]", copy).forEach(function (el) { el.removeAttribute("data-field"); });
      var holder = $(".read-body", d);
      holder.innerHTML = "";
      while (copy.firstChild) { holder.appendChild(copy.firstChild); }
      showDialog(d, true);
    });
  });

  // ------------------------------------------------------------ decimals (exact, for in-band checks)
  var NANO = { kg: 1000000000000n, g: 1000000000n, mg: 1000000n };
  function toNano(text, unit) {
    if (text === null || text === undefined || text === "" || !(unit in NANO)) { return null; }
    var m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(text).trim());
    if (!m) { return null; }
    var frac = (m[3] || "");
    var scale = 10n ** BigInt(frac.length);
    var n = BigInt(m[2] + frac) * NANO[unit] / scale;
    return m[1] ? -n : n;
  }

  // ------------------------------------------------------------ weigh
  var weigh = $("#weigh");
  var reading = null, readingAt = 0;
  function updateWeigh() {
    if (!weigh) { return; }
    var unit = weigh.dataset.unit;
    var low = toNano(weigh.dataset.low, unit), high = toNano(weigh.dataset.high, unit);
    var done = toNano(weigh.dataset.weighed || "0", unit) || 0n;
    var multiple = weigh.dataset.multiple === "true";
    var capture = $("[data-action=capture]"), outButton = $("[data-action=out-of-tolerance]");
    var more = $('input[name="more"]');
    var fresh = reading && performance.now() - readingAt < 2000;
    var value = fresh ? toNano(reading.value, reading.unit) : null;
    var stable = !!(fresh && reading.stable && reading.status === "ok" && value !== null);
    // a recipe step may take a moving reading (stable_reading: false); the server checks it again
    var usable = stable || !!(weigh.dataset.requireStable === "false" && fresh && reading.status === "dynamic" &&
                              value !== null);
    var lw = $("#live-weight");
    $("[data-field=value]", lw).textContent = fresh && reading.value !== null ? reading.value : "—";
    $("[data-field=unit]", lw).textContent = fresh && reading.unit ? reading.unit : unit;
    var st = $("[data-field=stability]", lw);
    st.classList.toggle("stable", stable); st.classList.toggle("moving", !stable);
    setIcon(st, stable ? "stable" : "moving");
    $(".text", st).textContent = !fresh ? i18n.noReading : (stable ? i18n.stable : i18n.moving);
    var band = $("#tolerance-band"), pos = $("[data-field=band-position]", band), marker = $(".band-marker", band);
    var where = null;
    if (value !== null && low !== null && high !== null) {
      var total = done + value;
      where = total > high ? "above" : (total < low ? "below" : "in");
      var width = high - low;
      var pct = width > 0n ? 25 + Number((total - low) * 5000n / width) / 100 : 50;
      pct = Math.max(0, Math.min(100, pct));
      marker.style.left = pct + "%"; // CSSOM, allowed by the CSP (no style attribute in the markup)
      marker.classList.add("shown");
      pos.textContent = where === "in" ? i18n.inBand : (where === "above" ? i18n.above : i18n.below);
      // ISA-101: filling up to the window is the normal course of dispensing (grey); only a
      // weight above the window is abnormal and gets the amber alarm colour (with its text and icon)
      band.classList.toggle("out", where === "above");
    } else {
      marker.classList.remove("shown");
      pos.textContent = "—";
      band.classList.remove("out");
    }
    var hasLot = boundInput("lot") && boundInput("lot").value && boundInput("container") && boundInput("container").value;
    // capture: stable (or usable, see above) and in band (or, with more containers to come, below the window)
    var canFinal = usable && where === "in";
    var canPartial = usable && multiple && where === "below" && value > 0n;
    more.value = canFinal ? "0" : (canPartial ? "1" : "0");
    setOwnDisabled(capture, !(hasLot && (canFinal || canPartial)));
    capture.dataset.summary = usable && reading ? (reading.value + " " + reading.unit + (canPartial ? " (+)" : "")) : "";
    var outOfBand = usable && (where === "above" || (where === "below" && !multiple));
    outButton.hidden = !(outOfBand && hasLot);
    setOwnDisabled(outButton, !(outOfBand && hasLot));
    if (outButton.hidden) { outButton.dataset.ownDisabled = "true"; }
    if (!outButton.hidden) { more.value = "0"; }
  }
  // What Confirm shows is what is stored: the reading shown in the dialog is frozen into the
  // form (device, sequence, value, unit); the server records exactly it, or refuses if the
  // scale has moved on since.
  function freezeReading(form, button) {
    var shown = reading;
    var set = function (name, v) { var i = $('input[name="' + name + '"]', form); if (i) { i.value = v; } };
    set("sequence", shown && shown.sequence !== undefined ? shown.sequence : "");
    set("value", shown && shown.value !== null ? shown.value : "");
    set("reading_unit", shown && shown.unit ? shown.unit : "");
    if (button && button.dataset.action === "capture" && shown) {
      button.dataset.summary = shown.value + " " + shown.unit + ($('input[name="more"]', form).value === "1" ? " (+)" : "");
    }
    if (button && button.dataset.action === "out-of-tolerance" && shown) {
      button.dataset.summary = shown.value + " " + shown.unit + " · " + (button.dataset.summaryText || button.dataset.summary);
    }
  }
  // The tare a scale holds stays with the scale (kept in this browser, per device) until it
  // is tared or zeroed again, also across a refusal's reload of the step.
  function keepTare(device, tare) {
    var put = function (name, v) { var i = $('input[name="' + name + '"]'); if (i) { i.value = v; } };
    put("tare_source", tare ? "scale_tare" : ""); put("tare_value", tare ? tare.value : "");
    put("tare_unit", tare ? tare.unit : "");
    var net = $("#net-indicator");
    if (net) {
      net.hidden = !tare;
      $(".text", net).textContent = tare ? net.dataset.tareLabel + " " + tare.value + " " + tare.unit : "";
    }
    try {
      if (tare) { sessionStorage.setItem("tare:" + device, JSON.stringify(tare)); }
      else { sessionStorage.removeItem("tare:" + device); }
    } catch (e) { /* storage off: the operator tares again */ }
  }
  function deviceCommand(action) {
    var id = weigh.dataset.device;
    if (!id) { return; }
    fetch("/api/v1/devices/" + encodeURIComponent(id) + "/" + action, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" }, body: "{}"
    }).then(function (r) {
      if (!r.ok) { return r.json().then(function (p) { showMessage(p.detail || i18n.deviceFailed); }); }
      showMessage("");
      return r.json().then(function (answer) { // the tare the scale holds: recorded with the container
        if (action === "zero") { keepTare(id, null); }
        if (action === "tare" && answer.tare) { keepTare(id, answer.tare); }
      });
    }).catch(function () { showMessage(i18n.deviceFailed); });
  }
  if (weigh) {
    state.deviceNeeded = true;
    state.deviceOk = false;
    $("[data-action=tare]").addEventListener("click", function () { deviceCommand("tare"); });
    try {
      var heldTare = weigh.dataset.device && JSON.parse(sessionStorage.getItem("tare:" + weigh.dataset.device) || "null");
      if (heldTare) { keepTare(weigh.dataset.device, heldTare); }
    } catch (e) { /* a broken entry: the operator tares again */ }
    $("[data-action=zero]").addEventListener("click", function () { deviceCommand("zero"); });
    setInterval(function () { // a silent scale is a lost scale
      var silent = !reading || performance.now() - readingAt > 2000;
      setDevice(!silent && state.deviceStatusOk !== false);
      updateWeigh();
    }, 250);
    updateWeigh();
  }
  function setDevice(ok) {
    if (!state.deviceNeeded) { return; }
    state.deviceOk = ok;
    var banner = $("#device-banner");
    if (banner) { banner.hidden = ok; }
    refreshCommits();
  }

  // ------------------------------------------------------------ live data (Socket.IO /live)
  var socket = null, liveUp = false, pollTimer = null, polledSequence = null;
  function onReading(r) {
    if (!weigh || r.device_id !== weigh.dataset.device) { return; }
    reading = r; readingAt = performance.now();
    if (r.status !== "disconnected") { state.deviceStatusOk = true; }
    updateWeigh();
  }
  function onDeviceStatus(s) {
    if (!weigh || s.device_id !== weigh.dataset.device) { return; }
    state.deviceStatusOk = !!s.connected;
    if (!s.connected) { reading = null; setDevice(false); updateWeigh(); }
  }
  // Without a live connection (a server with no room for another one refuses it with 503,
  // mes.realtime.LiveBudget) the weigh step reads its scale over the REST API twice a second.
  // Only a new reading (a new sequence) counts as fresh: a scale that went silent still shows
  // as lost after 2 s.
  function pollReading() {
    if (liveUp || !weigh || !weigh.dataset.device || !state.online) { return; }
    fetch("/api/v1/devices/" + encodeURIComponent(weigh.dataset.device),
      { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d || liveUp) { return; }
        onDeviceStatus(d);
        if (d.connected && d.reading && d.reading.epoch + ":" + d.reading.sequence !== polledSequence) {
          polledSequence = d.reading.epoch + ":" + d.reading.sequence;
          onReading(d.reading);
        }
      })
      .catch(function () { /* the ping shows a lost server */ });
  }
  function connectLive() {
    if (!window.io || body.dataset.loggedIn !== "true") { return; }
    socket = window.io("/live", { transports: ["websocket", "polling"], reconnectionDelay: 500, reconnectionDelayMax: 2000 });
    socket.on("connect", function () {
      liveUp = true;
      if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
      socket.io.reconnectionDelay(500); socket.io.reconnectionDelayMax(2000);
      if (weigh && weigh.dataset.device) { socket.emit("watch", { devices: [weigh.dataset.device] }); }
      if (body.dataset.line) { socket.emit("watch_line", { line: body.dataset.line }); }
    });
    socket.on("connect_error", function () { // refused or unreachable: read the scale without it, ask again less often
      liveUp = false;
      socket.io.reconnectionDelay(5000); socket.io.reconnectionDelayMax(10000);
      if (weigh && !pollTimer) { pollTimer = setInterval(pollReading, 500); pollReading(); }
    });
    socket.on("reading", onReading);
    socket.on("device_status", onDeviceStatus);
    socket.on("batch_changed", function (e) {
      body.dispatchEvent(new CustomEvent("batch-changed", { detail: e }));
      if (body.dataset.screen === "blocked" && e.batch_id === body.dataset.batch) { refetch(); }
    });
    socket.on("lot_hold", function (e) { // a QMS hold (or its release) on a lot this batch consumes
      if (!body.dataset.batch || (e.batches || []).indexOf(body.dataset.batch) < 0) { return; }
      showHold(e);
    });
    socket.on("disconnect", function () { liveUp = false; checkServer(); });
  }
  var heldLots = {};
  function showHold(e) { // the server refuses the next consumption anyway; this tells the operator why, at once
    var banner = $("#hold-banner");
    if (!banner) { return; }
    if (e.active) { heldLots[e.lot_id] = e; } else { delete heldLots[e.lot_id]; }
    var ids = Object.keys(heldLots);
    banner.hidden = ids.length === 0;
    if (ids.length) {
      var last = heldLots[ids[ids.length - 1]];
      banner.querySelector(".text").textContent = banner.dataset.held.replace("{lot}", last.lot_id) +
        (last.message ? " " + last.message : "");
    }
  }

  // ------------------------------------------------------------ connection banner
  var wasOffline = false;
  function setOnline(ok) {
    state.online = ok;
    var banner = $("#connection-banner");
    if (banner) { banner.hidden = ok; }
    if (!ok && dialog && dialog.open) { dialog.close(); state.pendingForm = null; }
    refreshCommits();
    if (ok && logoutPending) { logoutPending = false; $("#logout-form").submit(); return; }
    if (ok && wasOffline) { refetch(); }
    wasOffline = !ok;
  }
  function refetch() { // the screen's own state again, by GET (never a resent form)
    saveDraft();
    try { sessionStorage.setItem("kiosk:refetch", "1"); } catch (e) { /* ignore */ }
    window.location.assign(body.dataset.refetch || window.location.pathname);
  }
  // A refused connection means the server is gone: offline at once. A server that does not
  // answer (hung, or a cable cut on the way) is offline when a ping goes unanswered for
  // PING_TIMEOUT_MS: with a ping every PING_EVERY_MS the banner shows within 2 s of the hang
  // (kiosk-ux rule 9), while a busy server answering in a second does not flash it.
  var PING_EVERY_MS = 400, PING_TIMEOUT_MS = 1200;
  var checking = false, logoutPending = false;
  function checkServer() {
    if (checking) { return; }
    checking = true;
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) { ctl.abort(); } setOnline(false); }, PING_TIMEOUT_MS);
    // no cookie either way: a heartbeat answered after a log-in must not put the old session back
    fetch("/kiosk/ping", { cache: "no-store", credentials: "omit", signal: ctl ? ctl.signal : undefined })
      .then(function (r) { setOnline(r.ok); })
      .catch(function () { setOnline(false); })
      .then(function () { clearTimeout(timer); checking = false; });
  }
  setInterval(checkServer, PING_EVERY_MS);
  window.addEventListener("offline", function () { setOnline(false); });
  window.addEventListener("online", checkServer);

  // ------------------------------------------------------------ blocked: wait for QA, then go on
  if (body.dataset.screen === "blocked") {
    setInterval(function () { // a fallback to the live batch_changed event
      if (!state.online) { return; }
      fetch(body.dataset.refetch || location.href, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (r) { return r.text(); })
        .then(function (html) { if (html.indexOf('data-screen="blocked"') < 0) { refetch(); } })
        .catch(function () { /* the connection banner tells */ });
    }, 5000);
  }

  // ------------------------------------------------------------ timers
  var timerBox = $("#timer");
  if (timerBox && timerBox.dataset.started) { window.KioskParts.timer(timerBox, i18n, iconEl); }

  // ------------------------------------------------------------ idle logout
  var idleSeconds = Number(body.dataset.idleSeconds || "300");
  var idleKey = "idle:" + (body.dataset.user || "");
  var lastActivity = Date.now(), restored = false;
  try { // a re-fetch (reload) is not activity: keep counting from the last touch
    var keptAt = Number(sessionStorage.getItem(idleKey) || "0");
    var refetched = sessionStorage.getItem("kiosk:refetch") === "1";
    sessionStorage.removeItem("kiosk:refetch");
    if (keptAt && refetched && Date.now() - keptAt < idleSeconds * 1000 && body.dataset.screen !== "login") {
      lastActivity = keptAt; restored = true;
    }
  } catch (e) { /* ignore */ }
  function touched() {
    lastActivity = Date.now();
    try { sessionStorage.setItem(idleKey, String(lastActivity)); } catch (e) { /* ignore */ }
  }
  if (!restored) { touched(); }
  var idleBox = $("#idle-countdown");
  var warnSeconds = Math.max(5, Math.min(30, Math.floor(idleSeconds / 3)));
  var loggingOut = false;
  ["pointerdown", "keydown", "touchstart"].forEach(function (t) {
    document.addEventListener(t, function () { touched(); if (idleBox) { idleBox.hidden = true; } }, true);
  });
  function idleLogout() {
    loggingOut = true;
    saveDraft(); // kept in this browser for the same operator; never sent, never recorded
    var form = $("#logout-form");
    if (dialog && dialog.open) { dialog.close(); }
    $$("dialog[open]").forEach(function (d) { d.close(); });
    if (!form) { window.location.href = "/kiosk/login?idle=1"; return; }
    $('input[name="reason"]', form).value = "idle";
    $('input[name="next"]', form).value = window.location.pathname; // back here after the next log-in
    if (!state.online) {
      // a form sent now would strand the kiosk on the browser's error page: cover the screen
      // here and send the log-out when the server answers again
      logoutPending = true;
      var cover = $("#logged-out");
      if (cover) { cover.hidden = false; }
      $("#main").hidden = true;
      return;
    }
    form.submit();
  }
  if (body.dataset.loggedIn === "true" && idleBox) {
    setInterval(function () {
      if (loggingOut) { return; }
      var left = idleSeconds - (Date.now() - lastActivity) / 1000;
      if (left <= 0) { idleLogout(); return; }
      if (left <= warnSeconds) {
        idleBox.hidden = false;
        $(".text", idleBox).textContent = (i18n.idle || "{s}").replace("{s}", String(Math.ceil(left)));
      } else {
        idleBox.hidden = true;
      }
    }, 250);
  }

  // ------------------------------------------------------------ start
  refreshCommits();
  window.__kioskReady = true;
  if (window.__kioskEarly) { document.removeEventListener("keydown", window.__kioskEarly, true); }
  (window.__kioskKeys || []).splice(0).forEach(function (k) { onKey(k.key, k.at, null); }); // keys typed while loading
  document.documentElement.classList.remove("js-loading");
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", connectLive); }
  else { connectLive(); }
})();
