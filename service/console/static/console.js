// Live progress for <progress data-dataset="…"> elements: polls the console's JSON and updates the bar,
// the status and the worker's note (how far the shard in hand is); reloads once a dataset reaches a final
// state so its page shows the download.
// The pages work without this file (reload by hand).
(function () {
  "use strict";
  var FINAL = ["ready", "failed", "rejected", "cancelled", "revoked"];
  var bars = Array.prototype.slice.call(document.querySelectorAll("progress[data-dataset]"));
  if (!bars.length) { return; }
  function poll() {
    var pending = bars.filter(function (b) {
      var s = document.querySelector('[data-status="' + b.dataset.dataset + '"]');
      return !s || FINAL.indexOf(s.textContent.trim()) < 0;
    });
    if (!pending.length) { return; }
    Promise.all(pending.map(function (bar) {
      var id = bar.dataset.dataset;
      return fetch("/ui/api/datasets/" + id + "/progress", { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (p) {
          if (!p) { return false; }
          bar.max = p.total; bar.value = p.done;
          var count = document.querySelector('[data-count="' + id + '"]');
          if (count) { count.textContent = p.done + " / " + p.total; }
          var note = document.querySelector('[data-note="' + id + '"]');
          if (note) { note.textContent = p.note || ""; }
          var s = document.querySelector('[data-status="' + id + '"]');
          var changed = s && s.textContent.trim() !== p.status;
          if (s) { s.textContent = p.status; s.className = "status status-" + p.status; }
          return changed && FINAL.indexOf(p.status) >= 0;
        })
        .catch(function () { return false; });
    })).then(function (finished) {
      if (finished.some(Boolean)) { window.location.reload(); return; }
      window.setTimeout(poll, 1500);
    });
  }
  window.setTimeout(poll, 1500);
})();
