// Hosts and agents: version, health (collectors per capability, loss counters), last and first seen.
import { api } from "../api.js";
import { ago, cell, el, fmtTime, link, row, section, table } from "../dom.js";
import { lossCounters } from "../format.js";

const STALE_NS = 5 * 60 * 1e9;

export async function render(root, ctx) {
  const body = await api("agents");
  if (!ctx.current()) return;
  const t = table("agents", ["Host", "Version", "Health", "Collectors", "Losses / errors", "Last seen", "First seen",
    "Kernel", "Agent id"]);
  const now = Date.now() * 1e6;
  for (const a of body.agents) {
    const health = a.last_health || {};
    const collectors = Object.entries(health.collectors || {}).map(([k, v]) => k + "=" + v).join(" ");
    const stale = now - a.last_seen > STALE_NS;
    const losses = lossCounters(health);
    const state = stale ? "stale" : (losses ? "losing data" : (a.last_health ? "healthy" : "no health yet"));
    const seen = cell(ago(a.last_seen) + " (" + fmtTime(a.last_seen) + ")", "time" + (stale ? " stale" : ""));
    t.tbody.appendChild(row([
      cell(link("#/events?host=" + encodeURIComponent(a.hostname || ""), a.hostname || a.name)),
      cell(a.version || health.agent_version),
      cell(state, stale || losses ? "stale" : "good"),
      cell(collectors || "—"),
      cell(losses || "none", losses ? "warn" : "muted"),
      seen,
      cell(fmtTime(a.first_seen), "time"),
      cell((a.host && a.host.kernel) || ""),
      cell(a.agent_id, "muted"),
    ]));
  }
  root.append(section("Hosts and agents", t.table,
    body.agents.length ? null : el("p", { className: "muted", id: "agents-empty" }, "No agent has enrolled yet.")));
}
