// heron console: plain JS, no build step. Event data is hostile (argv, exe, host names): it only
// ever reaches the page through textContent, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "heron.token";
  const PAGE = 200;          // events shown per query
  const MAX_ROWS = 1000;     // rows kept while following
  const FOLLOW_MS = 2000;
  const STALE_NS = 5 * 60 * 1e9;

  const $ = (id) => document.getElementById(id);
  let lastId = null;
  let followTimer = null;

  // -- token ---------------------------------------------------------------------------------
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      // Do not leave the token in the address bar or the history.
      history.replaceState(null, "", location.pathname + location.search);
    }
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class AuthError extends Error {}

  async function api(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") query.set(k, String(v));
    }
    const url = "/api/v1/" + path + (query.toString() ? "?" + query : "");
    const resp = await fetch(url, { headers: { Authorization: "Bearer " + token() }, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) throw new AuthError("token refused (" + resp.status + ")");
    if (!resp.ok) {
      let message = resp.statusText;
      try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(resp.status + ": " + message);
    }
    return resp.json();
  }

  // -- DOM helpers (textContent only) ---------------------------------------------------------
  function cell(text, cls) {
    const td = document.createElement("td");
    const value = text === null || text === undefined ? "" : String(text);
    if (cls === "argv") {
      // Long command lines (a JSON blob, an env dump) are clamped to three lines; a click shows all.
      const box = document.createElement("div");
      box.className = "clamp";
      box.textContent = value;
      box.title = "click to show the whole command line";
      box.addEventListener("click", () => box.classList.toggle("open"));
      td.appendChild(box);
    } else {
      td.textContent = value;
    }
    if (cls) td.className = cls;
    return td;
  }
  function row(cells, cls) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c);
    if (cls) tr.className = cls;
    return tr;
  }
  function fmtTime(ns) {
    if (typeof ns !== "number") return "";
    const d = new Date(ns / 1e6);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  }
  function ago(ns) {
    const s = Math.max(0, Math.round((Date.now() * 1e6 - ns) / 1e9));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }
  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "muted";
  }

  // -- agents --------------------------------------------------------------------------------
  function lossCounters(health) {
    const counters = (health && health.counters) || {};
    return Object.keys(counters).sort()
      .filter((k) => counters[k] && /drop|lost|error/.test(k))
      .map((k) => k + "=" + counters[k]).join(" ");
  }

  async function loadAgents() {
    const body = await api("agents");
    const tbody = $("agents").querySelector("tbody");
    tbody.replaceChildren();
    const now = Date.now() * 1e6;
    for (const a of body.agents) {
      const health = a.last_health || {};
      const collectors = Object.entries(health.collectors || {}).map(([k, v]) => k + "=" + v).join(" ");
      const seen = cell(ago(a.last_seen) + " (" + fmtTime(a.last_seen) + ")", "time");
      if (now - a.last_seen > STALE_NS) seen.classList.add("stale");
      const losses = lossCounters(health);
      tbody.appendChild(row([
        cell(a.hostname || a.name),
        cell(a.version || health.agent_version),
        seen,
        cell(collectors || "—"),
        cell(losses || "none", losses ? "warn" : "muted"),
        cell((a.host && a.host.kernel) || ""),
        cell(a.agent_id, "muted"),
      ]));
    }
    $("agents-empty").hidden = body.agents.length > 0;
  }

  // -- vulnerabilities (GET /api/v1/vulns: ranked, active first) -------------------------------
  async function loadVulns() {
    const body = await api("vulns", { limit: 50 });
    const tbody = $("vulns").querySelector("tbody");
    tbody.replaceChildren();
    for (const f of body.findings) {
      const use = [f.activity, f.exposed ? "exposed " + f.exposures.join(" ") : "", f.status === "unknown"
        ? "version unknown" : ""].filter(Boolean).join(", ");
      tbody.appendChild(row([
        cell(f.score), cell(f.severity + (f.cvss !== null ? " " + f.cvss : ""), f.severity === "critical" ? "stale" : ""),
        cell(f.id + (f.aliases.length ? " (" + f.aliases.slice(0, 2).join(", ") + ")" : "")),
        cell(f.package), cell(f.version), cell(f.fixed_version || "—"), cell(f.host + " / " + f.scope),
        cell(use, f.activity === "active" ? "warn" : "muted"),
      ]));
    }
    $("vulns-empty").hidden = body.findings.length > 0;
    $("vulns-summary").textContent = body.findings.length + " of " + body.total + " findings, " +
      body.advisories + " advisories" + (body.note ? " — " + body.note : "");
  }

  // -- events --------------------------------------------------------------------------------
  function filters() {
    return { type: $("f-type").value, host: $("f-host").value.trim(), q: $("f-text").value.trim() };
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function describe(ev) {
    if (ev.type === "net.flow") {
      const remote = (ev.domain ? ev.domain + " " : "") + ev.remote_addr + ":" + (ev.remote_port || "*");
      const local = ev.local_addr + ":" + (ev.local_port || "*");
      const dir = ev.direction === "in" ? remote + " → " + local : local + " → " + remote;
      return ev.protocol + " " + dir + (ev.remote_class ? " [" + ev.remote_class + "]" : "") +
        "  " + (ev.connections || 0) + " conn, ↑" + bytes(ev.bytes_out) + " ↓" + bytes(ev.bytes_in);
    }
    if (ev.type === "net.listen") return ev.protocol + " " + ev.addr + ":" + ev.port + " " + (ev.state || "open");
    if (ev.type === "net.dns") {
      return ev.qtype + " " + ev.query + " → " + ((ev.answers || []).join(", ") || ev.rcode) +
        (ev.count > 1 ? "  (×" + ev.count + ")" : "");
    }
    if (ev.type === "file.change") {
      let text = ev.action + " " + (ev.old_path ? ev.old_path + " → " : "") + ev.path;
      if (ev.package_manager) text += "  [" + ev.package_manager + "]";
      if (ev.sha256) text += "  sha256:" + ev.sha256.slice(0, 12);
      return text;
    }
    return "";
  }

  function eventCells(item) {
    const ev = item.event || {};
    const p = ev.process || {};
    let pid = "", user = "", exe = "", argv = "", container = "", exit = "";
    if (ev.type === "process.exec") {
      pid = p.pid;
      user = p.user || (p.uid !== undefined ? p.uid : "");
      exe = p.exe;
      argv = (p.argv || []).join(" ") + (p.argv_truncated ? " …" : "");
      if (ev.count > 1) argv += "  (×" + ev.count + ")";
      container = p.container_id ? p.container_id.slice(0, 12) : "";
    } else if (ev.type === "process.exit") {
      pid = ev.pid;
      exe = ev.exe || ev.comm;
      container = ev.container_id ? ev.container_id.slice(0, 12) : "";
      exit = ev.signal !== undefined && ev.signal !== null ? "signal " + ev.signal :
        (ev.exit_code !== undefined && ev.exit_code !== null ? ev.exit_code : "");
    } else if (ev.type === "agent.health") {
      exe = "agent " + (ev.agent_version || "");
      argv = lossCounters(ev) || "no losses";
    } else if (ev.process !== undefined || ev.type === "file.change" || ev.type.startsWith("net.")) {
      // Network and file events: the process behind them, and what they did.
      pid = p.pid || "";
      user = p.user || (p.uid !== undefined && p.uid >= 0 ? p.uid : "");
      exe = p.exe || (ev.attribution === "unknown" ? "(writer unknown)" : "");
      container = p.container_id ? p.container_id.slice(0, 12) : "";
      argv = describe(ev);
    }
    return [cell(fmtTime(ev.ts), "time"), cell(item.host), cell(ev.type), cell(pid), cell(user), cell(exe),
      cell(argv, "argv"), cell(container), cell(exit)];
  }

  async function loadEvents() {
    const body = await api("events", Object.assign({ limit: PAGE }, filters()));
    const tbody = $("events").querySelector("tbody");
    tbody.replaceChildren();
    for (const item of body.events) tbody.appendChild(row(eventCells(item)));
    lastId = body.events.length ? body.events[0].id : (lastId === null ? 0 : lastId);
    if (!body.events.length) {
      // Follow from the newest event of any kind so the first poll does not replay history.
      const newest = await api("events", { limit: 1 });
      lastId = newest.events.length ? newest.events[0].id : 0;
    }
    $("events-empty").hidden = body.events.length > 0;
  }

  async function pollEvents() {
    const body = await api("events", Object.assign({ after_id: lastId, limit: 1000 }, filters()));
    const tbody = $("events").querySelector("tbody");
    if (!body.events.length) return;
    // Highlight only the rows of the latest poll.
    for (const tr of tbody.querySelectorAll("tr.new")) tr.classList.remove("new");
    for (const item of body.events) {
      tbody.insertBefore(row(eventCells(item), "new"), tbody.firstChild);
      lastId = Math.max(lastId, item.id);
    }
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
    $("events-empty").hidden = true;
  }

  function setFollow(on) {
    if (followTimer) { clearInterval(followTimer); followTimer = null; }
    if (on) {
      followTimer = setInterval(() => guard(async () => { await pollEvents(); await loadAgents(); }), FOLLOW_MS);
    }
  }

  // -- wiring --------------------------------------------------------------------------------
  async function guard(fn) {
    try {
      await fn();
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    } catch (e) {
      if (e instanceof AuthError) { signOut(e.message); return; }
      setStatus(String(e.message || e), true);
    }
  }

  function showLogin(message) {
    $("main").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  function signOut(message) {
    setFollow(false);
    $("f-follow").checked = false;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  function open() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("signout").hidden = false;
    guard(async () => { await loadAgents(); await loadVulns(); await loadEvents(); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      open();
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("refresh-agents").addEventListener("click", () => guard(loadAgents));
    $("refresh-vulns").addEventListener("click", () => guard(loadVulns));
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); guard(loadEvents); });
    $("f-type").addEventListener("change", () => guard(loadEvents));
    $("f-follow").addEventListener("change", (e) => setFollow(e.target.checked));
    if (token()) open(); else showLogin("");
  });
})();
