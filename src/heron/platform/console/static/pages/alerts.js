// Alerts: filter by state, severity and host; a row opens the alert.
import { api } from "../api.js";
import { SEVERITIES, el, filterForm, section, table } from "../dom.js";
import { ALERT_HEADERS, alertRows } from "./overview.js";

export async function render(root, ctx) {
  const p = ctx.params;
  const t = table("alerts", ALERT_HEADERS);
  const empty = el("p", { className: "muted", id: "alerts-empty", hidden: true }, "No alert matches.");
  const { form, values } = filterForm([
    { name: "state", label: "State", options: ["", "open", "acknowledged", "closed"], value: p.get("state") },
    { name: "severity", label: "Severity", options: ["", ...SEVERITIES], value: p.get("severity") },
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
  ], () => ctx.guard(load));
  async function load() {
    const body = await api("alerts", Object.assign({ limit: 200 }, values()));
    if (!ctx.current()) return;
    t.tbody.replaceChildren();
    alertRows(t.tbody, body.alerts);
    empty.hidden = body.alerts.length > 0;
    const q = new URLSearchParams(values()).toString();
    history.replaceState(null, "", "#/alerts" + (q ? "?" + q : ""));
  }
  for (const id of ["f-state", "f-severity"]) form.querySelector("#" + id).addEventListener("change", () => ctx.guard(load));
  root.append(section("Alerts", form, t.table, empty));
  await load();
}
