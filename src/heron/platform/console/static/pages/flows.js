// Network flows (net.flow events): process, direction, remote, domain, bytes, class.
import { api } from "../api.js";
import { bytes, cell, el, filterForm, fmtTime, row, section, table } from "../dom.js";
import { endpoint, userOf } from "../format.js";

export async function render(root, ctx) {
  const p = ctx.params;
  const t = table("flows", ["Time", "Host", "Process", "User", "Dir", "Local", "Remote", "Domain", "Class", "Conn",
    "Out", "In"]);
  const empty = el("p", { className: "muted", id: "flows-empty", hidden: true }, "No flows.");
  const { form, values } = filterForm([
    { name: "host", label: "Host", placeholder: "hostname", value: p.get("host") },
    { name: "q", label: "Text", placeholder: "exe, address, domain", value: p.get("q") },
  ], () => ctx.guard(load));
  async function load() {
    const body = await api("events", Object.assign({ type: "net.flow", limit: 500 }, values()));
    if (!ctx.current()) return;
    t.tbody.replaceChildren();
    for (const item of body.events) {
      const ev = item.event || {};
      const proc = ev.process || {};
      t.tbody.appendChild(row([
        cell(fmtTime(ev.ts), "time"), cell(item.host), cell((proc.pid || "") + " " + (proc.exe || "")),
        cell(userOf(proc)), cell(ev.direction === "in" ? "in ←" : "out →"),
        cell(ev.protocol + " " + endpoint(ev.local_addr, ev.local_port)),
        cell(endpoint(ev.remote_addr, ev.remote_port)), cell(ev.domain || ""), cell(ev.remote_class || ""),
        cell(ev.connections || 0, "num"), cell(bytes(ev.bytes_out), "num"), cell(bytes(ev.bytes_in), "num"),
      ]));
    }
    empty.hidden = body.events.length > 0;
  }
  root.append(section("Network flows", form, t.table, empty));
  await load();
}
