// The admin pages: live preview while typing (debounced), confirmations, small conveniences.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  // Live preview: render the template with sample values in the sandbox, on the server.
  var source = document.querySelector("textarea[data-preview-key]");
  var preview = document.getElementById("preview");
  var problems = document.getElementById("preview-problems");
  var timer = null;
  var seq = 0;

  function show(data) {
    problems.textContent = "";
    if (data.ok) {
      preview.textContent = data.text || "";
      preview.classList.remove("stale");
      problems.hidden = true;
      source.classList.remove("bad");
      return;
    }
    preview.classList.add("stale");
    data.problems.forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = p.text;
      if (p.line) li.setAttribute("data-line", p.line);
      problems.appendChild(li);
    });
    problems.hidden = false;
    source.classList.add("bad");
  }

  async function refresh() {
    var mine = ++seq;
    try {
      var resp = await fetch("/admin/preview", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ key: source.getAttribute("data-preview-key"), source: source.value }),
      });
      if (!resp.ok) return;
      var data = await resp.json();
      if (mine === seq) show(data);  // an older answer never overwrites a newer one
    } catch (e) { /* offline for a moment: the next keystroke tries again */ }
  }

  if (source && preview && problems) {
    source.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    });
  }

  // Destructive buttons ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });

  document.querySelectorAll("a[data-back]").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      if (history.length > 1) { ev.preventDefault(); history.back(); }
    });
  });
})();
