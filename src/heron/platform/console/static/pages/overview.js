// Overview: agents, open alerts by severity, events of the last 24 h per type, recent alerts.
import { api } from "../api.js";
import { SEVERITIES, ago, badge, el, fmtTime, link, row, cell, section, table } from "../dom.js";

function stat(id, label, value, cls) {
  return el("div", { className: "stat " + (cls || "") }, el("div", { className: "num", id }, String(value)),
    el("div", { className: "label" }, label));
}

export function alertRows(tbody, list) {
  for (const a of list) {
    tbody.appendChild(row([
      cell(badge(a.severity)), cell(link("#/alerts/" + Number(a.id), a.title || a.rule || a.kind)),
      cell(a.rule || a.kind), cell(a.host), cell((a.pid || "") + " " + (a.exe || "")), cell(a.state),
      cell(fmtTime(a.time || a.first_ts), "time"), cell(a.n_detections),
    ], "state-" + a.state));
  }
}
export const ALERT_HEADERS = ["Severity", "Title", "Rule / kind", "Host", "Process", "State", "Time", "Detections"];

export async function render(root, ctx) {
  const o = await api("overview");
  if (!ctx.current()) return;
  const open = o.alerts.open || {};
  const agents = el("div", { className: "stats", id: "ov-agents" },
    stat("ov-agents-total", "agents", o.agents.total),
    stat("ov-agents-healthy", "healthy", o.agents.healthy, "good"),
    stat("ov-agents-stale", "stale", o.agents.stale, o.agents.stale ? "bad" : ""));
  const sev = el("div", { className: "stats", id: "ov-alerts" });
  for (const s of SEVERITIES) sev.appendChild(stat("ov-open-" + s, s, open[s] || 0, open[s] ? "sev-" + s : ""));

  const counts = Object.entries(o.events.last_24h).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...counts.map((c) => c[1]));
  const ev = table("ov-events", ["Type", "Events (24 h)", ""]);
  for (const [type, n] of counts) {
    const bar = el("div", { className: "bar" });
    bar.style.width = Math.max(1, Math.round(100 * n / max)) + "%";
    ev.tbody.appendChild(row([cell(link("#/events?type=" + encodeURIComponent(type), type)),
      cell((o.events.capped ? "≥ " : "") + n, "num"), cell(bar, "barcell")]));
  }
  const recent = table("ov-recent", ALERT_HEADERS);
  alertRows(recent.tbody, o.recent_alerts);
  root.append(
    section("Agents", agents, el("p", { className: "muted" }, "stale: silent for " +
      Math.round(o.agents.stale_after_ns / 60e9) + " min; healthy: reporting, no losses")),
    section("Open alerts", sev),
    section("Events in the last 24 hours", ev.table,
      counts.length ? null : el("p", { className: "muted", id: "ov-events-empty" }, "No events.")),
    section("Recent alerts", recent.table,
      o.recent_alerts.length ? null : el("p", { className: "muted", id: "ov-recent-empty" }, "No alerts.")),
    el("p", { className: "muted" }, "as of " + fmtTime(o.time) + " (" + ago(o.time) + ")"),
  );
}
