// naq dashboard: live fragments over server-sent events, select-all, confirmations.
// Everything else works without script. The server escapes every fragment it sends.
"use strict";
(function () {
  const body = document.body;
  const live = body.dataset.live;
  const badge = document.getElementById("live");
  if (live && window.EventSource) {
    let url = "/api/events?view=" + encodeURIComponent(live);
    if (body.dataset.liveId) url += "&id=" + encodeURIComponent(body.dataset.liveId);
    const source = new EventSource(url);
    source.addEventListener("fragments", function (event) {
      const payload = JSON.parse(event.data);
      for (const [id, html] of Object.entries(payload.fragments)) {
        const element = document.getElementById(id);
        if (element) element.innerHTML = html;
      }
      body.dataset.tick = String(payload.tick);
      if (badge) badge.textContent = "live · " + new Date().toLocaleTimeString();
    });
    source.addEventListener("error", function () {
      if (badge) badge.textContent = "reconnecting…";
    });
  }
  document.addEventListener("change", function (event) {
    const box = event.target;
    if (box instanceof HTMLInputElement && box.hasAttribute("data-select-all")) {
      for (const each of document.querySelectorAll('input[name="ids"]')) each.checked = box.checked;
    }
  });
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
