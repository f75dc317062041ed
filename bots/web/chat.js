// The buyer's chat page: long-polls the web chat API, sends text, buttons and photos.
(function () {
  "use strict";
  var UI = window.KEFU_UI || {};
  var log = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var form = document.getElementById("composer");
  var input = document.getElementById("text");
  var photoInput = document.getElementById("photo");

  function uid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  var visitor = localStorage.getItem("kefu.visitor");
  if (!visitor) { visitor = "v-" + uid().replace(/[^A-Za-z0-9-]/g, ""); localStorage.setItem("kefu.visitor", visitor); }
  var after = 0;
  // The buyer's own messages are kept locally so a reload shows the whole chat.
  var mine = JSON.parse(sessionStorage.getItem("kefu.mine." + visitor) || "[]");

  function rememberMine(entry) {
    mine.push(entry);
    sessionStorage.setItem("kefu.mine." + visitor, JSON.stringify(mine.slice(-200)));
  }

  function bubble(kind, who, text, photoUrl, buttons, at) {
    var wrap = document.createElement("div");
    wrap.className = "msg " + kind;
    if (at) wrap.dataset.at = at;
    var w = document.createElement("span");
    w.className = "who";
    w.textContent = who;
    wrap.appendChild(w);
    if (text) {
      var b = document.createElement("div");
      b.className = "bubble";
      b.textContent = text;
      wrap.appendChild(b);
    }
    if (photoUrl) {
      var img = document.createElement("img");
      img.src = photoUrl;
      img.alt = UI.photo || "photo";
      wrap.appendChild(img);
    }
    if (buttons && buttons.length) {
      var row = document.createElement("div");
      row.className = "buttons";
      buttons.forEach(function (btn) {
        var el = document.createElement("button");
        el.type = "button";
        el.textContent = btn.text;
        el.addEventListener("click", function () { sendPayload(btn); });
        row.appendChild(el);
      });
      wrap.appendChild(row);
    }
    // Keep time order when history and live messages interleave.
    var placed = false;
    if (at) {
      var nodes = log.children;
      for (var i = 0; i < nodes.length; i++) {
        if (nodes[i].dataset.at && nodes[i].dataset.at > at) { log.insertBefore(wrap, nodes[i]); placed = true; break; }
      }
    }
    if (!placed) log.appendChild(wrap);
    log.scrollTop = log.scrollHeight;
    return wrap;
  }

  function showStatus(text) {
    statusEl.textContent = text || "";
    statusEl.hidden = !text;
  }

  async function post(body, isForm) {
    // The same client_msg_id on every retry: the server handles it once.
    for (var attempt = 0; attempt < 4; attempt++) {
      try {
        var resp = await fetch("/api/webchat/messages", isForm
          ? { method: "POST", body: body }
          : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        var data = await resp.json().catch(function () { return {}; });
        if (resp.ok) { showStatus(""); return data; }
        if (resp.status >= 400 && resp.status < 500) { showStatus(data.error || UI.send_failed); return null; }
      } catch (e) { /* network: retry */ }
      showStatus(UI.offline);
      await new Promise(function (r) { setTimeout(r, 1000 * (attempt + 1)); });
    }
    showStatus(UI.send_failed);
    return null;
  }

  function nowIso() { return new Date().toISOString(); }

  async function sendText(text) {
    var at = nowIso();
    bubble("me", UI.me, text, null, null, at);
    rememberMine({ text: text, at: at });
    await post({ visitor: visitor, text: text, client_msg_id: uid() });
  }

  async function sendPayload(btn) {
    var at = nowIso();
    bubble("me", UI.me, btn.text, null, null, at);
    rememberMine({ text: btn.text, at: at });
    await post({ visitor: visitor, payload: btn.payload, text: btn.text, client_msg_id: uid() });
  }

  async function sendPhoto(file) {
    var at = nowIso();
    var local = URL.createObjectURL(file);
    var el = bubble("me", UI.me, "", local, null, at);
    var fd = new FormData();
    fd.append("visitor", visitor);
    fd.append("client_msg_id", uid());
    fd.append("photo", file, file.name);
    var data = await post(fd, true);
    if (data && data.photo_url) rememberMine({ text: "", photo_url: data.photo_url, at: at });
    if (data && data.not_a_photo) { el.querySelector("img").remove(); el.appendChild(document.createTextNode("📎 " + file.name)); }
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    sendText(text);
  });
  photoInput.addEventListener("change", async function () {
    var files = Array.prototype.slice.call(photoInput.files);
    photoInput.value = "";
    for (var i = 0; i < files.length; i++) await sendPhoto(files[i]);
  });

  async function poll() {
    for (;;) {
      try {
        var resp = await fetch("/api/webchat/messages?visitor=" + encodeURIComponent(visitor) + "&after=" + after + "&wait=25");
        if (!resp.ok) throw new Error(resp.status);
        var data = await resp.json();
        showStatus("");
        data.messages.forEach(function (m) {
          after = Math.max(after, m.seq);
          var who = m.from === "agent" ? (UI.agent + (m.agent ? " " + m.agent : "")) : UI.bot;
          bubble(m.from === "agent" ? "agent" : "bot", who, m.text, m.photo_url, m.buttons, m.at);
        });
      } catch (e) {
        showStatus(UI.offline);
        await new Promise(function (r) { setTimeout(r, 2000); });
      }
    }
  }

  mine.forEach(function (m) { bubble("me", UI.me, m.text, m.photo_url || null, null, m.at); });
  poll();
  window.kefuChat = { visitor: visitor };
})();
