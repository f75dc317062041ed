// The agents' desk: case list by status, the case card, and take / reply / note / resolve / reopen.
(function () {
  "use strict";
  var UI = window.KEFU_UI || {};
  var $ = function (id) { return document.getElementById(id); };
  var hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) { localStorage.setItem("kefu.desk.token", hash.get("token")); history.replaceState(null, "", location.pathname); }
  var token = localStorage.getItem("kefu.desk.token") || "";
  var agent = localStorage.getItem("kefu.desk.agent") || "";
  var status = "open";
  var selected = null;
  var feedAfter = 0;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function time(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return d.toLocaleString(undefined, { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
  }

  async function api(path, opts) {
    opts = opts || {};
    opts.headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
    var resp = await fetch(path, opts);
    var data = await resp.json().catch(function () { return {}; });
    if (resp.status === 401) { showLogin(data.error); throw new Error("unauthorized"); }
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  function showLogin(message) {
    $("workspace").hidden = true;
    $("login").hidden = false;
    $("token").value = token;
    $("agent").value = agent;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
  }

  $("login").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    token = $("token").value.trim();
    agent = $("agent").value.trim();
    localStorage.setItem("kefu.desk.token", token);
    localStorage.setItem("kefu.desk.agent", agent);
    start();
  });

  document.querySelectorAll(".tabs button").forEach(function (b) {
    b.addEventListener("click", function () {
      document.querySelectorAll(".tabs button").forEach(function (x) { x.classList.remove("active"); });
      b.classList.add("active");
      status = b.dataset.status;
      loadList();
    });
  });

  async function loadList() {
    var data = await api("/api/desk/cases?status=" + status);
    var ul = $("case-list");
    ul.textContent = "";
    if (!data.cases.length) ul.appendChild(el("li", { class: "muted" }, UI.no_cases));
    data.cases.forEach(function (c) {
      var li = el("li", { "data-case": c.id });
      if (c.id === selected) li.classList.add("selected");
      li.appendChild(el("div", {}, c.id + " · " + c.type_name + " · " + c.buyer.name));
      var line2 = (c.order_no || "") + " · " + UI.waiting + " " + Math.floor(c.waiting_seconds / 60) + " " + UI.minutes +
        (c.assignee ? " · " + c.assignee : "");
      li.appendChild(el("div", { class: "line2" }, line2));
      li.addEventListener("click", function () { selected = c.id; loadList(); loadCase(); });
      ul.appendChild(li);
    });
    ["open", "taken"].forEach(async function (s) {
      if (s === status) { document.querySelector('[data-count="' + s + '"]').textContent = data.cases.length || ""; return; }
      var other = await api("/api/desk/cases?status=" + s);
      document.querySelector('[data-count="' + s + '"]').textContent = other.cases.length || "";
    });
  }

  function section(parent, title) { parent.appendChild(el("h3", {}, title)); }

  function renderCase(c) {
    var root = $("case");
    // Every feed event redraws the open case: keep what the agent is typing (and where).
    var drafts = {}, active = document.activeElement, focus = null;
    if (root.dataset.case === c.id) {
      root.querySelectorAll("textarea[data-input]").forEach(function (t) { drafts[t.dataset.input] = t.value; });
      if (active && root.contains(active) && active.dataset.input) focus = { input: active.dataset.input, start: active.selectionStart, end: active.selectionEnd };
    }
    root.dataset.case = c.id;
    root.textContent = "";
    var h = el("h2", {}, c.id + " · " + c.type_name);
    h.appendChild(el("span", { class: "badge", "data-field": "status" }, c.status_name));
    if (!c.order_verified) h.appendChild(el("span", { class: "badge warn" }, UI.unverified));
    root.appendChild(h);
    var dl = el("dl");
    function row(k, v) { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); }
    row(UI.buyer, c.buyer.name + " (" + c.buyer.platform + ")");
    row(UI.order, c.order_no || UI.none);
    row(UI.reason, c.reason_name);
    row(UI.waiting, Math.floor(c.waiting_seconds / 60) + " " + UI.minutes);
    row(UI.assignee, c.assignee || UI.none);
    if (c.description) row(UI.description, c.description);
    c.promises.forEach(function (p) { row(UI.promises, p.text + (p.overdue ? " ⏰ " + UI.overdue : "")); });
    if (c.faq_given.length) row(UI.faq_given, c.faq_given.map(function (f) { return f.title; }).join("、"));
    if (c.earlier_cases.length) row(UI.earlier, c.earlier_cases.map(function (e) { return e.id + " " + e.type_name + " (" + e.status + ")"; }).join("; "));
    if (c.resolution) row(UI.resolution, c.resolution);
    if (c.rating) row(UI.rating, "⭐".repeat(c.rating) + " " + c.rating + "/5");
    root.appendChild(dl);

    if (c.photos.length) {
      section(root, UI.photos + " (" + c.photos.length + ")");
      var ph = el("div", { class: "photos" });
      c.photos.forEach(function (p) {
        var a = el("a", { href: p.url, target: "_blank", rel: "noopener" });
        a.appendChild(el("img", { src: p.url, alt: UI.photos }));
        ph.appendChild(a);
      });
      root.appendChild(ph);
    }

    section(root, UI.transcript);
    var tr = el("ol", { class: "transcript" });
    c.transcript.forEach(function (m) {
      var li = el("li");
      li.appendChild(el("span", { class: "t" }, time(m.at)));
      var who = m.who === "buyer" ? UI.buyer : m.who === "agent" ? UI.agent + (m.agent ? " " + m.agent : "") : UI.bot;
      li.appendChild(el("strong", { class: "w-" + m.who }, who + ": "));
      li.appendChild(document.createTextNode(m.text || ""));
      (m.photo_urls || []).forEach(function (u) { var i = el("img", { src: u, alt: UI.photos, height: "48" }); li.appendChild(i); });
      if ((m.files || []).length) { li.appendChild(el("span", { class: "files" }, " 📎×" + m.files.length)); }
      tr.appendChild(li);
    });
    root.appendChild(tr);

    if (c.notes.length) {
      section(root, UI.notes);
      var nl = el("ul");
      c.notes.forEach(function (n) { nl.appendChild(el("li", {}, time(n.at) + " " + n.agent + ": " + n.text)); });
      root.appendChild(nl);
    }

    var actions = el("div", { class: "actions" });
    if (c.status === "open") {
      var take = el("button", { type: "button", "data-action": "take" }, UI.take);
      take.addEventListener("click", function () { act(c.id, "take", {}); });
      actions.appendChild(take);
    }
    if (c.status !== "resolved") {
      actions.appendChild(composer(c.id, "reply", UI.reply_placeholder, UI.reply, "text"));
      actions.appendChild(composer(c.id, "note", UI.note_placeholder, UI.note, "text"));
      actions.appendChild(composer(c.id, "resolve", UI.resolve_placeholder, UI.resolve, "summary"));
    } else {
      var reopen = el("button", { type: "button", "data-action": "reopen" }, UI.reopen);
      reopen.addEventListener("click", function () { act(c.id, "reopen", {}); });
      actions.appendChild(reopen);
      actions.appendChild(composer(c.id, "note", UI.note_placeholder, UI.note, "text"));
    }
    actions.appendChild(el("p", { class: "error", id: "action-error", hidden: "" }));
    root.appendChild(actions);
    actions.querySelectorAll("textarea[data-input]").forEach(function (t) {
      t.value = drafts[t.dataset.input] || "";
      if (focus && focus.input === t.dataset.input) { t.focus(); t.setSelectionRange(focus.start, focus.end); }
    });

    section(root, UI.history);
    var hl = el("ul");
    c.history.forEach(function (e) { hl.appendChild(el("li", {}, time(e.at) + " " + e.event + (e.by ? " · " + e.by : "") + (e.text ? " · " + e.text : ""))); });
    root.appendChild(hl);
  }

  function composer(caseId, verb, placeholder, label, field) {
    var row = el("div", { class: "row" });
    var ta = el("textarea", { placeholder: placeholder, "data-input": verb });
    var btn = el("button", { type: "button", "data-action": verb }, label);
    btn.addEventListener("click", async function () {
      var text = ta.value.trim();
      if (!text) { ta.focus(); return; }
      var body = {}; body[field] = text;
      ta.value = "";  // sent: a redraw must not bring it back
      if (!(await act(caseId, verb, body))) {
        var now = $("case").querySelector('textarea[data-input="' + verb + '"]');  // the card may have been redrawn
        if (now && !now.value) now.value = text;
      }
    });
    row.appendChild(ta);
    row.appendChild(btn);
    return row;
  }

  async function act(caseId, verb, body) {
    body.agent = agent;
    body.client_msg_id = verb + "-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
    try {
      var data = await api("/api/desk/cases/" + caseId + "/" + verb, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      renderCase(data.case);
      loadList();
      return true;
    } catch (e) {
      var err = $("action-error");
      if (err) { err.hidden = false; err.textContent = UI.error + ": " + e.message; }
      return false;
    }
  }

  async function loadCase() {
    if (!selected) return;
    try { renderCase(await api("/api/desk/cases/" + selected)); } catch (e) { /* shown by api() */ }
  }

  async function listen() {
    for (;;) {
      try {
        var data = await api("/api/desk/feed?after=" + feedAfter + "&wait=25");
        if (data.events.length) {
          feedAfter = data.last;
          await loadList();
          if (data.events.some(function (e) { return e.case_id === selected; })) await loadCase();
        }
      } catch (e) {
        if (e.message === "unauthorized") return;
        await new Promise(function (r) { setTimeout(r, 2000); });
      }
    }
  }

  async function start() {
    if (!token || !agent) { showLogin(); return; }
    try {
      var tail = await api("/api/desk/feed?tail=1");
      feedAfter = tail.last;
    } catch (e) { return; }
    $("login").hidden = true;
    $("workspace").hidden = false;
    $("whoami").textContent = agent;
    await loadList();
    listen();
  }
  start();
})();
