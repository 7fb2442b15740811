/* bridges.live client: keeps the page's regions current and sends commands.
 *
 * The server sends envelopes {type, epoch, revision, regions: {id: {rev, html}}}. Revisions
 * count up within an epoch (one incarnation of the page on the server) and are only compared
 * within it: a region is only replaced by a fragment of the same epoch with a higher revision
 * than the one it shows, so a duplicate or a late fragment is harmless. A new epoch is taken
 * only from an envelope that carries every region (a snapshot or a reply). Every
 * (re)connection starts with a snapshot; the reconnect uses a jittered exponential backoff and
 * waits while the tab is hidden.
 *
 * Configured for the WebSocket (window.LIVE_TRANSPORT = "ws", or data-live-transport="ws"),
 * the client falls back to the SSE stream when the socket cannot be used: a socket that fails
 * before it opens (a proxy that does not pass the upgrade on answers the handshake with a
 * plain HTTP response), or sockets that keep closing before their snapshot. The stream
 * resumes from the revision the page shows, and commands go over HTTP; a command that was
 * in flight on the failed socket is sent again over HTTP (its idempotency key makes that
 * safe). The choice is kept for the tab's session (sessionStorage), so the next pages do not
 * try the socket again.
 *
 * Without this file the page still works: forms post, the server answers 303, and a busy page
 * refreshes itself through <noscript>.
 */
(function () {
  "use strict";

  var body = document.body;
  var revs = {};
  var epoch = body.getAttribute("data-live-epoch") || "";
  var lastRevision = revision(body.getAttribute("data-live-revision")) || 0;
  var csrfMeta = document.querySelector('meta[name="live-csrf"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var FALLBACK = "bridges.live.transport";
  var SOCKET_TRIES = 3;   // sockets closing before their snapshot, in a row, before falling back
  var transport = body.getAttribute("data-live-transport") || window.LIVE_TRANSPORT || "sse";
  if (transport === "ws" && remembered() === "sse") transport = "sse";
  var source = null;      // EventSource or WebSocket
  var attempt = 0;        // reconnect attempts since the last snapshot
  var socketFailures = 0; // sockets that ended without a snapshot, in a row
  var timer = null;       // pending reconnect
  var watchdog = null;    // no message for too long: reconnect
  var heartbeat = 15000;
  var pending = {};       // WebSocket command replies by ref
  var refs = 0;

  function remembered() {
    try { return window.sessionStorage.getItem(FALLBACK); } catch (e) { return null; }
  }

  // A revision is a non-negative integer exact in a double; anything else (a string, a
  // number past 2^53 that would compare equal to its neighbours) is not one: null.
  function revision(value) {
    var n = typeof value === "string" && /^[0-9]{1,16}$/.test(value) ? Number(value) : value;
    return typeof n === "number" && n >= 0 && n <= 9007199254740991 && Math.floor(n) === n ? n : null;
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-live-region]"), function (el) {
    revs[el.getAttribute("data-live-region")] = revision(el.getAttribute("data-live-rev")) || 0;
  });

  function regionElement(id) {
    return document.querySelector('[data-live-region="' + (window.CSS && CSS.escape ? CSS.escape(id) : id) + '"]');
  }

  function replace(el, html) {
    var active = document.activeElement;
    var focusId = active && el.contains(active) ? active.id : null;
    var selection = null;
    if (focusId && typeof active.selectionStart === "number") {
      selection = [active.selectionStart, active.selectionEnd];
    }
    var lists = el.querySelectorAll("[data-live-lines]");
    var pinned = Array.prototype.map.call(lists, function (list) {
      return list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    });
    el.innerHTML = html;
    Array.prototype.forEach.call(el.querySelectorAll("[data-live-lines]"), function (list, i) {
      if (pinned[i] !== false) list.scrollTop = list.scrollHeight;
    });
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) {
        again.focus();
        if (selection && typeof again.setSelectionRange === "function") {
          try { again.setSelectionRange(selection[0], selection[1]); } catch (e) { /* not text */ }
        }
      }
    }
  }

  // A restamped region whose markup did not change (after a server restart, say) is left
  // alone: replacing it would drop what the user typed and where the focus was.
  var scratch = document.createElement("template");
  function sameMarkup(el, html) {
    scratch.innerHTML = html;
    return scratch.innerHTML === el.innerHTML;
  }

  function apply(envelope) {
    if (!envelope || !envelope.regions || typeof envelope.epoch !== "string") return;
    var current = revision(envelope.revision);
    if (current === null) return;
    if (envelope.epoch !== epoch && envelope.type === "reply" && source !== null) {
      // The command went to another server process than our stream (a load balancer without
      // stickiness): its page is another incarnation, whose revisions are not comparable
      // with the stream's. Taking its epoch would drop every later patch of the stream, and
      // showing its regions could overwrite a newer state the stream already sent. The
      // stream brings the command's effect; only a refused command's regions (the errors,
      // which exist only where the command was handled) are shown, without their revisions,
      // so that the stream's next patch of a region replaces them.
      if (envelope.ok === false) foreign(envelope.regions);
      return;
    }
    if (envelope.epoch !== epoch) {
      // Another incarnation of the page (a restart, an eviction): its revisions say nothing
      // about ours. Only an envelope with every region may replace what the page shows; a
      // stray patch of another epoch is dropped.
      if (envelope.type !== "snapshot" && envelope.type !== "reply") return;
      epoch = envelope.epoch;
      body.setAttribute("data-live-epoch", epoch);
      revs = {};
      lastRevision = 0;
    }
    var regions = envelope.regions;
    Object.keys(regions).forEach(function (id) {
      var fragment = regions[id];
      var rev = fragment ? revision(fragment.rev) : null;
      if (rev === null || typeof fragment.html !== "string") return;
      if ((revs[id] || 0) >= rev) return; // older or the same: keep what we show
      var el = regionElement(id);
      if (!el) return;
      revs[id] = rev;
      el.setAttribute("data-live-rev", String(rev));
      if (!sameMarkup(el, fragment.html)) replace(el, fragment.html);
    });
    if (current > lastRevision) lastRevision = current;
    // A region may say what the tab's title is now (the step a wizard is at).
    var title = document.querySelector("[data-live-title]");
    if (title) document.title = title.getAttribute("data-live-title");
    if (typeof envelope.busy === "boolean") {
      body.setAttribute("aria-busy", envelope.busy ? "true" : "false");
    }
    if (typeof envelope.heartbeat === "number") heartbeat = envelope.heartbeat * 1000;
  }

  function foreign(regions) {
    Object.keys(regions).forEach(function (id) {
      var fragment = regions[id];
      var el = regionElement(id);
      if (!el || !fragment || typeof fragment.html !== "string") return;
      if (!sameMarkup(el, fragment.html)) replace(el, fragment.html);
    });
  }

  // -- connection ---------------------------------------------------------------------------

  function alive() {
    clearTimeout(watchdog);
    watchdog = setTimeout(function () { reconnect(); }, heartbeat * 2.5 + 1000);
  }

  function onEnvelope(envelope) {
    alive();
    if (envelope.type === "snapshot") { attempt = 0; socketFailures = 0; }
    var answer = envelope.type === "reply" || envelope.type === "error";
    if (answer && typeof envelope.ref === "string" && pending.hasOwnProperty(envelope.ref)) {
      pending[envelope.ref](envelope);
      delete pending[envelope.ref];
    }
    apply(envelope);
  }

  function connect() {
    timer = null;
    var base = transport === "ws" ? body.getAttribute("data-live-socket") : body.getAttribute("data-live-stream");
    if (!base) return;
    var url = base + "?last_event_id=" + encodeURIComponent(epoch + "." + lastRevision);
    if (transport === "ws") {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var ws;
      try { ws = new WebSocket(scheme + location.host + url); } catch (e) { fallBack(); return; }
      source = ws;
      var opened = false;
      var snapshots = 0;
      ws.onopen = function () { opened = true; };
      ws.onmessage = function (m) {
        try {
          var envelope = JSON.parse(m.data);
          if (envelope && envelope.type === "snapshot") snapshots += 1;
          onEnvelope(envelope);
        } catch (e) { /* ignore a bad frame */ }
      };
      var ended = function () {
        if (source !== ws) return;
        failPending();
        // Refused before it opened (the upgrade did not reach the server), or closing again
        // and again before its snapshot: this way in does not work here.
        if (!opened || (snapshots === 0 && ++socketFailures >= SOCKET_TRIES)) { fallBack(); return; }
        reconnect();
      };
      ws.onclose = ended;
      ws.onerror = ended;
    } else {
      var es = new EventSource(url);
      source = es;
      var handler = function (m) {
        try { onEnvelope(JSON.parse(m.data)); } catch (e) { /* ignore a bad event */ }
      };
      es.addEventListener("snapshot", handler);
      es.addEventListener("patch", handler);
      es.addEventListener("ping", handler);
      // EventSource would retry on its own without our backoff or Last-Event-ID choice.
      es.onerror = function () { if (source === es) reconnect(); };
    }
    alive();
  }

  function close() {
    var s = source;
    source = null;
    if (s) { try { s.close(); } catch (e) { /* already closed */ } }
    clearTimeout(watchdog);
  }

  // The SSE stream instead of the socket, at once (another way in, not a retry), for the
  // rest of the tab's session.
  function fallBack() {
    close();
    transport = "sse";
    try { window.sessionStorage.setItem(FALLBACK, "sse"); } catch (e) { /* not kept: fine */ }
    clearTimeout(timer);
    timer = null;
    connect();
  }

  function reconnect() {
    close();
    if (timer !== null) return;
    if (document.hidden) return; // visibilitychange reconnects when the tab is shown again
    var delay = Math.min(15000, 500 * Math.pow(2, attempt));
    attempt += 1;
    delay = delay / 2 + Math.random() * delay / 2; // jitter: clients do not come back in step
    timer = setTimeout(connect, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && source === null) {
      clearTimeout(timer);
      timer = null;
      connect();
    }
  });
  window.addEventListener("online", function () {
    if (source === null) { clearTimeout(timer); timer = null; connect(); }
  });

  // -- commands -----------------------------------------------------------------------------

  function setBusy(form, busy) {
    Array.prototype.forEach.call(form.querySelectorAll("button, input[type=submit]"), function (b) {
      b.disabled = busy;
      if (busy) b.setAttribute("aria-busy", "true"); else b.removeAttribute("aria-busy");
    });
    if (busy) form.setAttribute("aria-busy", "true"); else form.removeAttribute("aria-busy");
  }

  function params(data) {
    var out = {};
    data.forEach(function (value, name) {
      if (name.charAt(0) === "_") return;
      (out[name] = out[name] || []).push(String(value));
    });
    return out;
  }

  function afterReply(form, reply) {
    apply(reply);
    if (reply.redirect) { location.assign(reply.redirect); return; }
    if (document.body.contains(form)) setBusy(form, false);
  }

  function sendHttp(form, data, tries) {
    return fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(data),
      headers: { "X-Live": "1", "X-CSRF-Token": csrf },
      credentials: "same-origin"
    }).then(function (response) {
      if (response.status === 403 || response.status === 404) { location.reload(); return null; }
      return response.json();
    }).catch(function (err) {
      // The idempotency key makes a retry safe: a command that did arrive is not done twice.
      if (tries > 0) {
        return new Promise(function (r) { setTimeout(r, 500 + Math.random() * 500); })
          .then(function () { return sendHttp(form, data, tries - 1); });
      }
      throw err;
    });
  }

  // Commands in flight on a socket that ended: their callers send them again over HTTP.
  function failPending() {
    var waiting = pending;
    pending = {};
    Object.keys(waiting).forEach(function (ref) { waiting[ref](null); });
  }

  function sendSocket(data) {
    return new Promise(function (resolve, reject) {
      refs += 1;
      var ref = "r" + refs;
      pending[ref] = function (envelope) {
        if (envelope === null) { reject(new Error("the socket closed")); return; }
        // The server refused the frame (a stale CSRF token, say): as after a 403, reload.
        if (envelope.type === "error") { location.reload(); resolve(null); return; }
        resolve(envelope);
      };
      try {
        source.send(JSON.stringify({
          type: "event", ref: ref, csrf: csrf,
          event: data.get("_event") || "", key: data.get("_key") || "", params: params(data)
        }));
      } catch (e) { delete pending[ref]; reject(e); }
    });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-live-form")) return;
    if (!window.fetch || !window.URLSearchParams) return; // let the browser post it
    ev.preventDefault();
    if (form.getAttribute("aria-busy") === "true") return;
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) data.append(ev.submitter.name, ev.submitter.value);
    setBusy(form, true);
    var useSocket = transport === "ws" && source && source.readyState === 1;
    var sent = useSocket
      ? sendSocket(data).catch(function () { return sendHttp(form, data, 2); })
      : sendHttp(form, data, 2);
    sent.then(function (reply) {
      if (reply) afterReply(form, reply);
    }, function () {
      setBusy(form, false);
      form.submit(); // the network is flaky: fall back to a plain POST (same key, no double)
    });
  });

  connect();
})();
