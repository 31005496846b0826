// Vulnerabilities (GET /api/v1/vulns: ranked, active first).
import { api } from "../api.js";
import { cell, el, filterForm, row, section, table } from "../dom.js";

export async function render(root, ctx) {
  const p = ctx.params;
  const t = table("vulns", ["Score", "Severity", "Advisory", "Package", "Version", "Fixed in", "Host / scope", "Use"]);
  const empty = el("p", { className: "muted", id: "vulns-empty", hidden: true }, "No finding.");
  const summary = el("p", { className: "muted", id: "vulns-summary" });
  const { form, values } = filterForm([
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
    { name: "severity", label: "Severity", options: ["", "critical", "high", "medium", "low", "unknown"],
      value: p.get("severity") },
  ], () => ctx.guard(load));
  async function load() {
    const body = await api("vulns", Object.assign({ limit: 200 }, values()));
    if (!ctx.current()) return;
    t.tbody.replaceChildren();
    for (const f of body.findings) {
      const use = [f.activity, f.exposed ? "exposed " + f.exposures.join(" ") : "", f.status === "unknown"
        ? "version unknown" : ""].filter(Boolean).join(", ");
      t.tbody.appendChild(row([
        cell(f.score), cell(f.severity + (f.cvss !== null ? " " + f.cvss : ""), f.severity === "critical" ? "stale" : ""),
        cell(f.id + (f.aliases.length ? " (" + f.aliases.slice(0, 2).join(", ") + ")" : "")),
        cell(f.package), cell(f.version), cell(f.fixed_version || "—"), cell(f.host + " / " + f.scope),
        cell(use, f.activity === "active" ? "warn" : "muted"),
      ]));
    }
    empty.hidden = body.findings.length > 0;
    summary.textContent = body.findings.length + " of " + body.total + " findings, " +
      body.advisories + " advisories" + (body.note ? " — " + body.note : "");
  }
  const refresh = el("button", { type: "button", id: "refresh-vulns", className: "small",
    onclick: () => ctx.guard(load) }, "Refresh");
  root.append(section("Vulnerabilities", form, el("div", {}, refresh, " ", summary), t.table, empty));
  await load();
}
