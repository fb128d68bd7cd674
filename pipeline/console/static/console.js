// orderstream console: refreshes the page's panel by itself, shows who is signed in (the session
// cookie carries the credential; no token is kept in the page), sends approve / reject (held
// orders, refunds) / re-drive / settlement resolutions. Plain browser
// JavaScript, no library, nothing loaded from outside.
(function () {
  "use strict";
  var root = document.getElementById("console");
  var panel = document.getElementById("panel");
  if (!root || !panel) { return; }
  var refreshMs = parseInt(root.getAttribute("data-refresh-ms"), 10) || 5000;
  var panelUrl = root.getAttribute("data-panel-url");
  var refreshing = false;

  function say(text, ok) {
    var box = document.getElementById("action-message");
    if (!box) { return; }
    box.textContent = text;
    box.className = "action-message " + (ok ? "ok" : "error");
  }

  function typing() {
    var el = document.activeElement;
    return el && el.tagName === "INPUT" && panel.contains(el);
  }

  // refresh: fetch the panel again and swap it in, keeping what the operator typed
  function refresh(force) {
    if (refreshing || (!force && typing())) { return Promise.resolve(); }
    refreshing = true;
    return fetch(panelUrl, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("refresh: HTTP " + resp.status); }
        return resp.text();
      })
      .then(function (html) {
        var kept = {};
        panel.querySelectorAll("input[data-keep]").forEach(function (i) { if (i.value) { kept[i.getAttribute("data-keep")] = i.value; } });
        panel.innerHTML = html;
        panel.querySelectorAll("input[data-keep]").forEach(function (i) {
          var k = i.getAttribute("data-keep"); if (kept[k]) { i.value = kept[k]; }
        });
        root.setAttribute("data-refreshes", String(parseInt(root.getAttribute("data-refreshes"), 10) + 1));
        root.removeAttribute("data-refresh-error");
      })
      .catch(function (err) { root.setAttribute("data-refresh-error", String(err)); })
      .then(function () { refreshing = false; });
  }
  window.setInterval(refresh, refreshMs);

  // time zone picker: the page again, in the chosen zone
  var tzSelect = document.getElementById("tz-select");
  if (tzSelect) {
    tzSelect.addEventListener("change", function () {
      var url = new URL(window.location.href);
      url.searchParams.set("tz", tzSelect.value);
      window.location.href = url.toString();
    });
  }

  // who is signed in: the session cookie names them (pipeline.console.signin); the buttons act
  // only for the operator role, the server refuses anyone else (403)
  var nameBox = document.getElementById("operator-name");
  function showPrincipal(who) {
    if (!nameBox) { return; }
    var text = nameBox.getAttribute("data-signed-in") + ": " + who.name;
    if (!who.operator) { text += " · " + nameBox.getAttribute("data-anonymous"); }
    nameBox.textContent = text;
    nameBox.setAttribute("data-name", who.name);
    nameBox.setAttribute("data-operator", who.operator || "");
  }
  if (nameBox) {
    fetch("/console/api/whoami", { cache: "no-store" })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (who) { if (who) { showPrincipal(who); } });
  }

  // approve / reject (held orders, refunds) / re-drive / resolve a settlement difference
  function send(button) {
    var action = button.getAttribute("data-action");
    var url, body;
    var row = button.closest("tr");
    var reason = row ? row.querySelector("input.reason") : null;
    if (action === "redrive") {
      url = "/console/api/redrive";
      body = { letter_id: button.getAttribute("data-letter-id") };
    } else if (action === "resolve") {
      url = "/console/api/settlement/resolve";
      body = { diff_key: button.getAttribute("data-diff-key"), reason: reason ? reason.value : "" };
    } else if (button.hasAttribute("data-refund-id")) {  // the refund queue: its own endpoint
      url = "/console/api/refunds/decisions";
      body = { refund_id: button.getAttribute("data-refund-id"), action: action, reason: reason ? reason.value : "" };
    } else {
      url = "/console/api/decisions";
      body = { order_id: button.getAttribute("data-order-id"), action: action, reason: reason ? reason.value : "" };
    }
    var headers = { "Content-Type": "application/json" };
    button.disabled = true;
    say("…", true);
    return fetch(url, { method: "POST", headers: headers, body: JSON.stringify(body) })
      .then(function (resp) { return resp.json().then(function (data) { return [resp, data]; }); })
      .then(function (r) {
        var resp = r[0], data = r[1];
        root.setAttribute("data-last-status", String(resp.status));
        say((resp.ok ? "" : resp.status + ": ") + (data.message || data.error || resp.statusText), resp.ok);
        if (resp.ok) { return refresh(true); }
        button.disabled = false;
      })
      .catch(function (err) { button.disabled = false; say(String(err), false); });
  }
  // copy a whole id (tables show it shortened): the clipboard API where the page may use it
  // (a secure context: https or loopback), else a selected textarea and the copy command
  function copy(button) {
    var text = button.getAttribute("data-copy");
    function done(ok) {
      button.classList.toggle("copied", ok);
      root.setAttribute("data-copied", ok ? text : "");
      say(ok ? text : "copy: " + text, ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(fallback(text)); });
    }
    done(fallback(text));
  }
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed"; area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }
  panel.addEventListener("click", function (event) {
    var copyButton = event.target.closest("button.copy[data-copy]");
    if (copyButton) { copy(copyButton); return; }
    var button = event.target.closest("button[data-action]");
    if (button && !button.disabled) { send(button); }
  });
})();
