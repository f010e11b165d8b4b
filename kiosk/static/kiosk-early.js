/* Runs before the page body: keeps keys a scanner types while the page is still loading
 * (kiosk.js replays them through the scan detector) and keeps the page out of reach until
 * kiosk.js has wired the keypad, so no tap or scan is lost. */
(function () {
  "use strict";
  var keys = window.__kioskKeys = [];
  document.documentElement.classList.add("js-loading");
  window.__kioskEarly = function (ev) {
    if (!window.__kioskReady) { keys.push({ key: ev.key, at: performance.now() }); }
  };
  document.addEventListener("keydown", window.__kioskEarly, true);
})();
