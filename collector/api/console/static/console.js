// amic console: the live outcome of a command (polls its small JSON endpoint).
"use strict";
(function () {
  const box = document.getElementById("outcome");
  if (!box || box.dataset.settled === "yes") { return; }
  const state = document.getElementById("outcome-state");
  const lines = document.getElementById("audit-lines");
  let tries = 0;

  function describe(out) {
    if (out.state === "running") { return "running: sent and being verified on the meter…"; }
    const a = out.answer || {};
    if (a.status !== "ok") { return "refused: " + (a.error || "?"); }
    return (a.results || []).map(function (r) { return r.meter + " " + r.status; }).join(", ");
  }

  function show(out) {
    state.textContent = describe(out);
    while (lines.firstChild) { lines.removeChild(lines.firstChild); }
    (out.audit || []).forEach(function (a) {
      const li = document.createElement("li");
      li.textContent = a.local + " " + a.kind + " " + a.meter + " " + a.status + " by " +
        a.operator + (a.why ? ": " + a.why : "");
      lines.appendChild(li);
    });
  }

  function poll() {
    tries += 1;
    fetch(box.dataset.url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (out) {
        show(out);
        if (out.settled) { box.dataset.settled = "yes"; } else if (tries < 240) { setTimeout(poll, 250); }
      })
      .catch(function () { if (tries < 240) { setTimeout(poll, 1000); } });
  }
  poll();
})();
